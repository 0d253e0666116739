//! Attacks on rooted mode (`gossip.mode: rooted`) by a neighbour, played by a client that knows
//! only `docs/PROTOCOL.md` (version 8): every `TreeRoot` frame (0x2A) it sends is written here
//! byte by byte from the document ("Framing", "Field types", the message table, and "Rooted
//! mode", "Proofs"), and so are its liveness replies, its handshakes (`tests/common/attacker.rs`)
//! and its reading of what the node sends back. A `TreeRoot`
//! is a root's `number` (`root: addr`, `incarnation: u64`, `key`, the certificate of the root's
//! registration, `seq: u32`, `anchor: [32]`, the root's `signature`), then `dist: u8`, `value:
//! [32]` (the distance chain's value at `dist`) and `flags: u8`. The attacker either makes a
//! number up (its own key signs the number and every signature of the certificate, which no
//! seed signed), re-signs a real one with another key, or relays a real one it heard from an
//! honest neighbour, with a `dist`, `value` and `flags` of its choosing. A false proof (a
//! certificate the seeds did not sign, a number the root did not sign, a distance the chain
//! does not prove) is answered with a `Reject` (`TreeRoot: the proof of root … does not
//! check`) and the link closed, as a malformed frame is; so lies that must last (a flood, a
//! lie within the allowance, a child's comings and goings) relay real numbers at distances the
//! chain proves, and a lie that does not check is told once per link, on as many short links
//! as the attack needs. Every attack is bounded in count and time and aimed at loopback only;
//! after each, the node is still up, its threads and memory are back near their baseline, and
//! honest peers keep gossiping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::attacker::*;
use common::*;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

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
// Frames written from docs/PROTOCOL.md (framing, fields, members and the handshake:
// `common::attacker`).
// ---------------------------------------------------------------------------------------------

/// "Rooted mode", "Proofs": what a root signs its number under, and what the distance chain
/// hashes under.
const ROOT_CONTEXT: &[u8] = b"gossipnet/7 root";
const CHAIN_CONTEXT: &[u8] = b"gossipnet/7 chain";
/// "Place": `dist` 32 and over means no route.
const UNREACHABLE: u8 = 32;

/// "Proofs": H(v) = SHA-256(`"gossipnet/7 chain"` | v).
fn chain(v: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAIN_CONTEXT);
    h.update(v);
    h.finalize().into()
}

/// H applied `times` times.
fn chain_n(v: &[u8; 32], times: usize) -> [u8; 32] {
    (0..times).fold(*v, |v, _| chain(&v))
}

/// What a root signs its number with: `"gossipnet/7 root" | root | incarnation | seq | anchor`,
/// `root` written as the `addr` it is (length byte first, as a member's address is in a
/// change).
fn root_message(root: &str, incarnation: u64, seq: u32, anchor: &[u8; 32]) -> Vec<u8> {
    let mut m = ROOT_CONTEXT.to_vec();
    m.extend(addr_field(root));
    m.extend_from_slice(&incarnation.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(anchor);
    m
}

/// Number `seq` of root `root` (`root: addr`, `incarnation: u64`, `key`, `n: u8`, `n` ×
/// (`seed: addr`, `sig`) from `cert`, `seq: u32`, `anchor: [32]`, `signature: sig`), with a
/// fresh chain start `v0` ("for each number the root draws a secret 32-byte start"), the
/// signature made by `signer`: the number's bytes and `v0`, its `value` at `dist` 0.
fn signed_number(
    root: &str,
    incarnation: u64,
    key: &[u8; 32],
    cert: &[(String, [u8; 64])],
    seq: u32,
    signer: &SigningKey,
) -> (Vec<u8>, [u8; 32]) {
    let v0: [u8; 32] = rand::random();
    let anchor = chain_n(&v0, UNREACHABLE as usize);
    let mut n = member(root, incarnation, key);
    n.push(cert.len() as u8);
    for (seed, sig) in cert {
        n.extend(addr_field(seed));
        n.extend_from_slice(sig);
    }
    n.extend_from_slice(&seq.to_be_bytes());
    n.extend_from_slice(&anchor);
    let signature = signer.sign(&root_message(root, incarnation, seq, &anchor));
    n.extend_from_slice(&signature.to_bytes());
    (n, v0)
}

/// A root the attacker makes up: an address, an incarnation and a key of its choosing. Its
/// certificate names the network's configured `seeds` (so a receiver has to check it), but
/// every signature in it is the made-up root's own key's, over the change a seed would sign: no
/// seed signed it. Each number is signed by that key, as a real root signs its own.
struct MadeUpRoot {
    root: String,
    incarnation: u64,
    key: SigningKey,
    seeds: Vec<String>,
}

impl MadeUpRoot {
    fn new(root: &str, incarnation: u64, seeds: &[String]) -> MadeUpRoot {
        MadeUpRoot {
            root: root.to_string(),
            incarnation,
            key: SigningKey::from_bytes(&rand::random()),
            seeds: seeds.to_vec(),
        }
    }

    /// Number `seq` (see `signed_number`), its certificate forged by the made-up key for
    /// every configured seed: the number's bytes and `v0`.
    fn number(&self, seq: u32) -> (Vec<u8>, [u8; 32]) {
        let key = self.key.verifying_key().to_bytes();
        let forged = self
            .key
            .sign(&change_message(&self.root, self.incarnation, &key))
            .to_bytes();
        let cert: Vec<(String, [u8; 64])> =
            self.seeds.iter().map(|s| (s.clone(), forged)).collect();
        signed_number(&self.root, self.incarnation, &key, &cert, seq, &self.key)
    }

    /// The body of a `TreeRoot` telling number `seq` of this root as the root itself would:
    /// `dist` 0, `value` = `v0`.
    fn body(&self, seq: u32, flags: u8) -> Vec<u8> {
        let (number, v0) = self.number(seq);
        tree_root_body(&number, 0, &v0, flags)
    }

    fn tree_root(&self, seq: u32, flags: u8) -> Vec<u8> {
        frame(&self.body(seq, flags))
    }
}

/// The body of a `TreeRoot` (0x2A): `number` (its bytes as they go on the wire), `dist: u8`,
/// `value: [32]`, `flags: u8` (bit 0: the receiver is the sender's parent; bit 1: the sender
/// asks for a newer `seq`; bit 2: the sender releases the receiver, its former child).
fn tree_root_body(number: &[u8], dist: u8, value: &[u8; 32], flags: u8) -> Vec<u8> {
    let mut body = vec![0x2A];
    body.extend_from_slice(number);
    body.push(dist);
    body.extend_from_slice(value);
    body.push(flags);
    body
}

fn tree_root(number: &[u8], dist: u8, value: &[u8; 32], flags: u8) -> Vec<u8> {
    frame(&tree_root_body(number, dist, value, flags))
}

/// A `TreeRoot` as received: the `number`'s bytes as they came (to relay it) and its fields,
/// then `dist`, `value` and `flags`.
#[derive(Clone)]
struct Place {
    number: Vec<u8>,
    root: String,
    incarnation: u64,
    key: [u8; 32],
    cert: Vec<(String, [u8; 64])>,
    seq: u32,
    anchor: [u8; 32],
    signature: [u8; 64],
    dist: u8,
    value: [u8; 32],
    flags: u8,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} #{} seq {} dist {} flags {:#x}",
            self.root, self.incarnation, self.seq, self.dist, self.flags
        )
    }
}

impl Place {
    /// This place's number told with a `dist`, `value` and `flags` of the sender's choosing.
    fn relay(&self, dist: u8, value: &[u8; 32], flags: u8) -> Vec<u8> {
        tree_root(&self.number, dist, value, flags)
    }

    /// What a child of the sender tells ("Proofs"): the parent's `dist` plus one and H(the
    /// parent's `value`), which checks wherever the parent's place checks.
    fn below(&self, flags: u8) -> Vec<u8> {
        self.relay(self.dist + 1, &chain(&self.value), flags)
    }

    /// A number of this place's root (its address, incarnation, key and certificate, all as
    /// the root's number has them, so the certificate checks) with `seq` and a fresh chain
    /// (`anchor` = H^32(`v0`)), signed by `by` instead of the root's key: a number the root
    /// did not sign. Its bytes and `v0`.
    fn signed_by(&self, seq: u32, by: &SigningKey) -> (Vec<u8>, [u8; 32]) {
        signed_number(&self.root, self.incarnation, &self.key, &self.cert, seq, by)
    }

    /// Whether it checks as "Proofs" says: the certificate (⌊n/2⌋+1 distinct configured seeds'
    /// signatures over the change that adds `root`, `incarnation`, `key`), the `signature` under
    /// `key`, and, below 32, H^(32 − `dist`)(`value`) = `anchor`.
    fn check(&self, seeds: &BTreeMap<String, VerifyingKey>) -> Result<(), String> {
        let change = change_message(&self.root, self.incarnation, &self.key);
        let signed: BTreeSet<&String> = self
            .cert
            .iter()
            .filter(|(seed, sig)| {
                seeds.get(seed).is_some_and(|k| {
                    k.verify_strict(&change, &Signature::from_bytes(sig))
                        .is_ok()
                })
            })
            .map(|(seed, _)| seed)
            .collect();
        if signed.len() < seeds.len() / 2 + 1 {
            return Err(format!(
                "{self:?}: its certificate has {} good signatures of {} seeds",
                signed.len(),
                seeds.len()
            ));
        }
        let key = VerifyingKey::from_bytes(&self.key).map_err(|e| format!("{self:?}: {e}"))?;
        key.verify_strict(
            &root_message(&self.root, self.incarnation, self.seq, &self.anchor),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|e| format!("{self:?}: the root's signature does not verify: {e}"))?;
        if self.dist < UNREACHABLE
            && chain_n(&self.value, (UNREACHABLE - self.dist) as usize) != self.anchor
        {
            return Err(format!("{self:?}: its value is not on the number's chain"));
        }
        Ok(())
    }
}

/// A `TreeRoot` as received; `None` if `body` is not one.
fn parse_tree_root(body: &[u8]) -> Option<Place> {
    if body.first() != Some(&0x2A) {
        return None;
    }
    let mut f = Fields { body, at: 1 };
    let root = f.addr()?;
    let incarnation = f.u64()?;
    let key = f.bytes::<32>()?;
    let n = f.u8()?;
    let cert = (0..n)
        .map(|_| Some((f.addr()?, f.bytes::<64>()?)))
        .collect::<Option<Vec<_>>>()?;
    let seq = f.u32()?;
    let anchor = f.bytes::<32>()?;
    let signature = f.bytes::<64>()?;
    let number = body[1..f.at].to_vec();
    let dist = f.u8()?;
    let value = f.bytes::<32>()?;
    let flags = f.u8()?;
    if f.at != body.len() {
        return None;
    }
    Some(Place {
        number,
        root,
        incarnation,
        key,
        cert,
        seq,
        anchor,
        signature,
        dist,
        value,
        flags,
    })
}

/// The network's configured seeds and their keys, as `seeds.yaml` lists them (`{ addr:
/// "ip:port", key: "<64 hex>" }`, "Seed keys"): a seed's key is public.
fn seed_keys(net: &Net) -> BTreeMap<String, VerifyingKey> {
    let yaml = std::fs::read_to_string(&net.config).unwrap();
    let keys: BTreeMap<String, VerifyingKey> = yaml
        .split("addr: \"")
        .skip(1)
        .filter_map(|entry| {
            let (a, rest) = entry.split_once('"')?;
            let hex_key = rest.split_once("key: \"")?.1.split_once('"')?.0;
            let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
            Some((a.to_string(), VerifyingKey::from_bytes(&bytes).ok()?))
        })
        .collect();
    assert_eq!(keys.len(), net.seeds.len(), "seed keys in {yaml}");
    keys
}

fn seed_names(net: &Net) -> Vec<String> {
    net.seeds.iter().map(SocketAddr::to_string).collect()
}

/// `text`: `n: u16` then `n` bytes of UTF-8.
fn text_of(body: &[u8]) -> Option<String> {
    Fields { body, at: 1 }.text()
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

// ---------------------------------------------------------------------------------------------
// An attacker's neighbour link.
// ---------------------------------------------------------------------------------------------

/// At most this many places are kept per link (`Seen::places`).
const PLACES_KEPT: usize = 4_096;

/// What one attacker link saw of the honest peer at its other end.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// `TreeRoot` frames the peer sent us, and of those how many named us its parent (bit 0).
    tree_roots: usize,
    named_parent: usize,
    /// Of those, how many released us (bit 2: we were its child and no longer name it).
    released: usize,
    /// The last `TreeRoot` the peer sent us.
    last_root: Option<Place>,
    /// Every root its `TreeRoot` frames named: (root, incarnation).
    roots: BTreeSet<(String, u64)>,
    /// The first `PLACES_KEPT` places it told us.
    places: Vec<Place>,
    /// Whole items (`Gossip`, 0x20) the peer pushed to us: what the tree drew through us.
    gossip: usize,
    /// `Detour` frames (0x2B): items that reached the peer around us, its parent; and of those
    /// how many came while its last place named us its parent.
    detours: usize,
    detours_as_parent: usize,
    liveness_answered: usize,
    /// `Reject` reasons, and whether the peer closed the link (and when, from the start).
    rejects: Vec<String>,
    closed_after: Option<Duration>,
    /// `TreeRoot` frames we sent, and whether the lie is all told (`max_frames` or
    /// `for_at_most` reached).
    sent: usize,
    told: bool,
}

