//! Benchmarks a local gossipnet network of real processes on 127.0.0.1 and prints its figures
//! beside the targets. `scripts/bench.sh` runs it at the sizes BENCHMARKS.md reports.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example bench -- latency 200          # N peers, 3 messages each, light load [batch window]
//! cargo run --release --example bench -- throughput 100 500   # N peers, R new messages/s for 30 s [batch window] [--seconds S]
//! cargo run --release --example bench -- --mode tree latency 50 # the same in gossip.mode: tree (latency, throughput)
//! cargo run --release --example bench -- detection 20         # kill one, stop one; 13 s × 3
//! cargo run --release --example bench -- floor                # loopback TCP ping-pong
//! cargo run --release --example bench -- node 60000           # one peer's CPU per frame
//! cargo run --release --example bench -- join 500 20 200       # N peers joining at difficulty D, P ms apart
//! ```
//!
//! Every run starts its own seeds and peers (binaries from `GOSSIPNET_BIN` or
//! `target/release`), stops every process it started, and keeps the run directory (printed)
//! for `report`. Loops are bounded in count and time. With `BENCH_VERBOSE=1` every node also
//! writes its debug log there (`log-peer-PORT.txt`, `log-seed-PORT.txt`).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gossipnet::report::{parse_jsonl, Run};

/// Upper bound on any wait, so a broken run ends.
const PATIENCE: Duration = Duration::from_secs(600);

fn free_port() -> u16 {
    // The kernel may hand a released port out again; never give the same one twice.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn bin_dir() -> PathBuf {
    std::env::var_os("GOSSIPNET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release"))
}

struct Network {
    dir: PathBuf,
    seeds: Vec<(SocketAddr, Child)>,
    peers: Vec<(SocketAddr, Child)>,
    stopped: Vec<u32>,
}

impl Network {
    fn start(n_peers: usize, body: &str) -> Network {
        Network::start_paced(n_peers, body, Duration::ZERO)
    }

    /// Starts peer `i` no earlier than `i × pace` after the first: peers generate messages on
    /// their own clock from the moment they join, so pacing the joins over one gossip interval
    /// spreads the messages evenly instead of in bursts.
    fn start_paced(n_peers: usize, body: &str, pace: Duration) -> Network {
        let dir = std::env::temp_dir().join(format!(
            "gossipnet-bench-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let seeds: Vec<SocketAddr> = (0..3)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        // The seeds' keys (created under the run directory, where the nodes run) go into
        // seeds.yaml, as a user would list them.
        let list: Vec<String> = seeds
            .iter()
            .map(|s| {
                let out = Command::new(bin_dir().join("seed"))
                    .args(["--addr", &s.to_string(), "--print-key"])
                    .current_dir(&dir)
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("cannot run seed (build with cargo build --release): {e}")
                    });
                let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
                format!("{{ addr: \"{s}\", key: \"{key}\" }}")
            })
            .collect();
        std::fs::write(
            dir.join("seeds.yaml"),
            format!("seeds: [{}]\n{body}\n", list.join(", ")),
        )
        .unwrap();
        let mut net = Network {
            dir,
            seeds: Vec::new(),
            peers: Vec::new(),
            stopped: Vec::new(),
        };
        for s in seeds {
            let child = net.spawn("seed", s);
            net.seeds.push((s, child));
        }
        for s in net.seeds.iter().map(|x| x.0).collect::<Vec<_>>() {
            net.wait_event("seed", s, "started");
        }
        // Peers join in batches, so a few hundred joins do not all solve their proofs at once.
        let mut pending = Vec::new();
        let t0 = Instant::now();
        for i in 0..n_peers {
            let at = t0 + pace * i as u32;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let child = net.spawn("peer", a);
            net.peers.push((a, child));
            pending.push(a);
            if pending.len() == 25 || i + 1 == n_peers {
                for a in pending.drain(..) {
                    net.wait_event("peer", a, "peer_list");
                }
            }
        }
        net
    }

