//! Test harness: real `seed` and `peer` binaries on 127.0.0.1, free ports, a temp directory,
//! fast timers from a generated `seeds.yaml`. Every child is killed when the harness is
//! dropped, also when a test fails (stopped children are resumed first).

#![allow(dead_code)]

pub mod attacker;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for any condition a test waits for. Generous on purpose: tests assert what
/// happens, not how fast; a busy machine only makes them slower.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A port that was free a moment ago, below the kernel's range of ephemeral ports: a port from
/// that range (what binding port 0 gives) can be taken, between the moment it is found free and
/// the moment a node binds it, as the source port of any connection some test opens meanwhile,
/// and the node then exits with "Address already in use". Below the range only an explicit
/// bind takes a port. Each process starts at a random place in the range it uses, so test
/// processes running at once rarely try the same ports.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    // Never the same port twice in one process (a node may still hold it, or be about to).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let low = 10_000u32;
    let mut given = GIVEN.lock().unwrap();
    if ephemeral_low > low + 1_000 {
        let span = ephemeral_low - low;
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u32
            % span;
        for k in 0..span {
            let port = (low + (start + k) % span) as u16;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    // No room below the ephemeral range: what the kernel hands out.
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `cond` until it holds; panics with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > PATIENCE {
            panic!("timed out waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Node {
    pub addr: SocketAddr,
    pub role: &'static str,
    pub child: Child,
    pub stopped: bool,
}

pub struct Net {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub seeds: Vec<SocketAddr>,
    pub nodes: Vec<Node>,
}

/// Creates each seed's key under `dir` (where the test runs its nodes: the default
/// `keys/seed-<ip>-<port>.key`) with `seed --print-key`, and returns the `seeds:` entries
/// with their keys, as a user following the README would write them.
pub fn keyed_seed_entries(dir: &std::path::Path, seeds: &[SocketAddr]) -> Vec<String> {
    seeds
        .iter()
        .map(|s| {
            let out = Command::new(env!("CARGO_BIN_EXE_seed"))
                .args(["--addr", &s.to_string(), "--print-key"])
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "seed --print-key: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let key = String::from_utf8(out.stdout).unwrap();
            format!("{{ addr: \"{s}\", key: \"{}\" }}", key.trim())
        })
        .collect()
}

/// Fast timers and a low difficulty, so a test network runs in seconds. `entries` are the
/// `seeds:` list's entries.
pub fn fast_config(entries: &[String], extra: &str) -> String {
    format!(
        "seeds: [{}]\n{}\n",
        entries.join(", "),
        if extra.is_empty() {
            "gossip: { interval: 300ms, count: 10 }\nliveness: { interval: 300ms, misses: 3, probe_timeout: 1s }\npow: { difficulty: 8, timeout: 3s }\nstats: { interval: 1s }"
        } else {
            extra
        }
    )
}

impl Net {
    /// A network description with `n_seeds` seeds on free ports and the given config body
    /// (everything after the `seeds:` line; empty for the fast defaults).
    pub fn new(n_seeds: usize, extra: &str) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let seeds: Vec<SocketAddr> = (0..n_seeds).map(|_| addr(free_port())).collect();
        let config = dir.path().join("seeds.yaml");
        let entries = keyed_seed_entries(dir.path(), &seeds);
        std::fs::write(&config, fast_config(&entries, extra)).unwrap();
        Net {
            dir,
            config,
            seeds,
            nodes: Vec::new(),
        }
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn spawn(&mut self, role: &'static str, a: SocketAddr) -> usize {
        self.spawn_with(role, a, &[])
    }

    pub fn spawn_with(&mut self, role: &'static str, a: SocketAddr, extra: &[String]) -> usize {
        let bin = match role {
            "seed" => env!("CARGO_BIN_EXE_seed"),
            _ => env!("CARGO_BIN_EXE_peer"),
        };
        let log = self.dir.path().join(format!("{role}-{}.log", a.port()));
        let stderr =
            std::fs::File::create(self.dir.path().join(format!("{role}-{}.stderr", a.port())))
                .unwrap();
        let child = Command::new(bin)
            .arg("--addr")
            .arg(a.to_string())
            .arg("--config")
            .arg(&self.config)
            .arg("--out-dir")
            .arg(self.out_dir())
            .arg("-v")
            .arg("--log-file")
            .arg(log)
            .args(extra)
            // Keys are created under the working directory (keys/<role>-<ip>-<port>.key).
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.nodes.push(Node {
            addr: a,
            role,
            child,
            stopped: false,
        });
        self.nodes.len() - 1
    }

    pub fn start_seeds(&mut self) {
        for s in self.seeds.clone() {
            self.spawn("seed", s);
        }
        for s in self.seeds.clone() {
            self.wait_for_event("seed", s, "started");
        }
    }

    /// Waits for a node's event; fails at once, with its stderr, if the node exits first.
    pub fn wait_for_event(&mut self, role: &str, a: SocketAddr, event: &str) {
        let f = self.jsonl(role, a);
        let stderr = self.dir.path().join(format!("{role}-{}.stderr", a.port()));
        let start = Instant::now();
        while !has_event(&f, event) {
            if let Some(st) = self.node(a).child.try_wait().unwrap() {
                let err = std::fs::read_to_string(&stderr).unwrap_or_default();
                panic!("{role} {a} exited ({st}) before `{event}`: {err}");
            }
            if start.elapsed() > PATIENCE {
                panic!("timed out waiting for {role} {a} to log `{event}`");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a peer on a free port and waits until it has its peer list.
    pub fn start_peer(&mut self) -> SocketAddr {
        let a = addr(free_port());
        self.spawn("peer", a);
        let f = self.jsonl("peer", a);
        wait_until(&format!("peer {a} got its peer list"), || {
            has_event(&f, "peer_list")
        });
        a
    }

    /// Starts a peer that also serves the application API; returns (peer, API) addresses.
    pub fn start_api_peer(&mut self) -> (SocketAddr, SocketAddr) {
        let a = addr(free_port());
        let api = addr(free_port());
        self.spawn_with("peer", a, &["--api-addr".to_string(), api.to_string()]);
        let f = self.jsonl("peer", a);
        wait_until(&format!("peer {a} got its peer list"), || {
            has_event(&f, "peer_list")
        });
        (a, api)
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter(|n| n.role == "peer")
            .map(|n| n.addr)
            .collect()
    }

    pub fn jsonl(&self, role: &str, a: SocketAddr) -> PathBuf {
        self.out_dir()
            .join(format!("{role}-{}-{}.jsonl", a.ip(), a.port()))
    }

    pub fn txt(&self, role: &str, a: SocketAddr) -> PathBuf {
        self.out_dir()
            .join(format!("{role}-{}-{}.txt", a.ip(), a.port()))
    }

    pub fn events(&self, role: &str, a: SocketAddr) -> Vec<Value> {
        events(&self.jsonl(role, a))
    }

    /// The node last started at `a` (a restarted node replaces the one before).
    fn node(&mut self, a: SocketAddr) -> &mut Node {
        self.nodes.iter_mut().rev().find(|n| n.addr == a).unwrap()
    }

    pub fn signal(&mut self, a: SocketAddr, sig: &str) {
        let node = self.node(a);
        let pid = node.child.id().to_string();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {pid}");
        match sig {
            "STOP" => node.stopped = true,
            "CONT" => node.stopped = false,
            _ => {}
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, a: SocketAddr) -> ExitStatus {
        self.signal(a, "TERM");
        let node = self.node(a);
        let start = Instant::now();
        loop {
            if let Some(st) = node.child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > PATIENCE {
                panic!("{a} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self, a: SocketAddr) {
        let node = self.node(a);
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // KEEP_FAILED=dir: a failing test's files are copied there, for a look afterwards.
        if let (true, Some(to)) = (std::thread::panicking(), std::env::var_os("KEEP_FAILED")) {
            let _ = Command::new("cp")
                .arg("-r")
                .arg(self.dir.path())
                .arg(&to)
                .status();
        }
        for n in &mut self.nodes {
            if n.stopped {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(n.child.id().to_string())
                    .status();
            }
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// Events of one `.jsonl` file (missing file: none). A half-written last line is skipped.
pub fn events(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn has_event(path: &Path, event: &str) -> bool {
    events(path).iter().any(|e| e["event"] == event)
}

pub fn of<'a>(evs: &'a [Value], event: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == event).collect()
}

pub fn strs(evs: &[Value], event: &str, field: &str) -> BTreeSet<String> {
    of(evs, event)
        .iter()
        .filter_map(|e| e[field].as_str().map(str::to_string))
        .collect()
}

/// Registered peers by seed, minus the removed ones, as of the seed's latest run (a restarted
/// seed starts empty and learns the list again).
pub fn seed_lists(net: &Net) -> BTreeMap<SocketAddr, BTreeSet<String>> {
    net.seeds
        .iter()
        .map(|&s| {
            let evs = net.events("seed", s);
            let mut set = BTreeSet::new();
            for e in &evs {
                let peer = e["peer"].as_str().unwrap_or_default().to_string();
                match e["event"].as_str() {
                    Some("started") => set.clear(),
                    Some("registered") => {
                        set.insert(peer);
                    }
                    Some("removed") => {
                        set.remove(&peer);
                    }
                    _ => {}
                }
            }
            (s, set)
        })
        .collect()
}

/// Current neighbours of a peer according to its own events.
pub fn neighbours(evs: &[Value]) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for e in evs {
        let peer = e["peer"].as_str().unwrap_or_default().to_string();
        match e["event"].as_str() {
            Some("neighbour_up") => {
                set.insert(peer);
            }
            Some("neighbour_down") => {
                set.remove(&peer);
            }
            _ => {}
        }
    }
    set
}

/// A raw TCP client for abuse tests.
pub fn raw(a: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads until the remote closes (or errors); returns the bytes read.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn send(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
}

/// A field of /proc/PID/status as a number (`Threads`, `VmRSS` in KiB).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Net {
    pub fn pid(&self, a: SocketAddr) -> u32 {
        self.nodes
            .iter()
            .rev()
            .find(|n| n.addr == a)
            .unwrap()
            .child
            .id()
    }

    /// The node has not exited.
    pub fn alive(&mut self, a: SocketAddr) -> bool {
        let node = self.node(a);
        node.child.try_wait().unwrap().is_none()
    }
}

/// Connects and completes the proof-of-work handshake claiming `claimed` as our address, with
/// a fresh key. Returns the stream and any bytes read past the Welcome.
pub fn handshake_as(
    role: gossipnet::wire::Role,
    claimed: SocketAddr,
    target: SocketAddr,
) -> Result<(TcpStream, gossipnet::wire::FrameReader), String> {
    use gossipnet::wire::{FrameReader, Msg};
    let mut s = TcpStream::connect(target).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut fr = FrameReader::new(1 << 20);
    let key = gossipnet::keys::NodeKey::from_secret(rand::random());
    let me = gossipnet::handshake::Connector {
        role,
        addr: claimed,
        incarnation: gossipnet::node::unix_ms(),
        key: &key,
        max_difficulty: 24,
    };
    let next = |s: &mut TcpStream, fr: &mut FrameReader| -> Result<Msg, String> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(b) = fr.next_frame().map_err(|e| e.to_string())? {
                return Msg::decode(&b).map_err(|e| e.to_string());
            }
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            fr.push(&buf[..n]);
        }
    };
    let puzzle = me
        .on_challenge(next(&mut s, &mut fr)?, target, None)
        .map_err(|e| e.to_string())?;
    let answer = me
        .solve(&puzzle, 0, Instant::now() + PATIENCE)
        .ok_or("no solution")?;
    s.write_all(&answer.hello.encode())
        .map_err(|e| e.to_string())?;
    match next(&mut s, &mut fr)? {
        Msg::Reject { reason } => Err(format!("Reject {{ reason: {reason:?} }}")),
        last => me
            .on_welcome(last, &puzzle, &answer)
            .map(|()| (s, fr))
            .map_err(|e| e.to_string()),
    }
}

// ---- Attacks: the network's config, what a node looked like before, and whether it is still
// well after ----

/// The config of an attack test's network (`tests/abuse.rs`, `tests/rooted.rs`); each argument is the inside of one section's braces, added to
/// that section's defaults here.
pub fn attack_config(gossip: &str, pow: &str, limits: &str) -> String {
    let join = |base: &str, more: &str| {
        if more.is_empty() {
            base.to_string()
        } else {
            format!("{base}, {more}")
        }
    };
    format!(
        "gossip: {{ {} }}\nliveness: {{ interval: 1s, misses: 3 }}\npow: {{ {} }}\nlimits: {{ {} }}",
        join("interval: 300ms, count: 100000", gossip),
        if pow.is_empty() { "difficulty: 8, timeout: 1s" } else { pow },
        join("read_timeout: 1s", limits),
    )
}

/// A node's threads and memory before an attack (`baseline`), to compare with after it.
pub struct Baseline {
    pub threads: u64,
    pub rss_kib: u64,
}

pub fn baseline(pid: u32) -> Baseline {
    // Let connection threads of the joins finish first.
    std::thread::sleep(Duration::from_millis(300));
    Baseline {
        threads: proc_status(pid, "Threads"),
        rss_kib: proc_status(pid, "VmRSS"),
    }
}

/// The node survived: alive, threads back near the baseline, memory within a bound, and a
/// message generated now by `p` still reaches `q`.
pub fn still_healthy(
    net: &mut Net,
    node: SocketAddr,
    base: &Baseline,
    p: SocketAddr,
    q: SocketAddr,
) {
    assert!(net.alive(node), "{node} died");
    let pid = net.pid(node);
    wait_until("threads back near the baseline", || {
        proc_status(pid, "Threads") <= base.threads + 2
    });
    let rss = proc_status(pid, "VmRSS");
    assert!(
        rss <= base.rss_kib + 32 * 1024,
        "memory grew from {} KiB to {rss} KiB",
        base.rss_kib
    );
    let since = gossipnet::node::unix_ms();
    wait_until("honest gossip goes on", || {
        let fresh: Vec<String> = of(&net.events("peer", p), "gossip_sent")
            .iter()
            .filter(|e| e["ts_ms"].as_u64().unwrap() > since)
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        let got = strs(&net.events("peer", q), "gossip_received", "id");
        fresh.iter().any(|id| got.contains(id))
    });
}

pub fn rejected_reasons(net: &Net, role: &str, a: SocketAddr) -> Vec<String> {
    of(&net.events(role, a), "rejected")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect()
}

/// The whole frames in `bytes`, decoded (what a remote sent before closing).
pub fn frames_in(bytes: &[u8]) -> Vec<gossipnet::wire::Msg> {
    let mut fr = gossipnet::wire::FrameReader::new(1 << 16);
    fr.push(bytes);
    let mut out = Vec::new();
    while let Ok(Some(body)) = fr.next_frame() {
        if let Ok(m) = gossipnet::wire::Msg::decode(&body) {
            out.push(m);
        }
    }
    out
}
