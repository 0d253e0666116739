//! Attacks on rooted mode (`gossip.mode: rooted`) by a neighbour, played by a client that knows
//! only `docs/PROTOCOL.md`: every `TreeRoot` frame (0x2A) it sends is written here byte by byte
//! from the document ("Framing", "Field types", the message table), and so are its liveness
//! replies; the crate is used only for the proof-of-work handshake (`handshake_as`) and to decode
//! what the node sends back. Every attack is bounded in count and time and aimed at loopback
//! only; after each, the node is still up, its threads and memory are back near their baseline,
//! and honest peers keep gossiping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use gossipnet::wire::{Msg, Role};

/// The attack tests' config (`attack_config`) in rooted mode.
fn config(gossip: &str, pow: &str, limits: &str) -> String {
    let gossip = if gossip.is_empty() {
        "mode: rooted".to_string()
    } else {
        format!("mode: rooted, {gossip}")
    };
    attack_config(&gossip, pow, limits)
}

// ---------------------------------------------------------------------------------------------
// Frames written from docs/PROTOCOL.md.
// ---------------------------------------------------------------------------------------------

/// "Framing": `len: u32 | body`, big-endian, `len` counting the body only.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// The body of a `TreeRoot` (0x2A): `root: addr` (`n: u8` then `n` ASCII bytes of `ip:port`),
/// `since: u64` (unix ms), `seq: u32`, `dist: u8`, `flags: u8` (bit 0: the receiver is the
/// sender's parent; bit 1: the sender asks for a newer `seq`; bit 2: the sender releases the
/// receiver, its former child).
fn tree_root_body(root: &str, since: u64, seq: u32, dist: u8, flags: u8) -> Vec<u8> {
    let mut body = vec![0x2A, root.len() as u8];
    body.extend_from_slice(root.as_bytes());
    body.extend_from_slice(&since.to_be_bytes());
    body.extend_from_slice(&seq.to_be_bytes());
    body.push(dist);
    body.push(flags);
    body
}

fn tree_root(root: &str, since: u64, seq: u32, dist: u8, flags: u8) -> Vec<u8> {
    frame(&tree_root_body(root, since, seq, dist, flags))
}

/// A `TreeRoot` as received: (root, since, seq, dist, flags); `None` if `body` is not one.
fn parse_tree_root(body: &[u8]) -> Option<(String, u64, u32, u8, u8)> {
    if body.first() != Some(&0x2A) {
        return None;
    }
    let n = *body.get(1)? as usize;
    let rest = body.get(2..)?;
    if rest.len() != n + 8 + 4 + 2 {
        return None;
    }
    let root = String::from_utf8(rest[..n].to_vec()).ok()?;
    let since = u64::from_be_bytes(rest[n..n + 8].try_into().ok()?);
    let seq = u32::from_be_bytes(rest[n + 8..n + 12].try_into().ok()?);
    Some((root, since, seq, rest[n + 12], rest[n + 13]))
}

/// `text`: `n: u16` then `n` bytes of UTF-8.
fn text_of(body: &[u8]) -> Option<String> {
    let n = u16::from_be_bytes(body.get(1..3)?.try_into().ok()?) as usize;
    String::from_utf8(body.get(3..3 + n)?.to_vec()).ok()
}

/// The answer to a `LivenessRequest` (0x21, `Liveness Request:<ts>:<sender ip:port>`): a
/// `LivenessReply` (0x22, `Liveness Reply:<ts>:<sender ip:port>:<replier ip:port>`).
fn liveness_reply(request: &[u8], me: SocketAddr) -> Option<Vec<u8>> {
    let text = text_of(request)?;
    let (ts, sender) = text.strip_prefix("Liveness Request:")?.split_once(':')?;
    let reply = format!("Liveness Reply:{ts}:{sender}:{me}");
    let mut body = vec![0x22];
    body.extend_from_slice(&(reply.len() as u16).to_be_bytes());
    body.extend_from_slice(reply.as_bytes());
    Some(frame(&body))
}

