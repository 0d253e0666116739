//! Identity attacks, played by an attacker who knows only `docs/PROTOCOL.md`: its client (frames,
//! `Challenge`, proof of work, transcript hash, Ed25519 signatures; `common::attacker`, shared
//! with `tests/rooted.rs`) is written from the document, not taken from the crate. An impostor
//! seed with its own key, a forged or borrowed signature, work done for another key, a replayed
//! or relayed answer, a fake acceptor at a seed's address (with its own key, or the listed key
//! it cannot sign with), a work bomb, and an address on another IP are all refused, and honest
//! peers keep registering and getting their peer lists. A seed that lies to peers gets none of
//! its made-up members dialed, and a host registering many identities gets no more than its cap
//! listed, all gone once it goes. A correct handshake made by the same client is welcomed, which
//! shows the client follows the document.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::attacker::*;
use common::*;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The fast test timers, with a handshake deadline long enough that an attacker holding two
/// connections open at once (the relay test) is never refused for being slow.
const CONFIG: &str = "gossip: { interval: 300ms, count: 10 }\nliveness: { interval: 300ms, misses: 3, probe_timeout: 1s }\npow: { difficulty: 8, timeout: 30s }\nstats: { interval: 1s }";

#[test]
fn an_impostor_seed_with_its_own_key_is_refused_and_its_sync_changes_nothing() {
    let (mut net, mut honest) = network(CONFIG);
    let target = net.seeds[0];
    let claimed = net.seeds[1].to_string();
    let me = fresh_key();
    let made_up: Vec<String> = (0..3).map(|_| addr(free_port()).to_string()).collect();
    // The forged list: made-up members added, and an honest peer "removed: dead", each change
    // "signed" by two of the three seeds (a majority), all signatures being our own.
    let honest_key = unhex(
        of(&net.events("peer", honest[0]), "started")[0]["key"]
            .as_str()
            .unwrap(),
    );
    let mut changes: Vec<(u8, String, [u8; 32])> = made_up
        .iter()
        .map(|m| (1, m.clone(), fresh_key().verifying_key().to_bytes()))
        .collect();
    changes.push((2, honest[0].to_string(), honest_key));
    let vouching = [net.seeds[1].to_string(), net.seeds[2].to_string()];
    let forged = sync_body(&changes, &vouching, &me);
    let rejected_before = of(&net.events("seed", target), "rejected").len();

    // 1. A Hello in the seed role, claiming a configured seed's address, with our own key:
    //    correctly signed, nonce 0 (seeds do no work). Then the Sync anyway.
    let mut d = dial(target);
    let hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_SEED, &claimed, &me), &me);
    let reason = expect_reject(&mut d, &hello);
    println!("impostor seed refused: {reason}");
    assert!(
        reason.contains(&format!("{claimed} showed key")),
        "{reason}"
    );
    d.conn.send(&[&forged]);

    // 2. The Hello and the Sync in one write, without waiting for the answer.
    let mut d = dial(target);
    let hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_SEED, &claimed, &me), &me);
    assert!(d.conn.send(&[&hello, &forged]), "write failed");
    let reason = expect_reject(&mut d, &[]);
    println!("impostor seed with its Sync refused: {reason}");
    assert!(
        reason.contains(&format!("{claimed} showed key")),
        "{reason}"
    );

    // 3. The Sync instead of a Hello.
    let mut d = dial(target);
    d.conn.send(&[&forged]);
    match d.conn.next() {
        Next::Closed => {}
        Next::Frame(b) => {
            assert!(reject_reason(&b).is_some(), "answer to a Sync: {b:?}");
            assert!(
                matches!(d.conn.next(), Next::Closed),
                "not closed after Reject"
            );
        }
        Next::Silent => panic!("a Sync instead of a Hello was left open"),
    }

    wait_until("the seed logs the three refusals", || {
        of(&net.events("seed", target), "rejected").len() >= rejected_before + 3
    });
    // Honest operation goes on. A Sync taken by the target would have acted there at once, and
    // at the others with its next Sync; no seed holds or mentions a made-up member, none removed
    // the honest one.
    honest_peers_go_on(&mut net, &mut honest);
    for s in net.seeds.clone() {
        let text = std::fs::read_to_string(net.jsonl("seed", s)).unwrap();
        for m in &made_up {
            assert!(!text.contains(m.as_str()), "seed {s} mentions made-up {m}");
        }
        assert!(
            of(&net.events("seed", s), "removed").is_empty(),
            "seed {s} removed an honest peer"
        );
    }
    let last = *honest.last().unwrap();
    let list = of(&net.events("peer", last), "peer_list")[0]["peers"].to_string();
    for m in &made_up {
        assert!(!list.contains(m.as_str()), "peer list {list} holds {m}");
    }
}

#[test]
fn a_hello_with_a_bad_signature_is_refused() {
    let (mut net, mut honest) = network(CONFIG);
    let target = net.seeds[0];
    let me = fresh_key();
    let claimed = addr(free_port()).to_string();

    // The right key, the right work, one bit of the signature flipped.
    let mut d = dial(target);
    let mut hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_PEER, &claimed, &me), &me);
    let last = hello.len() - 1;
    hello[last - 20] ^= 0x04;
    let reason = expect_reject(&mut d, &hello);
    println!("flipped bit: {reason}");
    assert!(reason.contains("signature"), "{reason}");

    // The key field names our key, the signature is by another key.
    let other = fresh_key();
    let mut d = dial(target);
    let hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_PEER, &claimed, &me), &other);
    let reason = expect_reject(&mut d, &hello);
    println!("another key's signature: {reason}");
    assert!(reason.contains("signature"), "{reason}");

    // Control: the same client, done right, is welcomed (and the Welcome verifies).
    welcomed(ROLE_PEER, target, &claimed, &me);

    honest_peers_go_on(&mut net, &mut honest);
}

