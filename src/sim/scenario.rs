//! Scenarios for the simulator and the summary they print.
//!
//! Every scenario starts the seeds, then the peers 2 ms apart, lets the overlay settle, and has
//! `messages` items generated 20 ms apart by peers drawn at random among those that have a
//! neighbour. What happens meanwhile is the scenario's:
//! - `steady`: nothing.
//! - `churn`: 20% of the peers crash at random moments of the message window, and as many new
//!   peers join at random moments of it.
//! - `crash` / `hang`: 1% of the peers (at least one) crash, or hang, a quarter into the window.
//! - `drop`: a quarter into the window, 1% of the peers (at least one) start dropping every
//!   item they should push on (they still keep their place, announce ids, answer grafts and
//!   catch-up): in `gossip.mode: rooted` they are drawn among the peers with children, whose
//!   subtrees then get items only by other ways, unless they leave such a parent.
//!   `drop-root`: the root of the tree does so (in the other modes, the first peer started).
//! - `crash-root`: in `gossip.mode: rooted`, the root of the tree crashes a quarter into the
//!   window (the peers must choose another); in the other modes, the first peer started.
//! - `partition`: the peers are split in two halves at random; a quarter into the window the
//!   overlay between the halves is cut (seeds stay reachable from both), at three quarters it
//!   heals.
//! - `late-join`: 10% more peers (at least one) join after the last item was generated.
//! - `sybil`: one attacker host (`SYBIL_IP`, public) starts half as many identities as there
//!   are honest peers, right after them; each is a real peer core, behaving well, so the
//!   attack is numbers alone. After the last item 10% more honest peers join (the newcomers,
//!   also counted as late joiners), and the summary says how many identities the seeds list and
//!   what share of each newcomer's neighbours are the attacker's.
//!
//! An item must reach every peer that had a neighbour when it was generated and is still
//! running at the end (`deliveries_expected`); `missed` counts those it did not reach. A peer
//! made faulty (`drop`, `drop-root`) is the attacker: from then on it generates nothing and
//! what it receives is not counted (it is no longer expected anywhere). Late
//! joiners are not expected to receive what was sent before they joined: `history_missed`
//! counts what they lack of it. Deliveries by catch-up count as deliveries (`caught_up`), but
//! an item that needed catch-up to reach everyone is left out of `time_to_all_ms` (it is
//! counted in `items_completed_by_catch_up`): that figure is the time gossip takes to spread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::config::{Config, GossipMode};
use crate::node::Core;
use crate::sim::{micros, peer_id, Micros, NodeCore, NodeId, NodeState, Observed, World};

/// The hop count of a node that got an item by catch-up.
const CAUGHT_UP: u8 = u8::MAX - 1;
/// The hop count of a node that got an item by gossip from one that caught it up (in rooted
/// mode what catch-up brings is announced along the tree and grafted).
const PASSED_ON: u8 = u8::MAX - 2;
/// Catch-up rounds the partition scenario runs after the halves heal.
const PARTITION_ROUNDS: u32 = 20;
/// Peers start this far apart.
const JOIN_GAP: Micros = 2_000;
/// Items are generated this far apart.
const MESSAGE_GAP: Micros = 20_000;
/// Quiet time after the joins, and after the last item.
const SETTLE: Micros = 5_000_000;
/// The `sybil` scenario's attacker host: one public address (TEST-NET-2), a port per identity.
pub const SYBIL_IP: [u8; 4] = [198, 51, 100, 7];

