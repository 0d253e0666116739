//! Properties of everything that parses remote or user input, checked on generated inputs in
//! the normal test suite: round trips hold, and no input makes a parser panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use gossipnet::api::{ApiMsg, ApiReader};
use gossipnet::config::Config;
use gossipnet::texts;
use gossipnet::wire::{
    Certificate, FrameReader, Member, Msg, PeerEntry, RemovalReason, Role, RootNumber, VoteOp,
};

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u16; 8]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    (socket_addr(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(addr, incarnation, key)| Member {
        addr,
        incarnation,
        key,
    })
}

fn vote_op(code: u8) -> VoteOp {
    [
        VoteOp::Add,
        VoteOp::Remove(RemovalReason::Dead),
        VoteOp::Remove(RemovalReason::Left),
    ][code as usize]
}

fn signature() -> impl Strategy<Value = [u8; 64]> {
    proptest::collection::vec(any::<u8>(), 64).prop_map(|v| v.try_into().unwrap())
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,200}"
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            any::<[u8; 32]>(),
            socket_addr(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |(min_version, max_version, difficulty, challenge, acceptor, acceptor_key)| {
                    Msg::Challenge {
                        min_version,
                        max_version,
                        difficulty,
                        challenge,
                        acceptor,
                        acceptor_key,
                    }
                }
            ),
        (
            any::<u16>(),
            any::<bool>(),
            socket_addr(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            signature()
        )
            .prop_map(
                |(version, seed, addr, incarnation, challenge, key, nonce, signature)| {
                    Msg::Hello {
                        version,
                        role: if seed { Role::Seed } else { Role::Peer },
                        addr,
                        incarnation,
                        challenge,
                        key,
                        nonce,
                        signature,
                    }
                }
            ),
        signature().prop_map(|signature| Msg::Welcome { signature }),
        text().prop_map(|reason| Msg::Reject { reason }),
        Just(Msg::Register),
        (
            any::<u64>(),
            proptest::collection::vec((socket_addr(), signature()), 0..4)
        )
            .prop_map(|(incarnation, signatures)| Msg::Registered {
                incarnation,
                signatures
            }),
        Just(Msg::GetPeers),
        proptest::collection::vec(
            (
                socket_addr(),
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<u16>(),
                proptest::collection::vec((socket_addr(), any::<[u8; 32]>()), 0..4),
            ),
            0..40
        )
        .prop_map(|v| {
            Msg::PeerList {
                peers: v
                    .into_iter()
                    .map(|(addr, incarnation, key, degree, sigs)| PeerEntry {
                        addr,
                        incarnation,
                        key,
                        degree,
                        // A signature is 64 bytes: two halves keep proptest's arrays small.
                        signatures: sigs
                            .into_iter()
                            .map(|(seed, half)| {
                                let mut sig = [0u8; 64];
                                sig[..32].copy_from_slice(&half);
                                sig[32..].copy_from_slice(&half);
                                (seed, sig)
                            })
                            .collect(),
                    })
                    .collect(),
            }
        }),
        any::<u16>().prop_map(|neighbours| Msg::Degree { neighbours }),
        text().prop_map(|text| Msg::DeadNode { text }),
        Just(Msg::Leave),
        any::<u64>().prop_map(|incarnation| Msg::Removed { incarnation }),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(data_type, ttl, nonce, payload)| Msg::Gossip {
                data_type,
                ttl,
                nonce,
                payload: payload.into()
            }),
        (
            member(),
            proptest::collection::vec((socket_addr(), signature()), 0..4),
            any::<u32>(),
            any::<[u8; 32]>(),
            signature(),
            any::<u8>(),
            any::<[u8; 32]>(),
            0u8..8
        )
            .prop_map(
                |(m, certificate, seq, anchor, signature, dist, value, flags)| Msg::TreeRoot {
                    number: std::sync::Arc::new(RootNumber {
                        root: m.addr,
                        incarnation: m.incarnation,
                        key: m.key,
                        certificate,
                        seq,
                        anchor,
                        signature
                    }),
                    dist,
                    value,
                    parent: flags & 1 != 0,
                    want: flags & 2 != 0,
                    released: flags & 4 != 0
                }
            ),
        text().prop_map(|text| Msg::LivenessRequest { text }),
        text().prop_map(|text| Msg::LivenessReply { text }),
        (0u8..3, member(), signature()).prop_map(|(op, member, signature)| Msg::Vote {
            op: vote_op(op),
            member,
            signature
        }),
        proptest::collection::vec(
            (
                0u8..3,
                member(),
                proptest::collection::vec((socket_addr(), signature()), 0..4)
            ),
            0..20
        )
        .prop_map(|certs| Msg::Sync {
            certs: certs
                .into_iter()
                .map(|(op, member, signatures)| Certificate {
                    op: vote_op(op),
                    member,
                    signatures
                })
                .collect()
        }),
    ]
}