#[test]
fn work_done_for_one_key_cannot_be_used_by_another() {
    let (mut net, mut honest) = network(CONFIG);
    let target = net.seeds[0];
    let (k1, k2) = (fresh_key(), fresh_key());
    let claimed = addr(free_port()).to_string();

    let mut d = dial(target);
    let k1_pub = k1.verifying_key().to_bytes();
    let k2_pub = k2.verifying_key().to_bytes();
    // K1's work, re-solved past any nonce that happens to meet the difficulty for K2 as well.
    let mut nonce = solve(&d.ch, &k1_pub, &claimed, 0);
    for _ in 0..64 {
        if !work_ok(&d.ch, &k2_pub, &claimed, nonce) {
            break;
        }
        nonce = solve(&d.ch, &k1_pub, &claimed, nonce + 1);
    }
    assert!(!work_ok(&d.ch, &k2_pub, &claimed, nonce));
    let mut h = hello_for(&d.ch, ROLE_PEER, &claimed, &k2);
    h.nonce = nonce;
    let hello = signed_hello(&d.ch, &h, &k2);
    let reason = expect_reject(&mut d, &hello);
    println!("K1's work under K2: {reason}");
    assert!(reason.contains("proof-of-work"), "{reason}");

    // Control: K2 with its own work is welcomed.
    let mut d = dial(target);
    let hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_PEER, &claimed, &k2), &k2);
    expect_welcome(&mut d, &hello);

    honest_peers_go_on(&mut net, &mut honest);
}

#[test]
fn a_replayed_hello_is_refused() {
    let (mut net, mut honest) = network(CONFIG);
    let (a, b) = (net.seeds[0], net.seeds[1]);
    let me = fresh_key();
    let claimed = addr(free_port()).to_string();

    // Connection 1: a good handshake; its Hello is recorded.
    let mut first = dial(a);
    let recorded = signed_hello(
        &first.ch,
        &hello_for(&first.ch, ROLE_PEER, &claimed, &me),
        &me,
    );
    expect_welcome(&mut first, &recorded);
    // Connection 2: the recorded Hello answers connection 1's challenge, not this one's.
    let mut second = dial(a);
    assert_ne!(
        second.ch.challenge, first.ch.challenge,
        "challenge not fresh"
    );
    let reason = expect_reject(&mut second, &recorded);
    println!("replayed: {reason}");
    assert!(reason.contains("challenge"), "{reason}");
    drop(first);

    // Relayed: an answer made for seed A's Challenge, sent to seed B.
    let mut at_a = dial(a);
    let mut at_b = dial(b);
    let answer = signed_hello(
        &at_a.ch,
        &hello_for(&at_a.ch, ROLE_PEER, &claimed, &me),
        &me,
    );
    let reason = expect_reject(&mut at_b, &answer);
    println!("relayed to B: {reason}");
    assert!(reason.contains("challenge"), "{reason}");
    // The same answer at A, where it belongs, is good.
    expect_welcome(&mut at_a, &answer);

    honest_peers_go_on(&mut net, &mut honest);
}

#[test]
fn an_impostor_at_a_seed_address_is_not_registered_with() {
    // Five seeds listed with their keys: three real, two fakes run by the attacker. A majority
    // is three, so the peer needs all three real ones.
    let (mut net, listed) = listed_seeds(3, 2);
    let real = net.seeds.clone();
    let fake_at = [listed[3].0, listed[4].0];
    let shown = addr(free_port()).to_string();
    let own_key = FakeSeed::start(fake_at[0], Fake::OwnKey, listed[3].1, &shown);
    let forged = FakeSeed::start(
        fake_at[1],
        Fake::ListedKeyForgedWelcome,
        listed[4].1,
        &shown,
    );

    // The peer starts while the real seeds are down, so it dials every listed seed, fakes
    // included, before it can register anywhere.
    let p = addr(free_port());
    net.spawn("peer", p);
    wait_until("the peer dials both fakes", || {
        own_key.seen().iter().any(|c| c.early && c.ended)
            && forged.seen().iter().any(|c| c.early && c.ended)
    });

    own_key.seeds_starting();
    forged.seeds_starting();
    net.start_seeds();
    wait_until("the peer registers with the three real seeds", || {
        strs(&net.events("peer", p), "registered_with", "seed").len() >= 3
    });
    net.wait_for_event("peer", p, "peer_list");
    let q = net.start_peer();
    wait_until("every real seed lists both peers", || {
        seed_lists(&net)
            .values()
            .all(|l| *l == [p, q].iter().map(|a| a.to_string()).collect())
    });

    for x in [p, q] {
        let evs = net.events("peer", x);
        let with = strs(&evs, "registered_with", "seed");
        let real_names: BTreeSet<String> = real.iter().map(|a| a.to_string()).collect();
        assert!(with.is_subset(&real_names), "{x} registered with {with:?}");
        let lists = of(&evs, "peer_list")
            .iter()
            .map(|e| e["peers"].to_string())
            .collect::<String>();
        assert!(!lists.contains(&shown), "{x} took the fake's peer list");
    }
    // (a) A Challenge with a key other than the listed one: nobody answers it.
    for c in own_key.seen() {
        assert!(
            c.hello.is_none(),
            "a Hello to a seed showing another key: {c:?}"
        );
    }
    // (b) The listed key, but a Welcome signed by another: the peer answered the Challenge (it
    // could not know yet), then closed without sending anything more.
    let seen = forged.seen();
    assert!(
        seen.iter()
            .any(|c| c.hello == Some((ROLE_PEER, p.to_string()))),
        "the peer never answered the fake's Challenge: {seen:?}"
    );
    for c in &seen {
        assert!(c.after.is_empty(), "frames after a forged Welcome: {c:?}");
    }
    let log = std::fs::read_to_string(net.dir.path().join(format!("peer-{}.log", p.port())))
        .unwrap_or_default();
    for f in fake_at {
        assert!(
            log.contains(&f.to_string()),
            "the log does not name {f}:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("{} showed key", fake_at[0])),
        "the log does not say the fake showed another key:\n{log}"
    );
    let forged_at = fake_at[1].to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&forged_at) && l.contains("signature does not verify")),
        "the log does not say the fake's Welcome failed:\n{log}"
    );
}