/// What a lie says: `claim(n, seen)` is the next frame, `n` drawn from a counter shared by all
/// the attacker's links and `seen` what this link saw so far (a relay needs a place heard);
/// `None`: nothing to say yet (nothing heard), asked again a moment later.
type Claim = Arc<dyn Fn(u32, &Seen) -> Option<Vec<u8>> + Send + Sync>;

/// How an attacker link lies: every `period`, `per_tick` `TreeRoot` frames, each built by
/// `claim`.
struct Lie {
    period: Duration,
    per_tick: usize,
    /// The first tick sends this many instead (a burst).
    first_tick: usize,
    claim: Claim,
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
    /// The honest peer at the other end.
    target: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A neighbour link to `target` claiming `me`, through the attacker's own handshake
/// ("Connection start", in the peer role, a fresh key): the stream, and what was read past the
/// `Welcome`.
fn neighbour_link(me: SocketAddr, target: SocketAddr) -> (std::net::TcpStream, Frames) {
    let key = SigningKey::from_bytes(&rand::random());
    welcomed(ROLE_PEER, target, &me.to_string(), &key)
        .conn
        .into_parts()
}

impl AttackLink {
    fn open(target: SocketAddr, lie: Lie, counter: Arc<AtomicU32>) -> AttackLink {
        let me = addr(free_port());
        let (s, frames) = neighbour_link(me, target);
        AttackLink::serve(s, frames, me, target, lie, counter)
    }

