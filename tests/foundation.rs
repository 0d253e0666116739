//! The foundation with the real binaries: registration by majority, symmetric links, output
//! files, admission by proof of work, bad input, exit codes.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gossipnet::handshake::Connector;
use gossipnet::keys::NodeKey;
use gossipnet::wire::{FrameReader, Msg, Role};

fn read_msg(s: &mut TcpStream) -> Option<Msg> {
    let mut fr = FrameReader::new(1 << 20);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = fr.next_frame().ok()? {
            return Msg::decode(&body).ok();
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => fr.push(&buf[..n]),
        }
    }
}

#[test]
fn three_seeds_and_eight_peers_register_and_link_symmetrically() {
    let mut net = Net::new(3, "");
    net.start_seeds();
    for _ in 0..8 {
        net.start_peer();
    }
    let peers = net.peers();
    let all: std::collections::BTreeSet<String> = peers.iter().map(|p| p.to_string()).collect();

    // Every seed lists every peer: each registration was committed by a majority and applied
    // everywhere, also at the seed the peer did not register with.
    wait_until("every seed lists every peer", || {
        seed_lists(&net).values().all(|l| *l == all)
    });
    for &p in &peers {
        let evs = net.events("peer", p);
        let with = strs(&evs, "registered_with", "seed");
        assert!(
            with.len() >= 2,
            "{p} registered with {with:?}, want a majority of 3"
        );
    }

    // Links are symmetric: both ends log neighbour_up.
    wait_until("links are symmetric", || {
        peers.iter().all(|&p| {
            let mine = neighbours(&net.events("peer", p));
            !mine.is_empty()
                && mine.iter().all(|q| {
                    neighbours(&net.events("peer", q.parse().unwrap())).contains(&p.to_string())
                })
        })
    });
    for &p in &peers {
        let evs = net.events("peer", p);
        let n = neighbours(&evs);
        assert!(!n.contains(&p.to_string()), "{p} is its own neighbour");
        // Peers after the first got a non-empty list from the seeds.
        assert_eq!(of(&evs, "peer_list").len(), 1);
        assert_eq!(of(&evs, "started")[0]["role"], "peer");
        let txt = std::fs::read_to_string(net.txt("peer", p)).unwrap();
        assert!(txt.contains("Registered with seed"), "{txt}");
        assert!(txt.contains("Peer list from the seeds"), "{txt}");
    }
    for &s in &net.seeds.clone() {
        let txt = std::fs::read_to_string(net.txt("seed", s)).unwrap();
        assert_eq!(txt.matches("Registered peer").count(), 8, "{txt}");
    }

    // Clean shutdown: exit 0 and `stopped` written, for seeds and peers.
    for a in [peers[0], net.seeds[0]] {
        let st = net.terminate(a);
        assert_eq!(st.code(), Some(0), "{a}");
    }
    assert!(has_event(&net.jsonl("peer", peers[0]), "stopped"));
    assert!(has_event(&net.jsonl("seed", net.seeds[0]), "stopped"));
    let stats = of(&net.events("peer", peers[0]), "stats")
        .last()
        .cloned()
        .cloned()
        .unwrap();
    for key in [
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "gossip_duplicates",
        "connections",
        "threads",
    ] {
        assert!(stats[key].is_u64(), "stats.{key} in {stats}");
    }
}

