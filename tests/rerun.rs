//! Re-running nodes with the same addresses into the same --out-dir: the earlier run's lines
//! stay in the files, and `report` reads only each node's latest run unless `--all-runs`.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Events of the node's latest run (after its last `started`).
fn latest(net: &Net, role: &str, a: SocketAddr) -> Vec<Value> {
    let evs = net.events(role, a);
    let i = evs
        .iter()
        .rposition(|e| e["event"] == "started")
        .unwrap_or(0);
    evs[i..].to_vec()
}

/// Starts one seed and the peers on fixed addresses and waits until each peer has sent every
/// message of this run and every message has reached every peer the report expects it at (a
/// message sent before the sender had a neighbour expects nobody); then stops them all
/// cleanly.
fn one_run(net: &mut Net, peers: &[SocketAddr], run: usize) {
    net.start_seeds();
    for &p in peers {
        net.spawn("peer", p);
    }
    let done = |net: &Net| {
        let all_sent = peers.iter().all(|&p| {
            of(&net.events("peer", p), "started").len() == run
                && of(&latest(net, "peer", p), "gossip_sent").len() == 10
        });
        all_sent && {
            let r = report(net, &[]);
            r["messages"] == 10 * peers.len() && r["deliveries"] == r["expected_deliveries"]
        }
    };
    wait_until(
        &format!("run {run}: every peer sent every message and all were delivered"),
        || done(net),
    );
    for a in peers.iter().chain(net.seeds.clone().iter()) {
        let st = net.terminate(*a);
        assert!(st.success(), "{a} exited with {st}");
    }
    net.nodes.clear();
}

fn report(net: &Net, extra: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(net.out_dir())
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_rerun_keeps_the_earlier_files_and_the_report_reads_the_latest_run() {
    let mut net = Net::new(1, "");
    let peers = [addr(free_port()), addr(free_port())];
    // A third peer takes part in the first run only, under an address of its own (as a peer
    // on port 0 would): its file stays, but it is not part of the second network.
    let once = addr(free_port());
    one_run(&mut net, &[peers[0], peers[1], once], 1);
    let first_txt = std::fs::read_to_string(net.txt("peer", peers[0])).unwrap();
    let first_jsonl = std::fs::read_to_string(net.jsonl("peer", peers[0])).unwrap();
    let r = report(&net, &[]);
    assert_eq!(r["messages"], 30, "{r}");

    one_run(&mut net, &peers, 2);
    // The first run is still there, unchanged, with the second after it.
    let txt = std::fs::read_to_string(net.txt("peer", peers[0])).unwrap();
    assert!(txt.starts_with(&first_txt), "{txt}");
    let rest = &txt[first_txt.len()..];
    assert!(
        rest.lines()
            .next()
            .unwrap()
            .contains("---- new run of peer-"),
        "{rest}"
    );
    assert!(rest.contains("listening"), "{rest}");
    let jsonl = std::fs::read_to_string(net.jsonl("peer", peers[0])).unwrap();
    assert!(jsonl.starts_with(&first_jsonl));
    assert_eq!(of(&net.events("peer", peers[0]), "started").len(), 2);
    let seed_starts = of(&net.events("seed", net.seeds[0]), "started").len();
    assert_eq!(seed_starts, 2);

    // The report counts the latest run only, and says it left earlier runs out.
    let r = report(&net, &[]);
    assert_eq!(
        (r["seeds"].clone(), r["peers"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(r["messages"], 20, "{r}");
    assert_eq!(r["coverage"], 1.0, "{r}");
    // The seed and both peers had an earlier run; the third peer's only run was earlier.
    let skipped = r["earlier_runs_skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 4, "{r}");
    assert!(skipped.contains(&once.to_string().into()), "{r}");
    let table = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(net.out_dir())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("earlier runs left out"), "{table}");

    // Told otherwise, it reads both.
    let r = report(&net, &["--all-runs"]);
    assert_eq!(r["messages"], 50, "{r}");
    assert_eq!(r["peers"], 3, "{r}");
    assert_eq!(r["coverage"], 1.0, "{r}");
    assert!(r["earlier_runs_skipped"].as_array().unwrap().is_empty());
}