/// Whole frames out of a byte stream, by hand ("Framing").
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    fn next(&mut self) -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(self.buf.get(..4)?.try_into().unwrap()) as usize;
        let body = self.buf.get(4..4 + len)?.to_vec();
        self.buf.drain(..4 + len);
        Some(body)
    }
}

// ---------------------------------------------------------------------------------------------
// The network and its health (as in tests/abuse.rs).
// ---------------------------------------------------------------------------------------------

/// One seed and `n` honest peers, all linked (the overlay among them connected).
fn honest_network(config: String, n: usize) -> (Net, Vec<SocketAddr>) {
    let mut net = Net::new(1, &config);
    net.start_seeds();
    for _ in 0..n {
        net.start_peer();
    }
    let peers = net.peers();
    wait_until("the honest peers' overlay is connected", || {
        overlay_connected(&net, &peers)
    });
    (net, peers)
}

/// The neighbour graph among `peers` (from their own events) is connected.
fn overlay_connected(net: &Net, peers: &[SocketAddr]) -> bool {
    let names: BTreeSet<String> = peers.iter().map(|p| p.to_string()).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = peers
        .iter()
        .map(|p| (p.to_string(), neighbours(&net.events("peer", *p))))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack = vec![peers[0].to_string()];
    while let Some(p) = stack.pop() {
        if names.contains(&p) && seen.insert(p.clone()) {
            stack.extend(graph.get(&p).into_iter().flatten().cloned());
        }
    }
    seen.len() == peers.len()
}

