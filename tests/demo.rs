//! `scripts/demo.sh --fast` as a user runs it (with the test build's binaries): it must end by
//! itself, leave no process behind, and print a report whose figures are right; Ctrl-C stops
//! it with the report of what ran.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line mentions `dir` (the demo's nodes all take `DIR/seeds.yaml`):
/// found by PID in /proc, so the test can kill exactly what this run started.
fn pids_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Kills, by PID, the demo script and every node of its run when dropped: a failing test
/// leaves nothing running (stopped nodes are resumed so that SIGKILL is not held up).
struct Reaper {
    script: std::process::Child,
    run: PathBuf,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let pid = self.script.id();
        let _ = self.script.kill();
        let _ = self.script.wait();
        for pid in pids_mentioning(&self.run) {
            signal(pid, "CONT");
            signal(pid, "KILL");
        }
        // The hosts demo's namespaces (`gd<its pid>…`), if it could not delete them itself.
        for ns in namespaces_of(pid) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The network namespaces a demo script with this PID built (`--hosts`).
fn namespaces_of(pid: u32) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return vec![];
    };
    let prefix = format!("gd{pid}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| rest == "br" || rest.starts_with('h'))
        })
        .map(str::to_string)
        .collect()
}

/// Starts `scripts/demo.sh` with `args` (and `--out`) on the test build's binaries, its
/// stdout to a file: the reaper that kills it all on drop, the run directory, the stdout file.
fn start_demo(out: &Path, args: &[&str]) -> (Reaper, PathBuf, PathBuf) {
    start_script("scripts/demo.sh", out, args)
}

fn start_script(script: &str, out: &Path, args: &[&str]) -> (Reaper, PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_peer")).parent().unwrap();
    let run = out.join("run");
    let stdout_path = out.join("stdout");
    let script = Command::new("bash")
        .arg(root.join(script))
        .args(args)
        .arg("--out")
        .arg(&run)
        .env("GOSSIPNET_BIN", bin)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reaper = Reaper {
        script,
        run: run.clone(),
    };
    (reaper, run, stdout_path)
}