#[test]
fn a_work_bomb_is_refused_without_burning_cpu() {
    let (mut net, listed) = listed_seeds(2, 1);
    let bomb_at = listed[2].0;
    let bomb = FakeSeed::start(bomb_at, Fake::WorkBomb, listed[2].1, "");

    let p = addr(free_port());
    net.spawn("peer", p);
    wait_until("the peer closes the work bomb's connection", || {
        bomb.seen().iter().any(|c| c.early && c.ended)
    });
    for c in bomb.seen().iter().filter(|c| c.early) {
        assert!(
            c.hello.is_none(),
            "the peer answered a 40-bit challenge: {c:?}"
        );
    }
    let log_path = net.dir.path().join(format!("peer-{}.log", p.port()));
    wait_until("the peer's log names max_difficulty", || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("max_difficulty") && l.contains(&bomb_at.to_string()))
    });

    // Honest operation: once the real seeds are up the peer registers with them.
    bomb.seeds_starting();
    net.start_seeds();
    net.wait_for_event("peer", p, "peer_list");
    let q = net.start_peer();
    wait_until("both real seeds list both peers", || {
        seed_lists(&net)
            .values()
            .all(|l| *l == [p, q].iter().map(|a| a.to_string()).collect())
    });
    let with = strs(&net.events("peer", p), "registered_with", "seed");
    assert!(!with.contains(&bomb_at.to_string()), "{with:?}");
    for c in bomb.seen() {
        assert!(
            c.hello.as_ref().is_none_or(|h| h.0 != ROLE_PEER),
            "a peer answered a 40-bit challenge: {c:?}"
        );
    }
}

#[test]
fn a_claimed_address_on_another_ip_is_refused() {
    let extra = format!("{CONFIG}\nlimits: {{ loopback_exempt: false }}");
    let (mut net, mut honest) = network(&extra);
    let target = net.seeds[0];
    let me = fresh_key();
    let port = free_port();

    // We connect from 127.0.0.1 and claim 127.0.0.2, with correct work and signature.
    let mut d = dial(target);
    let other_ip = format!("127.0.0.2:{port}");
    let hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_PEER, &other_ip, &me), &me);
    let reason = expect_reject(&mut d, &hello);
    println!("another IP: {reason}");
    assert!(reason.contains(&other_ip), "{reason}");

    // Control: the same claim on our own IP is welcomed.
    let mut d = dial(target);
    let own_ip = format!("127.0.0.1:{port}");
    let hello = signed_hello(&d.ch, &hello_for(&d.ch, ROLE_PEER, &own_ip, &me), &me);
    expect_welcome(&mut d, &hello);

    honest_peers_go_on(&mut net, &mut honest);
}

#[test]
fn another_key_cannot_register_or_leave_for_a_live_peers_address() {
    let (mut net, mut honest) = network(CONFIG);
    let victim = honest[0];
    let me = fresh_key();
    for seed in net.seeds.clone() {
        // Our key, the victim's address, a newer incarnation (now): `Register` is refused...
        let mut d = welcomed(ROLE_PEER, seed, &victim.to_string(), &me);
        let reason = reject_after(&mut d, &[0x10]);
        println!("Register for {victim} under our key: {reason}");
        assert!(reason.contains("another key"), "{reason}");
        // ... and `Leave` under our key closes the connection and removes no one.
        let mut d = welcomed(ROLE_PEER, seed, &victim.to_string(), &me);
        assert!(d.conn.send(&[&[0x16]]), "write failed");
        assert!(
            matches!(drain_to_close(&mut d.conn), Next::Closed),
            "Leave under another key left the connection open"
        );
    }
    honest_peers_go_on(&mut net, &mut honest);
    assert!(no_seed_removed(&net, victim));
}

#[test]
fn a_registration_for_an_address_nobody_serves_is_refused() {
    let (mut net, mut honest) = network(CONFIG);
    let me = fresh_key();
    // An address nothing listens on: the seed dials it back before voting, and refuses.
    let nowhere = addr(free_port()).to_string();
    for seed in net.seeds.clone() {
        let mut d = welcomed(ROLE_PEER, seed, &nowhere, &me);
        let reason = reject_after(&mut d, &[0x10]);
        println!("Register for {nowhere}: {reason}");
        assert!(reason.contains("dial-back"), "{reason}");
    }
    // Honest peers, which listen where they say, still register; the address is listed nowhere.
    honest_peers_go_on(&mut net, &mut honest);
    assert!(seed_lists(&net).values().all(|l| !l.contains(&nowhere)));
}