/// The reasons of the `Reject` frames among `said`.
fn rejects(said: &[Msg]) -> Vec<String> {
    said.iter()
        .filter_map(|m| match m {
            Msg::Reject { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// An attacker's neighbour link.
// ---------------------------------------------------------------------------------------------

/// What one attacker link saw of the honest peer at its other end.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// `TreeRoot` frames the peer sent us, and of those how many named us its parent (bit 0).
    tree_roots: usize,
    named_parent: usize,
    /// Of those, how many released us (bit 2: we were its child and no longer name it).
    released: usize,
    /// The last `TreeRoot` the peer sent us.
    last_root: Option<(String, u64, u32, u8, u8)>,
    /// Whole items (`Gossip`, 0x20) the peer pushed to us: what the tree drew through us.
    gossip: usize,
    liveness_answered: usize,
    /// `Reject` reasons, and whether the peer closed the link (and when, from the start).
    rejects: Vec<String>,
    closed_after: Option<Duration>,
    /// `TreeRoot` frames we sent, and whether the lie is all told (`max_frames` or
    /// `for_at_most` reached).
    sent: usize,
    told: bool,
}

/// How an attacker link lies: every `period`, `per_tick` `TreeRoot` frames, each built by
/// `claim(n)` from a number drawn from a counter shared by all the attacker's links.
struct Lie {
    period: Duration,
    per_tick: usize,
    /// The first tick sends this many instead (a burst).
    first_tick: usize,
    claim: Arc<dyn Fn(u32) -> Vec<u8> + Send + Sync>,
    /// At most this many frames, for at most `for_at_most`; after that the link stays open,
    /// silent but answering liveness requests, until stopped.
    max_frames: usize,
    for_at_most: Duration,
}

/// An attacker's neighbour link to an honest peer, served by its own thread: it sends its
/// lies, answers liveness requests (so it is not dropped as dead), and reads and drops
/// everything else: it never forwards an item, never answers a digest or a graft.
struct AttackLink {
    me: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AttackLink {
    fn open(target: SocketAddr, lie: Lie, counter: Arc<AtomicU32>) -> AttackLink {
        let me = addr(free_port());
        let (mut s, mut fr) = handshake_as(Role::Peer, me, target).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut frames = Frames::default();
        // Frames that came with the Welcome.
        while let Ok(Some(body)) = fr.next_frame() {
            frames.push(&frame(&body));
        }
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                let start = Instant::now();
                let mut next_tick = start;
                let mut buf = vec![0u8; 1 << 16];
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    if sent < lie.max_frames
                        && start.elapsed() < lie.for_at_most
                        && Instant::now() >= next_tick
                    {
                        let mut out = Vec::new();
                        let n = if sent == 0 {
                            lie.first_tick
                        } else {
                            lie.per_tick
                        };
                        for _ in 0..n.min(lie.max_frames - sent) {
                            out.extend((lie.claim)(counter.fetch_add(1, Ordering::Relaxed)));
                            sent += 1;
                        }
                        seen.lock().unwrap().sent = sent;
                        let _ = s.write_all(&out);
                        // A late tick is not made up for: the rate stays what the lie says.
                        next_tick = (next_tick + lie.period).max(Instant::now());
                    }
                    if sent >= lie.max_frames || start.elapsed() >= lie.for_at_most {
                        seen.lock().unwrap().told = true;
                    }
                    match s.read(&mut buf) {
                        Ok(0) => {
                            seen.lock().unwrap().closed_after = Some(start.elapsed());
                            return;
                        }
                        Ok(n) => frames.push(&buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => {
                            seen.lock().unwrap().closed_after = Some(start.elapsed());
                            return;
                        }
                    }
                    while let Some(body) = frames.next() {
                        let mut seen = seen.lock().unwrap();
                        match body.first() {
                            Some(0x20) => seen.gossip += 1,
                            Some(0x21) => {
                                if let Some(reply) = liveness_reply(&body, me) {
                                    let _ = s.write_all(&reply);
                                    seen.liveness_answered += 1;
                                }
                            }
                            Some(0x04) => seen.rejects.extend(text_of(&body)),
                            Some(0x2A) => {
                                if let Some(tr) = parse_tree_root(&body) {
                                    seen.tree_roots += 1;
                                    if tr.4 & 1 == 1 {
                                        seen.named_parent += 1;
                                    }
                                    if tr.4 & 4 == 4 {
                                        seen.released += 1;
                                    }
                                    seen.last_root = Some(tr);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            })
        };
        AttackLink {
            me,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the thread and closes the link.
    fn close(&mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen()
    }
}

impl Drop for AttackLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Honest peers that logged cutting off another honest peer, or losing one as a neighbour:
/// (who, whom, reason).
fn honest_cuts(net: &Net, honest: &[SocketAddr]) -> Vec<(SocketAddr, String, String)> {
    let names: BTreeSet<String> = honest.iter().map(|p| p.to_string()).collect();
    let mut cuts = Vec::new();
    for &h in honest {
        let evs = net.events("peer", h);
        for e in of(&evs, "rejected") {
            let remote = e["remote"].as_str().unwrap_or("").to_string();
            if names.contains(&remote) {
                cuts.push((h, remote, e["reason"].to_string()));
            }
        }
        for e in of(&evs, "neighbour_down") {
            let peer = e["peer"].as_str().unwrap_or("").to_string();
            if names.contains(&peer) {
                cuts.push((h, peer, e["reason"].to_string()));
            }
        }
    }
    cuts
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
fn wait_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A lie told every `period`, `per_tick` frames at a time, for at most `max_frames` frames and
/// `for_at_most`.
fn lie(
    period: Duration,
    per_tick: usize,
    max_frames: usize,
    for_at_most: Duration,
    claim: impl Fn(u32) -> Vec<u8> + Send + Sync + 'static,
) -> Lie {
    Lie {
        period,
        per_tick,
        first_tick: per_tick,
        claim: Arc::new(claim),
        max_frames,
        for_at_most,
    }
}

/// A link that tells nothing: it only answers liveness requests (a bystander).
fn quiet() -> Lie {
    lie(Duration::from_secs(1), 0, 0, Duration::ZERO, |_| Vec::new())
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// PROTOCOL.md, "Release": a peer whose child stops naming it parent sends that neighbour, at
/// once, a `TreeRoot` with flag bit 2; naming it parent earns none. A neighbour that flips bit 0
/// twenty times (a frame every 100 ms, within the control allowance) gets exactly ten releases:
/// never more frames back than it sends, and it keeps its link.
#[test]
fn a_child_that_leaves_is_released_once_per_leaving() {
    let (_net, peers) = honest_network(config("", "", ""), 2);
    let p = peers[0];
    // A root younger than any (since = u64::MAX), so p's own tree stays as it is.
    let flips = lie(
        Duration::from_millis(100),
        1,
        20,
        Duration::from_secs(10),
        |n| {
            tree_root(
                "127.0.0.1:1",
                u64::MAX,
                1,
                5,
                if n % 2 == 0 { 1 } else { 0 },
            )
        },
    );
    let mut link = AttackLink::open(p, flips, Arc::new(AtomicU32::new(0)));
    wait_within("the flips are told", Duration::from_secs(20), || {
        link.seen().told
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = link.close();
    assert_eq!(seen.released, 10, "{seen:?}");
    assert!(
        seen.rejects.is_empty() && seen.closed_after.is_none(),
        "{seen:?}"
    );
}

/// PROTOCOL.md, rate limits: at most `limits.control_per_second` (50) frames a second plus 8 per
/// `gossip.graft_timeout` (100 ms) for `TreeRoot` and the tree frames: 130 a second, bursts of
/// 260. A neighbour writing 20,000 well-formed `TreeRoot`s as fast as it can is told why and cut.
#[test]
fn a_neighbour_flooding_tree_root_frames_is_cut_off() {
    let (mut net, peers) = honest_network(config("", "", ""), 3);
    let (p, q) = (peers[0], peers[1]);
    let base = baseline(net.pid(p));
    let me = addr(free_port());
    let (mut s, _) = handshake_as(Role::Peer, me, p).unwrap();
    // Written from another thread while this one reads, so the Reject is read as it comes.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let (root, start) = (me.to_string(), Instant::now());
        let mut sent = 0u32;
        while sent < 20_000 && start.elapsed() < Duration::from_secs(5) {
            let mut batch = Vec::new();
            for _ in 0..500 {
                sent += 1;
                // Each a newer `seq` of the oldest root there can be: a change that p takes and
                // passes on to every neighbour, the dearest kind of frame to handle.
                batch.extend(tree_root(&root, 1, sent, 0, 0));
            }
            if w.write_all(&batch).is_err() {
                break;
            }
        }
        sent
    });
    let said = frames_in(&read_to_close(&mut s));
    let sent = writer.join().unwrap();
    assert!(sent > 260, "only {sent} frames written: not a flood");
    assert!(
        rejects(&said)
            .iter()
            .any(|r| r.contains("control frames faster than the rate limit")),
        "no Reject naming the rate before the close ({sent} frames written): {:?}",
        rejects(&said)
    );
    // At most the burst (260) and a little rate of it was taken: p answered each change it
    // took with its own place at most once.
    let places = said
        .iter()
        .filter(|m| matches!(m, Msg::TreeRoot { .. }))
        .count();
    assert!(places <= 600, "p took {places} of {sent} frames");
    wait_until("the flood is logged as rejected", || {
        of(&net.events("peer", p), "rejected").iter().any(|e| {
            e["remote"] == me.to_string()
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("control frames faster"))
        })
    });
    // What p passed on before the cut may have cost it its honest links too (see
    // `a_neighbour_within_the_control_allowance_cannot_make_honest_peers_cut_each_other_off`);
    // it repairs them.
    eprintln!("honest links lost: {:?}", honest_cuts(&net, &peers));
    still_healthy(&mut net, p, &base, p, q);
}

/// "Framing": a body must be consumed exactly by its message; `flags` has bits 0 to 2 only.
/// A bad flags byte, a truncated `TreeRoot`, one with a trailing byte and one whose root is not
/// an address, each on its own connection: each link is closed and logged as `rejected`
/// naming what was wrong; another neighbour link of the same kind stays up, and so do the
/// honest links.
#[test]
fn a_malformed_tree_root_closes_only_that_link() {
    let (mut net, peers) = honest_network(config("", "", ""), 3);
    let (p, q) = (peers[0], peers[1]);
    let base = baseline(net.pid(p));
    let mut bystander = AttackLink::open(p, quiet(), Arc::new(AtomicU32::new(0)));
    wait_until("p took the bystander's link", || {
        neighbours(&net.events("peer", p)).contains(&bystander.me.to_string())
    });
    let good = |me: &str| tree_root_body(me, 1, 1, 0, 0);
    // (what, how a good body is spoiled, what the `rejected` reason names)
    type Spoil = fn(&[u8]) -> Vec<u8>;
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "flags 0x08",
            |b| {
                let mut b = b.to_vec();
                *b.last_mut().unwrap() = 0x08;
                b
            },
            "bad TreeRoot flags value 8",
        ),
        (
            "flags 0xFF",
            |b| {
                let mut b = b.to_vec();
                *b.last_mut().unwrap() = 0xFF;
                b
            },
            "bad TreeRoot flags value 255",
        ),
        ("no flags byte", |b| b[..b.len() - 1].to_vec(), "truncated"),
        (
            "only the root",
            |b| b[..2 + b[1] as usize].to_vec(),
            "truncated",
        ),
        (
            "a trailing byte",
            |b| {
                let mut b = b.to_vec();
                b.push(0);
                b
            },
            "unexpected bytes after the message",
        ),
        (
            "a root that is not an address",
            |b| {
                let mut b = b.to_vec();
                let n = b[1] as usize;
                b[2..2 + n].fill(b'x');
                b
            },
            "malformed address",
        ),
    ];
    for (what, spoil, needle) in cases {
        let me = addr(free_port());
        let (mut s, _) = handshake_as(Role::Peer, me, p).unwrap();
        let body = spoil(&good(&me.to_string()));
        send(&mut s, &frame(&body));
        // p closes the link (the read ends: EOF or reset, within PATIENCE).
        let started = Instant::now();
        read_to_close(&mut s);
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: the link was not closed"
        );
        wait_until(&format!("{what} is logged as rejected"), || {
            of(&net.events("peer", p), "rejected").iter().any(|e| {
                e["remote"] == me.to_string()
                    && e["reason"].as_str().is_some_and(|r| r.contains(needle))
            })
        });
    }
    // Only those links: the bystander is still p's neighbour, and no honest link went down.
    std::thread::sleep(Duration::from_secs(1));
    let seen = bystander.seen();
    assert_eq!(seen.closed_after, None, "the bystander's link was closed");
    assert!(neighbours(&net.events("peer", p)).contains(&bystander.me.to_string()));
    assert_eq!(honest_cuts(&net, &peers), vec![]);
    bystander.close();
    still_healthy(&mut net, p, &base, p, q);
}

/// PROTOCOL.md, rate limits: "a peer first sends a neighbour it cuts off (for its rate or any
/// other violation) a `Reject` with the reason, so the neighbour does not take the close for a
/// crash". A neighbour whose link is up (it sent a good `TreeRoot`, and p answered) and that then
/// sends a `TreeRoot` with flags 0x08 is told why (`Reject` naming the flags) before the close,
/// and p, which cut it off itself, does not report it dead to its seed.
#[test]
fn a_neighbour_cut_off_for_a_malformed_tree_root_is_told_why() {
    let (net, peers) = honest_network(config("", "", ""), 2);
    let p = peers[0];
    let me = addr(free_port());
    let (mut s, _) = handshake_as(Role::Peer, me, p).unwrap();
    send(&mut s, &tree_root(&me.to_string(), u64::MAX, 1, 0, 0));
    wait_until("p took the link", || {
        neighbours(&net.events("peer", p)).contains(&me.to_string())
    });
    std::thread::sleep(Duration::from_millis(500));
    send(&mut s, &tree_root(&me.to_string(), u64::MAX, 2, 0, 0x08));
    let said = frames_in(&read_to_close(&mut s));
    wait_until("the bad flags are logged as rejected", || {
        rejected_reasons(&net, "peer", p)
            .iter()
            .any(|r| r.contains("bad TreeRoot flags value 8"))
    });
    let dead: Vec<String> = strs(&net.events("peer", p), "dead_reported", "dead")
        .into_iter()
        .collect();
    assert!(
        rejects(&said)
            .iter()
            .any(|r| r.contains("bad TreeRoot flags")),
        "no Reject before the close; p sent us (at {me}) only {:?}; p reported dead: {dead:?}",
        said.iter()
            .map(|m| format!("{m:?}")
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect())
            .collect::<Vec<String>>()
    );
    assert!(
        !dead.contains(&me.to_string()),
        "p reported the neighbour it cut off as dead"
    );
}

/// Every item generated by `peers`: id → (generator, ts_ms).
fn generated(net: &Net, peers: &[SocketAddr]) -> BTreeMap<String, (SocketAddr, u64)> {
    let mut m = BTreeMap::new();
    for &p in peers {
        for e in of(&net.events("peer", p), "gossip_sent") {
            m.insert(
                e["id"].as_str().unwrap().to_string(),
                (p, e["ts_ms"].as_u64().unwrap()),
            );
        }
    }
    m
}

/// For each of `peers`, the ids it received and how (`via`: `gossip`, or `sync` for catch-up).
fn received(net: &Net, peers: &[SocketAddr]) -> BTreeMap<SocketAddr, BTreeMap<String, String>> {
    peers
        .iter()
        .map(|&p| {
            let got = of(&net.events("peer", p), "gossip_received")
                .iter()
                .map(|e| {
                    (
                        e["id"].as_str().unwrap().to_string(),
                        e["via"].as_str().unwrap_or("gossip").to_string(),
                    )
                })
                .collect();
            (p, got)
        })
        .collect()
}

/// PROTOCOL.md, Rooted mode: the root is the oldest among the candidates' roots, and the parent
/// the feasible candidate nearest to it; nothing proves a claimed root. An attacker linked to
/// three of five honest peers tells each, every 200 ms with a growing `seq`, that it is itself
/// the root of the oldest tree there can be (`since` 1, `dist` 0, flag bit 0 clear: it does not
/// name them its parent, so poison reverse does not exclude it). Each takes it as parent, the
/// whole tree hangs from it, and every peer pushes items up to it; it answers liveness requests
/// (so it keeps its links) and drops everything else: it forwards nothing, answers no digest
/// and no graft. The tree is cut into three subtrees that only announcements, grafts and
/// catch-up join: every item generated by every honest peer while the attack goes on still
/// reaches every honest peer.
#[test]
fn a_neighbour_claiming_an_ancient_root_cannot_stop_delivery() {
    let (net, honest) = honest_network(config("sync_interval: 500ms", "", ""), 5);
    let root = addr(free_port()).to_string();
    let counter = Arc::new(AtomicU32::new(1));
    let mut attack: Vec<AttackLink> = honest[..3]
        .iter()
        .map(|&h| {
            let root = root.clone();
            let claim = lie(
                Duration::from_millis(200),
                1,
                1_000,
                Duration::from_secs(150),
                move |seq| tree_root(&root, 1, seq, 0, 0),
            );
            AttackLink::open(h, claim, counter.clone())
        })
        .collect();
    // The tree is drawn through the attacker: each attacked peer names it as its parent, in a
    // place under the attacker's root, and pushes items to it.
    wait_within(
        "every attacked peer takes the attacker as its parent",
        Duration::from_secs(30),
        || {
            attack.iter().all(|a| {
                let seen = a.seen();
                seen.last_root
                    .as_ref()
                    .is_some_and(|(r, since, _, dist, flags)| {
                        *r == root && *since == 1 && *dist == 1 && flags & 1 == 1
                    })
            })
        },
    );
    let from = gossipnet::node::unix_ms();
    let pushed_before: usize = attack.iter().map(|a| a.seen().gossip).sum();
    std::thread::sleep(Duration::from_secs(6));
    let until = gossipnet::node::unix_ms();
    let items: BTreeMap<String, SocketAddr> = generated(&net, &honest)
        .into_iter()
        .filter(|(_, (_, ts))| (from..=until).contains(ts))
        .map(|(id, (p, _))| (id, p))
        .collect();
    let origins: BTreeSet<SocketAddr> = items.values().copied().collect();
    assert_eq!(
        origins.len(),
        honest.len(),
        "not every honest peer generated items during the attack"
    );
    // Every one reaches every honest peer but its origin, while the attack goes on.
    let missing = |net: &Net| -> Vec<(String, SocketAddr)> {
        let got = received(net, &honest);
        items
            .iter()
            .flat_map(|(id, from)| {
                honest
                    .iter()
                    .filter(move |h| *h != from)
                    .map(move |h| (id.clone(), *h))
            })
            .filter(|(id, h)| !got[h].contains_key(id))
            .collect()
    };
    let start = Instant::now();
    while !missing(&net).is_empty() {
        let left = missing(&net);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} deliveries missing after 60 s, e.g. {:?}",
            left.len(),
            items.len() * (honest.len() - 1),
            &left[..left.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The attack held throughout: its links are all up, the attacked peers still name it their
    // parent, and it drew items.
    let seen: Vec<Seen> = attack.iter().map(AttackLink::seen).collect();
    for (a, s) in attack.iter().zip(&seen) {
        assert_eq!(
            s.closed_after, None,
            "attacker link {} was cut: {s:?}",
            a.me
        );
        assert!(
            s.last_root
                .as_ref()
                .is_some_and(|(r, _, _, _, f)| *r == root && f & 1 == 1),
            "attacker link {} no longer the parent: {s:?}",
            a.me
        );
    }
    let pushed: usize = seen.iter().map(|s| s.gossip).sum();
    assert!(pushed > pushed_before, "nothing was pushed to the attacker");
    let got = received(&net, &honest);
    let by_sync = items
        .keys()
        .flat_map(|id| got.values().filter_map(move |g| g.get(id)))
        .filter(|via| *via == "sync")
        .count();
    eprintln!(
        "{} items from {} peers delivered to all in {:?}; {} deliveries by catch-up; {pushed} \
         items pushed to the attacker in all; places naming it parent per link: {:?}",
        items.len(),
        origins.len(),
        start.elapsed(),
        by_sync,
        seen.iter().map(|s| s.named_parent).collect::<Vec<_>>()
    );
    for a in &mut attack {
        a.close();
    }
}

/// PROTOCOL.md, rate limits: a connection may send 130 control frames a second (bursts of
/// 260) with the defaults; Rooted mode: a peer sends every neighbour its place "when its place
/// (or parent) changes", and a newer `seq` from its parent is such a change. An attacker link
/// that stays within that allowance (a burst of 240 `TreeRoot`s, each a newer `seq` of its
/// claimed root, then 120 a second, for at most 10 s and 1,440 frames) is never cut off itself;
/// p passes the changes on to its honest neighbours, on top of its own control frames
/// (liveness, announcements, catch-up), and they must not find p over the same allowance
/// (PROTOCOL.md: a neighbour is told a place at most 20 times a refresh, in bursts of 4). SECURITY.md's rule for gossip, "a flood is throttled at the first honest
/// hop… honest peers never cut each other off", is what this asks of `TreeRoot`.
#[test]
fn a_neighbour_within_the_control_allowance_cannot_make_honest_peers_cut_each_other_off() {
    let (mut net, honest) = honest_network(config("", "", ""), 3);
    let (p, q) = (honest[0], honest[1]);
    let base = baseline(net.pid(p));
    let root = addr(free_port()).to_string();
    let mut claim = lie(
        Duration::from_millis(100),
        12,
        1_440,
        Duration::from_secs(10),
        move |seq| tree_root(&root, 1, seq, 0, 0),
    );
    claim.first_tick = 240;
    let mut attacker = AttackLink::open(p, claim, Arc::new(AtomicU32::new(1)));
    wait_within(
        "the attacker has told its lies",
        Duration::from_secs(30),
        || {
            let seen = attacker.seen();
            seen.told || seen.closed_after.is_some()
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let seen = attacker.close();
    // The attacker kept to the allowance: it was not cut off.
    assert_eq!(
        seen.closed_after, None,
        "the attacker was cut off: {seen:?}"
    );
    assert!(seen.rejects.is_empty(), "{:?}", seen.rejects);
    let cuts = honest_cuts(&net, &honest);
    assert!(
        cuts.is_empty(),
        "honest peers cut each other off after {} TreeRoot frames from a neighbour within the \
         allowance (p = {p}): {cuts:#?}",
        seen.sent
    );
    still_healthy(&mut net, p, &base, p, q);
}

/// Rooted mode keeps, for each root, the newest `seq` heard and sent (the feasibility
/// condition) and up to 64 lost roots. An attacker announces 2,000 distinct roots, each older
/// than the last (a new address, a smaller `since`), so p takes every one as its root in turn,
/// at 50 a second (well within the control allowance, counting that p passes each change
/// on), then falls silent (answering liveness only): every root is abandoned. p comes back to
/// an honest root, its memory stays within the baseline bound, and honest gossip goes on.
#[test]
fn many_roots_announced_then_abandoned_leave_memory_bounded() {
    let (mut net, honest) = honest_network(config("", "", ""), 3);
    let (p, q) = (honest[0], honest[1]);
    let base = baseline(net.pid(p));
    let claim = lie(
        Duration::from_millis(100),
        5,
        2_000,
        Duration::from_secs(60),
        |n| {
            let root = format!("127.0.9.{}:{}", 1 + n / 50_000, 1_000 + n % 50_000);
            tree_root(&root, 1_000_000 - u64::from(n), 1, 0, 0)
        },
    );
    let mut attacker = AttackLink::open(p, claim, Arc::new(AtomicU32::new(0)));
    wait_within(
        "the attacker has announced its roots",
        Duration::from_secs(90),
        || {
            let seen = attacker.seen();
            seen.told || seen.closed_after.is_some()
        },
    );
    let told = attacker.seen();
    assert_eq!(
        told.closed_after, None,
        "the attacker was cut off: {told:?}"
    );
    // p took them: the place it last told the attacker is under one of its roots.
    assert!(
        told.last_root
            .as_ref()
            .is_some_and(|(r, since, ..)| r.starts_with("127.0.9.") && *since < 1_000_000),
        "p did not take the attacker's roots: {told:?}"
    );
    let peak = proc_status(net.pid(p), "VmRSS");
    // Abandoned: p takes the last one for lost after 3 refreshes (6 s), or 8 (16 s) while the
    // attacker, its parent, still sends frames, and goes back to an honest root, which it
    // tells the attacker too.
    let names: BTreeSet<String> = honest.iter().map(|h| h.to_string()).collect();
    wait_within(
        "p is back under an honest root",
        Duration::from_secs(60),
        || {
            attacker
                .seen()
                .last_root
                .is_some_and(|(r, ..)| names.contains(&r))
        },
    );
    let seen = attacker.close();
    eprintln!(
        "{} roots announced; p sent {} places; memory: baseline {} KiB, after the roots {peak} \
         KiB, now {} KiB; honest links lost: {:?}",
        seen.sent,
        seen.tree_roots,
        base.rss_kib,
        proc_status(net.pid(p), "VmRSS"),
        honest_cuts(&net, &honest)
    );
    still_healthy(&mut net, p, &base, p, q);
}