#[test]
fn a_peer_with_port_zero_uses_its_real_port() {
    let mut net = Net::new(1, "");
    net.start_seeds();
    let out = net.out_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--addr", "127.0.0.1:0", "--config"])
        .arg(&net.config)
        .arg("--out-dir")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut found = None;
    wait_until("a peer output file with a real port", || {
        found = std::fs::read_dir(&out).unwrap().flatten().find_map(|e| {
            let name = e.file_name().into_string().unwrap();
            name.strip_prefix("peer-127.0.0.1-")
                .and_then(|r| r.strip_suffix(".jsonl"))
                .map(|p| p.parse::<u16>().unwrap())
        });
        found.is_some()
    });
    let port = found.unwrap();
    assert_ne!(port, 0);
    let seed = net.seeds[0];
    wait_until("the seed registers the real address", || {
        strs(&net.events("seed", seed), "registered", "peer").contains(&format!("127.0.0.1:{port}"))
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn garbage_and_idle_connections_are_closed_and_logged() {
    let mut net = Net::new(
        1,
        "pow: { difficulty: 8, timeout: 1s }\nliveness: { interval: 300ms }",
    );
    net.start_seeds();
    let seed = net.seeds[0];

    // Garbage: an oversized length prefix and random bytes.
    let mut g = raw(seed);
    let _challenge = read_msg(&mut g).expect("a challenge first");
    send(&mut g, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
    read_to_close(&mut g);

    // Idle: connect and send nothing. Closed after the handshake deadline.
    let mut idle = raw(seed);
    let started = Instant::now();
    let _ = read_msg(&mut idle);
    read_to_close(&mut idle);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );

    let f = net.jsonl("seed", seed);
    wait_until("both rejections logged", || {
        let evs = events(&f);
        let reasons: Vec<String> = of(&evs, "rejected")
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        reasons.iter().any(|r| r.contains("exceeds the limit"))
            && reasons.iter().any(|r| r.contains("deadline"))
    });

    // The node keeps serving honest peers.
    let p = net.start_peer();
    wait_until("the seed still registers peers", || {
        strs(&net.events("seed", seed), "registered", "peer").contains(&p.to_string())
    });
}

#[test]
fn wrong_and_replayed_proofs_of_work_are_refused() {
    let mut net = Net::new(1, "pow: { difficulty: 12, timeout: 3s }");
    net.start_seeds();
    let seed = net.seeds[0];
    let key = NodeKey::from_secret([1; 32]);
    let me = Connector {
        role: Role::Peer,
        addr: addr(1),
        incarnation: 1,
        key: &key,
        max_difficulty: 24,
    };

    // An honest answer, kept for replay.
    let mut first = raw(seed);
    let puzzle = me
        .on_challenge(read_msg(&mut first).unwrap(), seed, None)
        .unwrap();
    let answer = me
        .solve(&puzzle, 0, Instant::now() + Duration::from_secs(60))
        .unwrap();
    send(&mut first, &answer.hello.encode());
    me.on_welcome(read_msg(&mut first).unwrap(), &puzzle, &answer)
        .unwrap();

    // The same answer on a new connection: another challenge was issued.
    let mut replay = raw(seed);
    let _ = read_msg(&mut replay);
    send(&mut replay, &answer.hello.encode());
    assert!(matches!(read_msg(&mut replay), Some(Msg::Reject { .. })));
    read_to_close(&mut replay);

    // A wrong nonce for the right challenge.
    let mut wrong = raw(seed);
    let puzzle = me
        .on_challenge(read_msg(&mut wrong).unwrap(), seed, None)
        .unwrap();
    let good = me
        .solve(&puzzle, 0, Instant::now() + Duration::from_secs(60))
        .unwrap();
    let Msg::Hello {
        nonce, challenge, ..
    } = good.hello
    else {
        unreachable!()
    };
    // The next nonce that does not meet the difficulty.
    let public = key.public();
    let bound = gossipnet::pow::Bound {
        challenge: &challenge,
        key: &public,
        connector: &me.addr,
        acceptor: &seed,
    };
    let mut wrong_nonce = nonce + 1;
    while gossipnet::pow::verify(bound, puzzle.difficulty, wrong_nonce) {
        wrong_nonce += 1;
    }
    let mut bad = good.hello.clone();
    if let Msg::Hello { nonce: n, .. } = &mut bad {
        *n = wrong_nonce;
    }
    send(&mut wrong, &bad.encode());
    assert!(matches!(read_msg(&mut wrong), Some(Msg::Reject { .. })));

    // Someone claiming to be a seed that is not configured.
    let fake_seed = Connector {
        role: Role::Seed,
        addr: addr(2),
        incarnation: 1,
        key: &key,
        max_difficulty: 24,
    };
    let mut imposter = raw(seed);
    let puzzle = fake_seed
        .on_challenge(read_msg(&mut imposter).unwrap(), seed, None)
        .unwrap();
    let answer = fake_seed
        .solve(&puzzle, 0, Instant::now() + Duration::from_secs(60))
        .unwrap();
    send(&mut imposter, &answer.hello.encode());
    assert!(matches!(read_msg(&mut imposter), Some(Msg::Reject { .. })));

    let f = net.jsonl("seed", seed);
    wait_until("the three refusals are logged", || {
        let evs = events(&f);
        let reasons: Vec<String> = of(&evs, "rejected")
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        reasons.iter().any(|r| r.contains("not issued here"))
            && reasons.iter().any(|r| r.contains("wrong proof-of-work"))
            && reasons.iter().any(|r| r.contains("not configured"))
    });
    // A frame that is not expected after the handshake closes that connection only.
    send(&mut first, &Msg::Welcome { signature: [0; 64] }.encode());
    read_to_close(&mut first);
    wait_until("the unexpected frame is logged", || {
        of(&events(&f), "rejected")
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("unexpected Welcome"))
    });
}

fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_and_usage_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let peer = env!("CARGO_BIN_EXE_peer");
    let seed = env!("CARGO_BIN_EXE_seed");
    let missing = dir.path().join("nope.yaml");
    let out = dir.path().join("out");
    let (code, err) = run(
        peer,
        &[
            "--addr",
            "127.0.0.1:0",
            "--config",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nope.yaml"), "{err}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "seeds: [\"127.0.0.1:9001\"]\ngossip:\n  interval: 5x\n",
    )
    .unwrap();
    let (code, err) = run(
        peer,
        &[
            "--addr",
            "127.0.0.1:0",
            "--config",
            bad.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("gossip.interval") && err.contains("line 3"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is half-started");

    std::fs::write(
        &bad,
        "seeds: [\"127.0.0.1:9001\"]\nlivenes: { interval: 5s }\n",
    )
    .unwrap();
    let (code, err) = run(
        seed,
        &[
            "--addr",
            "127.0.0.1:9001",
            "--config",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("livenes") && err.contains("line 2"), "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "seeds: [\"127.0.0.1:9001\"]\n").unwrap();
    let (code, err) = run(
        seed,
        &[
            "--addr",
            "127.0.0.1:9009",
            "--config",
            good.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("not one of the seeds"), "{err}");

    let (code, err) = run(peer, &["--addr", "nonsense"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--addr"), "{err}");
    let (code, _) = run(peer, &["--help"]);
    assert_eq!(code, Some(0));
}

#[test]
fn an_address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("seeds.yaml");
    std::fs::write(&cfg, format!("seeds: [\"127.0.0.1:{port}\"]\n")).unwrap();
    let (code, err) = run(
        env!("CARGO_BIN_EXE_seed"),
        &[
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--config",
            cfg.to_str().unwrap(),
            "--out-dir",
            dir.path().join("o").to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot listen"), "{err}");
}

#[test]
fn a_seed_that_restarts_catches_up() {
    let mut net = Net::new(3, "");
    net.start_seeds();
    for _ in 0..3 {
        net.start_peer();
    }
    let all: std::collections::BTreeSet<String> =
        net.peers().iter().map(|p| p.to_string()).collect();
    wait_until("every seed lists every peer", || {
        seed_lists(&net).values().all(|l| *l == all)
    });
    let s = net.seeds[2];
    net.kill(s);
    net.nodes.retain(|n| n.addr != s);
    // Registrations still commit with two of three seeds up.
    let late = net.start_peer();
    let mut all = all;
    all.insert(late.to_string());
    // The seed comes back with an empty memory and learns the list from the others.
    std::fs::remove_file(net.jsonl("seed", s)).unwrap();
    net.spawn("seed", s);
    wait_until("the restarted seed lists every peer", || {
        seed_lists(&net)[&s] == all
    });
}