#[test]
fn a_registration_must_start_near_the_seeds_clock_and_is_confirmed_with_its_certificate() {
    let mut net = Net::new(3, CONFIG);
    net.start_seeds();
    let ip = [127, 0, 0, 1];
    let hour = 3_600_000;
    let key = fresh_key();
    // A listener that passes the seeds' dial-back as this key's holder.
    let fake = DialBack::start(SocketAddr::from((ip, 0)), key.clone());
    let claimed = fake.at.to_string();
    // ("Joining", step 2) Not listed, and an incarnation an hour before the seed's clock:
    // `Removed` with that incarnation, then the seed closes.
    let old = unix_ms() - hour;
    let mut d = welcomed_from(ip, net.seeds[0], &claimed, old, &key);
    assert!(d.conn.send(&[&[0x10]]), "write failed");
    match d.conn.next() {
        Next::Frame(b) => {
            let mut f = Fields::new(&b);
            assert_eq!(f.u8(), Some(0x17), "not Removed: {b:?}");
            assert_eq!(f.u64(), Some(old));
            assert!(f.done(), "trailing bytes");
        }
        other => panic!("no answer to an old incarnation's Register: {other:?}"),
    }
    assert!(matches!(drain_to_close(&mut d.conn), Next::Closed));
    // An hour ahead of it: refused, naming the clock.
    let mut d = welcomed_from(ip, net.seeds[0], &claimed, unix_ms() + hour, &key);
    let reason = reject_after(&mut d, &[0x10]);
    println!("Register an hour ahead: {reason}");
    assert!(reason.contains("clock"), "{reason}");
    // Now, with a majority of the seeds (two of three) at once: each confirms with
    // `Registered`: this incarnation, and the certificate of the registration, signatures of
    // two distinct seeds over "gossipnet/2 change" | 1 | member, each under that seed's key
    // (the key its Challenge showed).
    let mut keys = std::collections::BTreeMap::new();
    for &seed in &net.seeds {
        let ch = Dial::open(Conn::new(raw_from(ip, seed)), seed).ch;
        keys.insert(ch.acceptor, ch.acceptor_key);
    }
    // Each seed's first answer to `Register` at incarnation `now`: the `Registered` body, or
    // what came instead (every frame's type, then how the link ended).
    let register_at = |now: u64| -> Result<Vec<Vec<u8>>, String> {
        let dials: Vec<Dial> = net.seeds[..2]
            .iter()
            .map(|&seed| {
                let mut d = welcomed_from(ip, seed, &claimed, now, &key);
                assert!(d.conn.send(&[&[0x10]]), "write failed");
                d
            })
            .collect();
        let mut bodies = Vec::new();
        for mut d in dials {
            let mut seen = Vec::new();
            let body = (0..100).find_map(|_| match d.conn.next() {
                Next::Frame(b) if b.first() == Some(&0x11) => Some(Ok(b)),
                Next::Frame(b) if b.first() == Some(&0x04) => {
                    panic!("refused: {:?}", reject_reason(&b))
                }
                Next::Frame(b) => {
                    seen.push(b.first().copied());
                    None
                }
                other => Some(Err(format!("frames {seen:x?}, then {other:?}"))),
            });
            bodies.push(body.unwrap_or_else(|| Err(format!("frames {seen:x?}")))?);
        }
        Ok(bodies)
    };
    let mut now = unix_ms();
    let bodies = register_at(now).unwrap_or_else(|first| {
        // Seen once in CI under load (a seed closed the link without `Registered`; the
        // cause is not found yet, see the notes): a peer told `Removed`, or cut
        // off, registers anew as a new incarnation, and so does this client, once.
        println!("RETRIED: no Registered at incarnation {now}: {first}");
        now = unix_ms().max(now + 1);
        register_at(now)
            .unwrap_or_else(|again| panic!("no answer to Register: {first}; again: {again}"))
    });
    let signed = change_message(&claimed, now, &key.verifying_key().to_bytes());
    for body in bodies {
        let (incarnation, cert) = parse_registered(&body)
            .unwrap_or_else(|| panic!("a Registered not in the documented layout: {body:?}"));
        assert_eq!(incarnation, now, "the incarnation registered");
        let mut signers = BTreeSet::new();
        for (seed, sig) in cert {
            let seed_key = VerifyingKey::from_bytes(&keys[&seed]).unwrap();
            seed_key
                .verify_strict(&signed, &Signature::from_bytes(&sig))
                .unwrap_or_else(|e| panic!("{seed}'s signature does not verify: {e}"));
            signers.insert(seed);
        }
        assert!(signers.len() >= 2, "signed by {signers:?}");
    }
    drop(fake);
}

#[test]
fn a_dead_report_cannot_borrow_the_victims_address_or_outvote_its_probe() {
    let (mut net, mut honest) = network(CONFIG);
    let victim = honest[0];
    let seed = net.seeds[0];
    let text = |reporter: &str| {
        let (ip, port) = victim
            .to_string()
            .rsplit_once(':')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap();
        format!("Dead Node:{ip}:{port}:{}:{reporter}", unix_ms())
    };
    // Over a connection claiming the victim's own address (our key): refused, closed.
    let me = fresh_key();
    let mut d = welcomed(ROLE_PEER, seed, &victim.to_string(), &me);
    assert!(d.conn.send(&[&dead_node_body(&text(&victim.to_string()))]));
    assert!(matches!(drain_to_close(&mut d.conn), Next::Closed));
    // Over a connection of our own: the seed checks the victim itself, over the victim's own
    // connection (ours did not replace it), finds it alive and refuses the report.
    let liar = addr(free_port()).to_string();
    let mut d = welcomed(ROLE_PEER, seed, &liar, &me);
    assert!(d.conn.send(&[&dead_node_body(&text(&liar))]));
    wait_until("the seed refuses the false report", || {
        of(&net.events("seed", seed), "rejected").iter().any(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("false dead report") && r.contains(&victim.to_string()))
        })
    });
    honest_peers_go_on(&mut net, &mut honest);
    assert!(no_seed_removed(&net, victim));
}