/// Waits (at most 300 s) for the demo to end by itself.
fn ends_by_itself(reaper: &mut Reaper) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = reaper.script.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the demo did not end by itself"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn demo_fast_with_kills_reports_full_coverage_and_both_deaths() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--fast",
        "--seeds",
        "3",
        "--peers",
        "6",
        "--kill",
        "2",
        "--duration",
        "20",
    ];
    let (mut reaper, run, _) = start_demo(out.path(), &args);
    let status = ends_by_itself(&mut reaper);
    assert!(status.success(), "demo.sh exited with {status}");

    // No process of this run is left: every node wrote its last words or was killed by us.
    let leftover = Command::new("pgrep")
        .args(["-f", &run.join("seeds.yaml").to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );

    let report = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(&run)
        .arg("--json")
        .output()
        .unwrap();
    assert!(report.status.success());
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(r["seeds"], 3);
    assert_eq!(r["peers"], 6);
    assert!(r["messages"].as_u64().unwrap() >= 40, "{r}");
    assert_eq!(r["coverage"], 1.0, "{r}");
    assert_eq!(r["false_removals"], 0, "{r}");
    let dead = r["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 2, "{r}");
    for d in dead {
        assert!(d["reported_after_s"].is_number(), "{r}");
        assert!(d["removed_after_s"].is_number(), "{r}");
    }
    let faults = std::fs::read_to_string(run.join("faults.jsonl")).unwrap();
    assert!(
        faults.contains("\"signal\":\"KILL\"") && faults.contains("\"signal\":\"STOP\""),
        "{faults}"
    );
}

#[test]
fn ctrl_c_stops_every_node_and_prints_the_report_of_what_ran() {
    let out = tempfile::tempdir().unwrap();
    // No --duration: without the interrupt it would run until every message is delivered.
    let (mut reaper, run, stdout_path) =
        start_demo(out.path(), &["--fast", "--seeds", "3", "--peers", "4"]);
    let patience = Duration::from_secs(120);
    // Running: every peer joined and gossip has started.
    let start = Instant::now();
    let gossiping = || {
        std::fs::read_dir(&run)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("peer-")
                    && name.ends_with(".jsonl")
                    && std::fs::read_to_string(e.path())
                        .is_ok_and(|t| t.contains("\"event\":\"gossip_sent\""))
            })
    };
    // (The first peer may gossip before the demo has started the last one.)
    let all_up = || pids_mentioning(&run.join("seeds.yaml")).len() == 7;
    while !(gossiping() && all_up()) {
        assert!(
            reaper.script.try_wait().unwrap().is_none(),
            "the demo ended before gossiping: {}",
            std::fs::read_to_string(&stdout_path).unwrap_or_default()
        );
        assert!(
            start.elapsed() < patience,
            "the demo never started gossiping"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let nodes = pids_mentioning(&run.join("seeds.yaml"));
    assert_eq!(nodes.len(), 7, "3 seeds and 4 peers running: {nodes:?}");

    // Ctrl-C in a terminal: SIGINT to the script.
    signal(reaper.script.id(), "INT");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = reaper.script.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < patience,
            "the demo did not end after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    assert_eq!(status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(stdout.contains("stopping 7 processes"), "{stdout}");
    // The report of what ran.
    assert!(stdout.contains("peers                      4"), "{stdout}");
    assert!(stdout.contains("messages generated"), "{stdout}");
    assert!(stdout.contains("coverage"), "{stdout}");
    let left: Vec<u32> = nodes
        .iter()
        .copied()
        .filter(|pid| pids_mentioning(&run.join("seeds.yaml")).contains(pid))
        .collect();
    assert!(left.is_empty(), "nodes left running: {left:?}");
}

/// The numbers of the last live line: (seconds counter, delivered, expected).
fn last_live_line(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .split(['\r', '\n'])
        .rfind(|l| l.starts_with('[') && l.contains("delivered"))
        .unwrap_or_else(|| panic!("no live line in {stdout}"));
    let num = |after: &str| -> u64 {
        let rest = &line[line.find(after).unwrap_or_else(|| panic!("{line}")) + after.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("["), num("delivered "), num(" of "))
}

#[test]
fn a_demo_that_kills_nothing_ends_without_a_detection_wait_and_its_live_line_matches_the_report() {
    let out = tempfile::tempdir().unwrap();
    let (mut reaper, _run, stdout_path) =
        start_demo(out.path(), &["--fast", "--seeds", "3", "--peers", "4"]);
    let status = ends_by_itself(&mut reaper);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    assert!(status.success(), "{status}: {stdout}");
    let (t, delivered, expected) = last_live_line(&stdout);
    // The report's own count, printed at the end.
    assert!(
        stdout.contains(&format!("({delivered} of {expected} expected deliveries)")),
        "live line {delivered} of {expected}, report: {stdout}"
    );
    assert_eq!(delivered, expected, "{stdout}");
    // Its loop is capped at the gossip phase (5 s with --fast) plus 8 s of slack when nothing
    // is killed; a detection wait would add 5 more.
    assert!(t <= 13, "the live line counted to {t} s: {stdout}");
    assert!(
        stdout.contains("dead peers                 none"),
        "{stdout}"
    );
}

#[test]
fn the_hosts_demo_runs_the_network_across_four_hosts_and_cleans_up() {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !root || !ip {
        eprintln!("SKIPPED: the hosts demo needs root and ip (network namespaces)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let args = ["--fast", "--peers", "6", "--kill", "2", "--duration", "25"];
    let (mut reaper, run, _) = start_script("scripts/hosts-demo.sh", out.path(), &args);
    let pid = reaper.script.id();
    let status = ends_by_itself(&mut reaper);
    assert!(status.success(), "hosts-demo.sh exited with {status}");
    assert!(namespaces_of(pid).is_empty(), "namespaces left behind");

    let report = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(&run)
        .arg("--json")
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(r["peers"], 6, "{r}");
    assert_eq!(r["coverage"], 1.0, "{r}");
    assert_eq!(r["false_removals"], 0, "{r}");
    assert_eq!(r["dead"].as_array().unwrap().len(), 2, "{r}");
    // The peers ran on three hosts, the seeds on a fourth: four addresses, none loopback.
    let ips: std::collections::BTreeSet<String> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_suffix(".jsonl")?;
            let rest = rest.strip_prefix("peer-").or(rest.strip_prefix("seed-"))?;
            Some(rest.rsplit_once('-')?.0.to_string())
        })
        .collect();
    assert_eq!(ips.len(), 4, "{ips:?}");
    assert!(ips.iter().all(|i| !i.starts_with("127.")), "{ips:?}");
}