fn sybil_addr(k: usize) -> SocketAddr {
    SocketAddr::from((SYBIL_IP, 1024 + k as u16))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Steady,
    Churn,
    Crash,
    CrashRoot,
    Hang,
    Drop,
    DropRoot,
    Partition,
    LateJoin,
    Sybil,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "steady" => Kind::Steady,
            "churn" => Kind::Churn,
            "crash" => Kind::Crash,
            "crash-root" => Kind::CrashRoot,
            "hang" => Kind::Hang,
            "drop" => Kind::Drop,
            "drop-root" => Kind::DropRoot,
            "partition" => Kind::Partition,
            "late-join" => Kind::LateJoin,
            "sybil" => Kind::Sybil,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Steady => "steady",
            Kind::Churn => "churn",
            Kind::Crash => "crash",
            Kind::CrashRoot => "crash-root",
            Kind::Hang => "hang",
            Kind::Drop => "drop",
            Kind::DropRoot => "drop-root",
            Kind::Partition => "partition",
            Kind::LateJoin => "late-join",
            Kind::Sybil => "sybil",
        }
    }
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Params {
    pub peers: usize,
    pub seeds: usize,
    pub messages: usize,
    /// Items generated a second (network-wide); `None`: one every 20 ms.
    pub rate: Option<f64>,
    /// Model the batch window of every connection's queue (see `World::batching`).
    pub batching: bool,
    /// Model CPUs every node shares (see `World::model_cpus`).
    pub cpus: Option<crate::sim::Cpus>,
    pub rng: u64,
    pub kind: Kind,
    pub latency: (Duration, Duration),
    pub config: Config,
    /// Print a progress line on stderr every few seconds of wall time.
    pub progress: bool,
    /// Count the frames delivered by type (`frame_types` in the summary).
    pub frame_types: bool,
}

/// A step of a scenario, scheduled on the world's clock.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Publish,
    Join(NodeId),
    Crash(NodeId),
    Hang(NodeId),
    /// This many peers start dropping what they should push on (see the module doc).
    Drop(usize),
    /// The root of the rooted tree (or the first peer) crashes.
    CrashRoot(NodeId),
    /// The root of the rooted tree (or the first peer) drops what it should push on.
    DropRoot(NodeId),
    Cut,
    Heal,
}

/// One generated item, as the run follows it.
struct Item {
    at: Micros,
    /// Hops from the origin to each node that has it (`u8::MAX`: not received).
    hops: Vec<u8>,
    /// Who must receive it (had a neighbour when it was generated), in node order; 32-bit
    /// node ids, as a run has fewer than 2^32 nodes (a list per item: 100,000 peers and 1,000
    /// items make 10^8 of them).
    expected: Vec<u32>,
    /// The latest first receipt among `expected` by gossip.
    last: Micros,
    /// The latest first receipt among `expected`, however it came (catch-up too).
    last_any: Micros,
    /// Its id, once its `gossip_sent` is seen.
    id: Option<[u8; 32]>,
}

/// Items looked up among the newest before the map (`Tally::item`): deliveries are nearly all
/// of the last few items generated.
const NEWEST: usize = 4;

#[derive(Default)]
struct Tally {
    items: Vec<Item>,
    by_id: HashMap<[u8; 32], usize>,
    deliveries: u64,
    /// Deliveries by catch-up (`via: "sync"`).
    caught_up: u64,
    hop_max: u8,
    /// First removal of each peer: when, and the reason.
    removed: HashMap<NodeId, (Micros, bool)>,
    /// When each peer last received an item by catch-up.
    last_caught_up: HashMap<NodeId, Micros>,
    /// Nodes whose address is not made by `peer_addr` (the Sybil's identities).
    other_addrs: HashMap<SocketAddr, NodeId>,
    /// `partition`: parents left (summed over peers) when the overlay was cut and when it
    /// healed, to tell the leaves of parents across the cut from those of the healing.
    left_at_cut: Option<u64>,
    left_at_heal: Option<u64>,
}

impl Tally {
    fn node_of(&self, addr: &SocketAddr) -> Option<NodeId> {
        peer_id(addr).or_else(|| self.other_addrs.get(addr).copied())
    }

    /// The item with id `id`: looked for among the newest first, then in the map.
    fn item(&self, id: &[u8; 32]) -> Option<usize> {
        let n = self.items.len();
        let newest = n.saturating_sub(NEWEST)..n;
        newest
            .rev()
            .find(|&i| self.items[i].id.as_ref() == Some(id))
            .or_else(|| self.by_id.get(id).copied())
    }

