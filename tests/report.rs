//! `report` on a network run by hand: no faults.jsonl, so every figure comes from the nodes'
//! own events. A SIGKILLed peer gets detection and removal times; a peer that left cleanly and
//! one frozen (SIGSTOP) then resumed (SIGCONT) are listed for what they are.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;

/// Seeds (a majority of them) that logged the peer's removal with this reason.
fn removed_by_majority(net: &Net, peer: SocketAddr, reason: &str) -> bool {
    let n = net
        .seeds
        .iter()
        .filter(|&&s| {
            of(&net.events("seed", s), "removed")
                .iter()
                .any(|e| e["peer"] == peer.to_string() && e["reason"] == reason)
        })
        .count();
    n > net.seeds.len() / 2
}

#[test]
fn a_network_run_by_hand_gets_detection_times_and_left_and_frozen_peers_apart() {
    let mut net = Net::new(3, "");
    net.start_seeds();
    let peers: Vec<SocketAddr> = (0..6).map(|_| net.start_peer()).collect();
    wait_until("every peer sent a message", || {
        peers
            .iter()
            .all(|&p| !of(&net.events("peer", p), "gossip_sent").is_empty())
    });
    let (killed, frozen, left) = (peers[5], peers[4], peers[3]);
    net.signal(killed, "KILL");
    net.signal(frozen, "STOP");
    let st = net.terminate(left);
    assert!(st.success(), "{st}");
    wait_until("the killed, frozen and left peers are removed", || {
        removed_by_majority(&net, killed, "dead")
            && removed_by_majority(&net, frozen, "dead")
            && removed_by_majority(&net, left, "left")
    });
    // Silent for longer than a live peer ever is: over two of its stats intervals (1 s).
    let last_line = |net: &Net| {
        net.events("peer", frozen)
            .iter()
            .filter_map(|e| e["ts_ms"].as_u64())
            .max()
            .unwrap_or(0)
    };
    wait_until("the frozen peer has been silent for 3 s", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        now > last_line(&net) + 3000
    });
    let before = net.events("peer", frozen).len();
    net.signal(frozen, "CONT");
    wait_until("the frozen peer logs again", || {
        net.events("peer", frozen).len() > before
    });
    // The network carries on after the leave (a peer that left while others stopped with it
    // at the end of a run is not listed as left).
    net.start_peer();
    assert!(!net.out_dir().join("faults.jsonl").exists());

    let o = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(net.out_dir())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{table}");
    let line = |prefix: &str, peer: SocketAddr| -> String {
        table
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains(&peer.to_string()))
            .unwrap_or_else(|| panic!("no `{prefix} {peer}` line in:\n{table}"))
            .to_string()
    };
    let dead = line("dead peer", killed);
    assert!(
        dead.contains("first report after ") && !dead.contains("after -"),
        "{dead}"
    );
    assert!(dead.contains("(from its last logged line)"), "{dead}");
    assert!(
        line("frozen peer", frozen).contains("removed after "),
        "{table}"
    );
    assert!(line("left peer", left).contains("left cleanly"), "{table}");
    // Neither is a dead peer nor a false removal.
    for p in [frozen, left] {
        assert!(
            !table
                .lines()
                .any(|l| l.starts_with("dead peer") && l.contains(&p.to_string())),
            "{table}"
        );
    }
    assert!(table.contains("false removals             0"), "{table}");

    let o = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(net.out_dir())
        .arg("--json")
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &r["dead"][0];
    assert_eq!(d["peer"], killed.to_string(), "{r}");
    assert!(d["reported_after_s"].is_number(), "{r}");
    assert!(d["removed_after_s"].is_number(), "{r}");
    assert_eq!(d["since"], "last_record", "{r}");

    // The plot: time axis around the propagation window, every mark in the legend.
    let svg = net.dir.path().join("p.svg");
    let o = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(net.out_dir())
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(svg).unwrap();
    for mark in [
        "one message",
        "median over the messages",
        "since the message was generated",
    ] {
        assert!(svg.contains(mark), "{mark}");
    }

    // The timeline: every kind of event this run had, drawn and in the legend.
    let svg = net.dir.path().join("t.svg");
    let o = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(net.out_dir())
        .arg("--timeline")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(svg).unwrap();
    for mark in [
        "joined: got its peer list",
        "first Dead Node report",
        "silent: frozen, then logged again",
        "said goodbye (leaving)",
        "removed as dead by a majority",
        "removed as left by a majority",
    ] {
        assert!(svg.contains(mark), "{mark}");
    }
    // No faults.jsonl: no fault mark, and none explained.
    assert!(!svg.contains("fault injected"));
}
