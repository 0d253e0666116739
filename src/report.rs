//! Reads a run directory's `.jsonl` files (and `faults.jsonl`, if the run recorded the faults
//! it injected) and computes the run's figures. Pure over the parsed events, so every figure
//! is tested on small hand-written runs with known answers.
//!
//! Definitions (also printed by `report --help`):
//! - **seeds**, **peers**: nodes with a `.jsonl` file in the directory; **messages generated**:
//!   `gossip_sent` events. Each node's latest run only (from its last `started`), and only
//!   the nodes of the latest network (lifetimes overlapping in a chain), unless loaded with
//!   all runs; **earlier runs left out** counts the nodes that had earlier runs or were left
//!   out.
//! - **expected deliveries** of a message generated at `t` by `g`: every other peer reachable
//!   from `g` at `t` over links that both ends had logged up (`neighbour_up`, not yet
//!   `neighbour_down`), through peers that had not failed, left or been removed by `t` and
//!   were not frozen at `t`. A failure is the fault time from `faults.jsonl`, or else the
//!   first `removed` event about the peer at any seed; a leave is the peer's `stopped`. A
//!   message from a peer that had already failed expects nobody.
//! - **coverage** = deliveries to expected peers ÷ expected deliveries.
//! - **time to reach all** of a message = last expected receipt − generation, over messages
//!   that reached every expected peer; p50 / p99 / max, in milliseconds (nearest rank over
//!   the sorted times; 0 when no message reached all). Receipts at peers listed apart
//!   (frozen, left) do not count. A message that reached some expected peer only by
//!   catch-up (`via: "sync"`) is left out of these times and counted in **caught up**, with
//!   all deliveries by catch-up (late joiners' included).
//! - **duplicates per delivery** = the peers' last `gossip_duplicates` counters summed ÷ all
//!   deliveries; **withdrawn before sending** = the same with `gossip_withdrawn` (copies taken
//!   back unsent because the neighbour sent us the message first).
//! - **frames per system call** = `frames_in` ÷ `reads` and `frames_out` ÷ `writes`, summed
//!   over the peers' last `stats` (printed when counted).
//! - **dead peer**: each peer faulted by the run, or removed as dead and not frozen: seconds
//!   from the fault to the first Dead Node report about it (a peer's `dead_reported` or a
//!   seed's `dead_report`, whichever is first), and to the moment a majority of seeds
//!   (⌊n/2⌋+1) had logged its removal. With no fault record (a network run by hand) the times
//!   count from the peer's own last line before the report ("from its last logged line"):
//!   it died no earlier, so the times are upper bounds. `-`: no report or no removal.
//! - **frozen peer**: a peer, not in `faults.jsonl`, that was reported dead and logged again
//!   later, after a silence around the report of at least 1 s and over 2 × its interval
//!   between `stats` lines (SIGSTOP then SIGCONT, or a stall): how long it was silent, and
//!   from the start of the silence to the first report and to its removal. Not expected to
//!   receive while silent, not a false removal. Reports sent by a peer after the run faulted
//!   it do not count (a stopped peer resumed at the end fires the misses it slept through).
//! - **left peer**: a peer that left cleanly (`leaving`/`stopped`, or removed with reason
//!   `left`) while the network carried on (another node joined, linked or gossiped over 1 s
//!   later; peers stopped together at the end of a run are not listed): seconds from its
//!   goodbye to its removal by a majority of seeds.
//! - **false removals**: peers removed as dead that the run did not fault (with a fault record),
//!   or, without one, that kept logging after their removal without having been frozen.
//! - **rejected connections**: `rejected` events at all nodes (handshake, proof of work,
//!   malformed input, limits, false dead reports).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

/// The events of one run, by node address.
#[derive(Debug, Default)]
pub struct Run {
    pub seeds: BTreeMap<String, Vec<Value>>,
    pub peers: BTreeMap<String, Vec<Value>>,
    /// Injected faults: peer → (Unix ms, signal name).
    pub faults: BTreeMap<String, (u64, String)>,
    /// Nodes whose files also hold earlier runs (a re-run with the same address appends), or
    /// whose only run ended before this network started; left out unless loaded with
    /// `all_runs`.
    pub earlier_runs: BTreeSet<String>,
}

/// Milliseconds (with microsecond precision when the nodes logged `ts_us`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Dead {
    pub peer: String,
    /// Fault (or last sign of life, see `since`) → first report, seconds (None if no report).
    pub reported_after_s: Option<f64>,
    /// Fault (or last sign of life) → removal by a majority of seeds, seconds.
    pub removed_after_s: Option<f64>,
    /// What the times count from: `fault` (the run's faults.jsonl) or `last_record` (the
    /// peer's own last .jsonl line, for a network run by hand: the death is no earlier).
    pub since: &'static str,
}

/// A peer reported dead that logged again later: stopped (SIGSTOP) or stalled, then resumed.
/// Listed apart and kept out of the coverage and latency figures while it was silent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Frozen {
    pub peer: String,
    /// Its log's silence around the first report: last line before → first line after, s.
    pub silent_s: f64,
    /// Start of the silence → first Dead Node report about it, seconds.
    pub reported_after_s: f64,
    /// Start of the silence → removal by a majority of seeds, seconds (None: not removed).
    pub removed_after_s: Option<f64>,
}

/// A peer that left cleanly (`leaving` / `stopped` in its log, or removed with reason `left`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Left {
    pub peer: String,
    /// Its goodbye → removal (reason `left`) by a majority of seeds, seconds.
    pub removed_after_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub seeds: usize,
    pub peers: usize,
    pub messages: usize,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub coverage: f64,
    pub latency_ms: Latency,
    /// Per message that reached everyone: when it was generated (Unix µs) and its time to
    /// reach all (µs), in generation order. For benchmarks that look at a trend.
    #[serde(skip)]
    pub completions: Vec<(u64, u64)>,
    pub duplicates_per_delivery: f64,
    /// Deliveries by catch-up (`via: "sync"`), to anyone; and messages that reached every
    /// expected peer only with catch-up's help (left out of `latency_ms`).
    pub caught_up: u64,
    pub completed_by_catch_up: u64,
    /// Gossip frames taken back before sending (the remote had sent the message first).
    pub withdrawn_per_delivery: f64,
    /// Peers' frames per `read` and per `send`/`write` system call (0 when not counted).
    pub frames_per_read: f64,
    pub frames_per_write: f64,
    pub dead: Vec<Dead>,
    pub frozen: Vec<Frozen>,
    pub left: Vec<Left>,
    pub false_removals: Vec<String>,
    pub rejected: usize,
    /// Nodes whose earlier runs in the same files were left out (see [`Run::earlier_runs`]).
    pub earlier_runs_skipped: Vec<String>,
}

fn ev<'a>(evs: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    evs.iter().filter(move |e| e["event"] == name)
}

fn ts(e: &Value) -> u64 {
    e["ts_ms"].as_u64().unwrap_or(0)
}

/// Microseconds: `ts_us` when the node wrote it, else `ts_ms` × 1000.
fn us(e: &Value) -> u64 {
    e["ts_us"].as_u64().unwrap_or_else(|| ts(e) * 1000)
}

fn s<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

/// Parses a `.jsonl` text; lines that do not parse (a line cut by a kill) are skipped.
pub fn parse_jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The events of a node's latest run: from its last `started` record on (the whole file when
/// it has none, e.g. a run whose first line was lost). Says whether earlier runs were dropped.
pub fn latest_run(mut evs: Vec<Value>) -> (Vec<Value>, bool) {
    match evs.iter().rposition(|e| e["event"] == "started") {
        Some(i) if i > 0 => (evs.split_off(i), true),
        _ => (evs, false),
    }
}