/// No seed ever logged a removal of `peer`.
fn no_seed_removed(net: &Net, peer: SocketAddr) -> bool {
    net.seeds.iter().all(|&s| {
        of(&net.events("seed", s), "removed")
            .iter()
            .all(|e| e["peer"] != peer.to_string())
    })
}

/// 0x15 DeadNode: `text`.
fn dead_node_body(text: &str) -> Vec<u8> {
    let mut b = vec![0x15];
    b.extend_from_slice(&(text.len() as u16).to_be_bytes());
    b.extend_from_slice(text.as_bytes());
    b
}

/// Sends `body` after the handshake and expects a `Reject` (frames before it skipped), then
/// the close; returns the reason.
fn reject_after(d: &mut Dial, body: &[u8]) -> String {
    assert!(d.conn.send(&[body]), "write failed");
    for _ in 0..100 {
        match d.conn.next() {
            Next::Frame(b) => {
                if let Some(reason) = reject_reason(&b) {
                    assert!(matches!(drain_to_close(&mut d.conn), Next::Closed));
                    return reason;
                }
            }
            other => panic!("expected Reject, got {other:?}"),
        }
    }
    panic!("no Reject in 100 frames");
}

/// Reads frames until the connection ends (at most 100); what ended it.
fn drain_to_close(c: &mut Conn) -> Next {
    for _ in 0..100 {
        match c.next() {
            Next::Frame(_) => {}
            end => return end,
        }
    }
    panic!("still open after 100 frames");
}

#[test]
fn a_seed_that_lies_to_peers_gets_none_of_its_made_up_entries_dialed() {
    // Three seeds listed with their keys: two real (A, B) and one the attacker runs with its
    // own, listed key (a compromised seed). It answers a peer like a seed, but its PeerList
    // names only made-up members (listeners of the test's that count who dials them), signed
    // by itself and with a signature it claims is A's.
    // A 2 s handshake deadline: a joining peer takes what lists it has after twice that.
    let timers = CONFIG.replace("timeout: 30s", "timeout: 2s");
    let (mut net, liar_at, liar_key) = with_a_listed_liar(&timers);
    let (a_seed, b_seed) = (net.seeds[0], net.seeds[1]);
    let baits: Vec<Bait> = (0..3).map(|_| Bait::start()).collect();
    let made_up: Vec<SocketAddr> = baits.iter().map(|b| b.at).collect();
    let liar = Liar::start(liar_at, liar_key, a_seed, made_up.clone());

    // A is up, B not yet: the peer that joins now has only A's registration under way and the
    // liar's list in hand when its join deadline comes.
    net.spawn("seed", a_seed);
    net.wait_for_event("seed", a_seed, "started");
    let p = addr(free_port());
    net.spawn("peer", p);
    net.wait_for_event("peer", p, "peer_list");
    let listed = of(&net.events("peer", p), "peer_list")[0]["peers"].to_string();
    assert!(
        made_up.iter().all(|m| listed.contains(&m.to_string())),
        "the peer did not get the liar's list: {listed}"
    );
    let log_path = net.dir.path().join(format!("peer-{}.log", p.port()));
    wait_until("the peer says it left the uncertified entries out", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        made_up.iter().all(|m| {
            log.lines()
                .any(|l| l.contains(&m.to_string()) && l.contains("without a certificate"))
        })
    });
    assert!(
        liar.asked.load(Ordering::Relaxed),
        "the liar was never asked for its list"
    );
    drop(liar);

    // Honest gossip goes on: B comes up, another peer joins, and the two are neighbours.
    net.spawn("seed", b_seed);
    net.wait_for_event("seed", b_seed, "started");
    let q = net.start_peer();
    wait_until("the honest peers gossip with each other", || {
        let got = net.events("peer", p);
        of(&got, "gossip_received").iter().any(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.contains(&q.to_string()))
        })
    });
    for b in &baits {
        assert_eq!(
            b.dials.load(Ordering::Relaxed),
            0,
            "a made-up member at {} was dialed",
            b.at
        );
    }
}

#[test]
fn peers_whose_seeds_include_one_that_never_votes_still_get_listed() {
    // Two real seeds and a compromised one (listed key) that answers `Registered` at once and
    // never votes. A peer that registers with it and one real seed waits for a commit that
    // needs a second real vote: it must register with the other real seed as well.
    let (mut net, liar_at, liar_key) = with_a_listed_liar(CONFIG);
    let a_seed = net.seeds[0];
    let _liar = Liar::start(liar_at, liar_key, a_seed, Vec::new());
    net.start_seeds();
    // Each peer picks two of the three seeds at random: with three peers, some pick the liar.
    let peers: Vec<SocketAddr> = (0..3)
        .map(|_| {
            let p = addr(free_port());
            net.spawn("peer", p);
            p
        })
        .collect();
    wait_until("both real seeds list every peer", || {
        lists_exactly(&net, &peers)
    });
    for &p in &peers {
        let with = strs(&net.events("peer", p), "registered_with", "seed");
        println!("{p} registered with {with:?}");
    }
}