    /// `node` turned faulty (`drop`, `drop-root`): it is the attacker, and what it receives,
    /// and when, is no longer counted.
    fn unexpect(&mut self, node: NodeId) {
        for item in &mut self.items {
            if let Ok(at) = item.expected.binary_search(&(node as u32)) {
                item.expected.remove(at);
            }
        }
    }

    fn observe(&mut self, o: &Observed) {
        match o.record.event {
            "gossip_received" => {
                let Some(r) = &o.record.receipt else {
                    return;
                };
                let (Some(idx), Some(from)) = (self.item(&r.id), self.node_of(&r.from)) else {
                    return;
                };
                let item = &mut self.items[idx];
                if item.hops.len() <= o.node.max(from) {
                    item.hops.resize(o.node.max(from) + 1, u8::MAX);
                }
                self.deliveries += 1;
                if item.expected.binary_search(&(o.node as u32)).is_ok() {
                    item.last_any = item.last_any.max(o.at);
                }
                if r.caught_up {
                    // Pulled by catch-up: delivered, but not by spreading.
                    item.hops[o.node] = CAUGHT_UP;
                    self.caught_up += 1;
                    self.last_caught_up.insert(o.node, o.at);
                    return;
                }
                if item.hops[from] >= PASSED_ON {
                    // Passed on from a peer that caught it up: hops unknown, and it reached
                    // this one by catch-up in the end.
                    item.hops[o.node] = PASSED_ON;
                    return;
                }
                let hop = item.hops[from].saturating_add(1).min(PASSED_ON - 1);
                item.hops[o.node] = hop;
                if item.expected.binary_search(&(o.node as u32)).is_ok() {
                    item.last = item.last.max(o.at);
                }
                self.hop_max = self.hop_max.max(hop);
            }
            "gossip_sent" => {
                let id = o
                    .record
                    .get("id")
                    .and_then(|v| v.as_str())
                    .and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok());
                if let Some(id) = id {
                    let idx = self.items.len().wrapping_sub(1);
                    if let Some(item) = self.items.last_mut() {
                        if item.at == o.at && !self.by_id.contains_key(&id) {
                            self.by_id.insert(id, idx);
                            item.id = Some(id);
                            if item.hops.len() <= o.node {
                                item.hops.resize(o.node + 1, u8::MAX);
                            }
                            item.hops[o.node] = 0;
                        }
                    }
                }
            }
            "removed" => {
                let peer = o
                    .record
                    .get("peer")
                    .and_then(|v| v.as_str())
                    .and_then(|p| p.parse::<SocketAddr>().ok())
                    .and_then(|a| self.node_of(&a));
                let dead = o.record.get("reason").and_then(|v| v.as_str()) == Some("dead");
                if let Some(p) = peer {
                    self.removed.entry(p).or_insert((o.at, dead));
                }
            }
            _ => {}
        }
    }
}

/// Runs one scenario and returns its summary (a JSON object; `wall_s` is the only field that
/// differs between two runs with the same parameters).
pub fn run(p: &Params) -> Value {
    run_traced(p, false).0
}