    /// Serves a link whose handshake is done: `s`, with `frames` already read from it, between
    /// the attacker at `me` and the honest peer `target`.
    fn serve(
        mut s: std::net::TcpStream,
        mut frames: Frames,
        me: SocketAddr,
        target: SocketAddr,
        lie: Lie,
        counter: Arc<AtomicU32>,
    ) -> AttackLink {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
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
                        let heard = seen.lock().unwrap().clone();
                        for _ in 0..n.min(lie.max_frames - sent) {
                            // The counter moves only for a frame said.
                            let Some(f) = (lie.claim)(counter.load(Ordering::Relaxed), &heard)
                            else {
                                break;
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            out.extend(f);
                            sent += 1;
                        }
                        if !out.is_empty() {
                            seen.lock().unwrap().sent = sent;
                            let _ = s.write_all(&out);
                            // A late tick is not made up for: the rate stays what the lie says.
                            next_tick = (next_tick + lie.period).max(Instant::now());
                        }
                    }
                    if sent >= lie.max_frames || start.elapsed() >= lie.for_at_most {
                        seen.lock().unwrap().told = true;
                    }
                    // Whether the peer closed the link: what it said before is read first.
                    let closed = match s.read(&mut buf) {
                        Ok(0) => true,
                        Ok(n) => {
                            frames.push(&buf[..n]);
                            false
                        }
                        Err(e) => !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                    };
                    while let Some(body) = frames.next() {
                        let mut seen = seen.lock().unwrap();
                        match body.first() {
                            Some(0x20) => seen.gossip += 1,
                            Some(0x2B) => {
                                seen.detours += 1;
                                if seen
                                    .last_root
                                    .as_ref()
                                    .is_some_and(|p| p.flags & NAMES_PARENT != 0)
                                {
                                    seen.detours_as_parent += 1;
                                }
                            }
                            Some(0x21) => {
                                if let Some(reply) = liveness_reply(&body, me) {
                                    let _ = s.write_all(&reply);
                                    seen.liveness_answered += 1;
                                }
                            }
                            Some(0x04) => seen.rejects.extend(text_of(&body)),
                            Some(0x2A) => {
                                let place = parse_tree_root(&body).unwrap_or_else(|| {
                                    panic!(
                                        "{target} sent a TreeRoot not in the documented \
                                         layout: {}",
                                        hex::encode(&body)
                                    )
                                });
                                seen.tree_roots += 1;
                                if place.flags & 1 == 1 {
                                    seen.named_parent += 1;
                                }
                                if place.flags & 4 == 4 {
                                    seen.released += 1;
                                }
                                seen.roots.insert((place.root.clone(), place.incarnation));
                                if seen.places.len() < PLACES_KEPT {
                                    seen.places.push(place.clone());
                                }
                                seen.last_root = Some(place);
                            }
                            _ => {}
                        }
                    }
                    if closed {
                        seen.lock().unwrap().closed_after = Some(start.elapsed());
                        return;
                    }
                }
            })
        };
        AttackLink {
            me,
            target,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// What this link sees, as it sees it (for another link's lie to relay).
    fn ear(&self) -> Arc<Mutex<Seen>> {
        self.seen.clone()
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

// ---------------------------------------------------------------------------------------------
// A short link: a lie told once, and what came of it.
// ---------------------------------------------------------------------------------------------

/// "Proofs": the start of the reason of the `Reject` for a false proof (`TreeRoot: the proof of
/// root … does not check`), and its end.
const FALSE_PROOF: &str = "TreeRoot: the proof of root ";
const DOES_NOT_CHECK: &str = "does not check";

/// How long a link that was told a false proof may take to close (it closes "at once"; this is
/// for a busy machine).
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// What a short link heard from the honest peer at its other end.
#[derive(Debug, Default)]
struct Told {
    /// Every place the peer told us, the first of them before we said anything.
    places: Vec<Place>,
    /// Whole items (`Gossip`, 0x20) the peer pushed to us.
    gossip: usize,
    rejects: Vec<String>,
    /// How long after our last frame the peer closed the link; `None`: it had not yet.
    closed_after: Option<Duration>,
}

impl Told {
    fn hear(&mut self, target: SocketAddr, body: &[u8]) {
        match body.first() {
            Some(0x20) => self.gossip += 1,
            Some(0x04) => self.rejects.extend(text_of(body)),
            Some(0x2A) => self.places.push(parse_tree_root(body).unwrap_or_else(|| {
                panic!(
                    "{target} sent a TreeRoot not in the documented layout: {}",
                    hex::encode(body)
                )
            })),
            _ => {}
        }
    }

    /// Whether the peer told us, before closing, that the proof of `root` does not check.
    fn cut_for_the_proof_of(&self, root: &str) -> bool {
        self.closed_after.is_some()
            && self.rejects.iter().any(|r| {
                r.starts_with(&format!("{FALSE_PROOF}{root} ")) && r.contains(DOES_NOT_CHECK)
            })
    }
}

/// A neighbour link opened to tell a lie or two, read on the test's own thread.
struct Liar {
    me: SocketAddr,
    target: SocketAddr,
    s: std::net::TcpStream,
    frames: Frames,
    told: Told,
    said_at: Instant,
}

impl Liar {
    fn open(target: SocketAddr) -> Liar {
        let me = addr(free_port());
        let (s, frames) = neighbour_link(me, target);
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Liar {
            me,
            target,
            s,
            frames,
            told: Told::default(),
            said_at: Instant::now(),
        }
    }

    /// Reads until `done`, the close (true), or `limit`.
    fn listen(&mut self, limit: Duration, done: impl Fn(&Told) -> bool) -> bool {
        let start = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            while let Some(body) = self.frames.next() {
                self.told.hear(self.target, &body);
            }
            if self.told.closed_after.is_some() {
                return true;
            }
            if done(&self.told) || start.elapsed() >= limit {
                return false;
            }
            match self.s.read(&mut buf) {
                Ok(0) => self.told.closed_after = Some(self.said_at.elapsed()),
                Ok(n) => self.frames.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.told.closed_after = Some(self.said_at.elapsed()),
            }
        }
    }

    /// The place the peer tells a new neighbour at once (Rooted mode, "Place").
    fn first_place(&mut self) -> Place {
        let closed = self.listen(CLOSE_WITHIN, |t| !t.places.is_empty());
        assert!(
            !closed && !self.told.places.is_empty(),
            "{} told the new neighbour {} no place (closed: {closed}): {:?}",
            self.target,
            self.me,
            self.told
        );
        self.told.places[0].clone()
    }

    fn say(&mut self, bytes: &[u8]) {
        send(&mut self.s, bytes);
        self.said_at = Instant::now();
    }

    /// Reads until the peer closes the link, for at most `CLOSE_WITHIN`: what it told us.
    fn until_closed(mut self) -> Told {
        self.listen(CLOSE_WITHIN, |_| false);
        self.told
    }
}

/// Opens a neighbour link to `target`, waits for the place it tells a new neighbour, tells it
/// the `TreeRoot` frame `lie` makes of that place, and reads until the link closes: the
/// attacker's address and what it was told.
fn tell_once(target: SocketAddr, lie: impl FnOnce(&Place) -> Vec<u8>) -> (SocketAddr, Told) {
    let mut liar = Liar::open(target);
    let heard = liar.first_place();
    liar.say(&lie(&heard));
    (liar.me, liar.until_closed())
}

/// The neighbours `p` reported dead to its seeds.
fn reported_dead(net: &Net, p: SocketAddr) -> BTreeSet<String> {
    strs(&net.events("peer", p), "dead_reported", "dead")
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
    claim: impl Fn(u32, &Seen) -> Option<Vec<u8>> + Send + Sync + 'static,
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

/// A link that tells nothing: it only answers liveness requests (a bystander, or an ear).
fn quiet() -> Lie {
    lie(Duration::from_secs(1), 0, 0, Duration::ZERO, |_, _| None)
}

/// Opens a quiet link to each of `peers` and waits until each has told its place: the links,
/// and the root every one of them names (they agree on one).
fn ears(peers: &[SocketAddr]) -> (Vec<AttackLink>, String) {
    let ears: Vec<AttackLink> = peers
        .iter()
        .map(|&h| AttackLink::open(h, quiet(), Arc::new(AtomicU32::new(0))))
        .collect();
    let mut root = String::new();
    wait_within(
        "every honest peer tells us its place, under one root",
        Duration::from_secs(30),
        || {
            let roots: BTreeSet<String> = ears
                .iter()
                .filter_map(|e| e.seen().last_root.map(|p| p.root))
                .collect();
            let all = ears.iter().all(|e| e.seen().last_root.is_some());
            if all && roots.len() == 1 {
                root = roots.into_iter().next().unwrap();
            }
            !root.is_empty()
        },
    );
    (ears, root)
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// PROTOCOL.md, "Release": a peer whose child stops naming it parent sends that neighbour, at
/// once, a `TreeRoot` with flag bit 2; naming it parent earns none. A neighbour that relays p's
/// own number as a child of p would (p's `dist` plus one and H(p's `value`): a place that
/// checks, "Proofs") and flips bit 0 twenty times (a frame every 100 ms, within the control
/// allowance) gets exactly ten releases: never more frames back than it sends, and it keeps its
/// link. Being further from the root than p, it is never named p's parent.
#[test]
fn a_child_that_leaves_is_released_once_per_leaving() {
    let (_net, peers) = honest_network(config("", "", ""), 2);
    let p = peers[0];
    let flips = lie(
        Duration::from_millis(100),
        1,
        20,
        Duration::from_secs(10),
        |n, seen| {
            // p's latest place, as p told it to us.
            let heard = seen.last_root.as_ref()?;
            Some(heard.below(if n % 2 == 0 { 1 } else { 0 }))
        },
    );
    let mut link = AttackLink::open(p, flips, Arc::new(AtomicU32::new(0)));
    wait_within("the flips are told", Duration::from_secs(20), || {
        link.seen().told
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = link.close();
    assert_eq!(seen.sent, 20, "{seen:?}");
    assert_eq!(seen.released, 10, "{seen:?}");
    assert_eq!(
        seen.named_parent, 0,
        "p took its child for its parent: {seen:?}"
    );
    assert!(
        seen.rejects.is_empty() && seen.closed_after.is_none(),
        "{seen:?}"
    );
}

/// PROTOCOL.md, rate limits: at most `limits.control_per_second` (50) frames a second plus 8 per
/// `gossip.graft_timeout` (100 ms) for `TreeRoot` and the tree frames: 130 a second, bursts of
/// 260 (the test config leaves both at their defaults). A neighbour writing up to 5,000
/// `TreeRoot`s back to back (in at most 5 s) is told why and cut off for its rate. Each frame's
/// proof holds ("Proofs"): it passes on p's own number as a child of p would (p's `dist` plus
/// one and H(p's `value`)), so the link is not cut for a false proof (which would cut it at the
/// first frame, and test nothing of the rate) and p reads the flood as fast as it comes (the
/// copies of one number cost it a comparison and a chain). The cut comes within a few seconds
/// of the first frame, with a `Reject` naming the rate and none naming the proof.
#[test]
fn a_neighbour_flooding_tree_root_frames_is_cut_off() {
    let (mut net, peers) = honest_network(config("", "", ""), 3);
    let (p, q) = (peers[0], peers[1]);
    let base = baseline(net.pid(p));
    let mut liar = Liar::open(p);
    let me = liar.me;
    let heard = liar.first_place();
    let place = heard.below(0);
    // Written from another thread while this one reads, so the Reject is read as it comes.
    let mut w = liar.s.try_clone().unwrap();
    liar.said_at = Instant::now();
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u32;
        while sent < 5_000 && start.elapsed() < Duration::from_secs(5) {
            let batch: Vec<u8> = (0..100).flat_map(|_| place.iter().copied()).collect();
            if w.write_all(&batch).is_err() {
                break;
            }
            sent += 100;
        }
        sent
    });
    let told = liar.until_closed();
    let sent = writer.join().unwrap();
    eprintln!(
        "{sent} copies of {heard:?} (one link further) written; p cut the link {:?} after the \
         first: {:?}",
        told.closed_after, told.rejects
    );
    assert!(sent > 260, "only {sent} frames written: not a flood");
    let closed = told
        .closed_after
        .unwrap_or_else(|| panic!("p did not cut the flood off within {CLOSE_WITHIN:?}"));
    assert!(
        told.rejects
            .iter()
            .any(|r| r.contains("control frames faster than the rate limit")),
        "no Reject naming the rate before the close ({sent} frames written): {:?}",
        told.rejects
    );
    assert!(
        !told.rejects.iter().any(|r| r.contains(DOES_NOT_CHECK)),
        "a place that checks was refused as a false proof: {:?}",
        told.rejects
    );
    assert!(
        closed < Duration::from_secs(5),
        "the flood was cut off only {closed:?} after its first frame"
    );
    // At most the burst (260) and a little rate of it was taken, all one place (the same
    // frame again changes nothing): p answered each change it took with its place at most once.
    assert!(
        told.places.len() <= 600,
        "p told {} places for {sent} frames",
        told.places.len()
    );
    wait_until("the flood is logged as rejected", || {
        of(&net.events("peer", p), "rejected").iter().any(|e| {
            e["remote"] == me.to_string()
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("control frames faster"))
        })
    });
    eprintln!("honest links lost: {:?}", honest_cuts(&net, &peers));
    still_healthy(&mut net, p, &base, p, q);
}

/// PROTOCOL.md, Rooted mode, "Proofs": a receiver checks every `TreeRoot` (the certificate of
/// the root's registration, the root's signature over the number, and H^(32 − `dist`)(`value`)
/// = `anchor`); "if any of the three is false […] the receiver sends `Reject` (`TreeRoot: the
/// proof of root … does not check`) and closes the link, as for a malformed frame". Three lies,
/// each on a fresh link to an honest peer p that is not the root, after p told the link its
/// place: a made-up root (its certificate names the network's seed but is signed by the made-up
/// key: a certificate the seeds did not sign); p's root with a newer `seq` and a chain of the
/// attacker's, signed by another key than the root's (its certificate, the real one, checks: a
/// number the root did not sign); and p's place passed on one link nearer the root than p told
/// it (`dist` one less, p's `value`: a distance the chain does not prove). Each is answered
/// with a `Reject` naming the root whose proof does not check, and the link closes at once; p
/// logs it as `rejected`, takes none of them (it names the attacker parent on no link, and its
/// place is unchanged), and reports none of the attacker's links dead; a quiet neighbour link
/// of the same kind stays up, no honest link goes down, and p stays healthy.
#[test]
fn a_neighbour_whose_proof_is_false_is_told_why_and_cut_off() {
    let (mut net, peers) = honest_network(config("", "", ""), 3);
    let (mut ears, root) = ears(&peers);
    let i = peers.iter().position(|h| h.to_string() != root).unwrap();
    let (p, q) = (peers[i], peers[(i + 1) % peers.len()]);
    let before = ears[i].seen().last_root.unwrap();
    assert!(
        (1..UNREACHABLE).contains(&before.dist),
        "p, not the root, told {before:?}"
    );
    let base = baseline(net.pid(p));
    let made_up = MadeUpRoot::new(&addr(free_port()).to_string(), 1, &seed_names(&net));
    let other_key = SigningKey::from_bytes(&rand::random());
    // (what, the root the `Reject` names, the lie made of the place p told)
    type MakeLie<'a> = Box<dyn Fn(&Place) -> Vec<u8> + 'a>;
    let cases: Vec<(&str, String, MakeLie)> = vec![
        (
            "a made-up root",
            made_up.root.clone(),
            Box::new(|_| made_up.tree_root(1, 0)),
        ),
        (
            "a newer seq of the real root signed by another key",
            root.clone(),
            Box::new(|heard| {
                let (number, v0) = heard.signed_by(heard.seq.wrapping_add(1), &other_key);
                tree_root(&number, 0, &v0, 0)
            }),
        ),
        (
            "p's place one link nearer the root",
            root.clone(),
            Box::new(|heard| {
                assert!((1..UNREACHABLE).contains(&heard.dist), "{heard:?}");
                heard.relay(heard.dist - 1, &heard.value, 0)
            }),
        ),
    ];
    let mut attackers = BTreeSet::new();
    for (what, named, lie) in cases {
        let (me, told) = tell_once(p, lie);
        attackers.insert(me.to_string());
        eprintln!("{what}: {told:?}");
        assert!(
            told.cut_for_the_proof_of(&named),
            "{what}: not told that the proof of {named} does not check before the close: {told:?}"
        );
        assert!(
            told.places.iter().all(|pl| pl.flags & 1 == 0),
            "{what}: p named the attacker parent: {told:?}"
        );
        wait_until(&format!("{what} is logged as rejected"), || {
            of(&net.events("peer", p), "rejected").iter().any(|e| {
                e["remote"] == me.to_string()
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with(FALSE_PROOF) && r.contains(DOES_NOT_CHECK))
            })
        });
    }
    // Only those links: the ear is still p's neighbour, p's place did not change, and no honest
    // link went down.
    std::thread::sleep(Duration::from_secs(1));
    let seen = ears[i].seen();
    assert_eq!(
        seen.closed_after, None,
        "the quiet link was closed: {seen:?}"
    );
    assert!(seen.rejects.is_empty(), "{seen:?}");
    assert_eq!(seen.named_parent, 0, "{seen:?}");
    let after = seen.last_root.unwrap();
    assert_eq!(
        (&after.root, after.incarnation, after.dist),
        (&before.root, before.incarnation, before.dist),
        "p's place changed under the lies"
    );
    let dead: BTreeSet<String> = reported_dead(&net, p);
    assert!(
        dead.is_disjoint(&attackers),
        "p reported a neighbour it cut off as dead: {dead:?}"
    );
    assert_eq!(honest_cuts(&net, &peers), vec![]);
    for e in &mut ears {
        e.close();
    }
    still_healthy(&mut net, p, &base, p, q);
}

/// Where a `TreeRoot` body's certificate count byte is (after the tag, `root`, `incarnation`
/// and `key`).
fn cert_at(body: &[u8]) -> usize {
    1 + 1 + body[1] as usize + 8 + 32
}

/// "Framing": a body must be consumed exactly by its message; `flags` has bits 0 to 2 only.
/// Bad flags bytes, `TreeRoot`s cut short at several places (in the flags, the `value`, after
/// the `number`, after the `root`, in the certificate), one with a trailing byte, one whose root
/// is not an address and one whose certificate names a seed that is not an address, each on
/// its own connection: each link is closed and logged as `rejected` naming what was wrong;
/// another neighbour link of the same kind stays up, and so do the honest links. Each is
/// spoiled from a place whose proof holds (p's own place passed on as a child of p would tell
/// it: "Proofs"), so what is wrong with it is only what was spoiled.
#[test]
fn a_malformed_tree_root_closes_only_that_link() {
    let (mut net, peers) = honest_network(config("", "", ""), 3);
    let (p, q) = (peers[0], peers[1]);
    let base = baseline(net.pid(p));
    let mut bystander = AttackLink::open(p, quiet(), Arc::new(AtomicU32::new(0)));
    wait_until("p took the bystander's link", || {
        neighbours(&net.events("peer", p)).contains(&bystander.me.to_string())
    });
    wait_until("p told the bystander its place", || {
        bystander.seen().last_root.is_some()
    });
    // A well-formed `TreeRoot` whose proof checks.
    let heard = bystander.seen().last_root.unwrap();
    let good = tree_root_body(&heard.number, heard.dist + 1, &chain(&heard.value), 0);
    assert!(parse_tree_root(&good).is_some());
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
            "half a value",
            |b| b[..b.len() - 1 - 16].to_vec(),
            "truncated",
        ),
        (
            "only the number",
            |b| b[..b.len() - 1 - 32 - 1].to_vec(),
            "truncated",
        ),
        (
            "only the root",
            |b| b[..2 + b[1] as usize].to_vec(),
            "truncated",
        ),
        (
            "a certificate of two seeds that ends after one",
            |b| {
                let at = cert_at(b);
                let first_seed = 1 + b[at + 1] as usize + 64;
                let mut b = b[..at + 1 + first_seed].to_vec();
                b[at] = 2;
                b
            },
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
        (
            "a certifying seed that is not an address",
            |b| {
                let mut b = b.to_vec();
                let at = cert_at(&b) + 1;
                let n = b[at] as usize;
                b[at + 1..at + 1 + n].fill(b'x');
                b
            },
            "malformed address",
        ),
    ];
    for (what, spoil, needle) in cases {
        let me = addr(free_port());
        let (mut s, _) = neighbour_link(me, p);
        let body = spoil(&good);
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
/// crash". A neighbour whose link is up (it passed on p's place as a child of p would: a place
/// whose proof holds, which keeps the link: "Proofs") and that then sends the same place with
/// flags 0x08 is told why (`Reject` naming the flags, not the proof) before the close, and p,
/// which cut it off itself, does not report it dead to its seed.
#[test]
fn a_neighbour_cut_off_for_a_malformed_tree_root_is_told_why() {
    let (net, peers) = honest_network(config("", "", ""), 2);
    let p = peers[0];
    let mut liar = Liar::open(p);
    let me = liar.me;
    let heard = liar.first_place();
    liar.say(&heard.below(0));
    wait_until("p took the link", || {
        neighbours(&net.events("peer", p)).contains(&me.to_string())
    });
    let closed = liar.listen(Duration::from_millis(500), |_| false);
    assert!(
        !closed && liar.told.rejects.is_empty(),
        "p cut off a neighbour that told a place whose proof holds: {:?}",
        liar.told
    );
    liar.say(&heard.relay(heard.dist + 1, &chain(&heard.value), 0x08));
    let told = liar.until_closed();
    wait_until("the bad flags are logged as rejected", || {
        rejected_reasons(&net, "peer", p)
            .iter()
            .any(|r| r.contains("bad TreeRoot flags value 8"))
    });
    let dead = reported_dead(&net, p);
    assert!(
        told.closed_after.is_some()
            && told
                .rejects
                .iter()
                .any(|r| r.contains("bad TreeRoot flags value 8")),
        "no Reject naming the flags before the close (p told us, at {me}: {told:?}; p reported \
         dead: {dead:?})"
    );
    assert!(
        !told.rejects.iter().any(|r| r.contains(DOES_NOT_CHECK)),
        "{told:?}"
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

/// Items generated by `honest` over the next `window`; waits until every one has reached every
/// honest peer but its origin (at most 60 s). Returns how many there were, from how many peers,
/// and how many deliveries were by catch-up.
fn all_delivered(net: &Net, honest: &[SocketAddr], window: Duration) -> (usize, usize, usize) {
    let from = unix_ms();
    std::thread::sleep(window);
    let until = unix_ms();
    let items: BTreeMap<String, SocketAddr> = generated(net, honest)
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
    let missing = |net: &Net| -> Vec<(String, SocketAddr)> {
        let got = received(net, honest);
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
    while !missing(net).is_empty() {
        let left = missing(net);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} deliveries missing after 60 s, e.g. {:?}",
            left.len(),
            items.len() * (honest.len() - 1),
            &left[..left.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = received(net, honest);
    let by_sync = items
        .keys()
        .flat_map(|id| got.values().filter_map(move |g| g.get(id)))
        .filter(|via| *via == "sync")
        .count();
    (items.len(), origins.len(), by_sync)
}

/// PROTOCOL.md, Rooted mode, "Proofs": "so a neighbour cannot name a root that is not
/// registered, claim one older than it is"; a `TreeRoot` whose proof is false is answered with
/// `Reject` and the link closed. An attacker tells three of five honest peers, each on a fresh
/// link, that it is itself the root of the oldest tree there can be (`incarnation` 1, `dist` 0,
/// `value` on the chain of the number's `anchor`, flag bit 0 clear: it does not name them its
/// parent, so poison reverse would not exclude it): the number signed by the key it names, and
/// its certificate naming the network's seed, signed by that same key (no seed signed it). Each
/// link is cut off at that frame, so the attacker dials again: every 500 ms a fresh link to each
/// of the three, with the next `seq`, while the honest peers' gossip is watched (at most 16
/// rounds, 48 links). Quiet links to all five watch their places. Every attacker's link is told
/// that the made-up root's proof does not check, and closed; no honest peer takes the made-up
/// root or the attacker as parent: every place the five tell any link names an honest root,
/// checks as "Proofs" says, and names the attacker nobody's parent, and none pushes it an item;
/// no honest peer reports an attacker's link dead; the quiet links stay up; every item
/// generated by every honest peer meanwhile reaches every honest peer; and they end under one
/// root.
#[test]
fn a_neighbour_claiming_an_ancient_root_is_cut_off_and_cannot_stop_delivery() {
    let (net, honest) = honest_network(config("sync_interval: 500ms", "", ""), 5);
    let seeds = seed_keys(&net);
    let names: BTreeSet<String> = honest.iter().map(|h| h.to_string()).collect();
    let (mut ears, _) = ears(&honest);
    let fake = Arc::new(MadeUpRoot::new(
        &addr(free_port()).to_string(),
        1,
        &seed_names(&net),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (fake, stop, targets) = (fake.clone(), stop.clone(), honest[..3].to_vec());
        std::thread::spawn(move || {
            let mut told = Vec::new();
            let mut seq = 0u32;
            for _ in 0..16 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for &h in &targets {
                    seq += 1;
                    let (me, t) = tell_once(h, |_| fake.tree_root(seq, 0));
                    told.push((h, me, t));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            told
        })
    };
    let (items, origins, by_sync) = all_delivered(&net, &honest, Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let told = attacker.join().unwrap();
    let fake_root = (fake.root.clone(), fake.incarnation);
    let check_all = |places: &[Place], link: &str| {
        for place in places {
            assert!(
                names.contains(&place.root),
                "{link} was told a root that is no honest peer: {place:?}"
            );
            assert_eq!(
                place.flags & 1,
                0,
                "the attacker was taken as parent ({link}): {place:?}"
            );
            if let Err(e) = place.check(&seeds) {
                panic!("an honest peer's place does not check as PROTOCOL.md says: {e}");
            }
        }
    };
    assert!(
        told.len() >= 12,
        "only {} lies told while gossip was watched",
        told.len()
    );
    for (h, me, t) in &told {
        assert!(
            t.cut_for_the_proof_of(&fake.root),
            "{h} did not cut off the attacker's link {me} for the made-up root's proof: {t:?}"
        );
        check_all(&t.places, &format!("the attacker's link {me} to {h}"));
        assert_eq!(
            t.gossip, 0,
            "{h} pushed items to the attacker's link {me}: {t:?}"
        );
    }
    let seen: Vec<Seen> = ears.iter().map(AttackLink::seen).collect();
    for (h, s) in honest.iter().zip(&seen) {
        assert_eq!(s.closed_after, None, "the quiet link to {h} was cut: {s:?}");
        assert!(s.rejects.is_empty(), "the quiet link to {h}: {s:?}");
        assert!(
            !s.roots.contains(&fake_root),
            "{h} took the made-up root: {s:?}"
        );
        check_all(&s.places, &format!("the quiet link to {h}"));
        assert_eq!(
            s.gossip, 0,
            "{h} pushed items to the quiet link: the tree was drawn through it: {s:?}"
        );
    }
    let attackers: BTreeSet<String> = told.iter().map(|(_, me, _)| me.to_string()).collect();
    for &h in &honest {
        let dead = reported_dead(&net, h);
        assert!(
            dead.is_disjoint(&attackers),
            "{h} reported a link it cut off as dead: {dead:?}"
        );
    }
    let last: BTreeSet<(String, u64)> = seen
        .iter()
        .filter_map(|s| {
            let p = s.last_root.as_ref()?;
            Some((p.root.clone(), p.incarnation))
        })
        .collect();
    assert_eq!(
        last.len(),
        1,
        "the honest peers are under different roots: {seen:?}"
    );
    eprintln!(
        "{items} items from {origins} peers delivered to all; {by_sync} deliveries by catch-up; \
         made-up numbers told: {}, each on its own link, cut off after {:?}; places told to the \
         quiet links: {:?}; the root: {:?}",
        told.len(),
        told.iter()
            .filter_map(|(_, _, t)| t.closed_after)
            .max()
            .unwrap_or_default(),
        seen.iter().map(|s| s.tree_roots).collect::<Vec<_>>(),
        last
    );
    for e in &mut ears {
        e.close();
    }
}

/// PROTOCOL.md, Rooted mode, "Proofs": every other peer sends H(its parent's `value`) at its
/// `dist`, and a receiver checks H^(32 − `dist`)(`value`) = `anchor`, "so a neighbour cannot
/// […] claim to be nearer the root than the neighbour it heard from (H cannot be undone)"; a
/// distance the chain does not prove is a false proof: `Reject` and the link closed. Six honest
/// peers that dial one neighbour each make a tree with peers two links or more from the root
/// (the network is made again, at most twice, until it has one; each peer takes up to 8 links
/// others open, so that the attacker's two are not refused at a peer all the others dialed).
/// An attacker listens to each (quiet links: its ears) and, on a second link to each, relays
/// the newest real number it heard, with the `value` it heard, at a `dist` smaller than it
/// heard: on every other link `dist` 0 for a place heard at `dist` 1 or more (the attacker as
/// near as the root itself), on the rest one less than the largest `dist` heard. Believed, it
/// would make every peer two links or more from the root take the attacker as parent. Each
/// lying link is told that the proof does not check and closed at that frame; three refreshes
/// later, no honest peer has named the attacker parent on either link, none has pushed it an
/// item or reported it dead, the ears are still linked, and every honest peer is as far from
/// the root as before, as its ear hears. (The one lie that still checks, passing on the
/// parent's `dist` and `value` as its own, is not told here.)
#[test]
fn a_neighbour_claiming_to_be_nearer_the_root_than_it_heard_is_cut_off() {
    let mut attempt = 0;
    let (mut net, honest, mut ears, root, before) = loop {
        attempt += 1;
        let (net, honest) = honest_network(
            config("", "", "") + "\npeer: { max_neighbours: 1, max_inbound: 8 }",
            6,
        );
        let (ears, root) = ears(&honest);
        let before: Vec<u8> = ears
            .iter()
            .map(|e| e.seen().last_root.unwrap().dist)
            .collect();
        if before.iter().any(|d| *d >= 2) {
            break (net, honest, ears, root, before);
        }
        assert!(
            attempt < 3,
            "no honest peer two links from the root in three networks: {before:?}"
        );
    };
    let far = honest[before.iter().position(|d| *d >= 2).unwrap()];
    let base = baseline(net.pid(far));
    let heard: Vec<Arc<Mutex<Seen>>> = ears.iter().map(AttackLink::ear).collect();
    let heard = Arc::new(heard);
    let counter = Arc::new(AtomicU32::new(0));
    let mut liars: Vec<AttackLink> = honest
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            let heard = heard.clone();
            let said = lie(
                Duration::from_millis(200),
                1,
                1,
                Duration::from_secs(10),
                move |_, _| {
                    // The newest number heard, and of its places those told at `dist` 1 and
                    // more.
                    let places: Vec<Place> = heard
                        .iter()
                        .filter_map(|s| s.lock().unwrap().last_root.clone())
                        .collect();
                    let newest = places.iter().map(|p| p.seq).max()?;
                    let mut far: Vec<&Place> = places
                        .iter()
                        .filter(|p| p.seq == newest && (1..UNREACHABLE).contains(&p.dist))
                        .collect();
                    far.sort_by_key(|p| p.dist);
                    let (near, farthest) = (far.first()?, far.last()?);
                    Some(if i % 2 == 0 {
                        near.relay(0, &near.value, 0)
                    } else {
                        farthest.relay(farthest.dist - 1, &farthest.value, 0)
                    })
                },
            );
            AttackLink::open(h, said, counter.clone())
        })
        .collect();
    wait_within(
        "the lies are told to every honest peer and every lying link is closed",
        Duration::from_secs(30),
        || {
            liars.iter().all(|l| {
                let s = l.seen();
                s.sent > 0 && s.closed_after.is_some()
            })
        },
    );
    // Three refreshes (2 s each): long enough for a peer that believed a lie to have taken it.
    std::thread::sleep(Duration::from_secs(6));
    let lied: Vec<Seen> = liars.iter().map(AttackLink::seen).collect();
    let heard: Vec<Seen> = ears.iter().map(AttackLink::seen).collect();
    let after: Vec<Option<(String, u8)>> = heard
        .iter()
        .map(|s| s.last_root.as_ref().map(|p| (p.root.clone(), p.dist)))
        .collect();
    eprintln!(
        "dists from the root {root} before: {before:?}; after: {after:?}; lies told per link: \
         {:?}, answered: {:?}",
        lied.iter().map(|s| s.sent).collect::<Vec<_>>(),
        lied.iter().map(|s| &s.rejects).collect::<Vec<_>>()
    );
    for (i, &h) in honest.iter().enumerate() {
        let (l, e) = (&lied[i], &heard[i]);
        assert_eq!(l.sent, 1, "{h}: {l:?}");
        assert!(
            l.closed_after.is_some()
                && l.rejects.iter().any(|r| {
                    r.starts_with(&format!("{FALSE_PROOF}{root} ")) && r.contains(DOES_NOT_CHECK)
                }),
            "{h} did not cut off a neighbour claiming a distance the chain does not prove, \
             telling it why: {l:?}"
        );
        assert_eq!(
            l.named_parent, 0,
            "{h} took the attacker as parent on the strength of a shorter distance it cannot \
             prove: {l:?}"
        );
        assert_eq!(
            e.named_parent, 0,
            "{h} named the attacker's ear parent: {e:?}"
        );
        assert_eq!(l.gossip + e.gossip, 0, "{h} pushed items to the attacker");
        assert_eq!(
            e.closed_after, None,
            "{h} cut the attacker's ear off: {e:?}"
        );
        assert!(e.rejects.is_empty(), "{h}: {e:?}");
        let dead = reported_dead(&net, h);
        assert!(
            !dead.contains(&liars[i].me.to_string()),
            "{h} reported the neighbour it cut off as dead: {dead:?}"
        );
    }
    assert_eq!(
        after,
        before
            .iter()
            .map(|d| Some((root.clone(), *d)))
            .collect::<Vec<_>>(),
        "honest peers' distances from the root changed under the attack"
    );
    for l in liars.iter_mut().chain(ears.iter_mut()) {
        l.close();
    }
    let q = honest[before.iter().position(|d| *d == 0).unwrap()];
    still_healthy(&mut net, far, &base, far, q);
}

/// PROTOCOL.md, rate limits: a connection may send 130 control frames a second (bursts of
/// 260) with the defaults; Rooted mode: a peer sends every neighbour its place "when its place
/// (or parent) changes". A made-up number would get the link cut at its first frame
/// ("Proofs"), but real ones may be passed on: an attacker linked to the root R (where it hears R's number and `value` at `dist` 0)
/// tells another honest peer p, within that allowance (a burst of 240 `TreeRoot`s, then 120 a
/// second, for at most 10 s and 1,440 frames), R's latest number in turn at `dist` 0 with R's
/// `value` (a place that checks, as near the root as R: a candidate parent), the same naming p
/// its parent (poison reverse: no candidate), and at `dist` 32 asking for a newer `seq` (flag
/// bit 1, which p passes on to R, which answers with a new `seq` at most every refresh / 10,
/// and every peer's place changes). It is never cut off itself; p passes the changes on to its
/// honest neighbours, on top of its own control frames (liveness, announcements, catch-up),
/// and they must not find p over the same allowance (PROTOCOL.md: a neighbour is told a place
/// at most 20 times a refresh, in bursts of 4). SECURITY.md's rule for gossip, "a flood is
/// throttled at the first honest hop… honest peers never cut each other off", is what this
/// asks of `TreeRoot`.
#[test]
fn a_neighbour_within_the_control_allowance_cannot_make_honest_peers_cut_each_other_off() {
    let (mut net, honest) = honest_network(config("", "", ""), 3);
    let (mut ears, root) = ears(&honest);
    let r = honest
        .iter()
        .position(|h| h.to_string() == root)
        .expect("the root is an honest peer");
    let (p, q) = (honest[(r + 1) % 3], honest[(r + 2) % 3]);
    let from_root = ears[r].ear();
    let r_before = ears[r].seen().last_root.unwrap();
    assert_eq!(r_before.dist, 0, "the root told {r_before:?}");
    let p_told_before = ears[(r + 1) % 3].seen().tree_roots;
    let base = baseline(net.pid(p));
    let started = Instant::now();
    let mut claim = lie(
        Duration::from_millis(100),
        12,
        1_440,
        Duration::from_secs(10),
        move |n, _| {
            let heard = from_root.lock().unwrap().last_root.clone()?;
            Some(match n % 3 {
                0 => heard.relay(heard.dist, &heard.value, 0),
                1 => heard.relay(heard.dist, &heard.value, 1),
                _ => heard.relay(UNREACHABLE, &heard.value, 2),
            })
        },
    );
    claim.first_tick = 240;
    let mut attacker = AttackLink::open(p, claim, Arc::new(AtomicU32::new(0)));
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
    let r_after = ears[r].seen().last_root.unwrap();
    eprintln!(
        "{} frames told p ({p}); p told the attacker {} places and its ear {}; the root's seq \
         went from {} to {} in {:?}",
        seen.sent,
        seen.tree_roots,
        ears[(r + 1) % 3].seen().tree_roots - p_told_before,
        r_before.seq,
        r_after.seq,
        started.elapsed()
    );
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
    for e in &mut ears {
        e.close();
    }
    still_healthy(&mut net, p, &base, p, q);
}

/// Rooted mode keeps, for each root, the newest `seq` heard and sent (the feasibility
/// condition), up to 64 lost roots, and the certificates and numbers of up to 64 roots that
/// checked ("Proofs"); a root whose proof is false gets the link cut at its first frame. So
/// a made-up root reaches none of that memory: to reach it legitimately takes registered roots
/// (the seeds commit a registration only after dialing the peer back, which this client, a
/// dialer only, does not answer); what a made-up root still costs p is a link, a check that
/// fails and a cut, and that is what this test repeats. An attacker dials p 300 times, one
/// link after another (at most 50 a second, under the handshake flood threshold), each time
/// naming a distinct made-up root older than the last (a new address, a smaller
/// `incarnation`, a key of its own signing the number and the certificate): each link is told
/// that the root's proof does not check and closed at that frame, and p logs each. A quiet
/// link to p hears p's place meanwhile: p takes none of the roots (every place it tells any
/// link names an honest root) nor the attacker as parent. p's threads come back near the
/// baseline and its memory stays within the baseline bound, no honest link is cut, p reports
/// none of the attacker's links dead, and honest gossip goes on.
#[test]
fn many_made_up_roots_each_cut_off_leave_memory_bounded() {
    const LINKS: u32 = 300;
    let (mut net, honest) = honest_network(config("", "", ""), 3);
    let (p, q) = (honest[0], honest[1]);
    let base = baseline(net.pid(p));
    let seeds = seed_names(&net);
    let names: BTreeSet<String> = honest.iter().map(|h| h.to_string()).collect();
    let mut ear = AttackLink::open(p, quiet(), Arc::new(AtomicU32::new(0)));
    let started = Instant::now();
    let mut attackers = BTreeSet::new();
    let mut slowest = Duration::ZERO;
    for n in 0..LINKS {
        let next = Instant::now() + Duration::from_millis(20);
        let root = format!("127.0.9.{}:{}", 1 + n / 50_000, 1_000 + n % 50_000);
        let made_up = MadeUpRoot::new(&root, 1_000_000 - u64::from(n), &seeds);
        let (me, told) = tell_once(p, |_| made_up.tree_root(1, 0));
        assert!(
            told.cut_for_the_proof_of(&root),
            "made-up root {n} ({root}): not cut off for its proof: {told:?}"
        );
        assert!(
            told.places
                .iter()
                .all(|pl| names.contains(&pl.root) && pl.flags & 1 == 0),
            "made-up root {n}: p told {:?}",
            told.places
        );
        slowest = slowest.max(told.closed_after.unwrap());
        attackers.insert(me.to_string());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let took = started.elapsed();
    let peak = proc_status(net.pid(p), "VmRSS");
    wait_until("every cut is logged as rejected", || {
        of(&net.events("peer", p), "rejected")
            .iter()
            .filter(|e| {
                e["remote"].as_str().is_some_and(|r| attackers.contains(r))
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with(FALSE_PROOF) && r.contains(DOES_NOT_CHECK))
            })
            .count()
            >= LINKS as usize
    });
    // Time for p to tell a late change, if it took any root.
    std::thread::sleep(Duration::from_secs(2));
    let seen = ear.close();
    eprintln!(
        "{LINKS} made-up roots told on as many links in {took:?}, each cut off at most {slowest:?} \
         after its frame; p told its quiet neighbour {} places, under {:?}; memory: baseline {} \
         KiB, after the roots {peak} KiB, now {} KiB",
        seen.tree_roots,
        seen.roots,
        base.rss_kib,
        proc_status(net.pid(p), "VmRSS"),
    );
    assert_eq!(seen.closed_after, None, "the quiet link was cut: {seen:?}");
    assert!(seen.rejects.is_empty(), "{seen:?}");
    assert!(
        seen.tree_roots > 0 && seen.roots.iter().all(|(r, _)| names.contains(r)),
        "p took a made-up root: {seen:?}"
    );
    assert_eq!(
        seen.named_parent, 0,
        "p named its quiet neighbour parent: {seen:?}"
    );
    let dead = reported_dead(&net, p);
    assert!(
        dead.is_disjoint(&attackers),
        "p reported links it cut off as dead: {dead:?}"
    );
    assert_eq!(honest_cuts(&net, &honest), vec![]);
    still_healthy(&mut net, p, &base, p, q);
}

// ---------------------------------------------------------------------------------------------
// Proofs that cannot be checked: a certificate signed by a seed whose key the receiver has not
// seen, and a place naming the receiver itself under an older incarnation.
// ---------------------------------------------------------------------------------------------

/// A connection to the seed `seed` that completed the handshake in the peer role, claiming
/// `claimed` and `incarnation`, under `key`; the seed's key must be `seed_key` (its `Challenge`
/// and its `Welcome` show it).
fn peer_handshake(
    seed: SocketAddr,
    seed_key: &VerifyingKey,
    claimed: &str,
    incarnation: u64,
    key: &SigningKey,
) -> Dial {
    let d = dial(seed);
    assert_eq!(
        &d.ch.acceptor_key,
        seed_key.as_bytes(),
        "{seed} shows another key"
    );
    welcomed_on(d, ROLE_PEER, claimed, incarnation, key)
}

/// A member of the attacker's own (an address it listens on, `incarnation`, `key`) registered
/// with every running seed of `net` at once, as "Joining" says (`Register`, the seeds' dial-back
/// answered as `key`'s holder): the seeds' signatures its `Registered` frames carry (`n: u8`,
/// `n` × (`seed: addr`, `sig`)), each checked here under that seed's key as `seeds.yaml` lists
/// it. The member then leaves (`Leave`), and once every seed has removed it the listener goes:
/// the signatures stay good, and no honest peer is ever given the member to dial.
fn registered_member(
    net: &Net,
    key: &SigningKey,
    incarnation: u64,
) -> (String, BTreeMap<String, [u8; 64]>) {
    let dial_back = DialBack::start(addr(free_port()), key.clone());
    let me = dial_back.at.to_string();
    let (mut links, signatures) = register(net, &me, key, incarnation);
    for d in &mut links {
        d.conn.send(&[&[0x16]]);
    }
    wait_until("every seed removed the attacker's member", || {
        net.seeds.iter().all(|&seed| {
            of(&net.events("seed", seed), "removed")
                .iter()
                .any(|e| e["peer"] == me)
        })
    });
    drop(links);
    drop(dial_back);
    (me, signatures)
}

/// Registers the member `me` (an address the caller listens on, answering the seeds' dial-back
/// as `key`'s holder), `incarnation`, `key` with every running seed of `net` at once, as
/// "Joining" says (`Register` on a link in the peer role): the registration links, still open
/// (the registration lives while one is), and the seeds' signatures the `Registered` frames
/// carry, each checked here under that seed's key as `seeds.yaml` lists it.
fn register(
    net: &Net,
    me: &str,
    key: &SigningKey,
    incarnation: u64,
) -> (Vec<Dial>, BTreeMap<String, [u8; 64]>) {
    let keys = seed_keys(net);
    let mut links: Vec<_> = net
        .seeds
        .iter()
        .map(|&seed| {
            let mut d = peer_handshake(seed, &keys[&seed.to_string()], me, incarnation, key);
            assert!(d.conn.send(&[&[0x10]]), "write failed");
            (seed, d)
        })
        .collect();
    let change = change_message(me, incarnation, &key.verifying_key().to_bytes());
    let mut signatures = BTreeMap::new();
    for (seed, d) in &mut links {
        let deadline = Instant::now() + PATIENCE;
        let registered = loop {
            let body = d
                .conn
                .next_by(deadline)
                .unwrap_or_else(|| panic!("{seed} did not answer the Register"));
            match body.first() {
                Some(0x11) => break body,
                Some(0x04) => panic!("{seed} refused the Register: {:?}", text_of(&body)),
                _ => {}
            }
        };
        let (registered_incarnation, cert) =
            parse_registered(&registered).unwrap_or_else(|| panic!("{seed}: {registered:?}"));
        assert_eq!(
            registered_incarnation, incarnation,
            "{seed}: {registered:?}"
        );
        for (by, sig) in cert {
            keys[&by]
                .verify_strict(&change, &Signature::from_bytes(&sig))
                .unwrap_or_else(|e| panic!("{by}'s signature of the registration: {e}"));
            signatures.insert(by, sig);
        }
    }
    (links.into_iter().map(|(_, d)| d).collect(), signatures)
}

/// A root of the attacker's own whose certificate is `cert` as given (`seed: addr`, `sig` pairs,
/// some real), each number signed by the root's own `key`, as a real root signs its own.
struct CertifiedRoot {
    root: String,
    incarnation: u64,
    key: SigningKey,
    cert: Vec<(String, [u8; 64])>,
}

impl CertifiedRoot {
    /// Number `seq` with a fresh chain (see `signed_number`): its bytes and `v0`.
    fn number(&self, seq: u32) -> (Vec<u8>, [u8; 32]) {
        let key = self.key.verifying_key().to_bytes();
        signed_number(
            &self.root,
            self.incarnation,
            &key,
            &self.cert,
            seq,
            &self.key,
        )
    }

    /// Number `seq` with a fresh chain, told as the root itself would: `dist` 0, `value` = `v0`.
    fn tree_root(&self, seq: u32, flags: u8) -> Vec<u8> {
        let (n, v0) = self.number(seq);
        tree_root(&n, 0, &v0, flags)
    }
}

/// `flags` of a `TreeRoot` ("bit 0: the receiver is the sender's parent").
const NAMES_PARENT: u8 = 1;

/// PROTOCOL.md, "Proofs": a `TreeRoot` that cannot be checked "is taken as *no route* from its
/// sender (`dist` 32, no `seq`, no request), though whether it names the receiver parent still
/// counts, and the link stays". An attacker's neighbour link to `target` tells it, every
/// 500 ms, a new number of the root `lied` that cannot be checked (`say(seq, flags)`, `dist` 0),
/// in three phases:
///
/// 1. Flag bit 0 clear. The root is older than every honest one: were it taken, `target`
///    would hang from it through the attacker, and tell the link so at once (its place
///    changed). While `target` sends the link four more liveness requests (one a
///    `liveness.interval`, 1 s: some refreshes of 2 s), the link is neither told a `Reject` nor
///    closed; every place `target` tells it names the honest root `honest`, and never the
///    attacker its parent; it pushes the link no item whole (off the backbone: ids only), and
///    the link is `target`'s neighbour with no `rejected` logged for it.
/// 2. Flag bit 0 set (the attacker names `target` its parent): that still counts, so the link
///    is `target`'s child, on the backbone: `target` pushes it items whole. Still no `Reject`,
///    no close, no place naming `lied`.
/// 3. Flag bit 0 clear again: the child left, and `target` releases it ("Release", bit 2).
///
/// Meanwhile every honest peer's ear (`ears`) hears only `honest`, and none is cut off.
fn an_uncheckable_place_is_no_route(
    net: &Net,
    target: SocketAddr,
    ears: &[AttackLink],
    honest: &(String, u64),
    lied: &(String, u64),
    say: impl Fn(u32, u8) -> Vec<u8> + Send + Sync + 'static,
) {
    let flags = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let said = {
        let flags = flags.clone();
        lie(
            Duration::from_millis(500),
            1,
            240,
            Duration::from_secs(120),
            move |n, seen| {
                // Once `target` told its place (so the first place heard is the honest one).
                seen.last_root.as_ref()?;
                Some(say(n + 1, flags.load(Ordering::Relaxed)))
            },
        )
    };
    let mut link = AttackLink::open(target, said, Arc::new(AtomicU32::new(0)));
    let me = link.me.to_string();
    let still_up = |s: &Seen, phase: &str| {
        assert!(
            s.closed_after.is_none() && s.rejects.is_empty(),
            "{phase}: {target} cut off the neighbour telling a place it cannot check (it is no \
             route, and the link stays): {s:?}"
        );
    };
    let never_lie = |s: &Seen, phase: &str| {
        assert!(
            !s.roots.contains(lied),
            "{phase}: {target} took the root {lied:?}, whose proof it cannot check: {:?}",
            s.places
        );
        assert_eq!(
            s.named_parent, 0,
            "{phase}: {target} named the attacker its parent: {:?}",
            s.places
        );
    };

    // 1. No route: the lie is not taken, the link stays.
    wait_within("the lie is told", Duration::from_secs(30), || {
        let s = link.seen();
        s.sent > 0 || s.closed_after.is_some()
    });
    let at_lie = link.seen();
    wait_within(
        "target goes on talking to the link: four more liveness requests",
        PATIENCE,
        || {
            let s = link.seen();
            s.closed_after.is_some()
                || !s.rejects.is_empty()
                || s.roots.contains(lied)
                || s.named_parent > 0
                || s.liveness_answered >= at_lie.liveness_answered + 4
        },
    );
    let s = link.seen();
    eprintln!(
        "phase 1: {} lies told; {target} told the link {} places ({} since the first lie), under \
         {:?}, and sent it {} liveness requests ({} since the first lie)",
        s.sent,
        s.tree_roots,
        s.tree_roots - at_lie.tree_roots,
        s.roots,
        s.liveness_answered,
        s.liveness_answered - at_lie.liveness_answered
    );
    still_up(&s, "no parent named");
    never_lie(&s, "no parent named");
    let last = s.last_root.as_ref().unwrap();
    assert_eq!(
        (&last.root, last.incarnation),
        (&honest.0, honest.1),
        "{target} left the honest root"
    );
    assert!(
        s.places
            .iter()
            .all(|p| (&p.root, p.incarnation) == (&honest.0, honest.1)),
        "{target} told a place under another root than the honest one: {:?}",
        s.places
    );
    assert_eq!(
        s.gossip, 0,
        "{target} pushed items whole to a neighbour off its backbone: {s:?}"
    );
    assert!(
        neighbours(&net.events("peer", target)).contains(&me),
        "{target} does not count the link as a neighbour"
    );

    // 2. The parent flag still counts: a child, pushed items whole.
    flags.store(NAMES_PARENT, Ordering::Relaxed);
    wait_within("target pushes its new child items whole", PATIENCE, || {
        let s = link.seen();
        s.closed_after.is_some() || !s.rejects.is_empty() || s.gossip > 0
    });
    let s = link.seen();
    eprintln!(
        "phase 2: {} lies told; {target} pushed the link {} items",
        s.sent, s.gossip
    );
    still_up(&s, "naming target parent");
    never_lie(&s, "naming target parent");
    assert!(s.gossip > 0, "{target} pushed its child nothing: {s:?}");

    // 3. The child leaves: released.
    let pushed = s.gossip;
    flags.store(0, Ordering::Relaxed);
    wait_within("target releases its former child", PATIENCE, || {
        let s = link.seen();
        s.closed_after.is_some() || !s.rejects.is_empty() || s.released > 0
    });
    let s = link.seen();
    still_up(&s, "leaving target");
    never_lie(&s, "leaving target");
    assert_eq!(s.released, 1, "{s:?}");
    eprintln!(
        "phase 3: {} lies told in all; {target} released the link after {pushed} items pushed",
        s.sent
    );

    let s = link.close();
    assert!(s.rejects.is_empty(), "{s:?}");
    assert!(
        !of(&net.events("peer", target), "rejected")
            .iter()
            .any(|e| e["remote"] == me),
        "{target} logged the link as rejected"
    );
    for e in ears {
        let s = e.seen();
        let last = s.last_root.as_ref().unwrap();
        assert!(
            s.closed_after.is_none()
                && s.rejects.is_empty()
                && !s.roots.contains(lied)
                && (&last.root, last.incarnation) == (&honest.0, honest.1),
            "an honest peer's ear heard: {s:?}"
        );
    }
}

/// Two running seeds listed with their keys and a third, `keyless`, listed by address only
/// (`"ip:port"`, "Seed keys") and never started: no node ever sees its key. A majority is two,
/// so the two running seeds register peers alone ("Joining", step 1: a seed that cannot be
/// reached is replaced by one not yet used).
fn two_seeds_and_a_keyless_one_never_started() -> (Net, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let seeds = vec![addr(free_port()), addr(free_port())];
    let keyless = addr(free_port());
    let mut entries = keyed_seed_entries(dir.path(), &seeds);
    entries.push(format!("\"{keyless}\""));
    let config = dir.path().join("seeds.yaml");
    std::fs::write(&config, fast_config(&entries, &config_rooted())).unwrap();
    (
        Net {
            dir,
            config,
            seeds,
            nodes: Vec::new(),
        },
        keyless,
    )
}

fn config_rooted() -> String {
    config("", "", "")
}

/// PROTOCOL.md, "Proofs": "A certificate signed by configured seeds whose keys the receiver has
/// not seen yet […] cannot be checked: it is taken as *no route* from its sender (`dist` 32, no
/// `seq`, no request), though whether it names the receiver parent still counts, and the link
/// stays." Three seeds are configured (majority two): two running, listed with their keys, and
/// one listed without a key and never started. Before any honest peer starts, the attacker
/// registers a member of its own with both running seeds, under an incarnation a minute old
/// (within the seeds' 10 minutes, and older than every honest peer's), and keeps the first
/// running seed's real signature of it; then it leaves. Three honest peers
/// join and settle under one root. On a neighbour link to one of them that is not the root
/// (it hangs from the honest root through a neighbour), the attacker tells,
/// as the root itself would (`dist` 0, its own key signing each number), a certificate of the
/// real signature and a junk one attributed to the keyless seed: uncheckable, so no route, the
/// link stays, the parent flag counts (see `an_uncheckable_place_is_no_route`). The same frame
/// with the junk attributed to the second running seed, whose key every peer has, is a false
/// proof: `Reject` naming the root, and the link is closed. Honest gossip still reaches the
/// target.
#[test]
fn a_root_certified_by_a_seed_whose_key_is_unknown_is_no_route_and_the_link_stays() {
    let (mut net, keyless) = two_seeds_and_a_keyless_one_never_started();
    net.start_seeds();
    let key = SigningKey::from_bytes(&rand::random());
    let incarnation = unix_ms() - 60_000;
    let (root, signatures) = registered_member(&net, &key, incarnation);
    let (a, b) = (net.seeds[0].to_string(), net.seeds[1].to_string());
    let real = *signatures
        .get(&a)
        .unwrap_or_else(|| panic!("{a} did not sign the registration: {signatures:?}"));
    for _ in 0..3 {
        net.start_peer();
    }
    let honest = net.peers();
    wait_until("the honest peers' overlay is connected", || {
        overlay_connected(&net, &honest)
    });
    let (mut ears, honest_root) = ears(&honest);
    // A peer that is not the root: it hangs from the honest root through a neighbour.
    let t = honest
        .iter()
        .position(|h| h.to_string() != honest_root)
        .unwrap();
    let target = honest[t];
    let place = ears[t].seen().last_root.unwrap();
    assert!(
        (1..UNREACHABLE).contains(&place.dist),
        "{target}, not the root, told {place:?}"
    );
    let honest_place = (place.root.clone(), place.incarnation);
    assert!(
        incarnation < place.incarnation,
        "the attacker's root is not older than the honest one: {place:?}"
    );
    eprintln!(
        "seeds {a}, {b} (keys listed, running) and {keyless} (no key, never started); the \
         attacker's root {root} #{incarnation}; the honest root {honest_root}; target {target}"
    );
    let base = baseline(net.pid(target));
    // Junk: a well-formed signature of the registration, by a key of the attacker's (no seed's).
    let junk = SigningKey::from_bytes(&rand::random())
        .sign(&change_message(
            &root,
            incarnation,
            &key.verifying_key().to_bytes(),
        ))
        .to_bytes();
    let uncheckable = CertifiedRoot {
        root: root.clone(),
        incarnation,
        key: key.clone(),
        cert: vec![(a.clone(), real), (keyless.to_string(), junk)],
    };
    an_uncheckable_place_is_no_route(
        &net,
        target,
        &ears,
        &honest_place,
        &(root.clone(), incarnation),
        move |seq, flags| uncheckable.tree_root(seq, flags),
    );
    // The contrast: the junk signature attributed to a seed whose key the target has is false.
    let false_proof = CertifiedRoot {
        root: root.clone(),
        incarnation,
        key,
        cert: vec![(a, real), (b, junk)],
    };
    let (_, told) = tell_once(target, |_| false_proof.tree_root(1, 0));
    eprintln!("the junk signature attributed to a keyed seed: {told:?}");
    cut_off_and_still_healthy(&mut net, &told, &root, &mut ears, &honest, t, &base);
}

/// PROTOCOL.md, "Proofs": "a `TreeRoot` naming the receiver itself under an older incarnation,
/// cannot be checked: it is taken as *no route* from its sender […] though whether it names
/// the receiver parent still counts, and the link stays"; "One naming the receiver itself
/// under its current incarnation is checked as any other." The target is the honest root
/// (its own place, which names it with its current incarnation, is what its neighbours hear).
/// The attacker tells it, on a neighbour link, a number naming the target's address under its
/// incarnation minus one (older than every root), `dist` 0, with a key, a certificate
/// (naming the network's seed, signed by that key: no seed signed it), an anchor and a value
/// of its own: no route, the link stays, the parent flag counts (see
/// `an_uncheckable_place_is_no_route`); the target stays the root under its current
/// incarnation. The same junk under the target's current incarnation is checked: `Reject`
/// naming the target's address as the root, and the link is closed. Honest gossip still
/// reaches the target.
#[test]
fn a_place_naming_the_receiver_under_an_older_incarnation_is_no_route_and_the_link_stays() {
    let (mut net, honest) = honest_network(config_rooted(), 3);
    let (mut ears, root) = ears(&honest);
    let t = honest
        .iter()
        .position(|h| h.to_string() == root)
        .expect("the root is an honest peer");
    let target = honest[t];
    let place = ears[t].seen().last_root.unwrap();
    assert_eq!(place.dist, 0, "the root told {place:?}");
    let current = place.incarnation;
    eprintln!("target {target}, the root, under incarnation {current}");
    let base = baseline(net.pid(target));
    let older = MadeUpRoot::new(&root, current - 1, &seed_names(&net));
    an_uncheckable_place_is_no_route(
        &net,
        target,
        &ears,
        &(root.clone(), current),
        &(root.clone(), current - 1),
        move |seq, flags| older.tree_root(seq, flags),
    );
    // The contrast: under its current incarnation, the junk is checked, and false.
    let now = MadeUpRoot::new(&root, current, &seed_names(&net));
    let (_, told) = tell_once(target, |_| now.tree_root(1, 0));
    eprintln!("the junk under the current incarnation: {told:?}");
    cut_off_and_still_healthy(&mut net, &told, &root, &mut ears, &honest, t, &base);
}

/// The end of a "cannot be checked" test: the contrast frame (`told`) was a false proof of
/// `root`, so the link was cut off with the reason; the attacker's other links go, and the
/// target (`honest[t]`) is back near its baseline and still gets gossip from another peer.
fn cut_off_and_still_healthy(
    net: &mut Net,
    told: &Told,
    root: &str,
    ears: &mut [AttackLink],
    honest: &[SocketAddr],
    t: usize,
    base: &Baseline,
) {
    assert!(
        told.cut_for_the_proof_of(root),
        "not told that the proof of {root} does not check before the close: {told:?}"
    );
    for e in ears.iter_mut() {
        e.close();
    }
    let target = honest[t];
    let other = honest[(t + 1) % honest.len()];
    still_healthy(net, target, base, other, target);
}

// ---------------------------------------------------------------------------------------------
// Delivery: a parent that passes nothing on is left.
// ---------------------------------------------------------------------------------------------

/// Starts a peer, as `Net::start_peer` does, but with a config of its own: the network's
/// (`net.config`) and a `peer:` section whose inside is `peer`. Returns once it has its peer
/// list; the node is `net`'s, so it is killed with the others.
fn start_peer_configured(net: &mut Net, peer: &str) -> SocketAddr {
    let a = addr(free_port());
    let dir = net.dir.path().to_path_buf();
    let config = dir.join(format!("seeds-{}.yaml", a.port()));
    let base = std::fs::read_to_string(&net.config).unwrap();
    std::fs::write(&config, format!("{base}\npeer: {{ {peer} }}\n")).unwrap();
    let stderr = std::fs::File::create(dir.join(format!("peer-{}.stderr", a.port()))).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_peer"))
        .arg("--addr")
        .arg(a.to_string())
        .arg("--config")
        .arg(&config)
        .arg("--out-dir")
        .arg(net.out_dir())
        .arg("-v")
        .arg("--log-file")
        .arg(dir.join(format!("peer-{}.log", a.port())))
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    net.nodes.push(Node {
        addr: a,
        role: "peer",
        child,
        stopped: false,
    });
    net.wait_for_event("peer", a, "peer_list");
    a
}

/// Links from `from` to every peer of `peers` in the neighbour graph among them (from their own
/// events): `None` for a peer not reached.
fn overlay_hops(net: &Net, peers: &[SocketAddr], from: SocketAddr) -> Vec<Option<usize>> {
    let names: BTreeSet<String> = peers.iter().map(|p| p.to_string()).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = peers
        .iter()
        .map(|p| (p.to_string(), neighbours(&net.events("peer", *p))))
        .collect();
    let mut hops: BTreeMap<String, usize> = BTreeMap::from([(from.to_string(), 0)]);
    let mut queue = std::collections::VecDeque::from([from.to_string()]);
    while let Some(p) = queue.pop_front() {
        let d = hops[&p];
        for n in graph.get(&p).into_iter().flatten() {
            if names.contains(n) && !hops.contains_key(n) {
                hops.insert(n.clone(), d + 1);
                queue.push_back(n.clone());
            }
        }
    }
    peers
        .iter()
        .map(|p| hops.get(&p.to_string()).copied())
        .collect()
}

/// The honest neighbours of `p` among `peers` (from its own events).
fn honest_neighbours(net: &Net, p: SocketAddr, peers: &[SocketAddr]) -> BTreeSet<String> {
    let names: BTreeSet<String> = peers.iter().map(|p| p.to_string()).collect();
    neighbours(&net.events("peer", p))
        .intersection(&names)
        .cloned()
        .collect()
}

/// PROTOCOL.md, Rooted mode, "Delivery": "A parent is judged by what it delivers, not by its
/// place alone. Each item new to the peer that its parent pushed first counts for the parent;
/// each wake-up that grafts announced ids from neighbours off the backbone […] counts against
/// it […]. Every 16 counts since the parent was chosen, a parent with more against it than for
/// it, whose grafts went to at least two neighbours […], is *left*: it is no candidate for 30
/// refreshes (60 s by default)"; "one that keeps its place but passes nothing on […] loses
/// every count, and its children leave it within 16 grafting wake-ups".
///
/// The shape (each peer with a `peer:` section of its own, "Joining", step 4: a peer refuses
/// links others open past `peer.max_inbound`, and the refused dialer repairs): the root R (the
/// oldest) takes two links others open, the attacker's (opened first) and x1's; x1, x2, x3
/// dial one neighbour each, x1 and x3 take one link, x2 two: the path R – x1 – x2 – x3. The
/// target T, last, dials two, and only x2 and x3 take links: T is three links from R, hangs
/// from x2, and has two honest neighbours (x2 at 2, x3 at 3) that do not name it parent.
///
/// The attacker becomes T's parent legitimately. On its link to R it hears R's numbers at
/// `dist` 0 with their `v0`, and names R its parent once, as an honest child of R would (so
/// R's refreshes come down to it). On its link to T, once T told it its place, it tells T each
/// new number of R's as soon as it hears it, at `dist` 1 with H(`v0`): exactly what an honest
/// child of R says, a place that checks ("Proofs"), one link shorter than x2's, so T takes it
/// as parent ("Choice": fewest links). It answers liveness requests, but never forwards an
/// item and never announces an id. So T gets the other peers' items only by grafting the ids
/// x2 and x3, now both off its backbone, announce.
///
/// Asserted: T names the attacker parent (flag bit 0 of its `TreeRoot` to it), at `dist` 2;
/// within 60 s it tells the link a place that no longer names it parent; for the next five
/// refreshes (five newer numbers offered on that same short route) T never names it parent
/// again, and never leaves R's tree; every item every honest peer generates after that reaches
/// every honest peer, T included; the attacker's links are never told a `Reject` nor closed, T
/// logs nothing `rejected` for its link, keeps it as a neighbour and does not report it dead:
/// leaving a parent is not cutting it off. The log line T writes when it leaves (a warning
/// with "left for") is printed if there is one, not asserted.
#[test]
fn a_parent_that_passes_nothing_on_is_left() {
    let mut net = Net::new(1, &config_rooted());
    net.start_seeds();
    let r = start_peer_configured(&mut net, "max_neighbours: 1, max_inbound: 2");

    // The attacker's link to the root: it names R its parent once, as R's child would.
    let named_root = Arc::new(AtomicBool::new(false));
    let to_root = {
        let named_root = named_root.clone();
        lie(
            Duration::from_millis(100),
            1,
            1,
            4 * PATIENCE,
            move |_, seen| {
                let heard = seen.last_root.as_ref()?;
                (heard.dist == 0 && !named_root.swap(true, Ordering::Relaxed))
                    .then(|| heard.below(NAMES_PARENT))
            },
        )
    };
    let mut root_link = AttackLink::open(r, to_root, Arc::new(AtomicU32::new(0)));
    wait_within("R takes the attacker's link", PATIENCE, || {
        neighbours(&net.events("peer", r)).contains(&root_link.me.to_string())
    });
    let mut honest = vec![r];
    for inbound in [1, 2, 1] {
        let x = start_peer_configured(
            &mut net,
            &format!("max_neighbours: 1, max_inbound: {inbound}"),
        );
        honest.push(x);
        wait_until(&format!("{x} is linked to the peers before it"), || {
            overlay_connected(&net, &honest)
        });
    }
    let target = start_peer_configured(&mut net, "max_neighbours: 2, max_inbound: 1");
    honest.push(target);
    let (x2, x3) = (honest[2].to_string(), honest[3].to_string());
    wait_until("the target is linked to x2 and x3", || {
        honest_neighbours(&net, target, &honest) == BTreeSet::from([x2.clone(), x3.clone()])
    });
    let hops = overlay_hops(&net, &honest, r);
    let graph: Vec<BTreeSet<String>> = honest
        .iter()
        .map(|&p| honest_neighbours(&net, p, &honest))
        .collect();
    eprintln!("honest peers {honest:?}: links from R {hops:?}, neighbours {graph:?}");
    assert_eq!(
        hops,
        [Some(0), Some(1), Some(2), Some(3), Some(3)],
        "not the shape the configs make (R – x1 – x2 – x3, T linked to x2 and x3): {graph:?}"
    );

    let r_place = root_link.seen().last_root.unwrap();
    assert!(
        r_place.root == r.to_string() && r_place.dist == 0,
        "the first peer started, {r}, is not the root: it told {r_place:?}"
    );
    let root = (r_place.root.clone(), r_place.incarnation);

    // The attacker's link to the target: silent until T told it its own place, then each newer
    // number of R's as soon as heard, one link from R, flags 0.
    let from_root = root_link.ear();
    let go = Arc::new(AtomicBool::new(false));
    let told_seq = Arc::new(Mutex::new(None::<u32>));
    let to_target = {
        let (go, told_seq) = (go.clone(), told_seq.clone());
        lie(
            Duration::from_millis(100),
            1,
            10_000,
            4 * PATIENCE,
            move |_, _| {
                if !go.load(Ordering::Relaxed) {
                    return None;
                }
                let heard = from_root.lock().unwrap().last_root.clone()?;
                let mut told = told_seq.lock().unwrap();
                if heard.dist != 0 || told.is_some_and(|s| s >= heard.seq) {
                    return None;
                }
                *told = Some(heard.seq);
                Some(heard.below(0))
            },
        )
    };
    let mut link = AttackLink::open(target, to_target, Arc::new(AtomicU32::new(0)));
    let me = link.me.to_string();
    wait_within(
        "the target tells the attacker its place, three links from R",
        PATIENCE,
        || {
            let s = link.seen();
            s.closed_after.is_some()
                || s.last_root
                    .is_some_and(|p| (p.root.clone(), p.incarnation) == root && p.dist == 3)
        },
    );
    let before = link.seen().last_root.unwrap();
    eprintln!(
        "target {target} told {before:?}; the attacker is {me} on its link to T, {} on its link \
         to R",
        root_link.me
    );
    assert_eq!(before.dist, 3, "{before:?}");

    // 1. T takes the attacker as parent: one link shorter than x2.
    go.store(true, Ordering::Relaxed);
    let offered_at = Instant::now();
    wait_within(
        "the target names the attacker parent",
        Duration::from_secs(60),
        || {
            let s = link.seen();
            s.closed_after.is_some() || !s.rejects.is_empty() || s.named_parent > 0
        },
    );
    let s = link.seen();
    assert!(
        s.closed_after.is_none() && s.rejects.is_empty(),
        "the target cut off a neighbour offering a place that checks: {s:?}"
    );
    let chosen_at = Instant::now();
    let chose = s
        .places
        .iter()
        .position(|p| p.flags & NAMES_PARENT != 0)
        .unwrap();
    eprintln!(
        "the target took the attacker as parent {:?} after the first offer ({} offers): {:?}",
        chosen_at - offered_at,
        s.sent,
        s.places[chose]
    );
    assert_eq!(
        s.places[chose].dist, 2,
        "as the attacker's child the target is two links from R: {:?}",
        s.places[chose]
    );

    // 2. It leaves it: a place that no longer names it parent.
    wait_within(
        "the target leaves the parent that passes nothing on",
        Duration::from_secs(60),
        || {
            let s = link.seen();
            s.closed_after.is_some()
                || !s.rejects.is_empty()
                || s.last_root
                    .as_ref()
                    .is_some_and(|p| p.flags & NAMES_PARENT == 0)
        },
    );
    let s = link.seen();
    assert!(
        s.closed_after.is_none() && s.rejects.is_empty(),
        "the target cut the parent off instead of leaving it: {s:?}"
    );
    let left_at = Instant::now();
    let left = s.places.len() - 1;
    let sent_at_leave = s.sent;
    eprintln!(
        "the target left the attacker {:?} after taking it ({} places told meanwhile, {} items \
         pushed to it): {:?}",
        left_at - chosen_at,
        left - chose,
        s.gossip,
        s.places[left]
    );
    let log = std::fs::read_to_string(net.dir.path().join(format!("peer-{}.log", target.port())))
        .unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("left for")) {
        eprintln!("target's log: {line}");
    }
    // README, "Output files": the target writes a `parent_left` record naming the attacker.
    wait_within("a parent_left record naming the attacker", PATIENCE, || {
        net.events("peer", target).iter().any(|e| {
            e["event"] == "parent_left"
                && e["parent"] == me.as_str()
                && e["for_s"].as_u64() >= Some(60)
        })
    });

    // 3. For five refreshes, while the attacker offers the same route with each newer number,
    //    the target does not take it again.
    wait_within(
        "five newer numbers offered since the leave, or the target takes the attacker again",
        Duration::from_secs(45),
        || {
            let s = link.seen();
            s.closed_after.is_some()
                || s.places[left + 1..]
                    .iter()
                    .any(|p| p.flags & NAMES_PARENT != 0)
                || s.sent >= sent_at_leave + 5
        },
    );
    let s = link.seen();
    let since: Vec<&Place> = s.places[left + 1..].iter().collect();
    eprintln!(
        "{:?} after the leave: {} newer numbers offered, the target told {} places: {since:?}",
        left_at.elapsed(),
        s.sent - sent_at_leave,
        since.len()
    );
    assert!(
        since.iter().all(|p| p.flags & NAMES_PARENT == 0),
        "the target took the parent it left again within {:?} (no candidate for 30 refreshes): \
         {since:?}",
        left_at.elapsed()
    );
    assert!(
        s.sent >= sent_at_leave + 5,
        "the attacker offered only {} newer numbers in {:?} after the leave",
        s.sent - sent_at_leave,
        left_at.elapsed()
    );
    assert!(
        s.places[chose..]
            .iter()
            .all(|p| (p.root.clone(), p.incarnation) == root),
        "the target left R's tree: {:?}",
        &s.places[chose..]
    );
    assert!(
        left_at.elapsed() < Duration::from_secs(60),
        "the window ran past the time a left parent is no candidate"
    );

    // 4. The target keeps receiving every honest peer's items.
    let (items, origins, by_sync) = all_delivered(&net, &honest, Duration::from_secs(3));
    eprintln!(
        "after the leave: {items} items from {origins} peers delivered to every honest peer, \
         {by_sync} deliveries by catch-up"
    );

    // 5. Leaving is not cutting off.
    for (l, what) in [(&link, "target"), (&root_link, "root")] {
        let s = l.seen();
        assert!(
            s.closed_after.is_none() && s.rejects.is_empty(),
            "the attacker's link to the {what} was cut: {s:?}"
        );
    }
    let evs = net.events("peer", target);
    assert!(
        neighbours(&evs).contains(&me),
        "the target does not count the link to the parent it left as a neighbour"
    );
    assert!(
        !of(&evs, "rejected").iter().any(|e| e["remote"] == me),
        "the target logged the parent it left as rejected"
    );
    let dead = reported_dead(&net, target);
    assert!(
        !dead.contains(&me),
        "the target reported the parent it left dead: {dead:?}"
    );
    assert!(
        named_root.load(Ordering::Relaxed),
        "the attacker never told R its place"
    );
    link.close();
    root_link.close();
}

// ---------------------------------------------------------------------------------------------
// Delivery: a root that passes nothing on is replaced.
// ---------------------------------------------------------------------------------------------

/// `gossip.graft_timeout` of the network a root is replaced in, and its refresh ("Place": a
/// root sends a new `seq` every 20 × `gossip.graft_timeout`).
const GRAFT_TIMEOUT_MS: u64 = 50;
const REFRESH: Duration = Duration::from_millis(20 * GRAFT_TIMEOUT_MS);
/// `flags` of a `TreeRoot`: "bit 1: the sender asks for a newer `seq`; bit 2: the sender
/// releases the receiver".
const ASKS: u8 = 2;
const RELEASES: u8 = 4;

/// The attacker's numbers as a root: the current one (its bytes and `v0`), its `seq`, and when
/// it was made.
struct Numbers {
    root: CertifiedRoot,
    seq: u32,
    number: Vec<u8>,
    v0: [u8; 32],
    made: Instant,
}

impl Numbers {
    fn new(root: CertifiedRoot) -> Numbers {
        let (number, v0) = root.number(1);
        Numbers {
            root,
            seq: 1,
            number,
            v0,
            made: Instant::now(),
        }
    }

    /// The next `seq`, with a chain of its own ("for each number the root draws a secret
    /// 32-byte start").
    fn next(&mut self) {
        self.seq += 1;
        (self.number, self.v0) = self.root.number(self.seq);
        self.made = Instant::now();
    }

    /// The current number told as the root tells it: `dist` 0, `value` = `v0`.
    fn told(&self, flags: u8) -> Vec<u8> {
        tree_root(&self.number, 0, &self.v0, flags)
    }
}

/// How the attacker's member tells a neighbour its place, once `numbers` are set: as a root
/// would ("Place", "Unreachable", "Release"). A new `seq` every refresh (made by whichever
/// link's turn comes first), and at once, at most every refresh / 10, when the neighbour's last
/// place asks for one (flag bit 1); each `seq` told to the neighbour once, at `dist` 0 with no
/// parent named; and a neighbour whose last place no longer names it parent, after one that
/// did, is released (flag bit 2: nothing queued for it went unsent, nothing being queued).
fn as_root(numbers: Arc<std::sync::OnceLock<Mutex<Numbers>>>) -> Lie {
    // This link's: the `seq` last told, whether the neighbour names us parent, and how many of
    // its places were looked at for a request.
    let link = Mutex::new((None::<u32>, false, 0usize));
    lie(
        Duration::from_millis(50),
        2,
        usize::MAX,
        4 * PATIENCE,
        move |_, seen| {
            let mut numbers = numbers.get()?.lock().unwrap();
            let (told, child, looked) = &mut *link.lock().unwrap();
            let place = seen.last_root.as_ref();
            let asks = seen.tree_roots > *looked && place.is_some_and(|p| p.flags & ASKS != 0);
            *looked = seen.tree_roots;
            if numbers.made.elapsed() >= REFRESH || (asks && numbers.made.elapsed() >= REFRESH / 10)
            {
                numbers.next();
            }
            let names_us = place.is_some_and(|p| p.flags & NAMES_PARENT != 0);
            if *child && !names_us {
                *child = false;
                *told = Some(numbers.seq);
                return Some(numbers.told(RELEASES));
            }
            *child = names_us;
            if *told != Some(numbers.seq) {
                *told = Some(numbers.seq);
                return Some(numbers.told(0));
            }
            None
        },
    )
}

/// A registered member of the attacker's own, older than every honest peer, that keeps its
/// place as the root and passes nothing on. It listens at `me` and answers the seeds' dial-back
/// as its key's holder, registers with every seed under `incarnation` and keeps those links
/// (its registration lives, so honest peers are given it in their lists and dial it); every
/// neighbour link an honest peer opens to it is an `AttackLink` (in `links`): it answers
/// liveness requests and reads and drops everything else (items pushed to it, `Detour`s,
/// digests, announcements), never forwarding an item, announcing an id or answering a graft or
/// a digest. Once `go` is called it tells each neighbour its place as the root (`as_root`): its
/// own numbers, signed by its key, with the seeds' certificate of its registration.
struct DroppingRoot {
    me: SocketAddr,
    incarnation: u64,
    cert: Vec<(String, [u8; 64])>,
    key: SigningKey,
    numbers: Arc<std::sync::OnceLock<Mutex<Numbers>>>,
    links: Arc<Mutex<Vec<AttackLink>>>,
    /// Dropped last: the listener's thread, which holds the other handle on `links`, and the
    /// registration links.
    _dial_back: DialBack,
}

impl DroppingRoot {
    fn register(net: &Net, incarnation: u64) -> DroppingRoot {
        let key = SigningKey::from_bytes(&rand::random());
        let me = addr(free_port());
        let numbers = Arc::new(std::sync::OnceLock::new());
        let links = Arc::new(Mutex::new(Vec::new()));
        let dial_back = {
            let (numbers, links) = (numbers.clone(), links.clone());
            DialBack::start_serving(me, key.clone(), move |conn: Conn, hello: Hello| {
                let Ok(from) = hello.addr.parse::<SocketAddr>() else {
                    return;
                };
                let (s, frames) = conn.into_parts();
                let link = AttackLink::serve(
                    s,
                    frames,
                    me,
                    from,
                    as_root(numbers.clone()),
                    Arc::new(AtomicU32::new(0)),
                );
                links.lock().unwrap().push(link);
            })
        };
        let (registration, signatures) = register(net, &me.to_string(), &key, incarnation);
        dial_back
            .links
            .lock()
            .unwrap()
            .extend(registration.into_iter().map(|d| d.conn));
        DroppingRoot {
            me,
            incarnation,
            cert: signatures.into_iter().collect(),
            key,
            numbers,
            links,
            _dial_back: dial_back,
        }
    }

    /// From now on, the root's place on every link.
    fn go(&self) {
        let root = CertifiedRoot {
            root: self.me.to_string(),
            incarnation: self.incarnation,
            key: self.key.clone(),
            cert: self.cert.clone(),
        };
        assert!(self.numbers.set(Mutex::new(Numbers::new(root))).is_ok());
    }

    /// Each neighbour link: the honest peer at its other end and what the link saw.
    fn seen(&self) -> Vec<(SocketAddr, Seen)> {
        self.links
            .lock()
            .unwrap()
            .iter()
            .map(|l| (l.target, l.seen()))
            .collect()
    }
}

/// A peer's last `stats` record, if it wrote one after `since_ms`: the root its tree hangs from
/// and its distance from it (`tree_root`, `tree_dist`; README, output files).
fn tree_since(net: &Net, p: SocketAddr, since_ms: u64) -> Option<(String, u64)> {
    let evs = net.events("peer", p);
    let stats = evs.iter().rfind(|e| e["event"] == "stats")?;
    if stats["ts_ms"].as_u64()? <= since_ms {
        return None;
    }
    Some((
        stats["tree_root"].as_str()?.to_string(),
        stats["tree_dist"].as_u64()?,
    ))
}

/// The `parent_left` records of `p` naming `parent`.
fn left_records(net: &Net, p: SocketAddr, parent: &str) -> Vec<serde_json::Value> {
    of(&net.events("peer", p), "parent_left")
        .into_iter()
        .filter(|e| e["parent"] == parent)
        .cloned()
        .collect()
}

/// PROTOCOL.md, Rooted mode, "Delivery": "at `dist` 1 (the parent is the root itself), a new
/// item that a child sent as a `Detour` counts against the root […]. A root that passes nothing
/// on is left by its children within seconds of each other […]; once all have left it, no
/// neighbour offers any route to it, it is lost a refresh later (**Lost root**), and the tree
/// forms again under the next oldest root" (and a child that has not left it when the others
/// have may keep it a while: the others then hang below it); "Detours": an item
/// that reached a peer around its parent is pushed to the parent as `Detour` (0x2B).
///
/// One seed; before any honest peer starts, the attacker registers a member of its own under an
/// incarnation a minute old (within the seeds' 10 minutes, older than every honest peer's) and
/// stays registered (`DroppingRoot`): ten honest peers (`graft_timeout` 50 ms: a refresh is
/// 1 s) join and find it in their lists; the first four dial it (a list of four entries or
/// fewer is dialed whole, `peer.max_neighbours` being 4), so it has three honest neighbours or
/// more (asserted). Until the honest peers' tree has formed under the oldest of them, H0, the
/// attacker tells its neighbours nothing; then it tells each its place as the root and
/// refreshes it as a root does, answers liveness requests, and drops every item.
///
/// Asserted: every honest neighbour of the attacker takes it as parent (flag bit 0), then
/// leaves it, writing a `parent_left` record naming it (within seconds of each other in
/// most runs; about one run in 20 a child with no subtree of its own keeps it some 30 s
/// longer, as the document says, while every item goes around the root: the waits are the
/// harness's patience); the attacker is pushed `Detour`s by its children;
/// every honest peer's `stats` then name H0 as the root, at a distance below 32, and the
/// attacker's neighbours tell it places under H0 that do not name it parent; every item every
/// honest peer generates after that reaches every honest peer, while the attacker goes on
/// telling each neighbour newer numbers of its older root; and no honest peer cut the
/// attacker's links, logged them `rejected` or reported the attacker dead: dropping items is no
/// protocol violation, and leaving a parent is not cutting it off. (The attacker keeps offering
/// its numbers: 30 refreshes after leaving it, its neighbours may take it again, and leave it
/// again; the assertions come before that.)
#[test]
fn a_root_that_passes_nothing_on_is_replaced() {
    let mut net = Net::new(
        1,
        &(config(&format!("graft_timeout: {GRAFT_TIMEOUT_MS}ms"), "", "")
            + "\nstats: { interval: 1s }"),
    );
    net.start_seeds();
    let attacker = DroppingRoot::register(&net, unix_ms() - 60_000);
    let me = attacker.me.to_string();
    for _ in 0..10 {
        net.start_peer();
    }
    let honest = net.peers();
    let oldest = honest[0].to_string();
    let started = unix_ms();
    wait_until("the honest peers' overlay is connected", || {
        overlay_connected(&net, &honest)
    });
    wait_until(
        "the honest peers' tree hangs from the oldest of them",
        || {
            honest.iter().all(|&h| {
                tree_since(&net, h, started).is_some_and(|(root, dist)| root == oldest && dist < 32)
            })
        },
    );
    let neighbours_of_attacker: BTreeSet<SocketAddr> =
        attacker.seen().iter().map(|(h, _)| *h).collect();
    eprintln!(
        "the attacker {me} #{}; honest peers {honest:?} under {oldest}; the attacker's \
         neighbours {neighbours_of_attacker:?}",
        attacker.incarnation
    );
    assert!(
        neighbours_of_attacker.len() >= 3
            && neighbours_of_attacker.is_subset(&honest.iter().copied().collect()),
        "the attacker has {} honest neighbours: {neighbours_of_attacker:?}",
        neighbours_of_attacker.len()
    );

    // 1. The attacker takes its place as the root: every neighbour takes it as parent.
    attacker.go();
    let go = Instant::now();
    wait_until("every neighbour of the attacker names it parent", || {
        attacker
            .seen()
            .iter()
            .all(|(_, s)| s.named_parent > 0 || s.closed_after.is_some())
    });
    eprintln!(
        "every neighbour took the attacker as parent within {:?}",
        go.elapsed()
    );

    // 2. (a) Each of them leaves it: a `parent_left` record naming the attacker.
    wait_until("every neighbour of the attacker left it", || {
        attacker
            .seen()
            .iter()
            .all(|(h, s)| s.closed_after.is_some() || !left_records(&net, *h, &me).is_empty())
    });
    let all_left = go.elapsed();
    let mut last_left_ms = 0;
    for (h, _) in attacker.seen() {
        for e in left_records(&net, h, &me) {
            last_left_ms = last_left_ms.max(e["ts_ms"].as_u64().unwrap());
            eprintln!("{h}: {e}");
        }
    }
    eprintln!("every neighbour left the attacker within {all_left:?}");
    // Within seconds of each other, mostly; but a child with no subtree of its own (grafts
    // only, no detours) can keep the attacker while the others, having left, hang below it:
    // then no item goes around the root any more, and that child leaves only once the others
    // have taken the root again and left it again (docs/PROTOCOL.md, Delivery). Said, not
    // asserted: the bound below is the harness's patience.
    let firsts: Vec<u64> = attacker
        .seen()
        .iter()
        .filter_map(|(h, _)| left_records(&net, *h, &me).first()?["ts_ms"].as_u64())
        .collect();
    if let (Some(a), Some(b)) = (firsts.iter().min(), firsts.iter().max()) {
        eprintln!("the first leaves of the attacker spread over {} ms", b - a);
    }

    // 3. (b) The tree forms again under the next oldest peer, H0.
    wait_until(
        "every honest peer hangs from the oldest honest peer again",
        || {
            honest.iter().all(|&h| {
                tree_since(&net, h, last_left_ms)
                    .is_some_and(|(root, dist)| root == oldest && dist < 32)
            }) && attacker.seen().iter().all(|(_, s)| {
                s.last_root
                    .as_ref()
                    .is_some_and(|p| p.root == oldest && p.flags & NAMES_PARENT == 0)
            })
        },
    );
    let replaced = go.elapsed();
    let seen = attacker.seen();
    for (h, s) in &seen {
        eprintln!(
            "link from {h}: {} places ({} naming the attacker parent), {} items pushed, {} \
             detours ({} as its child), last {:?}",
            s.tree_roots, s.named_parent, s.gossip, s.detours, s.detours_as_parent, s.last_root
        );
    }
    eprintln!(
        "every honest peer hangs from {oldest} again {replaced:?} after the attacker's place"
    );
    let told_then: Vec<usize> = seen.iter().map(|(_, s)| s.sent).collect();

    // 4. Only detours explain it: the attacker's children pushed it items that reached them
    //    around it.
    let detours: usize = seen.iter().map(|(_, s)| s.detours_as_parent).sum();
    assert!(
        detours > 0,
        "no child of the attacker pushed it a Detour: {seen:?}"
    );

    // 5. (c) Every item generated from now on reaches every honest peer.
    let (items, origins, by_sync) = all_delivered(&net, &honest, Duration::from_secs(3));
    let told_seq = attacker.numbers.get().unwrap().lock().unwrap().seq;
    eprintln!(
        "after the replacement: {items} items from {origins} peers delivered to every honest \
         peer, {by_sync} deliveries by catch-up; the attacker is at seq {told_seq}"
    );
    let told_since: Vec<usize> = attacker
        .seen()
        .iter()
        .zip(&told_then)
        .map(|((_, s), then)| s.sent - then)
        .collect();
    assert!(
        told_since.iter().all(|&n| n >= 2),
        "the attacker did not keep its place (places told each neighbour since the \
         replacement: {told_since:?})"
    );

    // 6. (d) Leaving is not cutting off: every link stayed up.
    for (h, s) in attacker.seen() {
        assert!(
            s.closed_after.is_none() && s.rejects.is_empty(),
            "{h} cut the attacker's link: {s:?}"
        );
        assert!(
            neighbours(&net.events("peer", h)).contains(&me),
            "{h} does not count the root it left as a neighbour"
        );
    }
    for &h in &honest {
        assert!(
            !of(&net.events("peer", h), "rejected")
                .iter()
                .any(|e| e["remote"] == me.as_str()),
            "{h} logged the attacker rejected"
        );
        let dead = reported_dead(&net, h);
        assert!(
            !dead.contains(&me),
            "{h} reported the attacker dead: {dead:?}"
        );
    }
}