#[test]
fn many_fake_registrations_from_one_host_are_capped_and_go_when_their_listeners_die() {
    // Loopback counts like any host here, and one IP may hold 6 registrations. The attacker
    // is 127.0.0.2; the honest peers are 127.0.0.1.
    let caps = format!("{CONFIG}\nlimits: {{ loopback_exempt: false, registrations_per_ip: 6 }}");
    let (mut net, mut honest) = network(&caps);
    let attacker = [127, 0, 0, 2];
    let mut fakes = Vec::new();
    let (mut listed, mut refused) = (0, Vec::new());
    // 30 identities, each with a listener of its own that passes the seeds' dial-back.
    for _ in 0..30 {
        let key = fresh_key();
        let fake = DialBack::start(SocketAddr::from((attacker, 0)), key.clone());
        let claimed = fake.at.to_string();
        let mut registered = 0;
        // A majority of the seeds, asked at once: a registration commits with two votes for
        // one member (address, incarnation, key).
        let incarnation = unix_ms();
        let dials: Vec<Dial> = net.seeds[..2]
            .iter()
            .map(|&seed| {
                let mut d = welcomed_from(attacker, seed, &claimed, incarnation, &key);
                assert!(d.conn.send(&[&[0x10]]), "write failed");
                d
            })
            .collect();
        for mut d in dials {
            match drain_until_answer(&mut d.conn) {
                Answer::Registered => {
                    registered += 1;
                    fake.links.lock().unwrap().push(d.conn);
                }
                Answer::Rejected(reason) => refused.push(reason),
            }
        }
        if registered == 2 {
            listed += 1;
        }
        fakes.push(fake);
    }
    println!(
        "registered {listed} of 30; refused {}: {:?}",
        refused.len(),
        refused.first()
    );
    assert!(
        listed <= 6,
        "{listed} identities of one IP listed at a cap of 6"
    );
    assert!(
        refused.iter().any(|r| r.contains("registrations_per_ip")),
        "no refusal names the cap: {refused:?}"
    );
    // Every seed lists at most the cap from the attacker's IP.
    for (seed, list) in seed_lists(&net) {
        let theirs = list.iter().filter(|a| a.starts_with("127.0.0.2:")).count();
        assert!(
            theirs <= 6,
            "{seed} lists {theirs} of the attacker's identities"
        );
    }
    // The attacker goes away: listeners and links close. Every fake is removed, and only the
    // honest peers stay listed.
    drop(fakes);
    wait_until("every seed lists exactly the honest peers again", || {
        lists_exactly(&net, &honest)
    });
    // A newcomer's neighbours are honest, and gossip reaches it.
    honest_peers_go_on(&mut net, &mut honest);
    let newcomer = *honest.last().unwrap();
    wait_until("the newcomer receives gossip", || {
        !of(&net.events("peer", newcomer), "gossip_received").is_empty()
    });
    let ups = strs(&net.events("peer", newcomer), "neighbour_up", "peer");
    assert!(
        ups.iter().all(|a| !a.starts_with("127.0.0.2:")),
        "the newcomer linked to the attacker: {ups:?}"
    );
}

// ---- The network under attack ----

/// Three seeds (listed with their keys, as `Net::new` writes them) and two honest peers
/// registered at every seed.
fn network(extra: &str) -> (Net, Vec<SocketAddr>) {
    let mut net = Net::new(3, extra);
    net.start_seeds();
    let mut honest = Vec::new();
    for _ in 0..2 {
        honest.push(net.start_peer());
    }
    wait_until("every seed lists both honest peers", || {
        lists_exactly(&net, &honest)
    });
    (net, honest)
}

/// Honest operation goes on: one more honest peer registers and gets its peer list, and every
/// seed lists exactly the honest peers, nobody else.
fn honest_peers_go_on(net: &mut Net, honest: &mut Vec<SocketAddr>) {
    honest.push(net.start_peer());
    wait_until("every seed lists exactly the honest peers", || {
        lists_exactly(net, honest)
    });
}

fn lists_exactly(net: &Net, peers: &[SocketAddr]) -> bool {
    let want: BTreeSet<String> = peers.iter().map(|a| a.to_string()).collect();
    seed_lists(net).values().all(|l| *l == want)
}

/// A network description listing `real + fake` seeds with their keys (`keyed_seed_entries`);
/// `net.seeds` holds only the `real` ones, the first ones listed, which `start_seeds` starts.
/// Returns each listed seed with its listed key.
fn listed_seeds(real: usize, fake: usize) -> (Net, Vec<Listed>) {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<SocketAddr> = (0..real + fake).map(|_| addr(free_port())).collect();
    let entries = keyed_seed_entries(dir.path(), &all);
    let config = dir.path().join("seeds.yaml");
    std::fs::write(&config, fast_config(&entries, CONFIG)).unwrap();
    let listed = all
        .iter()
        .zip(&entries)
        .map(|(a, e)| {
            let hex = e.split("key: \"").nth(1).unwrap();
            (*a, unhex(&hex[..64]))
        })
        .collect();
    let net = Net {
        dir,
        config,
        seeds: all[..real].to_vec(),
        nodes: Vec::new(),
    };
    (net, listed)
}

/// A seed as `seeds.yaml` lists it: its address and its key.
type Listed = (SocketAddr, [u8; 32]);

fn fresh_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

// ---- What only these attacks send (the client: `common::attacker`) ----

/// `Registered` (0x11) as a seed that signs nothing sends it: an `incarnation: u64` and a
/// certificate of no signatures (`n: u8` = 0).
fn registered_uncertified() -> Vec<u8> {
    let mut b = vec![0x11];
    b.extend_from_slice(&unix_ms().to_be_bytes());
    b.push(0);
    b
}