/// [`run`], and with `trace` every action of every core in order (see [`World::trace`]).
pub fn run_traced(p: &Params, trace: bool) -> (Value, Vec<String>) {
    let wall = Instant::now();
    let mut config = p.config.clone();
    // The simulator decides who generates when.
    config.gossip.count = 0;
    let mut w = World::new(config, p.seeds.max(1), p.latency, p.rng);
    if p.batching {
        w.model_batching();
    }
    if let Some(c) = &p.cpus {
        w.model_cpus(c.clone());
    }
    if trace {
        w.trace = Some(Vec::new());
    }
    if p.frame_types {
        w.count_frame_types();
    }
    let seeds = w.nodes.len();
    for id in 0..seeds {
        w.start_at(0, id);
    }
    let mut initial = Vec::with_capacity(p.peers);
    for i in 0..p.peers {
        let id = w.add_peer();
        w.start_at(100_000 + i as Micros * JOIN_GAP, id);
        initial.push(id);
    }
    let window_start = 100_000 + p.peers as Micros * JOIN_GAP + SETTLE;
    let gap = p
        .rate
        .filter(|r| *r > 0.0)
        .map_or(MESSAGE_GAP, |r| (1e6 / r).max(1.0) as Micros);
    let window = p.messages as Micros * gap;
    let window_end = window_start + window;
    for k in 0..p.messages {
        w.schedule(window_start + k as Micros * gap, Step::Publish);
    }
    let lv = &w.config.liveness;
    // Neighbours' misses, then the seeds' probe: the link and a fresh dial at once, the dial
    // failing after `pow.timeout` at most (the simulator has no transient dial errors, which
    // a seed would retry).
    let detection_bound = micros(
        lv.interval * (lv.misses + 1)
            + lv.probe_timeout * 2
            + lv.reply_timeout
            + w.config.pow.timeout,
    );
    let mut faults = false;
    let mut late = Vec::new();
    let mut late_at: Vec<Micros> = Vec::new();
    let mut sybils = Vec::new();
    match p.kind {
        Kind::Steady => {}
        Kind::Churn => {
            faults = true;
            let n = p.peers / 5;
            let mut victims = initial.clone();
            victims.shuffle(&mut w.rng);
            for &v in victims.iter().take(n) {
                let at = window_start + w.rng.gen_range(0..window.max(1));
                w.schedule(at, Step::Crash(v));
            }
            for _ in 0..n {
                let id = w.add_peer();
                let at = window_start + w.rng.gen_range(0..window.max(1));
                w.schedule(at, Step::Join(id));
            }
        }
        Kind::Crash | Kind::Hang => {
            faults = true;
            let n = (p.peers / 100).max(1).min(p.peers);
            let mut victims = initial.clone();
            victims.shuffle(&mut w.rng);
            for &v in victims.iter().take(n) {
                let step = if p.kind == Kind::Crash {
                    Step::Crash(v)
                } else {
                    Step::Hang(v)
                };
                w.schedule(window_start + window / 4, step);
            }
        }
        Kind::Drop => {
            faults = true;
            let n = (p.peers / 100).max(1).min(p.peers);
            w.schedule(window_start + window / 4, Step::Drop(n));
        }
        Kind::CrashRoot => {
            faults = true;
            w.schedule(window_start + window / 4, Step::CrashRoot(initial[0]));
        }
        Kind::DropRoot => {
            faults = true;
            w.schedule(window_start + window / 4, Step::DropRoot(initial[0]));
        }
        Kind::Partition => {
            for &id in &initial {
                w.nodes[id].side = w.rng.gen_range(0..2);
            }
            w.schedule(window_start + window / 4, Step::Cut);
            w.schedule(window_start + window * 3 / 4, Step::Heal);
        }
        Kind::LateJoin | Kind::Sybil => {
            if p.kind == Kind::Sybil {
                let start = 100_000 + p.peers as Micros * JOIN_GAP;
                for k in 0..(p.peers / 2).min(60_000) {
                    let id = w.add_peer_at(sybil_addr(k));
                    w.start_at(start + k as Micros * JOIN_GAP / 4, id);
                    sybils.push(id);
                }
            }
            let n = (p.peers / 10).max(1);
            for k in 0..n {
                let id = w.add_peer();
                let at = window_end + 1_000_000 + k as Micros * JOIN_GAP;
                w.schedule(at, Step::Join(id));
                w.count_bytes_in(id);
                late.push(id);
                late_at.push(at);
            }
        }
    }
    let mut end = window_end + SETTLE;
    if faults {
        end += detection_bound;
    }
    if p.kind == Kind::Partition {
        // What each half sent while cut crosses by catch-up, a few rounds per hop.
        end += micros(w.config.gossip.sync_interval * PARTITION_ROUNDS);
    }
    if !late.is_empty() {
        end += late.len() as Micros * JOIN_GAP + 1_000_000;
    }

    let mut tally = Tally {
        other_addrs: sybils.iter().map(|&id| (w.nodes[id].addr, id)).collect(),
        ..Tally::default()
    };
    let mut generated = 0usize;
    let mut last_progress = Instant::now();
    // Run in slices of virtual time so progress can be printed.
    let slice: Micros = 1_000_000;
    let mut t = 0;
    while t < end {
        t = (t + slice).min(end);
        while let Some(step) = w.run_until(t, &mut |o| tally.observe(o)) {
            match step {
                Step::Publish => {
                    if publish(&mut w, &mut tally) {
                        generated += 1;
                    }
                }
                Step::Join(id) => w.start_at(w.now, id),
                Step::Crash(id) => w.crash(id),
                Step::Hang(id) => w.hang(id),
                Step::Drop(n) => {
                    let rooted = p.config.gossip.mode == GossipMode::Rooted;
                    let mut parents: Vec<NodeId> = (0..w.nodes.len())
                        .filter(|&id| {
                            w.nodes[id].state == NodeState::Running
                                && w.peer(id).is_some_and(|c| {
                                    !rooted || c.tree_children().is_some_and(|k| k > 0)
                                })
                        })
                        .collect();
                    parents.shuffle(&mut w.rng);
                    for &id in parents.iter().take(n) {
                        w.nodes[id].drops = true;
                        tally.unexpect(id);
                    }
                }
                Step::CrashRoot(first) => {
                    let root = root_of(&w).unwrap_or(first);
                    w.crash(root);
                }
                Step::DropRoot(first) => {
                    let root = root_of(&w).unwrap_or(first);
                    w.nodes[root].drops = true;
                    tally.unexpect(root);
                }
                Step::Cut => {
                    tally.left_at_cut = Some(parents_left(&w));
                    w.cut = true;
                }
                Step::Heal => {
                    tally.left_at_heal = Some(parents_left(&w));
                    w.cut = false;
                }
            }
        }
        if p.progress && last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            eprintln!(
                "sim: {:.0} of {:.0} virtual s, {generated} of {} items, {} events, {:.0} s wall",
                t as f64 / 1e6,
                end as f64 / 1e6,
                p.messages,
                w.events,
                wall.elapsed().as_secs_f64()
            );
        }
    }
    let mut summary = summarize(p, &w, &tally, generated, (&late, &late_at), wall);
    if p.kind == Kind::Sybil {
        sybil_summary(&mut summary, &w, sybils.len(), &late);
    }
    (summary, w.trace.take().unwrap_or_default())
}