/// Per peer, its links as it logged them: neighbour → intervals `[up, down)`.
type LinkLog<'a> = HashMap<&'a str, HashMap<&'a str, Vec<(u64, u64)>>>;

/// The overlay over time: which links were up at both ends, and when each peer was gone.
struct Overlay<'a> {
    halves: LinkLog<'a>,
    gone: HashMap<String, u64>,
    /// Frozen peers' silences `(from, to)`: not expected to receive meanwhile.
    away: BTreeMap<String, (u64, u64)>,
}

impl<'a> Overlay<'a> {
    fn new(run: &'a Run) -> Self {
        let mut halves: LinkLog = HashMap::new();
        for (p, evs) in &run.peers {
            let mine = halves.entry(p.as_str()).or_default();
            for e in evs {
                let q = s(e, "peer");
                match e["event"].as_str() {
                    // A new run of this peer (files read with all runs): the links of the one
                    // before ended with it, logged or not.
                    Some("started") => {
                        for v in mine.values_mut() {
                            if let Some(last) = v.last_mut().filter(|l| l.1 == u64::MAX) {
                                last.1 = ts(e);
                            }
                        }
                    }
                    Some("neighbour_up") => mine.entry(q).or_default().push((ts(e), u64::MAX)),
                    Some("neighbour_down") => {
                        if let Some(last) = mine.get_mut(q).and_then(|v| v.last_mut()) {
                            if last.1 == u64::MAX {
                                last.1 = ts(e);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Overlay {
            halves,
            gone: run.gone_at(),
            away: run.frozen_windows(),
        }
    }

    fn half_up(&self, p: &str, q: &str, t: u64) -> bool {
        self.halves
            .get(p)
            .and_then(|m| m.get(q))
            .is_some_and(|v| v.iter().any(|&(a, b)| a <= t && t < b))
    }

    fn alive(&self, p: &str, t: u64) -> bool {
        self.gone.get(p).is_none_or(|&x| x > t)
            && self.away.get(p).is_none_or(|&(a, b)| t < a || t >= b)
    }

    /// The peers a message generated by `g` at `t` is expected to reach: every live peer
    /// reachable from `g` over links up at both ends at `t`. Nobody, if `g` itself was gone.
    fn expected(&self, g: &'a str, t: u64) -> Vec<&'a str> {
        if !self.alive(g, t) {
            return Vec::new();
        }
        let mut seen: BTreeSet<&str> = BTreeSet::from([g]);
        let mut stack = vec![g];
        while let Some(p) = stack.pop() {
            let Some(links) = self.halves.get(p) else {
                continue;
            };
            for &q in links.keys() {
                if !seen.contains(q)
                    && self.alive(q, t)
                    && self.half_up(p, q, t)
                    && self.half_up(q, p, t)
                {
                    seen.insert(q);
                    stack.push(q);
                }
            }
        }
        seen.remove(g);
        seen.into_iter().collect()
    }
}

impl Run {
    /// Loads `seed-*.jsonl`, `peer-*.jsonl` and `faults.jsonl` from a directory, each node's
    /// latest run only.
    pub fn load(dir: &Path) -> std::io::Result<Run> {
        Run::load_runs(dir, false)
    }

    /// As [`Run::load`]; with `all_runs`, every run in the files, read as one long run.
    pub fn load_runs(dir: &Path, all_runs: bool) -> std::io::Result<Run> {
        let mut run = Run::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.ends_with(".jsonl") {
                continue;
            }
            let evs = parse_jsonl(&std::fs::read_to_string(&path)?);
            if name == "faults.jsonl" {
                for e in evs {
                    run.faults.insert(
                        s(&e, "peer").to_string(),
                        (ts(&e), s(&e, "signal").to_string()),
                    );
                }
                continue;
            }
            let Some(node) = evs.first().map(|e| s(e, "node").to_string()) else {
                continue;
            };
            let evs = if all_runs {
                evs
            } else {
                let (latest, dropped) = latest_run(evs);
                if dropped {
                    run.earlier_runs.insert(node.clone());
                }
                latest
            };
            if name.starts_with("seed-") {
                run.seeds.insert(node, evs);
            } else if name.starts_with("peer-") {
                run.peers.insert(node, evs);
            }
        }
        if !all_runs {
            run.drop_stale_nodes();
        }
        Ok(run)
    }

    /// Leaves out nodes whose (latest) run had ended before the latest network's nodes
    /// started: an earlier run in the same directory under other addresses (peers on port
    /// 0, or a demo's random ports). The network is the last group of nodes whose lifetimes
    /// (first to last line) overlap one another in a chain; a seed restarted mid-run
    /// overlaps the rest and stays.
    fn drop_stale_nodes(&mut self) {
        let mut spans: Vec<(u64, u64, String)> = self
            .peers
            .iter()
            .chain(&self.seeds)
            .filter_map(|(n, evs)| {
                let a = evs.iter().map(ts).min()?;
                let b = evs.iter().map(ts).max()?;
                Some((a, b, n.clone()))
            })
            .collect();
        spans.sort();
        // Start of the last group of overlapping spans.
        let mut group_start = 0;
        let mut end = 0;
        for (i, (a, b, _)) in spans.iter().enumerate() {
            if i == 0 || *a > end {
                group_start = i;
            }
            end = end.max(*b);
        }
        for (_, _, n) in spans.drain(..group_start) {
            self.peers.remove(&n);
            self.seeds.remove(&n);
            self.faults.remove(&n);
            self.earlier_runs.insert(n);
        }
    }

    /// When each peer stopped being able to receive: fault, clean leave, or first removal.
    fn gone_at(&self) -> HashMap<String, u64> {
        let mut gone: HashMap<String, u64> = HashMap::new();
        let mut note = |p: &str, t: u64| {
            let e = gone.entry(p.to_string()).or_insert(t);
            *e = (*e).min(t);
        };
        for (p, (t, _)) in &self.faults {
            note(p, *t);
        }
        for evs in self.seeds.values() {
            for e in ev(evs, "removed") {
                note(s(e, "peer"), ts(e));
            }
        }
        for (p, evs) in &self.peers {
            // A stop that a later run of the same peer followed (all runs read) is not the end.
            let last_start = ev(evs, "started").map(ts).max().unwrap_or(0);
            for e in ev(evs, "stopped").filter(|e| ts(e) >= last_start) {
                note(p, ts(e));
            }
        }
        gone
    }

    /// The first Dead Node report about each peer: the earliest a peer sent one
    /// (`dead_reported`) or a seed received one (`dead_report`). Reports by a peer after the
    /// run faulted it do not count: a stopped peer resumed at the end of a run fires the
    /// misses it slept through.
    fn first_reports(&self) -> HashMap<String, u64> {
        let mut first: HashMap<String, u64> = HashMap::new();
        let mut note = |reporter: &str, p: &str, t: u64| {
            if self.faults.get(reporter).is_some_and(|f| f.0 <= t) {
                return;
            }
            let e = first.entry(p.to_string()).or_insert(t);
            *e = (*e).min(t);
        };
        for (reporter, evs) in &self.peers {
            for e in ev(evs, "dead_reported") {
                note(reporter, s(e, "dead"), ts(e));
            }
        }
        for evs in self.seeds.values() {
            for e in ev(evs, "dead_report") {
                note(s(e, "reporter"), s(e, "dead"), ts(e));
            }
        }
        first
    }

    /// Peers that were reported dead and logged again afterwards, with the silence of their
    /// log around the first report: `(last line before, first line after)`. A silence counts
    /// when it lasted at least a second and more than 2 × the peer's interval between `stats`
    /// lines (the median; 3 × its median gap between any lines when it logged fewer than three
    /// `stats`): a live peer writes `stats` every interval, so a falsely reported one has no
    /// such gap. Peers the run faulted on purpose (faults.jsonl) are dead by that record.
    pub fn frozen_windows(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out = BTreeMap::new();
        for (p, r) in self.first_reports() {
            if self.faults.contains_key(&p) {
                continue;
            }
            let Some(evs) = self.peers.get(&p) else {
                continue;
            };
            let mut times: Vec<u64> = evs.iter().map(ts).collect();
            times.sort_unstable();
            let Some(after) = times.iter().position(|&t| t > r) else {
                continue;
            };
            if after == 0 {
                continue;
            }
            let (from, to) = (times[after - 1], times[after]);
            let median_gap = |times: &[u64]| {
                let mut gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
                gaps.sort_unstable();
                gaps.get(gaps.len() / 2).copied().unwrap_or(0)
            };
            let stats: Vec<u64> = ev(evs, "stats").map(ts).collect();
            let usual = if stats.len() >= 3 {
                2 * median_gap(&stats)
            } else {
                3 * median_gap(&times)
            };
            if to - from >= 1000 && to - from > usual {
                out.insert(p, (from, to));
            }
        }
        out
    }

    /// Peers that left cleanly while the network carried on: when they said goodbye
    /// (`leaving`, else `stopped`, else the seeds' removal with reason `left`). The network
    /// carried on when another node still joined, linked or gossiped more than a second after
    /// the goodbye; so the peers stopped together at the end of a run are not listed.
    fn left_at(&self) -> BTreeMap<String, u64> {
        let mut bye = BTreeMap::new();
        for (p, evs) in &self.peers {
            if let Some(e) = ev(evs, "leaving").chain(ev(evs, "stopped")).next() {
                bye.insert(p.clone(), ts(e));
            }
        }
        for (p, (t, r)) in self.removal_at_majority() {
            if r == "left" {
                bye.entry(p).or_insert(t);
            }
        }
        const ACTIVITY: [&str; 6] = [
            "gossip_sent",
            "gossip_received",
            "neighbour_up",
            "peer_list",
            "registered",
            "registered_with",
        ];
        // Each node's last activity, read once; then the latest of every node but one is the
        // latest overall unless that node holds it (one pass, not one per goodbye).
        let mut last: Vec<(u64, &str)> = self
            .peers
            .iter()
            .chain(&self.seeds)
            .map(|(n, evs)| {
                let t = evs
                    .iter()
                    .filter(|e| ACTIVITY.iter().any(|a| e["event"] == *a))
                    .map(ts)
                    .max()
                    .unwrap_or(0);
                (t, n.as_str())
            })
            .collect();
        last.sort_unstable_by(|a, b| b.cmp(a));
        let last_activity = |except: &str| {
            last.iter()
                .find(|(_, n)| *n != except)
                .map_or(0, |(t, _)| *t)
        };
        bye.into_iter()
            .filter(|(p, t)| last_activity(p) > t + 1000)
            .collect()
    }

    /// Peers shown as dead: faulted by the run, or removed as dead and not frozen-and-resumed.
    pub fn dead_peers(&self) -> BTreeSet<String> {
        let frozen = self.frozen_windows();
        let mut dead: BTreeSet<String> = self.faults.keys().cloned().collect();
        dead.extend(
            self.removal_at_majority()
                .into_iter()
                .filter(|(p, (_, r))| r == "dead" && !frozen.contains_key(p))
                .map(|(p, _)| p),
        );
        dead
    }

    /// Peers kept out of latency figures and listed apart: left cleanly, or frozen.
    fn apart(&self) -> BTreeSet<String> {
        let mut apart: BTreeSet<String> = self.frozen_windows().into_keys().collect();
        apart.extend(self.left_at().into_keys());
        apart
    }

    fn removal_at_majority(&self) -> BTreeMap<String, (u64, String)> {
        let majority = self.seeds.len() / 2 + 1;
        let mut times: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for evs in self.seeds.values() {
            let mut per_seed: BTreeMap<String, (u64, String)> = BTreeMap::new();
            for e in ev(evs, "removed") {
                per_seed
                    .entry(s(e, "peer").to_string())
                    .or_insert((ts(e), s(e, "reason").to_string()));
            }
            for (p, v) in per_seed {
                times.entry(p).or_default().push(v);
            }
        }
        times
            .into_iter()
            .filter_map(|(p, mut v)| {
                v.sort();
                v.get(majority.saturating_sub(1)).cloned().map(|x| (p, x))
            })
            .collect()
    }

    pub fn summarize(&self) -> Summary {
        let overlay = Overlay::new(self);
        // id → receiver → receipt time
        // id → receiver → (receipt time, by catch-up)
        let mut receipts: HashMap<&str, HashMap<&str, (u64, bool)>> = HashMap::new();
        let mut caught_up = 0u64;
        let mut all_deliveries = 0u64;
        let mut duplicates = 0u64;
        let mut withdrawn = 0u64;
        // frames in, reads, frames out, writes
        let mut calls = [0u64; 4];
        for (p, evs) in &self.peers {
            for e in ev(evs, "gossip_received") {
                let sync = e["via"] == "sync";
                receipts
                    .entry(s(e, "id"))
                    .or_default()
                    .insert(p.as_str(), (us(e), sync));
                all_deliveries += 1;
                caught_up += sync as u64;
            }
            let last_stats = ev(evs, "stats").last();
            duplicates += last_stats
                .and_then(|e| e["gossip_duplicates"].as_u64())
                .unwrap_or(0);
            withdrawn += last_stats
                .and_then(|e| e["gossip_withdrawn"].as_u64())
                .unwrap_or(0);
            for (sum, key) in calls
                .iter_mut()
                .zip(["frames_in", "reads", "frames_out", "writes"])
            {
                *sum += last_stats.and_then(|e| e[key].as_u64()).unwrap_or(0);
            }
        }
        let per = |frames: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                frames as f64 / n as f64
            }
        };
        let apart = self.apart();
        let mut messages = 0;
        let (mut delivered, mut expected) = (0u64, 0u64);
        let mut latencies = Vec::new();
        let mut completions = Vec::new();
        let mut completed_by_catch_up = 0u64;
        for (g, evs) in &self.peers {
            for m in ev(evs, "gossip_sent") {
                messages += 1;
                let t = us(m);
                let got = receipts.get(s(m, "id"));
                let mut last = t;
                let mut complete = true;
                let mut pulled = false;
                for p in overlay.expected(g, ts(m)) {
                    expected += 1;
                    match got.and_then(|r| r.get(p)) {
                        Some(&(rt, sync)) => {
                            delivered += 1;
                            if !apart.contains(p) {
                                last = last.max(rt);
                                pulled |= sync;
                            }
                        }
                        None => complete = false,
                    }
                }
                if complete && pulled {
                    completed_by_catch_up += 1;
                } else if complete {
                    latencies.push(last.saturating_sub(t));
                    completions.push((t, last.saturating_sub(t)));
                }
            }
        }
        latencies.sort_unstable();
        completions.sort_unstable();
        let pct = |q: f64| -> f64 {
            if latencies.is_empty() {
                0.0
            } else {
                latencies[((latencies.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0
            }
        };
        let removals = self.removal_at_majority();
        let first_report = self.first_reports();
        let frozen_windows = self.frozen_windows();
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
        let dead = self
            .dead_peers()
            .iter()
            .map(|p| {
                // Without a fault record, the peer's own last line before it was reported (or
                // at all): it died no earlier.
                let report = first_report.get(p.as_str()).copied().unwrap_or(u64::MAX);
                let (from, since) = match self.faults.get(p) {
                    Some(f) => (Some(f.0), "fault"),
                    None => (
                        self.peers
                            .get(p)
                            .and_then(|evs| evs.iter().map(ts).filter(|&t| t <= report).max()),
                        "last_record",
                    ),
                };
                Dead {
                    peer: p.clone(),
                    reported_after_s: from
                        .zip(first_report.get(p.as_str()).copied())
                        .map(|(f, r)| secs(f, r)),
                    removed_after_s: from
                        .zip(removals.get(p).filter(|(_, r)| r == "dead").map(|x| x.0))
                        .map(|(f, r)| secs(f, r)),
                    since,
                }
            })
            .collect();
        let frozen = frozen_windows
            .iter()
            .map(|(p, &(from, to))| Frozen {
                peer: p.clone(),
                silent_s: secs(from, to),
                reported_after_s: secs(from, first_report.get(p).copied().unwrap_or(from)),
                removed_after_s: removals
                    .get(p)
                    .filter(|(_, r)| r == "dead")
                    .map(|x| secs(from, x.0)),
            })
            .collect();
        let left = self
            .left_at()
            .into_iter()
            .filter(|(p, _)| !frozen_windows.contains_key(p))
            .map(|(p, t)| Left {
                removed_after_s: removals
                    .get(&p)
                    .filter(|(_, r)| r == "left")
                    .map(|x| secs(t, x.0)),
                peer: p,
            })
            .collect();
        let false_removals = removals
            .iter()
            .filter(|(_, (_, r))| r == "dead")
            // A frozen peer was unresponsive: its removal was right, though it resumed later.
            .filter(|(p, _)| !frozen_windows.contains_key(*p))
            .filter(|(p, (t, _))| {
                if !self.faults.is_empty() {
                    !self.faults.contains_key(*p)
                } else {
                    // Still logging well after its removal: it was alive.
                    self.peers
                        .get(*p)
                        .and_then(|evs| evs.last())
                        .is_some_and(|e| ts(e) > t + 2000)
                }
            })
            .map(|(p, _)| p.clone())
            .collect();
        let rejected = self
            .seeds
            .values()
            .chain(self.peers.values())
            .map(|evs| ev(evs, "rejected").count())
            .sum();
        Summary {
            seeds: self.seeds.len(),
            peers: self.peers.len(),
            messages,
            deliveries: delivered,
            expected_deliveries: expected,
            coverage: if expected == 0 {
                1.0
            } else {
                delivered as f64 / expected as f64
            },
            latency_ms: Latency {
                p50: pct(0.5),
                p99: pct(0.99),
                max: pct(1.0),
            },
            completions,
            caught_up,
            completed_by_catch_up,
            duplicates_per_delivery: if all_deliveries == 0 {
                0.0
            } else {
                duplicates as f64 / all_deliveries as f64
            },
            withdrawn_per_delivery: if all_deliveries == 0 {
                0.0
            } else {
                withdrawn as f64 / all_deliveries as f64
            },
            frames_per_read: per(calls[0], calls[1]),
            frames_per_write: per(calls[2], calls[3]),
            dead,
            frozen,
            left,
            false_removals,
            rejected,
            earlier_runs_skipped: self.earlier_runs.iter().cloned().collect(),
        }
    }
}

fn opt_s(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2} s")).unwrap_or_else(|| "-".into())
}

/// The human table.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "seeds                      {}", s.seeds);
    let _ = writeln!(o, "peers                      {}", s.peers);
    let _ = writeln!(o, "messages generated         {}", s.messages);
    let _ = writeln!(
        o,
        "coverage                   {:.4}  ({} of {} expected deliveries)",
        s.coverage, s.deliveries, s.expected_deliveries
    );
    let _ = writeln!(
        o,
        "time to reach all (ms)     p50 {:.2}  p99 {:.2}  max {:.2}",
        s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.max
    );
    if s.caught_up > 0 {
        let _ = writeln!(
            o,
            "caught up                  {} deliveries by catch-up; {} messages reached all \
             only with it (not in the times above)",
            s.caught_up, s.completed_by_catch_up
        );
    }
    let _ = writeln!(
        o,
        "duplicates per delivery    {:.3} (and {:.3} withdrawn before sending)",
        s.duplicates_per_delivery, s.withdrawn_per_delivery
    );
    if s.frames_per_read > 0.0 {
        let _ = writeln!(
            o,
            "frames per system call     {:.1} per read, {:.1} per send",
            s.frames_per_read, s.frames_per_write
        );
    }
    if s.dead.is_empty() {
        let _ = writeln!(o, "dead peers                 none");
    }
    for d in &s.dead {
        let _ = writeln!(
            o,
            "dead peer {:<22} first report after {}, removed by a majority after {}{}",
            d.peer,
            opt_s(d.reported_after_s),
            opt_s(d.removed_after_s),
            if d.since == "fault" {
                ""
            } else {
                " (from its last logged line)"
            }
        );
    }
    for f in &s.frozen {
        let _ = writeln!(
            o,
            "frozen peer {:<20} silent {:.2} s, then logged again; first report after {:.2} s, removed after {}",
            f.peer,
            f.silent_s,
            f.reported_after_s,
            f.removed_after_s
                .map(|v| format!("{v:.2} s"))
                .unwrap_or_else(|| "- (not removed)".into())
        );
    }
    for l in &s.left {
        let _ = writeln!(
            o,
            "left peer {:<22} left cleanly, removed (left) by a majority after {}",
            l.peer,
            opt_s(l.removed_after_s)
        );
    }
    let _ = writeln!(
        o,
        "false removals             {}",
        if s.false_removals.is_empty() {
            "0".to_string()
        } else {
            format!(
                "{} ({})",
                s.false_removals.len(),
                s.false_removals.join(", ")
            )
        }
    );
    let _ = writeln!(o, "rejected connections       {}", s.rejected);
    if !s.earlier_runs_skipped.is_empty() {
        let _ = writeln!(
            o,
            "earlier runs left out      {} node(s): earlier runs in the same files, or nodes of an earlier network (--all-runs to read all)",
            s.earlier_runs_skipped.len()
        );
    }
    o
}

/// The `--json` object.
pub fn json(s: &Summary) -> Value {
    serde_json::json!({
        "seeds": s.seeds,
        "peers": s.peers,
        "messages": s.messages,
        "deliveries": s.deliveries,
        "expected_deliveries": s.expected_deliveries,
        "coverage": s.coverage,
        "latency_ms": s.latency_ms,
        "duplicates_per_delivery": s.duplicates_per_delivery,
        "caught_up": s.caught_up,
        "completed_by_catch_up": s.completed_by_catch_up,
        "withdrawn_per_delivery": s.withdrawn_per_delivery,
        "frames_per_read": s.frames_per_read,
        "frames_per_write": s.frames_per_write,
        "dead": s.dead,
        "frozen": s.frozen,
        "left": s.left,
        "false_removals": s.false_removals.len(),
        "rejected": s.rejected,
        "earlier_runs_skipped": s.earlier_runs_skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(t: u64, node: &str, event: &str, extra: Value) -> Value {
        let mut v = json!({"ts_ms": t, "node": node, "event": event});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";
    const C: &str = "127.0.0.1:3";
    const S1: &str = "127.0.0.1:9001";
    const S2: &str = "127.0.0.1:9002";
    const S3: &str = "127.0.0.1:9003";

    /// Three peers in a line A–B–C, three seeds. A sends m1 at 1000 (B and C receive) and m2
    /// at 5000 (B only: C was killed at 3700 and removed at 4500/4600).
    fn run() -> Run {
        let mut r = Run::default();
        r.peers.insert(
            A.into(),
            vec![
                e(100, A, "neighbour_up", json!({"peer": B})),
                e(
                    1000,
                    A,
                    "gossip_sent",
                    json!({"id": "m1", "text": "1000:a:1"}),
                ),
                e(3900, A, "dead_reported", json!({"dead": C})),
                e(
                    5000,
                    A,
                    "gossip_sent",
                    json!({"id": "m2", "text": "5000:a:2"}),
                ),
                e(6000, A, "stats", json!({"gossip_duplicates": 1})),
            ],
        );
        r.peers.insert(
            B.into(),
            vec![
                e(100, B, "neighbour_up", json!({"peer": A})),
                e(200, B, "neighbour_up", json!({"peer": C})),
                e(1010, B, "gossip_received", json!({"id": "m1", "from": A})),
                e(5030, B, "gossip_received", json!({"id": "m2", "from": A})),
                e(6000, B, "stats", json!({"gossip_duplicates": 2})),
            ],
        );
        r.peers.insert(
            C.into(),
            vec![
                e(200, C, "neighbour_up", json!({"peer": B})),
                e(1050, C, "gossip_received", json!({"id": "m1", "from": B})),
            ],
        );
        for (s, t) in [(S1, 4500), (S2, 4600), (S3, 9000)] {
            r.seeds.insert(
                s.into(),
                vec![
                    e(0, s, "started", json!({})),
                    e(t, s, "removed", json!({"peer": C, "reason": "dead"})),
                    e(t, s, "rejected", json!({"remote": "x", "reason": "y"})),
                ],
            );
        }
        r.faults.insert(C.into(), (4000 - 300, "KILL".into()));
        r
    }

    #[test]
    fn figures_of_a_small_run() {
        let s = run().summarize();
        assert_eq!((s.seeds, s.peers, s.messages), (3, 3, 2));
        // m1: B and C expected and delivered; m2: only B expected (C faulted at 3700).
        assert_eq!((s.deliveries, s.expected_deliveries), (3, 3));
        assert_eq!(s.coverage, 1.0);
        // m1 reached all at 1050 (50 ms), m2 at 5030 (30 ms).
        assert_eq!(
            s.latency_ms,
            Latency {
                p50: 50.0,
                p99: 50.0,
                max: 50.0
            }
        );
        assert!((s.duplicates_per_delivery - 1.0).abs() < 1e-9);
        assert_eq!(
            s.dead,
            vec![Dead {
                peer: C.into(),
                reported_after_s: Some(0.2),
                // The second seed to remove it (a majority of 3) did so at 4600.
                removed_after_s: Some(0.9),
                since: "fault",
            }]
        );
        assert!(s.false_removals.is_empty());
        assert_eq!(s.rejected, 3);
        let j = json(&s);
        assert_eq!(j["false_removals"], 0);
        assert_eq!(j["latency_ms"]["p99"], 50.0);
        assert!(table(&s).contains("coverage                   1.0000"));
    }

    #[test]
    fn a_run_directory_is_read_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, lines: &[&str]| {
            std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap()
        };
        w(
            "peer-127.0.0.1-1.jsonl",
            &[
                r#"{"ts_ms":10,"node":"127.0.0.1:1","event":"neighbour_up","peer":"127.0.0.1:2"}"#,
                r#"{"ts_ms":20,"node":"127.0.0.1:1","event":"gossip_sent","id":"m","text":"20:127.0.0.1:1:1"}"#,
            ],
        );
        w(
            "peer-127.0.0.1-2.jsonl",
            &[
                r#"{"ts_ms":10,"node":"127.0.0.1:2","event":"neighbour_up","peer":"127.0.0.1:1"}"#,
                r#"{"ts_ms":25,"node":"127.0.0.1:2","event":"gossip_received","id":"m","from":"127.0.0.1:1","ts_us":25400}"#,
                // A line cut short by a kill is skipped.
                r#"{"ts_ms":30,"node":"127.0.0.1:2","ev"#,
            ],
        );
        w(
            "seed-127.0.0.1-9.jsonl",
            &[r#"{"ts_ms":15,"node":"127.0.0.1:9","event":"started","role":"seed"}"#],
        );
        w(
            "faults.jsonl",
            &[r#"{"ts_ms":40,"peer":"127.0.0.1:2","signal":"KILL"}"#],
        );
        let run = Run::load(dir.path()).unwrap();
        let s = run.summarize();
        assert_eq!((s.seeds, s.peers, s.messages), (1, 2, 1));
        assert_eq!(s.coverage, 1.0);
        // Sent at 20 ms (no ts_us: 20,000 µs), received at 25,400 µs.
        assert_eq!(s.latency_ms.max, 5.4);
        assert_eq!(s.dead.len(), 1);
        assert_eq!(s.dead[0].reported_after_s, None);
    }

    #[test]
    fn only_the_latest_run_of_a_node_is_read_unless_all_runs() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"ts_ms":1,"node":"127.0.0.1:1","event":"started","role":"peer"}"#,
            r#"{"ts_ms":2,"node":"127.0.0.1:1","event":"gossip_sent","id":"old"}"#,
            r#"{"ts_ms":10,"node":"127.0.0.1:1","event":"started","role":"peer"}"#,
            r#"{"ts_ms":11,"node":"127.0.0.1:1","event":"gossip_sent","id":"new"}"#,
        ];
        std::fs::write(
            dir.path().join("peer-127.0.0.1-1.jsonl"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        let latest = Run::load(dir.path()).unwrap();
        assert_eq!(latest.peers["127.0.0.1:1"].len(), 2);
        assert_eq!(latest.summarize().messages, 1);
        assert_eq!(latest.summarize().earlier_runs_skipped, vec!["127.0.0.1:1"]);
        let all = Run::load_runs(dir.path(), true).unwrap();
        assert_eq!(all.summarize().messages, 2);
        assert!(all.earlier_runs.is_empty());
    }

    #[test]
    fn a_frozen_then_resumed_peer_is_listed_apart_not_as_dead_or_falsely_removed() {
        let mut r = run();
        r.faults.clear();
        let c = r.peers.get_mut(C).unwrap();
        // C logs every 100 ms until 1050, is silent while frozen, then logs again from 9000.
        for t in (300..=1000).step_by(100) {
            c.push(e(t, C, "stats", json!({})));
        }
        c.push(e(9000, C, "stats", json!({})));
        c.push(e(9100, C, "stats", json!({})));
        c.sort_by_key(ts);
        let s = r.summarize();
        assert!(s.dead.is_empty(), "{:?}", s.dead);
        assert!(s.false_removals.is_empty());
        assert_eq!(
            s.frozen,
            vec![Frozen {
                peer: C.into(),
                silent_s: 7.95,
                reported_after_s: 2.85,
                removed_after_s: Some(3.55),
            }]
        );
        // m2 (at 5000) was not expected at C, silent then.
        assert_eq!((s.deliveries, s.expected_deliveries), (3, 3));
        let t = table(&s);
        assert!(t.contains("frozen peer 127.0.0.1:3"), "{t}");
    }

    #[test]
    fn a_report_sent_by_a_faulted_peer_after_its_fault_does_not_count() {
        let mut r = run();
        // C was killed at 3700; a (stopped, then resumed) C reporting A at 9000 is stale.
        r.peers
            .get_mut(C)
            .unwrap()
            .push(e(9000, C, "dead_reported", json!({"dead": A})));
        let a = r.peers.get_mut(A).unwrap();
        a.push(e(12000, A, "stats", json!({})));
        let s = r.summarize();
        assert!(s.frozen.is_empty(), "{:?}", s.frozen);
        assert_eq!(s.dead.len(), 1);
    }

    #[test]
    fn a_peer_that_left_is_listed_apart_with_its_removal() {
        let mut r = run();
        let b = r.peers.get_mut(B).unwrap();
        b.push(e(5500, B, "leaving", json!({})));
        b.push(e(5501, B, "stopped", json!({})));
        // The network carries on after B left: A gets a fresh peer list.
        r.peers
            .get_mut(A)
            .unwrap()
            .push(e(7000, A, "peer_list", json!({})));
        for (i, evs) in r.seeds.values_mut().enumerate() {
            evs.push(e(
                5510 + 10 * i as u64,
                "s",
                "removed",
                json!({"peer": B, "reason": "left"}),
            ));
        }
        let s = r.summarize();
        assert_eq!(
            s.left,
            vec![Left {
                peer: B.into(),
                removed_after_s: Some(0.02),
            }]
        );
        assert_eq!(s.dead.len(), 1, "only C is dead");
        assert!(table(&s).contains("left peer 127.0.0.1:2"));
        // B's receipts do not count in time to reach all: m1's last other receipt is C's.
        assert_eq!(s.latency_ms.max, 50.0);
    }

    #[test]
    fn peers_stopped_together_at_the_end_of_a_run_are_not_listed_as_left() {
        let mut r = run();
        for (i, p) in [A, B].into_iter().enumerate() {
            let evs = r.peers.get_mut(p).unwrap();
            evs.push(e(8000 + i as u64, p, "leaving", json!({})));
            evs.push(e(8001 + i as u64, p, "stopped", json!({})));
        }
        let s = r.summarize();
        assert!(s.left.is_empty(), "{:?}", s.left);
        assert_eq!(s.latency_ms.max, 50.0);
    }

    #[test]
    fn the_timeline_draws_and_explains_the_marks_that_occur() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        timeline_svg(&run(), &path).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        for mark in [
            "a peer&apos;s life",
            "fault injected by the run",
            "first Dead Node report",
            "removed as dead by a majority",
        ] {
            assert!(svg.contains(mark), "{mark}");
        }
        // Nobody joined through a peer list, left or froze in this run: nothing to explain.
        for absent in ["joined:", "said goodbye", "silent:", "removed as left"] {
            assert!(!svg.contains(absent), "{absent}");
        }
    }

    #[test]
    fn nodes_of_an_earlier_network_under_other_addresses_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, node: &str, times: &[u64]| {
            let lines: Vec<String> = times
                .iter()
                .map(|t| format!(r#"{{"ts_ms":{t},"node":"{node}","event":"stats"}}"#))
                .collect();
            std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap();
        };
        // Yesterday's peer on another port, then today's seed and peer; the seed restarted
        // mid-run still overlaps today's peer.
        w("peer-127.0.0.1-1.jsonl", "127.0.0.1:1", &[100, 200]);
        w("seed-127.0.0.1-9.jsonl", "127.0.0.1:9", &[1000, 1500]);
        w("peer-127.0.0.1-2.jsonl", "127.0.0.1:2", &[1100, 3000]);
        w("seed-127.0.0.1-8.jsonl", "127.0.0.1:8", &[2000, 3100]);
        let run = Run::load(dir.path()).unwrap();
        assert_eq!(run.peers.keys().collect::<Vec<_>>(), vec!["127.0.0.1:2"]);
        assert_eq!(run.seeds.len(), 2);
        assert_eq!(
            run.earlier_runs.iter().collect::<Vec<_>>(),
            vec!["127.0.0.1:1"]
        );
        let all = Run::load_runs(dir.path(), true).unwrap();
        assert_eq!(all.peers.len(), 2);
    }

    #[test]
    fn a_missed_delivery_lowers_coverage() {
        let mut r = run();
        r.peers
            .get_mut(C)
            .unwrap()
            .retain(|e| e["event"] != "gossip_received");
        let s = r.summarize();
        assert_eq!((s.deliveries, s.expected_deliveries), (2, 3));
        assert!((s.coverage - 2.0 / 3.0).abs() < 1e-9);
        // Only m2 is complete.
        assert_eq!(s.latency_ms.max, 30.0);
    }

    #[test]
    fn a_message_that_needed_catch_up_counts_as_delivered_but_not_in_the_times() {
        let mut r = run();
        for e in r.peers.get_mut(C).unwrap() {
            if e["event"] == "gossip_received" {
                e["via"] = json!("sync");
                e["ts_ms"] = json!(60_000);
            }
        }
        let s = r.summarize();
        assert_eq!((s.deliveries, s.expected_deliveries), (3, 3));
        assert_eq!((s.caught_up, s.completed_by_catch_up), (1, 1));
        assert_eq!(s.latency_ms.max, 30.0, "only m2's time");
        assert!(table(&s).contains("caught up                  1 deliveries"));
    }

    #[test]
    fn a_removed_peer_that_was_not_faulted_is_a_false_removal() {
        let mut r = run();
        r.faults.clear();
        r.peers
            .get_mut(C)
            .unwrap()
            .push(e(9999, C, "stats", json!({})));
        let s = r.summarize();
        assert_eq!(s.false_removals, vec![C.to_string()]);
        // No fault record: from C's last line before the first report (1050 → 3900).
        assert_eq!(s.dead[0].since, "last_record");
        assert_eq!(s.dead[0].reported_after_s, Some(2.85));
        assert!(s.frozen.is_empty());
    }
}

/// Writes the overlay as Graphviz DOT: peers (dead ones red, frozen-then-resumed orange, left
/// grey), every link that was ever up (links to dead peers dashed red), seeds as boxes with
/// dotted lines to the peers that registered with them.
pub fn topology_dot(run: &Run) -> String {
    let summary_dead = run.dead_peers();
    let frozen = run.frozen_windows();
    let left = run.left_at();
    let short = |a: &str| {
        a.rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_else(|| a.to_string())
    };
    let mut o = String::new();
    let _ = writeln!(o, "graph gossipnet {{");
    let _ = writeln!(
        o,
        "  layout=neato; overlap=false; splines=true; outputorder=edgesfirst;"
    );
    let _ = writeln!(
        o,
        "  label=\"gossipnet overlay: {} seeds (boxes, dotted lines to the peers registered with them), {} peers (circles: blue live, red dead, orange frozen then resumed, grey left cleanly); blue lines are links, dashed red ones links to dead peers; labels are ports\"; fontsize=11;",
        run.seeds.len(),
        run.peers.len()
    );
    let _ = writeln!(
        o,
        "  node [fontsize=10, style=filled, fontname=\"Helvetica\"];"
    );
    for s in run.seeds.keys() {
        let _ = writeln!(
            o,
            "  \"{s}\" [shape=box, fillcolor=\"#ffd27f\", label=\"seed {}\"];",
            short(s)
        );
    }
    for p in run.peers.keys() {
        if frozen.contains_key(p) {
            let _ = writeln!(
                o,
                "  \"{p}\" [shape=circle, fillcolor=\"#ffcc80\", label=\"{}\\nfrozen\"];",
                short(p)
            );
        } else if left.contains_key(p) && !summary_dead.contains(p) {
            let _ = writeln!(
                o,
                "  \"{p}\" [shape=circle, fillcolor=\"#e0e0e0\", label=\"{}\\nleft\"];",
                short(p)
            );
        } else if summary_dead.contains(p) {
            let _ = writeln!(
                o,
                "  \"{p}\" [shape=circle, fillcolor=\"#ff8a80\", label=\"{}\\ndead\"];",
                short(p)
            );
        } else {
            let _ = writeln!(
                o,
                "  \"{p}\" [shape=circle, fillcolor=\"#b3d4fc\", label=\"{}\"];",
                short(p)
            );
        }
    }
    let mut links: BTreeSet<(String, String)> = BTreeSet::new();
    let mut seed_links: BTreeSet<(String, String)> = BTreeSet::new();
    for (p, evs) in &run.peers {
        for e in ev(evs, "neighbour_up") {
            let q = s(e, "peer").to_string();
            let (a, b) = if *p < q {
                (p.clone(), q)
            } else {
                (q, p.clone())
            };
            links.insert((a, b));
        }
        for e in ev(evs, "registered_with") {
            seed_links.insert((s(e, "seed").to_string(), p.clone()));
        }
    }
    for (seed, p) in &seed_links {
        let _ = writeln!(
            o,
            "  \"{seed}\" -- \"{p}\" [style=dotted, color=\"#c8c8c8\", len=2.5];"
        );
    }
    for (a, b) in &links {
        if summary_dead.contains(a) || summary_dead.contains(b) {
            let _ = writeln!(o, "  \"{a}\" -- \"{b}\" [style=dashed, color=\"#e53935\"];");
        } else {
            let _ = writeln!(o, "  \"{a}\" -- \"{b}\" [color=\"#1565c0\", penwidth=1.4];");
        }
    }
    let _ = writeln!(o, "}}");
    o
}

/// Propagation curves: for each message, the fraction of its expected peers reached against
/// milliseconds since generation. Points are (ms, fraction) steps, one series per message.
/// Peers listed apart (left, frozen) are left out, as from the latency figures.
pub fn propagation_curves(run: &Run) -> Vec<Vec<(f64, f64)>> {
    let overlay = Overlay::new(run);
    let apart = run.apart();
    let mut receipts: HashMap<&str, HashMap<&str, u64>> = HashMap::new();
    for (p, evs) in &run.peers {
        for e in ev(evs, "gossip_received") {
            receipts
                .entry(s(e, "id"))
                .or_default()
                .insert(p.as_str(), us(e));
        }
    }
    let mut curves = Vec::new();
    for (g, evs) in &run.peers {
        for m in ev(evs, "gossip_sent") {
            let t = ts(m);
            let mut expected = overlay.expected(g, t);
            expected.retain(|p| !apart.contains(*p));
            if expected.is_empty() {
                continue;
            }
            let got = receipts.get(s(m, "id"));
            let sent = us(m);
            let mut times: Vec<u64> = expected
                .iter()
                .filter_map(|p| {
                    got.and_then(|r| r.get(p))
                        .map(|&rt| rt.saturating_sub(sent))
                })
                .collect();
            times.sort_unstable();
            let n = expected.len() as f64;
            let mut pts = vec![(0.0, 0.0)];
            for (i, dt) in times.iter().enumerate() {
                let ms = *dt as f64 / 1000.0;
                pts.push((ms, i as f64 / n));
                pts.push((ms, (i + 1) as f64 / n));
            }
            curves.push(pts);
        }
    }
    curves
}

/// The fraction a step curve has reached at `x`.
fn at(curve: &[(f64, f64)], x: f64) -> f64 {
    curve
        .iter()
        .take_while(|(cx, _)| *cx <= x)
        .last()
        .map(|p| p.1)
        .unwrap_or(0.0)
}

/// The plot's horizontal extent in milliseconds: the p99 of the messages' times to reach all
/// their peers, with a margin. A few slow messages (a peer stalled, a link repaired late)
/// must not squeeze every other curve into a vertical line at 0; those run off the edge and
/// the caption says so.
fn plot_extent_ms(curves: &[Vec<(f64, f64)>]) -> f64 {
    let mut ends: Vec<f64> = curves
        .iter()
        .map(|c| c.last().map(|p| p.0).unwrap_or(0.0))
        .collect();
    ends.sort_by(|a, b| a.total_cmp(b));
    let p99 = ends
        .get(((ends.len().max(1) - 1) as f64 * 0.99).round() as usize)
        .copied()
        .unwrap_or(1.0);
    (p99 * 1.15).max(0.01)
}

/// Draws the propagation curves as SVG: one thin line per message, the median bold, the p99
/// time to reach all as a dashed line; every mark is in the legend. The time axis covers the
/// propagation window (see [`plot_extent_ms`]), in ms, or in seconds when that is over 2 s.
pub fn plot_svg(run: &Run, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let curves = propagation_curves(run);
    if curves.is_empty() {
        return Err("no message with expected receivers in this run".into());
    }
    let extent_ms = plot_extent_ms(&curves);
    let (scale, unit) = if extent_ms > 2000.0 {
        (1000.0, "seconds")
    } else {
        (1.0, "milliseconds")
    };
    let xmax = extent_ms / scale;
    let ends: Vec<f64> = curves
        .iter()
        .map(|c| c.last().map(|p| p.0).unwrap_or(0.0))
        .collect();
    let beyond: Vec<f64> = ends.iter().copied().filter(|&e| e > extent_ms).collect();
    let slowest = ends.iter().copied().fold(0.0, f64::max);
    let mut caption = format!("Propagation of {} messages", curves.len());
    if !beyond.is_empty() {
        let slowest = if slowest > 2000.0 {
            format!("{:.2} s", slowest / 1000.0)
        } else {
            format!("{slowest:.2} ms")
        };
        let _ = write!(
            caption,
            " ({} reached their last peer past the right edge, the slowest after {slowest})",
            beyond.len()
        );
    }
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xmax, 0.0..1.02)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(format!("{unit} since the message was generated"))
        .y_desc("fraction of its expected peers reached")
        .draw()
        .map_err(|e| e.to_string())?;
    let thin = RGBColor(21, 101, 192).mix(0.25);
    for (i, c) in curves.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = c.iter().map(|&(x, y)| ((x / scale).min(xmax), y)).collect();
        pts.push((xmax, c.last().map(|p| p.1).unwrap_or(0.0)));
        let series = chart
            .draw_series(LineSeries::new(pts, thin.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        if i == 0 {
            series
                .label("one message (a step at each peer's first receipt)")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], thin.stroke_width(2))
                });
        }
    }
    let steps = 400;
    let median: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let x = xmax * i as f64 / steps as f64;
            let mut ys: Vec<f64> = curves.iter().map(|c| at(c, x * scale)).collect();
            ys.sort_by(|a, b| a.total_cmp(b));
            (x, ys[ys.len() / 2])
        })
        .collect();
    let red = RGBColor(183, 28, 28);
    chart
        .draw_series(LineSeries::new(median, red.stroke_width(3)))
        .map_err(|e| e.to_string())?
        .label("median over the messages at each moment")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(3)));
    let summary = run.summarize();
    let p99 = summary.latency_ms.p99 / scale;
    if summary.latency_ms.p99 > 0.0 && p99 <= xmax {
        let grey = RGBColor(60, 60, 60);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(p99, 0.0), (p99, 1.02)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label(format!(
                "p99 time to reach all ({:.2} {})",
                p99,
                if scale > 1.0 { "s" } else { "ms" }
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Draws the run's timeline as SVG to `path`: one row per peer (in the order they started),
/// its life as a grey line from its first to its last logged line, and marks for when it got
/// its peer list, was faulted (faults.jsonl), was silent (frozen), was first reported dead,
/// said goodbye, and was removed by a majority of seeds (dead or left). Seconds since the
/// first line of the run. Only the marks that occur are drawn, and each is in the legend.
pub fn timeline_svg(run: &Run, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let mut rows: Vec<(&String, &Vec<Value>)> = run.peers.iter().collect();
    if rows.is_empty() {
        return Err("no peer in this run".into());
    }
    rows.sort_by_key(|(p, evs)| (evs.first().map(ts).unwrap_or(0), p.to_string()));
    let t0 = run
        .peers
        .values()
        .chain(run.seeds.values())
        .filter_map(|evs| evs.iter().map(ts).min())
        .min()
        .unwrap_or(0);
    let t1 = run
        .peers
        .values()
        .chain(run.seeds.values())
        .filter_map(|evs| evs.iter().map(ts).max())
        .max()
        .unwrap_or(t0);
    let x = |t: u64| t.saturating_sub(t0) as f64 / 1000.0;
    let xmax = (x(t1) * 1.03).max(0.1);
    let n = rows.len();
    let reports = run.first_reports();
    let removals = run.removal_at_majority();
    let frozen = run.frozen_windows();
    let height = (120 + 18 * n as u32).clamp(300, 2400);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let ports: Vec<String> = rows
        .iter()
        .map(|(p, _)| p.rsplit_once(':').map(|x| x.1).unwrap_or(p).to_string())
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Timeline of {n} peers and {} seeds", run.seeds.len()),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..xmax, -0.5..(n as f64 - 0.5))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.min(60))
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < ports.len() {
                ports[i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc("seconds since the run's first logged line")
        .y_desc("peer (port)")
        .draw()
        .map_err(|e| e.to_string())?;
    let grey = RGBColor(170, 170, 170);
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, evs))| {
            let a = evs.iter().map(ts).min().unwrap_or(t0);
            let b = evs.iter().map(ts).max().unwrap_or(a);
            PathElement::new(
                vec![(x(a), i as f64), (x(b), i as f64)],
                grey.stroke_width(2),
            )
        }))
        .map_err(|e| e.to_string())?
        .label("a peer's life: its first to its last logged line")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    // (x, row) of one kind of mark.
    let marks = |what: &dyn Fn(&str, &[Value]) -> Option<u64>| -> Vec<(f64, f64)> {
        rows.iter()
            .enumerate()
            .filter_map(|(i, (p, evs))| what(p, evs).map(|t| (x(t), i as f64)))
            .collect()
    };
    let joined = marks(&|_, evs| ev(evs, "peer_list").next().map(ts));
    let faulted = marks(&|p, _| run.faults.get(p).map(|f| f.0));
    let reported = marks(&|p, _| reports.get(p).copied());
    let bye = marks(&|_, evs| ev(evs, "leaving").next().map(ts));
    let removed_dead = marks(&|p, _| removals.get(p).filter(|r| r.1 == "dead").map(|r| r.0));
    let removed_left = marks(&|p, _| removals.get(p).filter(|r| r.1 == "left").map(|r| r.0));
    let silences: Vec<((f64, f64), (f64, f64))> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, (p, _))| {
            frozen
                .get(p.as_str())
                .map(|&(a, b)| ((x(a), i as f64), (x(b), i as f64)))
        })
        .collect();
    let orange = RGBColor(251, 140, 0);
    if !silences.is_empty() {
        chart
            .draw_series(
                silences
                    .iter()
                    .map(|&(a, b)| PathElement::new(vec![a, b], orange.stroke_width(5))),
            )
            .map_err(|e| e.to_string())?
            .label("silent: frozen, then logged again")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(5))
            });
    }
    let blue = RGBColor(21, 101, 192);
    let red = RGBColor(183, 28, 28);
    if !joined.is_empty() {
        chart
            .draw_series(joined.iter().map(|&p| Circle::new(p, 3, blue.filled())))
            .map_err(|e| e.to_string())?
            .label("joined: got its peer list from the seeds")
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, blue.filled()));
    }
    if !faulted.is_empty() {
        chart
            .draw_series(
                faulted
                    .iter()
                    .map(|&p| Cross::new(p, 5, BLACK.stroke_width(2))),
            )
            .map_err(|e| e.to_string())?
            .label("fault injected by the run (faults.jsonl)")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK.stroke_width(2)));
    }
    if !reported.is_empty() {
        chart
            .draw_series(
                reported
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 5, orange.filled())),
            )
            .map_err(|e| e.to_string())?
            .label("first Dead Node report about it")
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, orange.filled()));
    }
    if !bye.is_empty() {
        chart
            .draw_series(bye.iter().map(|&p| Circle::new(p, 4, grey.stroke_width(2))))
            .map_err(|e| e.to_string())?
            .label("said goodbye (leaving)")
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, grey.stroke_width(2)));
    }
    let square = |(x, y): (f64, f64), c: RGBColor| {
        EmptyElement::at((x, y)) + Rectangle::new([(-4, -4), (4, 4)], c.filled())
    };
    if !removed_dead.is_empty() {
        chart
            .draw_series(removed_dead.iter().map(|&p| square(p, red)))
            .map_err(|e| e.to_string())?
            .label("removed as dead by a majority of seeds")
            .legend(move |(x, y)| Rectangle::new([(x + 6, y - 4), (x + 14, y + 4)], red.filled()));
    }
    if !removed_left.is_empty() {
        let dark = RGBColor(97, 97, 97);
        chart
            .draw_series(removed_left.iter().map(|&p| square(p, dark)))
            .map_err(|e| e.to_string())?
            .label("removed as left by a majority of seeds")
            .legend(move |(x, y)| Rectangle::new([(x + 6, y - 4), (x + 14, y + 4)], dark.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod picture_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topology_marks_dead_peers_and_links() {
        let mut r = Run::default();
        let up = |t: u64, n: &str, p: &str| json!({"ts_ms": t, "node": n, "event": "neighbour_up", "peer": p});
        r.peers.insert(
            "127.0.0.1:1".into(),
            vec![up(1, "127.0.0.1:1", "127.0.0.1:2")],
        );
        r.peers.insert(
            "127.0.0.1:2".into(),
            vec![
                up(1, "127.0.0.1:2", "127.0.0.1:1"),
                up(2, "127.0.0.1:2", "127.0.0.1:3"),
            ],
        );
        r.peers.insert(
            "127.0.0.1:3".into(),
            vec![up(2, "127.0.0.1:3", "127.0.0.1:2")],
        );
        r.faults.insert("127.0.0.1:3".into(), (5, "KILL".into()));
        let dot = topology_dot(&r);
        assert_eq!(dot.matches(" -- ").count(), 2, "{dot}");
        assert!(
            dot.contains("\"127.0.0.1:2\" -- \"127.0.0.1:3\" [style=dashed"),
            "{dot}"
        );
        assert!(dot.contains("3\\ndead"), "{dot}");
    }

    #[test]
    fn one_slow_message_does_not_set_the_time_axis() {
        let mut curves: Vec<Vec<(f64, f64)>> =
            (0..100).map(|_| vec![(0.0, 0.0), (10.0, 1.0)]).collect();
        curves.push(vec![(0.0, 0.0), (74_000.0, 1.0)]);
        let x = plot_extent_ms(&curves);
        assert!((x - 11.5).abs() < 1e-9, "{x}");
    }

    #[test]
    fn curves_step_to_one_when_all_are_reached() {
        let mut r = Run::default();
        let e = |t: u64, n: &str, ev: &str, extra: Value| {
            let mut v = json!({"ts_ms": t, "node": n, "event": ev});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        r.peers.insert(
            "a".into(),
            vec![
                e(0, "a", "neighbour_up", json!({"peer": "b"})),
                e(100, "a", "gossip_sent", json!({"id": "m"})),
            ],
        );
        r.peers.insert(
            "b".into(),
            vec![
                e(0, "b", "neighbour_up", json!({"peer": "a"})),
                e(0, "b", "neighbour_up", json!({"peer": "c"})),
                e(110, "b", "gossip_received", json!({"id": "m"})),
            ],
        );
        r.peers.insert(
            "c".into(),
            vec![
                e(0, "c", "neighbour_up", json!({"peer": "b"})),
                e(130, "c", "gossip_received", json!({"id": "m"})),
            ],
        );
        let c = propagation_curves(&r);
        assert_eq!(c.len(), 1);
        assert_eq!(at(&c[0], 5.0), 0.0);
        assert_eq!(at(&c[0], 10.0), 0.5);
        assert_eq!(at(&c[0], 30.0), 1.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        plot_svg(&r, &path).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("median"));
        assert!(svg.contains("one message") && svg.contains("p99 time to reach all"));
        assert!(svg.contains("milliseconds since the message was generated"));
    }
}