fn api_msg() -> impl Strategy<Value = ApiMsg> {
    let data = proptest::collection::vec(any::<u8>(), 0..2000);
    prop_oneof![
        (any::<u8>(), any::<u16>(), data.clone()).prop_map(|(ttl, data_type, data)| {
            ApiMsg::Announce {
                ttl,
                data_type,
                data,
            }
        }),
        any::<u16>().prop_map(|data_type| ApiMsg::Notify { data_type }),
        (any::<u16>(), any::<u16>(), data).prop_map(|(message_id, data_type, data)| {
            ApiMsg::Notification {
                message_id,
                data_type,
                data,
            }
        }),
        (any::<u16>(), any::<bool>())
            .prop_map(|(message_id, valid)| ApiMsg::Validation { message_id, valid }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wire_round_trip(m in msg()) {
        let frame = m.encode();
        let mut r = FrameReader::new(1 << 20);
        r.push(&frame);
        let body = r.next_frame().unwrap().unwrap();
        prop_assert_eq!(Msg::decode(&body).unwrap(), m);
    }

    #[test]
    fn wire_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 1usize..64) {
        let _ = Msg::decode(&bytes);
        let mut r = FrameReader::new(256);
        for chunk in bytes.chunks(cut) {
            r.push(chunk);
            loop {
                match r.next_frame() {
                    Ok(Some(body)) => { let _ = Msg::decode(&body); }
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
            // Never more than one frame's worth plus one chunk held.
            prop_assert!(r.pending() <= 256 + 4 + cut);
        }
    }

    #[test]
    fn api_round_trip(m in api_msg()) {
        let bytes = m.encode().unwrap();
        let mut r = ApiReader::default();
        r.push(&bytes);
        prop_assert_eq!(r.next_msg().unwrap(), Some(m));
    }

    #[test]
    fn api_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 1usize..64) {
        let _ = ApiMsg::decode(&bytes);
        let mut r = ApiReader::default();
        for chunk in bytes.chunks(cut) {
            r.push(chunk);
            loop {
                match r.next_msg() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
        }
    }

    #[test]
    fn texts_round_trip(dead in socket_addr(), reporter in socket_addr(), ts in any::<u64>()) {
        let t = texts::dead_node(&dead, ts, &reporter);
        let r = texts::parse_dead_node(&t).unwrap();
        prop_assert_eq!((r.dead, r.ts_ms, r.reporter), (dead, ts, reporter));
        let req = texts::liveness_request(ts, &dead);
        prop_assert_eq!(texts::parse_liveness_request(&req), Some((ts, dead)));
        let rep = texts::liveness_reply(ts, &dead, &reporter);
        prop_assert_eq!(texts::parse_liveness_reply(&rep), Some((ts, dead, reporter)));
    }

    #[test]
    fn text_parsers_never_panic(s in "\\PC{0,120}") {
        let _ = texts::parse_dead_node(&s);
        let _ = texts::parse_liveness_request(&s);
        let _ = texts::parse_liveness_reply(&s);
        let _ = texts::parse_dead_node(&format!("Dead Node:{s}"));
        let _ = texts::parse_liveness_reply(&format!("Liveness Reply:{s}"));
    }

    #[test]
    fn config_parse_never_panics(s in "\\PC{0,300}") {
        if let Err(e) = Config::parse(&s) {
            prop_assert!(!e.0.contains('\n'), "one line: {}", e.0);
        }
        let y = format!("seeds: [\"127.0.0.1:9001\"]\ngossip: {{ interval: {s} }}\n");
        let _ = Config::parse(&y);
    }
}