/// Parents left for what they delivered, summed over every peer (running or not).
fn parents_left(w: &World) -> u64 {
    w.nodes
        .iter()
        .filter_map(|n| match &n.core {
            NodeCore::Peer(c) => Some(c.parents_left()),
            _ => None,
        })
        .sum()
}

/// The running peer that is the root of the rooted tree, if any.
fn root_of(w: &World) -> Option<NodeId> {
    (0..w.nodes.len()).find(|&n| {
        w.nodes[n].state == NodeState::Running
            && w.peer(n)
                .is_some_and(|c| c.tree_root().is_some_and(|r| r.1 == 0))
    })
}

/// A peer drawn at random among those with a neighbour generates an item; every other such
/// peer must receive it. Faulty peers (`drop`, `drop-root`) neither generate nor count.
fn publish(w: &mut World, tally: &mut Tally) -> bool {
    let linked: Vec<NodeId> = (0..w.nodes.len())
        .filter(|&id| {
            w.nodes[id].state == NodeState::Running
                && !w.nodes[id].drops
                && w.peer(id).is_some_and(|p| p.neighbour_count() > 0)
        })
        .collect();
    let Some(&origin) = linked.get(w.rng.gen_range(0..linked.len().max(1))) else {
        return false;
    };
    let expected = linked
        .into_iter()
        .filter(|&id| id != origin)
        .map(|id| id as u32)
        .collect();
    tally.items.push(Item {
        at: w.now,
        hops: vec![u8::MAX; w.nodes.len()],
        expected,
        last: w.now,
        last_any: w.now,
        id: None,
    });
    w.publish(origin, &mut |o| tally.observe(o));
    true
}