/// 0x31 Sync: `list<cert>`, a `cert` being `op: u8`, `member`, `n: u8`, then `n` × (`seed:
/// addr`, `sig`), each `sig` over `"gossipnet/2 change" | op u8 | member` ("Seeds among
/// themselves"). Here every signature is `signer`'s, claimed for each of `seeds`.
fn sync_body(changes: &[(u8, String, [u8; 32])], seeds: &[String], signer: &SigningKey) -> Vec<u8> {
    let mut b = vec![0x31];
    b.extend_from_slice(&(changes.len() as u32).to_be_bytes());
    for (op, addr, key) in changes {
        let mut change = vec![*op];
        change.extend(member(addr, unix_ms(), key));
        let sig = signer.sign(&[CHANGE_CONTEXT, &change].concat());
        b.extend_from_slice(&change);
        b.push(seeds.len() as u8);
        for seed in seeds {
            b.extend(addr_field(seed));
            b.extend_from_slice(&sig.to_bytes());
        }
    }
    b
}

// ---- A fake acceptor at a seed's address ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fake {
    /// A Challenge showing a key of its own, not the listed one.
    OwnKey,
    /// The listed key in the Challenge; to a Hello it answers a Welcome signed by another key,
    /// `Registered` and a `PeerList` (`list<member, degree: u16, n: u8, n × (addr, sig)>`),
    /// its one entry signed by no seed.
    ListedKeyForgedWelcome,
    /// The listed key and difficulty 40.
    WorkBomb,
}

/// What one connector did on one connection to a fake.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Accepted before the real seeds were started: the peer's, since no seed was running.
    early: bool,
    /// Role and claimed address of the Hello, if one came.
    hello: Option<(u8, String)>,
    /// Tags of the frames that came after the Hello.
    after: Vec<u8>,
    /// The connector closed.
    ended: bool,
}

