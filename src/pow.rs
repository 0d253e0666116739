//! Proof-of-work admission: challenge, solve, verify. Pure functions over bytes.
//!
//! The connector must find a `nonce` such that
//! `SHA-256(challenge ‖ key ‖ len ‖ connector ‖ len ‖ acceptor ‖ nonce_be64)` has `difficulty`
//! leading zero bits, where `key` is the connector's public key and both addresses are their
//! `ip:port` text, each after a one-byte length. Binding the key and both addresses means a
//! solution is good for one key, one pair of nodes and one fresh challenge only; verifying
//! costs one hash.

use std::net::SocketAddr;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Hashes tried between two looks at the deadline.
const DEADLINE_CHECK_EVERY: u64 = 1 << 14;

/// Who solves, for whom: the fixed part of every hash.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    pub challenge: &'a [u8; 32],
    /// The connector's public key.
    pub key: &'a [u8; 32],
    pub connector: &'a SocketAddr,
    pub acceptor: &'a SocketAddr,
}

fn prefix(b: Bound<'_>) -> Sha256 {
    let mut h = Sha256::new();
    h.update(b.challenge);
    h.update(b.key);
    let (connector, acceptor) = (b.connector, b.acceptor);
    for addr in [connector, acceptor] {
        let s = addr.to_string();
        h.update([s.len() as u8]);
        h.update(s.as_bytes());
    }
    h
}

/// Leading zero bits of a digest.
pub fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in digest {
        if b == 0 {
            bits += 8;
        } else {
            bits += b.leading_zeros();
            break;
        }
    }
    bits
}

/// One hash: does `nonce` meet `difficulty` for this challenge, key and pair of addresses?
pub fn verify(bound: Bound<'_>, difficulty: u8, nonce: u64) -> bool {
    let mut h = prefix(bound);
    h.update(nonce.to_be_bytes());
    leading_zero_bits(&h.finalize()) >= difficulty as u32
}

/// Searches nonces from `start` until one meets `difficulty`. Returns `None` when the deadline
/// passes first. The hash state after the fixed prefix is computed once and cloned per try.
pub fn solve(
    bound: Bound<'_>,
    difficulty: u8,
    start: u64,
    deadline: Option<Instant>,
) -> Option<u64> {
    let base = prefix(bound);
    let mut nonce = start;
    let mut tried: u64 = 0;
    loop {
        let mut h = base.clone();
        h.update(nonce.to_be_bytes());
        if leading_zero_bits(&h.finalize()) >= difficulty as u32 {
            return Some(nonce);
        }
        nonce = nonce.wrapping_add(1);
        tried += 1;
        if tried.is_multiple_of(DEADLINE_CHECK_EVERY) {
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const K: [u8; 32] = [9; 32];

    fn b<'a>(c: &'a [u8; 32], x: &'a SocketAddr, y: &'a SocketAddr) -> Bound<'a> {
        Bound {
            challenge: c,
            key: &K,
            connector: x,
            acceptor: y,
        }
    }

    #[test]
    fn zero_bits() {
        assert_eq!(leading_zero_bits(&[0, 0, 0x80]), 16);
        assert_eq!(leading_zero_bits(&[0, 0x0f]), 12);
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn solve_then_verify() {
        let c = [42u8; 32];
        let (x, y) = (a("127.0.0.1:9101"), a("127.0.0.1:9001"));
        let nonce = solve(b(&c, &x, &y), 12, 0, None).unwrap();
        assert!(verify(b(&c, &x, &y), 12, nonce));
    }

    #[test]
    fn a_solution_is_bound_to_challenge_key_and_both_addresses() {
        let c = [1u8; 32];
        let (x, y) = (a("127.0.0.1:9101"), a("127.0.0.1:9001"));
        let nonce = solve(b(&c, &x, &y), 16, 0, None).unwrap();
        // With 16 bits, a random other input passes with probability 2^-16.
        assert!(!verify(b(&[2u8; 32], &x, &y), 16, nonce));
        assert!(!verify(b(&c, &a("127.0.0.1:9102"), &y), 16, nonce));
        assert!(!verify(b(&c, &x, &a("127.0.0.1:9002")), 16, nonce));
        let other_key = [8u8; 32];
        let with_other_key = Bound {
            key: &other_key,
            ..b(&c, &x, &y)
        };
        assert!(!verify(with_other_key, 16, nonce));
    }

    #[test]
    fn difficulty_zero_accepts_anything() {
        let (x, y) = (a("127.0.0.1:1"), a("127.0.0.1:2"));
        assert!(verify(b(&[0; 32], &x, &y), 0, 99));
    }

    #[test]
    fn the_deadline_stops_the_search() {
        let (x, y) = (a("127.0.0.1:1"), a("127.0.0.1:2"));
        // 64 bits cannot be found; an already-passed deadline returns promptly.
        assert_eq!(
            solve(b(&[0; 32], &x, &y), 64, 0, Some(Instant::now())),
            None
        );
    }
}
