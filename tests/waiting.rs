//! A node that cannot do its job yet says what it waits for, and says it calmly: a peer that
//! reaches too few seeds, a seed without enough other seeds to agree on anything.

mod common;

use common::*;

#[test]
fn a_peer_and_a_seed_say_what_they_wait_for_until_a_majority_of_seeds_is_up() {
    let mut net = Net::new(3, "");
    let first = net.seeds[0];
    net.spawn("seed", first);
    net.wait_for_event("seed", first, "started");
    let p = addr(free_port());
    net.spawn("peer", p);
    net.wait_for_event("peer", p, "waiting");
    net.wait_for_event("seed", first, "waiting");

    let peer_txt = std::fs::read_to_string(net.txt("peer", p)).unwrap();
    // It said at once what joining takes, before the first waiting line.
    assert!(
        peer_txt.contains("Joining: contacting seeds, registering with 2 of 3 (a majority)"),
        "{peer_txt}"
    );
    let line = peer_txt
        .lines()
        .find(|l| l.contains("Waiting for seeds"))
        .unwrap_or_else(|| panic!("no waiting line in {peer_txt}"));
    assert!(line.contains("of 3 reachable, 2 needed"), "{line}");
    let seed_txt = std::fs::read_to_string(net.txt("seed", first)).unwrap();
    assert!(
        seed_txt.contains("Waiting for seeds: 1 of 3 up (this one included), 2 needed"),
        "{seed_txt}"
    );

    // The other seeds come up: the peer joins and stops waiting.
    let (second, third) = (net.seeds[1], net.seeds[2]);
    net.spawn("seed", second);
    net.spawn("seed", third);
    net.wait_for_event("peer", p, "peer_list");
    let waiting_then = of(&net.events("peer", p), "waiting").len();
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(
        of(&net.events("peer", p), "waiting").len(),
        waiting_then,
        "still waiting after joining"
    );

    // An unreachable seed was a warning once, not at every retry.
    let stderr =
        std::fs::read_to_string(net.dir.path().join(format!("peer-{}.stderr", p.port()))).unwrap();
    for s in &net.seeds[1..] {
        let warnings = stderr
            .lines()
            .filter(|l| l.contains(&format!("seed {s} unreachable")))
            .count();
        assert!(warnings <= 1, "{warnings} warnings about {s}:\n{stderr}");
    }
}