struct FakeSeed {
    seen: Arc<Mutex<Vec<Seen>>>,
    early: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeSeed {
    /// Listens at `at` and serves every connection on a thread of its own. `shown` is the one
    /// address the forged `PeerList` names.
    fn start(at: SocketAddr, mode: Fake, listed: [u8; 32], shown: &str) -> FakeSeed {
        let listener = TcpListener::bind(at).unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let early = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, early2, stop2) = (seen.clone(), early.clone(), stop.clone());
        let shown = shown.to_string();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < 4 * PATIENCE {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let i = {
                            let mut v = seen2.lock().unwrap();
                            v.push(Seen {
                                early: early2.load(Ordering::Relaxed),
                                ..Seen::default()
                            });
                            v.len() - 1
                        };
                        let (seen, shown) = (seen2.clone(), shown.clone());
                        std::thread::spawn(move || {
                            serve_fake(Conn::new(s), at, mode, listed, &shown, &seen, i)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeSeed {
            seen,
            early,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Connections accepted from now on may come from the real seeds.
    fn seeds_starting(&self) {
        self.early.store(false, Ordering::Relaxed);
    }
}

impl Drop for FakeSeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake acceptor's side of one connection, recorded in `seen[i]`.
fn serve_fake(
    mut conn: Conn,
    me: SocketAddr,
    mode: Fake,
    listed: [u8; 32],
    shown: &str,
    seen: &Mutex<Vec<Seen>>,
    i: usize,
) {
    let own = fresh_key();
    let (difficulty, key) = match mode {
        Fake::OwnKey => (8, own.verifying_key().to_bytes()),
        Fake::ListedKeyForgedWelcome => (8, listed),
        Fake::WorkBomb => (40, listed),
    };
    let ch = challenge_body(difficulty, &me.to_string(), &key);
    conn.send(&[&ch]);
    for _ in 0..64 {
        match conn.next() {
            Next::Frame(body) => {
                let first = {
                    let v = seen.lock().unwrap();
                    v[i].hello.is_none() && v[i].after.is_empty()
                };
                match parse_hello(&body).filter(|_| first) {
                    Some(h) => {
                        seen.lock().unwrap()[i].hello = Some((h.role, h.addr));
                        if mode == Fake::ListedKeyForgedWelcome {
                            let welcome = welcome_body(&ch, &body, &own);
                            let mut list = vec![0x13];
                            list.extend_from_slice(&1u32.to_be_bytes());
                            list.extend(addr_field(shown));
                            list.extend_from_slice(&1u64.to_be_bytes());
                            list.extend_from_slice(&own.verifying_key().to_bytes());
                            list.extend_from_slice(&0u16.to_be_bytes());
                            list.push(0);
                            conn.send(&[&welcome, &registered_uncertified(), &list]);
                        }
                    }
                    None => seen.lock().unwrap()[i].after.push(body[0]),
                }
            }
            Next::Closed => {
                seen.lock().unwrap()[i].ended = true;
                return;
            }
            Next::Silent => return,
        }
    }
}

// ---- A seed that lies to peers ----

/// Two real seeds (`net.seeds`, not started) and a third listed with a key of the attacker's
/// (a compromised seed), with `timers`: the network, the third seed's address and its key.
fn with_a_listed_liar(timers: &str) -> (Net, SocketAddr, SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let (a_seed, b_seed, liar_at) = (addr(free_port()), addr(free_port()), addr(free_port()));
    let liar_key = fresh_key();
    let mut entries = keyed_seed_entries(dir.path(), &[a_seed, b_seed]);
    entries.push(format!(
        "{{ addr: \"{liar_at}\", key: \"{}\" }}",
        hex(&liar_key.verifying_key().to_bytes())
    ));
    let config = dir.path().join("seeds.yaml");
    std::fs::write(&config, fast_config(&entries, timers)).unwrap();
    let net = Net {
        dir,
        config,
        seeds: vec![a_seed, b_seed],
        nodes: Vec::new(),
    };
    (net, liar_at, liar_key)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A listener that counts the connections made to it: a made-up member of a forged list.
struct Bait {
    at: SocketAddr,
    dials: Arc<AtomicUsize>,
    _serving: Serving,
}

impl Bait {
    fn start() -> Bait {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let at = listener.local_addr().unwrap();
        let dials = Arc::new(AtomicUsize::new(0));
        let counted = dials.clone();
        let serving = Serving::start(move |stop| {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < 4 * PATIENCE {
                if listener.accept().is_ok() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Bait {
            at,
            dials,
            _serving: serving,
        }
    }
}

/// A configured seed (its key listed) that lies: to a peer's `Register` it answers
/// `Registered`, to `GetPeers` a `PeerList` of made-up members. Connections from other seeds
/// are closed after the Challenge.
struct Liar {
    asked: Arc<AtomicBool>,
    _serving: Serving,
}

impl Liar {
    fn start(
        at: SocketAddr,
        key: SigningKey,
        claimed: SocketAddr,
        made_up: Vec<SocketAddr>,
    ) -> Liar {
        let listener = TcpListener::bind(at).unwrap();
        listener.set_nonblocking(true).unwrap();
        let asked = Arc::new(AtomicBool::new(false));
        let asked2 = asked.clone();
        let key = Arc::new(key);
        let serving = Serving::start(move |stop| {
            let start = Instant::now();
            let mut served = Vec::new();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < 4 * PATIENCE {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let (key, made_up, asked, stop) =
                            (key.clone(), made_up.clone(), asked2.clone(), stop.clone());
                        served.push(std::thread::spawn(move || {
                            serve_liar(Conn::new(s), at, &key, claimed, &made_up, &asked, &stop)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for t in served {
                let _ = t.join();
            }
        });
        Liar {
            asked,
            _serving: serving,
        }
    }
}

/// 0x13 PeerList: `list<entry>`, an entry being `member`, `degree: u16`, `n: u8`, then `n` ×
/// (`seed: addr`, `sig`), the signatures of the member's registration (`"gossipnet/2 change" |
/// 1 | member`). Each made-up member is signed by the liar itself, and the same signature is
/// claimed for `claimed` (another seed, whose key the liar does not have).
fn lying_list(
    me: SocketAddr,
    key: &SigningKey,
    claimed: SocketAddr,
    made_up: &[SocketAddr],
) -> Vec<u8> {
    let mut b = vec![0x13];
    b.extend_from_slice(&(made_up.len() as u32).to_be_bytes());
    for m in made_up {
        let entry = member(
            &m.to_string(),
            unix_ms(),
            &fresh_key().verifying_key().to_bytes(),
        );
        let sig = key.sign(&[CHANGE_CONTEXT, &[1], &entry].concat());
        b.extend_from_slice(&entry);
        b.extend_from_slice(&0u16.to_be_bytes());
        b.push(2);
        for seed in [me, claimed] {
            b.extend(addr_field(&seed.to_string()));
            b.extend_from_slice(&sig.to_bytes());
        }
    }
    b
}

fn serve_liar(
    mut conn: Conn,
    me: SocketAddr,
    key: &SigningKey,
    claimed: SocketAddr,
    made_up: &[SocketAddr],
    asked: &AtomicBool,
    stop: &AtomicBool,
) {
    let ch = challenge_body(8, &me.to_string(), &key.verifying_key().to_bytes());
    if !conn.send(&[&ch]) {
        return;
    }
    let Next::Frame(hello) = conn.next() else {
        return;
    };
    match parse_hello(&hello) {
        Some(h) if h.role == ROLE_PEER => {}
        _ => return,
    }
    conn.send(&[&welcome_body(&ch, &hello, key)]);
    // Short reads from here, so the liar notices when it is told to stop.
    conn.s
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        match conn.next() {
            Next::Frame(body) => match body.first() {
                Some(0x10) => {
                    conn.send(&[&registered_uncertified()]);
                }
                Some(0x12) => {
                    asked.store(true, Ordering::Relaxed);
                    conn.send(&[&lying_list(me, key, claimed, made_up)]);
                }
                _ => {}
            },
            Next::Closed => return,
            _ => {}
        }
    }
}

// ---- Many identities from one host ----

/// A TCP connection to `target` made from `ip` (a loopback address of the attacker's own), as
/// if from another host.
fn raw_from(ip: [u8; 4], target: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    let [a, b, c, d] = ip;
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    let SocketAddr::V4(t) = target else {
        panic!("IPv4 only: {target}")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(t)).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// `welcomed` in the peer role, from `ip`, with this incarnation.
fn welcomed_from(
    ip: [u8; 4],
    target: SocketAddr,
    claimed: &str,
    incarnation: u64,
    key: &SigningKey,
) -> Dial {
    let d = Dial::open(Conn::new(raw_from(ip, target)), target);
    welcomed_on(d, ROLE_PEER, claimed, incarnation, key)
}

enum Answer {
    Registered,
    Rejected(String),
}

/// Reads until `Registered` (0x11) or `Reject` (0x04) arrives; other frames (a seed's liveness
/// probe, say) are skipped.
fn drain_until_answer(c: &mut Conn) -> Answer {
    for _ in 0..100 {
        match c.next() {
            Next::Frame(b) if b.first() == Some(&0x11) => return Answer::Registered,
            Next::Frame(b) if b.first() == Some(&0x04) => {
                return Answer::Rejected(reject_reason(&b).unwrap_or_default())
            }
            Next::Frame(_) => {}
            other => panic!("no answer to Register: {other:?}"),
        }
    }
    panic!("no answer to Register in 100 frames")
}
