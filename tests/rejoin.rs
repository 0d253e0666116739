//! A peer taken for dead while it was alive (frozen past detection) is told so by the seeds
//! when it wakes up, registers again as a new incarnation, says `rejoined`, and gossip reaches
//! it again (SWIM's refutation).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;

fn ids_sent(net: &Net, p: SocketAddr) -> BTreeSet<String> {
    strs(&net.events("peer", p), "gossip_sent", "id")
}

#[test]
fn a_peer_removed_while_frozen_rejoins_and_gossip_reaches_it_again() {
    let mut net = Net::new(3, "");
    net.start_seeds();
    let peers: Vec<SocketAddr> = (0..4).map(|_| net.start_peer()).collect();
    let frozen = peers[0];
    wait_until("the peer to be frozen has a neighbour", || {
        !neighbours(&net.events("peer", frozen)).is_empty()
    });
    net.signal(frozen, "STOP");
    wait_until("every seed removed the frozen peer", || {
        seed_lists(&net)
            .values()
            .all(|l| !l.contains(&frozen.to_string()))
    });
    net.signal(frozen, "CONT");

    wait_until("the frozen peer rejoins", || {
        has_event(&net.jsonl("peer", frozen), "rejoined")
    });
    let evs = net.events("peer", frozen);
    assert!(
        !of(&evs, "removed_notice").is_empty(),
        "it says a seed told it it was removed"
    );
    let txt = std::fs::read_to_string(net.txt("peer", frozen)).unwrap();
    assert!(txt.contains("Rejoined"), "{txt}");
    wait_until("every seed lists it again", || {
        seed_lists(&net)
            .values()
            .all(|l| l.contains(&frozen.to_string()))
    });

    // A peer that joins now generates its messages; every one reaches the rejoined peer.
    let late = net.start_peer();
    wait_until("the late peer sent all its messages", || {
        ids_sent(&net, late).len() == 10
    });
    let sent = ids_sent(&net, late);
    wait_until(
        "the rejoined peer received every message of the late peer",
        || {
            let got = strs(&net.events("peer", frozen), "gossip_received", "id");
            sent.is_subset(&got)
        },
    );
    // Its former neighbours said why they closed (no replies), so it took no close for a crash.
    // (A dial that times out on a busy machine may still be reported as unreachable: the
    // seeds check it and refuse the report. What must not happen is a crash report.)
    let log = std::fs::read_to_string(net.dir.path().join(format!("peer-{}.log", frozen.port())))
        .unwrap_or_default();
    let crashes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reporting") && !l.contains("unreachable"))
        .collect();
    assert!(crashes.is_empty(), "the woken peer reported: {crashes:?}");
    assert!(net.alive(frozen));
}