    fn spawn(&self, role: &str, a: SocketAddr) -> Child {
        Command::new(bin_dir().join(role))
            .arg("--addr")
            .arg(a.to_string())
            .arg("--config")
            .arg(self.dir.join("seeds.yaml"))
            .arg("--out-dir")
            .arg(&self.dir)
            // Keys are created under the working directory.
            .current_dir(&self.dir)
            // BENCH_VERBOSE=1: each node's debug log in the run directory.
            .args(std::env::var_os("BENCH_VERBOSE").into_iter().flat_map(|_| {
                let log = self.dir.join(format!("log-{role}-{}.txt", a.port()));
                [OsString::from("-v"), "--log-file".into(), log.into()]
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {role} (build with cargo build --release): {e}")
            })
    }

    fn jsonl(&self, role: &str, a: SocketAddr) -> PathBuf {
        self.dir
            .join(format!("{role}-{}-{}.jsonl", a.ip(), a.port()))
    }

    fn count(&self, role: &str, a: SocketAddr, event: &str) -> usize {
        let text = std::fs::read_to_string(self.jsonl(role, a)).unwrap_or_default();
        let needle = format!("\"event\":\"{event}\"");
        text.lines().filter(|l| l.contains(&needle)).count()
    }

    fn wait_event(&mut self, role: &str, a: SocketAddr, event: &str) {
        let start = Instant::now();
        while self.count(role, a, event) == 0 {
            assert!(
                start.elapsed() < PATIENCE,
                "{role} {a} never logged {event}"
            );
            let child = self
                .peers
                .iter_mut()
                .chain(self.seeds.iter_mut())
                .find(|(x, _)| *x == a);
            if let Some((_, c)) = child {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("{role} {a} exited ({st}) before logging {event}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.peers.iter().map(|(_, c)| c.id()).collect()
    }

    fn stop(&mut self) {
        if self.peers.is_empty() && self.seeds.is_empty() {
            return;
        }
        for pid in &self.stopped {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        for (_, c) in self.peers.iter_mut().chain(self.seeds.iter_mut()) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let until = Instant::now() + Duration::from_secs(10);
        for (_, c) in self.peers.iter_mut().chain(self.seeds.iter_mut()) {
            while Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.peers.clear();
        self.seeds.clear();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open sockets (distinct socket inodes: one connection's descriptors are duplicated for its
/// reader and writer).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().to_string())
                .filter(|l| l.starts_with("socket:"))
                .collect::<BTreeSet<String>>()
                .len()
        })
        .unwrap_or(0)
}

/// Proportional set size in KiB: resident pages, shared ones divided among their sharers.
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// One-way loopback latency: a TCP ping-pong between two threads, half the median round trip.
fn floor_us() -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(a).unwrap();
    c.set_nodelay(true).unwrap();
    let mut b = [7u8; 64];
    let mut rtts = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    let _ = echo.join();
    median(rtts) / 2.0
}

/// Diameter of the overlay from the peers' own link events (links up at both ends at the end).
fn diameter(dir: &Path) -> usize {
    let mut links: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("peer-") && name.ends_with(".jsonl")) {
            continue;
        }
        let evs = parse_jsonl(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        let Some(me) = evs
            .first()
            .and_then(|e| e["node"].as_str())
            .map(str::to_string)
        else {
            continue;
        };
        let set = links.entry(me).or_default();
        for e in &evs {
            let p = e["peer"].as_str().unwrap_or_default().to_string();
            match e["event"].as_str() {
                Some("neighbour_up") => {
                    set.insert(p);
                }
                Some("neighbour_down") => {
                    set.remove(&p);
                }
                _ => {}
            }
        }
    }
    let both = |a: &String, b: &String| links.get(b).is_some_and(|s| s.contains(a));
    let mut best = 0;
    for start in links.keys() {
        let mut dist: BTreeMap<&String, usize> = BTreeMap::from([(start, 0)]);
        let mut q = VecDeque::from([start]);
        while let Some(p) = q.pop_front() {
            let d = dist[p];
            for n in links[p].iter().filter(|n| both(p, n)) {
                if !dist.contains_key(n) {
                    dist.insert(n, d + 1);
                    q.push_back(n);
                }
            }
        }
        best = best.max(dist.values().copied().max().unwrap_or(0));
    }
    best
}

/// Waits until every peer generated `per_peer` messages and the network is quiet. While
/// messages flow it only looks at the sizes of the logs: reading them costs the network
/// being measured (hundreds of megabytes at 1,000 messages/s: read all at once near the end
/// it stalled every peer for a second; read as they grew, every 2 s, it took some 5–10% of the
/// CPU in bursts). Quiet means no peer's log grew for two seconds (the benchmarks set
/// `stats.interval` long, so an idle peer writes nothing); then the logs are read once, and
/// if not every message was generated yet, it waits again. `expected` is how long
/// generation takes.
fn wait_gossip_done(net: &Network, per_peer: usize, expected: Duration) {
    let until = Instant::now() + expected + PATIENCE;
    std::thread::sleep(expected);
    let sizes = || -> Vec<u64> {
        net.peers
            .iter()
            .map(|(a, _)| {
                std::fs::metadata(net.jsonl("peer", *a))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .collect()
    };
    loop {
        let mut last = sizes();
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let now = sizes();
            if now == last || Instant::now() > until {
                break;
            }
            last = now;
        }
        let sent: usize = net
            .peers
            .iter()
            .map(|(a, _)| net.count("peer", *a, "gossip_sent"))
            .sum();
        if sent >= per_peer * net.peers.len() || Instant::now() > until {
            return;
        }
    }
}

/// The extra `gossip` keys of a run: the batch window (`QUIET..BUSY` for both window keys;
/// default: the node's defaults) and the mode.
fn gossip_keys(window: Option<String>, mode: &str) -> String {
    let mut keys = window.as_deref().map(window_keys).unwrap_or_default();
    if mode != "flood" {
        keys += &format!(", mode: {mode}");
    }
    keys
}

/// One connector-side handshake at `difficulty`, measured here: the proof of work (mean of
/// `solves` random challenges) and the Ed25519 work (sign the Hello, verify the Welcome).
fn handshake_cost(difficulty: u8, solves: usize) -> (Duration, Duration) {
    use gossipnet::keys::{verify, NodeKey};
    use gossipnet::pow;
    let connector: SocketAddr = "127.0.0.1:9101".parse().unwrap();
    let acceptor: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let key = NodeKey::from_secret([9; 32]);
    let public = key.public();
    let t = Instant::now();
    for i in 0..solves {
        let mut challenge = [0u8; 32];
        challenge[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let b = pow::Bound {
            challenge: &challenge,
            key: &public,
            connector: &connector,
            acceptor: &acceptor,
        };
        pow::solve(b, difficulty, 0, None).expect("no deadline");
    }
    let work = t.elapsed() / solves as u32;
    let rounds = 200;
    let t = Instant::now();
    for i in 0..rounds {
        let sig = key.sign(&(i as u64).to_be_bytes());
        assert!(verify(&public, &(i as u64).to_be_bytes(), &sig));
    }
    (work, t.elapsed() / rounds)
}

fn join(n: usize, difficulty: u8, pace: Duration) {
    let body = format!(
        "gossip: {{ interval: 1h, count: 1 }}\nliveness: {{ interval: 13s, misses: 3 }}\npow: {{ difficulty: {difficulty} }}\nlimits: {{ max_connections: 4096 }}\nstats: {{ interval: 1h }}",
    );
    let (work, sign_verify) = handshake_cost(difficulty, 40);
    let t0 = Instant::now();
    let mut net = Network::start_paced(n, &body, pace);
    let joined_s = t0.elapsed().as_secs_f64();
    // Let the last dials to neighbours finish.
    std::thread::sleep(Duration::from_secs(3));
    let peer_cpu: f64 = net.pids().iter().map(|p| cpu_seconds(*p)).sum();
    let seed_cpu: f64 = net.seeds.iter().map(|(_, c)| cpu_seconds(c.id())).sum();
    let mut to_list = Vec::new();
    let mut to_link = Vec::new();
    let mut dials = Vec::new();
    for (a, _) in &net.peers {
        let text = std::fs::read_to_string(net.jsonl("peer", *a)).unwrap_or_default();
        let evs = parse_jsonl(&text);
        let at = |name: &str| {
            evs.iter()
                .find(|e| e["event"] == name)
                .and_then(|e| e["ts_us"].as_u64())
        };
        let (Some(start), Some(list)) = (at("started"), at("peer_list")) else {
            continue;
        };
        to_list.push((list - start) as f64 / 1000.0);
        if let Some(up) = at("neighbour_up") {
            to_link.push((up.max(list) - start) as f64 / 1000.0);
        }
        // Connections this peer opened: one per seed it registered with, one per neighbour
        // it chose from the list (its first neighbours, up to max_neighbours).
        let seeds = evs
            .iter()
            .filter(|e| e["event"] == "registered_with")
            .count();
        let ups = evs.iter().filter(|e| e["event"] == "neighbour_up").count();
        dials.push((seeds + ups.min(4)) as f64);
    }
    net.stop();
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let dials_mean = dials.iter().sum::<f64>() / dials.len().max(1) as f64;
    let handshake_ms = ms(work) + ms(sign_verify);
    let list_p50 = pct(&mut to_list, 0.5);
    println!(
        "== join: {n} peers + 3 seeds, joins {} ms apart, difficulty {difficulty}",
        pace.as_millis()
    );
    println!("   run directory: {}", net.dir.display());
    println!(
        "   all joined in {joined_s:.1} s ({} peers with a peer list)",
        to_list.len()
    );
    println!(
        "   start to peer list (registered with a majority, lists in): p50 {:.1} ms  p99 {:.1} ms",
        list_p50,
        pct(&mut to_list, 0.99)
    );
    println!(
        "   start to first neighbour: p50 {:.1} ms  p99 {:.1} ms",
        pct(&mut to_link, 0.5),
        pct(&mut to_link, 0.99)
    );
    println!(
        "   one handshake, connector side: proof of work {:.2} ms (mean of 40) + sign and verify {:.3} ms",
        ms(work),
        ms(sign_verify)
    );
    let per_join_ms = peer_cpu / n as f64 * 1e3;
    println!(
        "   CPU per join: peer {per_join_ms:.1} ms, seeds {:.2} ms (all CPU of the run divided by {n})",
        seed_cpu / n as f64 * 1e3
    );
    println!(
        "   connections a peer opened: {dials_mean:.1} on average; their handshakes {:.1} ms of CPU: {:.0}% of a peer's CPU per join; the two before its peer list {:.0}% of the median time to it",
        dials_mean * handshake_ms,
        100.0 * dials_mean * handshake_ms / per_join_ms,
        100.0 * 2.0 * handshake_ms / list_p50
    );
}

/// `keys`: extra `gossip` keys (`gossip_keys`).
fn latency(n: usize, keys: &str) {
    let floor = floor_us();
    // A light load, the same at every size: 20 new messages per second network-wide, three
    // from each peer, evenly spread (joins 50 ms apart: one interval / n). Throughput is
    // measured separately.
    let pace = Duration::from_millis(50);
    let interval_ms = n * 50;
    let body = format!(
        "gossip: {{ interval: {interval_ms}ms, count: 3{keys} }}\nliveness: {{ interval: 13s, misses: 3 }}\npow: {{ difficulty: 12 }}\nlimits: {{ max_connections: 4096 }}\nstats: {{ interval: 1h }}",
    );
    let body = body.as_str();
    let t0 = Instant::now();
    let mut net = Network::start_paced(n, body, pace);
    let joined_s = t0.elapsed().as_secs_f64();
    let pids = net.pids();
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let g0 = Instant::now();
    wait_gossip_done(&net, 3, Duration::from_millis(2 * interval_ms as u64));
    let gossip_cpu = (pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0)
        / g0.elapsed().as_secs_f64()
        * 60.0
        / n as f64;
    let diam = diameter(&net.dir);
    // Idle: gossip is over; liveness and stats go on.
    let idle_window = Duration::from_secs(30);
    let cpu1: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    std::thread::sleep(idle_window);
    let idle_cpu = (pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu1)
        / idle_window.as_secs_f64()
        * 60.0
        / n as f64;
    let rss = median(
        pids.iter()
            .map(|p| status(*p, "VmRSS") as f64 / 1024.0)
            .collect(),
    );
    let anon = median(
        pids.iter()
            .map(|p| status(*p, "RssAnon") as f64 / 1024.0)
            .collect(),
    );
    let pss = median(pids.iter().map(|p| pss_kib(*p) as f64 / 1024.0).collect());
    let threads: Vec<u64> = pids.iter().map(|p| status(*p, "Threads")).collect();
    let socks: Vec<usize> = pids.iter().map(|p| sockets(*p)).collect();
    let worst_ratio = threads
        .iter()
        .zip(&socks)
        .map(|(t, s)| *t as f64 - 2.0 * *s as f64)
        .fold(f64::MIN, f64::max);
    net.stop();
    let s = Run::load(&net.dir).unwrap().summarize();
    let floor_ms = floor * diam as f64 / 1000.0;
    println!(
        "== latency: {n} peers + 3 seeds, 3 messages each (every {interval_ms} ms: 20 per second network-wide), difficulty 12{}",
        if keys.is_empty() { String::new() } else { format!("; gossip keys{keys}") }
    );
    println!("   run directory: {}", net.dir.display());
    println!(
        "   all joined in {joined_s:.1} s (joins paced {} ms apart)",
        pace.as_millis()
    );
    println!(
        "   messages {}  coverage {:.4} ({} of {})   target: 100% delivery",
        s.messages, s.coverage, s.deliveries, s.expected_deliveries
    );
    println!(
        "   time to reach all: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.max
    );
    println!(
        "   floor: one loopback hop {floor:.1} µs × diameter {diam} = {floor_ms:.3} ms;  p99 / floor = {:.1}   target: ≤ 3 at N = 200",
        s.latency_ms.p99 / floor_ms.max(1e-9)
    );
    println!(
        "   duplicates per delivery {:.2} (and {:.2} withdrawn before sending)",
        s.duplicates_per_delivery, s.withdrawn_per_delivery
    );
    println!(
        "   memory per peer (median): RSS {rss:.1} MiB, of it private (anonymous) {anon:.1} MiB; PSS {pss:.1} MiB   target: ≤ 4 MiB"
    );
    println!(
        "   threads per peer: median {:.0}, sockets median {:.0}; worst threads − 2 × sockets = {worst_ratio:.0}   target: ≤ 4",
        median(threads.iter().map(|t| *t as f64).collect()),
        median(socks.iter().map(|s| *s as f64).collect())
    );
    println!(
        "   CPU per peer: idle {:.3} s/min ({:.3}% of a core), gossiping {:.3} s/min   target idle: ≤ 0.1% of a core",
        idle_cpu,
        idle_cpu / 60.0 * 100.0,
        gossip_cpu
    );
}

/// `keys`: extra `gossip` keys (`gossip_keys`).
fn throughput(n: usize, rate: usize, duration_s: usize, keys: &str) {
    // Each peer generates its share of the network-wide rate.
    let interval_ms = (1000 * n / rate).max(1);
    let count = rate * duration_s / n;
    // `limits.gossip_per_second` raised: with the default (5,000, of which a peer forwards
    // at most 90% on a link) no mode can carry more than 4,500 new messages/s, since a tree
    // pushes every message over each of its links, and rooted mode reaches that; the run
    // measures what the peers can carry, not the limit put on a neighbour.
    let body = format!(
        "gossip: {{ interval: {interval_ms}ms, count: {count}, message_list_capacity: 100000{keys} }}\nliveness: {{ interval: 13s, misses: 3 }}\npow: {{ difficulty: 12 }}\nlimits: {{ max_connections: 4096, gossip_per_second: 100000 }}\nstats: {{ interval: 1h }}",
    );
    let mut net = Network::start(n, &body);
    let pids = net.pids();
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let t = Instant::now();
    wait_gossip_done(
        &net,
        count,
        Duration::from_millis((interval_ms * count) as u64),
    );
    let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let cores = cpu / t.elapsed().as_secs_f64();
    net.stop();
    let run = Run::load(&net.dir).unwrap();
    let s = run.summarize();
    println!("== throughput: {n} peers, {rate} new messages/s network-wide for {duration_s} s (each peer every {interval_ms} ms){}", if keys.is_empty() { String::new() } else { format!("; gossip keys{keys}") });
    println!("   run directory: {}", net.dir.display());
    println!(
        "   messages {}  coverage {:.4} ({} of {})  time to reach all p50 {:.2} ms p99 {:.2} ms  duplicates/delivery {:.2} (+{:.2} withdrawn)  frames per read {:.1}, per send {:.1}  CPU {:.2} cores, {:.2} µs per delivery",
        s.messages, s.coverage, s.deliveries, s.expected_deliveries, s.latency_ms.p50, s.latency_ms.p99, s.duplicates_per_delivery, s.withdrawn_per_delivery, s.frames_per_read, s.frames_per_write, cores, cpu * 1e6 / s.deliveries.max(1) as f64
    );
    // Tree mode: how the tree held (each peer's last `stats`, summed).
    let tree_sum = |key: &str| -> Option<u64> {
        run.peers
            .values()
            .map(|evs| {
                evs.iter()
                    .rev()
                    .find(|e| e["event"] == "stats")
                    .and_then(|e| e[key].as_u64())
            })
            .sum()
    };
    if let (Some(prunes), Some(grafted)) = (tree_sum("tree_prunes"), tree_sum("tree_grafted")) {
        println!(
            "   tree: {grafted} ids grafted ({:.3} per delivery), {prunes} prunes sent",
            grafted as f64 / s.deliveries.max(1) as f64
        );
    }
    // Sustained means the queues do not grow: time to reach all stays flat through the run
    // instead of climbing as a backlog builds.
    let c = &s.completions;
    if let (Some(first), Some(last)) = (c.first(), c.last()) {
        let span = (last.0 - first.0) as f64 / 1e6;
        let done = c.iter().map(|(g, l)| g + l).max().unwrap_or(last.0);
        let carried = (done - first.0) as f64 / 1e6;
        println!(
            "   generated at {:.0}/s (over {span:.1} s); the last one reached everyone {:.1} s after the first was generated: {:.0} messages/s carried",
            c.len() as f64 / span.max(1e-3),
            carried,
            c.len() as f64 / carried.max(1e-3)
        );
        let slices = 3;
        let mut line = String::from("   time to reach all by generation time, p50 / p99 ms:");
        for k in 0..slices {
            let lo = first.0 + (last.0 - first.0) * k / slices;
            let hi = first.0 + (last.0 - first.0) * (k + 1) / slices;
            let mut l: Vec<u64> = c
                .iter()
                .filter(|(g, _)| *g >= lo && (*g < hi || k == slices - 1))
                .map(|x| x.1)
                .collect();
            l.sort_unstable();
            if l.is_empty() {
                continue;
            }
            let q = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
            line += &format!("  [{}/{slices}] {:.0} / {:.0}", k + 1, q(0.5), q(0.99));
        }
        println!("{line}");
    }
    // The peers join over a second or two, so the rate is the offered one only while all of
    // them generate: from the last one's first message to the first one's last.
    let sent: Vec<Vec<u64>> = run
        .peers
        .values()
        .map(|evs| {
            evs.iter()
                .filter(|e| e["event"] == "gossip_sent")
                .filter_map(|e| e["ts_us"].as_u64())
                .collect::<Vec<u64>>()
        })
        .filter(|v| !v.is_empty())
        .collect();
    let from = sent.iter().filter_map(|v| v.iter().min()).max();
    let to = sent.iter().filter_map(|v| v.iter().max()).min();
    if let (Some(&a), Some(&b), true) = (from, to, sent.len() == n) {
        if b > a {
            let within = |t: &u64| (a..=b).contains(t);
            let generated = sent.iter().flatten().filter(|t| within(t)).count();
            let mut l: Vec<u64> = c.iter().filter(|x| within(&x.0)).map(|x| x.1).collect();
            l.sort_unstable();
            let q = |p: f64| {
                l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
                    .map_or(0.0, |x| *x as f64 / 1000.0)
            };
            let secs = (b - a) as f64 / 1e6;
            println!(
                "   all {n} peers generating for {secs:.1} s: {:.0} messages/s; {} of those {generated} reached every peer by gossip alone (p50 {:.0} ms, p99 {:.0} ms; the rest needed catch-up or did not reach all: see coverage)",
                generated as f64 / secs,
                l.len(),
                q(0.5),
                q(0.99)
            );
        }
    }
    println!("   target: ≥ 1000 messages/s at N = 100 with 100% delivery, sustained (flat, not climbing)");
}

/// N peers generate about ITEMS items in all, then one more peer joins: how long it takes to
/// hold every one of them (by catch-up: digests, ids, pulls; nothing is pushed to it), and the
/// bytes it was sent by the end of the run.
fn catchup(n: usize, items: usize, keys: &str) {
    let count = (items / n).max(1);
    let interval_ms = 20;
    let body = format!(
        "gossip: {{ interval: {interval_ms}ms, count: {count}{keys} }}\nliveness: {{ interval: 13s, misses: 3 }}\npow: {{ difficulty: 12 }}\nstats: {{ interval: 1h }}",
    );
    let mut net = Network::start(n, &body);
    wait_gossip_done(
        &net,
        count,
        Duration::from_millis((interval_ms * count) as u64),
    );
    // An item enters the catch-up digest once held for a second.
    std::thread::sleep(Duration::from_secs(2));
    let total = count * n;
    let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = net.spawn("peer", a);
    net.peers.push((a, child));
    let until = Instant::now() + PATIENCE;
    while net.count("peer", a, "gossip_received") < total && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    net.stop();
    let evs = parse_jsonl(&std::fs::read_to_string(net.jsonl("peer", a)).unwrap_or_default());
    let ts = |e: &serde_json::Value| e["ts_us"].as_u64().unwrap_or(0);
    let start = evs.first().map(ts).unwrap_or(0);
    let got: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| e["event"] == "gossip_received")
        .collect();
    let last = got.iter().map(|e| ts(e)).max().unwrap_or(start);
    let by_sync = got.iter().filter(|e| e["via"] == "sync").count();
    let bytes_in = evs
        .iter()
        .rev()
        .find(|e| e["event"] == "stats")
        .and_then(|e| e["bytes_in"].as_u64())
        .unwrap_or(0);
    println!(
        "== catch-up: {n} peers, {total} items generated, then one more peer joins{}",
        if keys.is_empty() {
            String::new()
        } else {
            format!("; gossip keys{keys}")
        }
    );
    println!("   run directory: {}", net.dir.display());
    println!(
        "   the late joiner received {} of {total} ({by_sync} by catch-up); the last {:.2} s after its start; {:.1} kB sent to it in all (every frame, to the end of the run)",
        got.len(),
        last.saturating_sub(start) as f64 / 1e6,
        bytes_in as f64 / 1000.0
    );
}

fn detection(n: usize) {
    let body = "gossip: { interval: 5s, count: 0 }\nliveness: { interval: 13s, misses: 3 }\npow: { difficulty: 12 }\nstats: { interval: 5s }";
    let mut net = Network::start(n, body);
    // Let every link settle, then crash one peer and freeze another.
    std::thread::sleep(Duration::from_secs(3));
    let faults_path = net.dir.join("faults.jsonl");
    let mut faults = std::fs::File::create(&faults_path).unwrap();
    let victims = [
        (net.peers[n - 1].0, net.peers[n - 1].1.id(), "KILL"),
        (net.peers[n - 2].0, net.peers[n - 2].1.id(), "STOP"),
    ];
    for (a, pid, sig) in victims {
        let at = gossipnet::node::unix_ms();
        Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        if sig == "STOP" {
            net.stopped.push(pid);
        }
        writeln!(
            faults,
            "{{\"ts_ms\":{at},\"peer\":\"{a}\",\"signal\":\"{sig}\"}}"
        )
        .unwrap();
    }
    let dead: Vec<String> = victims.iter().map(|v| v.0.to_string()).collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let s = Run::load(&net.dir).unwrap().summarize();
        if s.dead
            .iter()
            .filter(|d| d.removed_after_s.is_some())
            .count()
            == dead.len()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    net.stop();
    let s = Run::load(&net.dir).unwrap().summarize();
    println!("== failure detection: {n} peers, liveness every 13 s, 3 misses, probe timeout 3 s");
    println!("   run directory: {}", net.dir.display());
    for d in &s.dead {
        let how = if victims
            .iter()
            .any(|v| v.0.to_string() == d.peer && v.2 == "KILL")
        {
            "SIGKILL"
        } else {
            "SIGSTOP"
        };
        println!(
            "   {how} {}: first report after {:.2} s, removed by a majority after {:.2} s   target: ≤ 3 × 13 + 13 = 52 s",
            d.peer,
            d.reported_after_s.unwrap_or(f64::NAN),
            d.removed_after_s.unwrap_or(f64::NAN)
        );
    }
    println!("   false removals {}", s.false_removals.len());
}

/// `gossip` keys for a window argument: `5ms` (the quiet window) or `2ms..100ms` (quiet and
/// busy).
fn window_keys(w: &str) -> String {
    match w.split_once("..") {
        Some((quiet, busy)) => format!(", batch_window: {quiet}, max_batch_window: {busy}"),
        None => format!(", batch_window: {w}"),
    }
}

/// Completes the proof-of-work handshake with `target` as a peer claiming `claimed`.
fn handshake_as(claimed: SocketAddr, target: SocketAddr) -> TcpStream {
    use gossipnet::wire::{FrameReader, Msg, Role};
    let mut s = TcpStream::connect(target).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut fr = FrameReader::new(1 << 20);
    let key = gossipnet::keys::NodeKey::from_secret(rand::random());
    let me = gossipnet::handshake::Connector {
        role: Role::Peer,
        addr: claimed,
        incarnation: gossipnet::node::unix_ms(),
        key: &key,
        max_difficulty: 32,
    };
    let mut next = |s: &mut TcpStream| -> Msg {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(b) = fr.next_frame().unwrap() {
                return Msg::decode(&b).unwrap();
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "{target} closed the handshake");
            fr.push(&buf[..n]);
        }
    };
    let puzzle = me.on_challenge(next(&mut s), target, None).unwrap();
    let answer = me.solve(&puzzle, 0, Instant::now() + PATIENCE).unwrap();
    s.write_all(&answer.hello.encode()).unwrap();
    me.on_welcome(next(&mut s), &puzzle, &answer)
        .expect("not admitted");
    s
}

/// utime and stime of a process, in seconds.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (
        f.get(11).copied().unwrap_or(0.0) / 100.0,
        f.get(12).copied().unwrap_or(0.0) / 100.0,
    )
}

/// One real peer process and eight neighbours played by this benchmark, which send it
/// `messages` gossip items, each from six of them (one first receipt and five repeats, about
/// what a peer of the 100-peer network gets) as fast as it reads them, and read whatever it
/// forwards. Prints the peer's CPU per frame received: the cost of the hot path (read,
/// decode, hash, look up, forward, withdraw, log) without the scheduling of hundreds of
/// processes that the network benchmarks add to it.
fn node(messages: usize) {
    const LINKS: usize = 8;
    const COPIES: usize = 6;
    // Frames per write: each neighbour hands the peer's reader a few kilobytes at a time.
    const CHUNK: usize = 64;
    let body = format!(
        "gossip: {{ interval: 5s, count: 0, message_list_capacity: {} }}\nliveness: {{ interval: 60s, misses: 3 }}\npow: {{ difficulty: 8 }}\nlimits: {{ gossip_per_second: 10000000 }}\nstats: {{ interval: 5s }}",
        messages.max(1)
    );
    let mut net = Network::start(1, &body);
    let (peer, pid) = (net.peers[0].0, net.peers[0].1.id());
    let mut streams = Vec::new();
    for _ in 0..LINKS {
        streams.push(handshake_as(
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            peer,
        ));
    }
    // Everything the peer sends back is read (and counted) so it never blocks on a full socket.
    let drains: Vec<_> = streams
        .iter()
        .map(|s| {
            let mut r = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                total
            })
        })
        .collect();
    let frames: Vec<Vec<u8>> = (0..messages)
        .map(|i| {
            gossipnet::wire::Msg::Gossip {
                data_type: 0,
                ttl: 0,
                nonce: 0,
                payload: format!("1795313883123:127.0.0.1:40000:{i}")
                    .into_bytes()
                    .into(),
            }
            .encode()
        })
        .collect();
    let frames = std::sync::Arc::new(frames);
    let (user0, sys0) = cpu_split(pid);
    let t = Instant::now();
    let writers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(k, mut s)| {
            let frames = frames.clone();
            std::thread::spawn(move || {
                // Message i comes from links i, i+1, … i+5 (mod 8), in order on each link.
                let mine: Vec<usize> = (0..frames.len())
                    .filter(|i| (k + LINKS - i % LINKS) % LINKS < COPIES)
                    .collect();
                for chunk in mine.chunks(CHUNK) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|i| frames[*i].clone()).collect();
                    if s.write_all(&bytes).is_err() {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let streams: Vec<TcpStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    // Done when the peer has logged every first receipt.
    let path = net.jsonl("peer", peer);
    let (mut offset, mut received) = (0u64, 0usize);
    let needle = b"\"event\":\"gossip_received\"";
    while received < messages && t.elapsed() < PATIENCE {
        assert!(
            !drains.iter().all(|d| d.is_finished()),
            "the peer closed every link before it logged all {messages} messages ({received}); see {}",
            net.dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let mut new = Vec::new();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).unwrap();
        f.read_to_end(&mut new).unwrap();
        // Whole lines only.
        let end = new.iter().rposition(|b| *b == b'\n').map_or(0, |e| e + 1);
        received += new[..end]
            .windows(needle.len())
            .filter(|w| w == needle)
            .count();
        offset += end as u64;
    }
    let elapsed = t.elapsed().as_secs_f64();
    // The forwards of the last items are sent within a batch window; let them go.
    std::thread::sleep(Duration::from_millis(500));
    let (user1, sys1) = cpu_split(pid);
    for s in &streams {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let back: u64 = drains.into_iter().map(|d| d.join().unwrap()).sum();
    net.stop();
    let stats = parse_jsonl(&std::fs::read_to_string(&path).unwrap_or_default())
        .into_iter()
        .rfind(|e| e["event"] == "stats")
        .unwrap_or_default();
    let (user, sys) = (user1 - user0, sys1 - sys0);
    let frames_in = messages * COPIES;
    println!("== node: one peer, {LINKS} neighbours, {messages} messages, each from {COPIES} of them ({frames_in} frames, {CHUNK} per write)");
    println!("   run directory: {}", net.dir.display());
    println!(
        "   first receipts logged {received} of {messages} in {elapsed:.2} s: {:.0} messages/s, {:.0} frames/s",
        received as f64 / elapsed,
        frames_in as f64 / elapsed
    );
    println!(
        "   peer CPU {:.2} s (user {user:.2}, system {sys:.2}): {:.2} µs per frame received, {:.1} µs per message",
        user + sys,
        (user + sys) * 1e6 / frames_in as f64,
        (user + sys) * 1e6 / messages.max(1) as f64
    );
    println!(
        "   sent back {back} bytes; peer stats: frames_in {} in {} reads, frames_out {} in {} sends, gossip_withdrawn {}",
        stats["frames_in"], stats["reads"], stats["frames_out"], stats["writes"], stats["gossip_withdrawn"]
    );
}

/// Benchmarks a local gossipnet network of real processes on 127.0.0.1 and prints its
/// figures beside the targets (binaries from GOSSIPNET_BIN or target/release).
#[derive(clap::Parser, Debug)]
#[command(name = "bench")]
struct Args {
    #[command(subcommand)]
    what: What,
    /// `gossip.mode` of every peer (latency and throughput).
    #[arg(long, global = true, default_value = "flood", value_parser = ["flood", "tree", "rooted"])]
    mode: String,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// N peers, 3 messages each, at a light load (20 new messages/s network-wide).
    Latency {
        #[arg(default_value_t = 50, value_parser = at_least(2))]
        peers: usize,
        /// `gossip.batch_window` to run with, or QUIET..BUSY for both window keys.
        window: Option<String>,
    },
    /// N peers generating RATE new messages per second network-wide for 30 s.
    Throughput {
        #[arg(default_value_t = 100, value_parser = at_least(2))]
        peers: usize,
        #[arg(default_value_t = 1000, value_parser = at_least(1))]
        rate: usize,
        /// `gossip.batch_window` to run with, or QUIET..BUSY for both window keys.
        window: Option<String>,
        /// How long the peers generate. The analysis holds every record of the run, one per
        /// delivery: at 100 peers 30 s at 5,000/s fit in 24 GiB, 30 s at 6,000/s did not.
        #[arg(long, default_value_t = 30, value_parser = at_least(3))]
        seconds: usize,
    },
    /// N peers with the assignment's liveness timers; one is killed, one stopped.
    Detection {
        #[arg(default_value_t = 20, value_parser = at_least(3))]
        peers: usize,
    },
    /// N peers joining at difficulty D, 50 ms apart: join time, CPU per join, and the share
    /// of it the handshakes (proof of work, signatures) take.
    Join {
        #[arg(default_value_t = 500, value_parser = at_least(2))]
        peers: usize,
        #[arg(default_value_t = 20)]
        difficulty: u8,
        /// Milliseconds between two peers' starts.
        #[arg(default_value_t = 200)]
        pace_ms: u64,
    },
    /// N peers generate ITEMS items, then a late joiner catches up: its time and bytes.
    Catchup {
        #[arg(default_value_t = 50, value_parser = at_least(2))]
        peers: usize,
        #[arg(default_value_t = 1000, value_parser = at_least(1))]
        items: usize,
    },
    /// One loopback TCP hop: half the median ping-pong round trip.
    Floor,
    /// One peer's CPU per frame received, fed MESSAGES messages by 8 fake neighbours.
    Node {
        #[arg(default_value_t = 60_000, value_parser = at_least(1))]
        messages: usize,
    },
}

/// A whole number no smaller than `min`, refused by clap otherwise (a zero would divide by
/// zero or kill a peer that does not exist).
fn at_least(min: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min..)
}

fn main() -> std::process::ExitCode {
    let args: Args = match gossipnet::cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match args.what {
        What::Latency { peers, window } => latency(peers, &gossip_keys(window, &args.mode)),
        What::Throughput {
            peers,
            rate,
            window,
            seconds,
        } => throughput(peers, rate, seconds, &gossip_keys(window, &args.mode)),
        What::Detection { peers } => detection(peers),
        What::Catchup { peers, items } => catchup(peers, items, &gossip_keys(None, &args.mode)),
        What::Node { messages } => node(messages),
        What::Join {
            peers,
            difficulty,
            pace_ms,
        } => join(peers, difficulty, Duration::from_millis(pace_ms)),
        What::Floor => println!(
            "one loopback TCP hop (half the median ping-pong round trip): {:.1} µs",
            floor_us()
        ),
    }
    std::process::ExitCode::SUCCESS
}