fn summarize(
    p: &Params,
    w: &World,
    tally: &Tally,
    generated: usize,
    (late, late_at): (&[NodeId], &[Micros]),
    wall: Instant,
) -> Value {
    let running = |id: NodeId| w.nodes[id].state == NodeState::Running;
    let mut expected = 0u64;
    let mut got = 0u64;
    let mut times = Vec::new();
    let mut times_any = Vec::new();
    let mut history_missed = 0u64;
    let mut completed_by_catch_up = 0u64;
    for item in &tally.items {
        let mut all = true;
        let mut pulled = false;
        for n in item.expected.iter().map(|&n| n as NodeId) {
            if !running(n) {
                continue;
            }
            expected += 1;
            match item.hops.get(n) {
                Some(&(CAUGHT_UP | PASSED_ON)) => {
                    got += 1;
                    pulled = true;
                }
                Some(&h) if h != u8::MAX => got += 1,
                _ => all = false,
            }
        }
        if all {
            times_any.push((item.last_any.saturating_sub(item.at)) as f64 / 1000.0);
        }
        if all && pulled {
            completed_by_catch_up += 1;
        } else if all {
            times.push((item.last.saturating_sub(item.at)) as f64 / 1000.0);
        }
        for &n in late {
            if running(n) && item.hops.get(n).is_none_or(|&h| h == u8::MAX) {
                history_missed += 1;
            }
        }
    }
    times.sort_by(f64::total_cmp);
    times_any.sort_by(f64::total_cmp);
    let mut duplicates = 0u64;
    // Tree mode: prunes sent, ids grafted, eager links at the end (summed over peers).
    let mut tree: Option<[u64; 3]> = None;
    // Rooted mode: the roots the running peers hang from at the end (one when the tree is
    // whole).
    let mut roots = std::collections::BTreeSet::new();
    let mut children_max = 0;
    for n in &w.nodes {
        if let NodeCore::Peer(c) = &n.core {
            if n.state == NodeState::Running {
                roots.extend(c.tree_root().map(|r| r.0));
                children_max = children_max.max(c.tree_children().unwrap_or(0));
            }
            duplicates += c.gossip_duplicates();
            if let Some(t) = c.tree_counters() {
                let sum = tree.get_or_insert([0; 3]);
                for (s, x) in sum.iter_mut().zip(t) {
                    *s += x;
                }
            }
        }
    }
    let mut false_removals = 0u64;
    let mut detection = Vec::new();
    for (&node, &(at, dead)) in &tally.removed {
        match w.nodes.get(node).and_then(|n| n.fault_at) {
            Some(f) if f <= at => detection.push((at - f) as f64 / 1e6),
            _ => {
                if dead {
                    false_removals += 1;
                }
            }
        }
    }
    detection.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| -> Value {
        if v.is_empty() {
            return Value::Null;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        json!(round3(v[i]))
    };
    let mut out = json!({
        "scenario": p.kind.name(),
        "peers": p.peers,
        "seeds": p.seeds,
        "messages": generated,
        "rng": p.rng,
        "deliveries_expected": expected,
        "deliveries": tally.deliveries,
        "missed": expected - got,
        "caught_up": tally.caught_up,
        "items_completed_by_catch_up": completed_by_catch_up,
        "duplicates_per_delivery": round3(duplicates as f64 / tally.deliveries.max(1) as f64),
        "last_delivery_hop_max": tally.hop_max,
        "time_to_all_ms": { "p50": pct(&times, 0.5), "p99": pct(&times, 0.99), "max": pct(&times, 1.0) },
        "time_to_all_any_way_ms": { "p50": pct(&times_any, 0.5), "p99": pct(&times_any, 0.99), "max": pct(&times_any, 1.0) },
        "removals": tally.removed.len(),
        "false_removals": false_removals,
        "detection_s": { "p50": pct(&detection, 0.5), "max": pct(&detection, 1.0) },
        "virtual_s": round3(w.now as f64 / 1e6),
        "events": w.events,
        "frames": w.frames,
    });
    // The busiest peer's frames sent, against the median peer's: 1 when the work is even.
    let mut sent: Vec<u64> = w
        .nodes
        .iter()
        .zip(&w.frames_out)
        .filter(|(n, _)| matches!(n.core, NodeCore::Peer(_)))
        .map(|(_, &f)| f)
        .collect();
    sent.sort_unstable();
    if let (Some(&max), Some(&median)) = (sent.last(), sent.get(sent.len() / 2)) {
        out["frames_sent_max"] = json!(max);
        out["frames_sent_max_over_median"] = json!(round3(max as f64 / median.max(1) as f64));
    }
    if let Some(types) = &w.frame_types {
        out["frame_types"] = json!(types);
    }
    if let Some([prunes, grafted, eager]) = tree {
        out["tree_prunes"] = json!(prunes);
        out["tree_grafted"] = json!(grafted);
        out["tree_eager_links"] = json!(eager);
    }
    if !roots.is_empty() {
        out["tree_roots"] = json!(roots.len());
        out["tree_children_max"] = json!(children_max);
        let parents_left = parents_left(w);
        out["tree_parents_left"] = json!(parents_left);
        if let (Some(cut), Some(heal)) = (tally.left_at_cut, tally.left_at_heal) {
            // Before the cut, while cut (parents on the other side deliver nothing), after.
            out["tree_parents_left_by_phase"] = json!([
                cut,
                heal.saturating_sub(cut),
                parents_left.saturating_sub(heal)
            ]);
        }
    }
    if !late.is_empty() {
        out["late_joiners"] = json!(late.len());
        out["history_missed"] = json!(history_missed);
        // From a late joiner's start to the last item it caught up, and the bytes it was sent
        // by then and after (every frame, as encoded on the wire, to the end of the run).
        let mut took: Vec<f64> = late
            .iter()
            .zip(late_at)
            .filter_map(|(n, at)| tally.last_caught_up.get(n).map(|t| (t - at) as f64 / 1e6))
            .collect();
        took.sort_by(f64::total_cmp);
        let bytes: u64 = late.iter().filter_map(|&n| w.nodes[n].bytes_in).sum();
        out["late_join_catch_up_s"] = json!({ "p50": pct(&took, 0.5), "max": pct(&took, 1.0) });
        out["late_joiner_bytes_in"] = json!(bytes / late.len() as u64);
    }
    out["wall_s"] = json!(round3(wall.elapsed().as_secs_f64()));
    out
}

/// What the attacker got: identities listed (at the first seed) and newcomers' neighbours.
fn sybil_summary(out: &mut Value, w: &World, sybils: usize, newcomers: &[NodeId]) {
    let attacker = |a: &SocketAddr| a.ip() == std::net::IpAddr::from(SYBIL_IP);
    let listed = match &w.nodes[0].core {
        NodeCore::Seed(s) => s.members().iter().filter(|m| attacker(&m.addr)).count(),
        NodeCore::Peer(_) => 0,
    };
    let (mut all, mut most, mut share, mut linked) = (0, 0, 0.0, 0);
    for p in newcomers.iter().filter_map(|&n| w.peer(n)) {
        let ns = p.neighbours();
        if ns.is_empty() {
            continue;
        }
        linked += 1;
        let theirs = ns.iter().filter(|a| attacker(a)).count();
        most = most.max(theirs);
        share += theirs as f64 / ns.len() as f64;
        if theirs == ns.len() {
            all += 1;
        }
    }
    out["sybils"] = json!(sybils);
    out["sybils_listed"] = json!(listed);
    out["newcomers_linked"] = json!(linked);
    out["newcomers_all_sybil"] = json!(all);
    out["newcomer_sybil_neighbours_max"] = json!(most);
    out["newcomer_sybil_share"] = json!(round3(share / f64::from(linked.max(1))));
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
