//! The admission handshake as plain state: the acceptor issues a challenge and checks the
//! connector's `Hello`; the connector turns a `Challenge` into a `Hello`. No sockets here;
//! `net.rs` moves the frames and enforces the deadline on reads.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use rand::RngCore;

use crate::pow;
use crate::wire::{Msg, Role, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Why a handshake failed. Each is logged as a `rejected` event by the acceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The first frame was not a `Hello` (or, for the connector, not a `Challenge`).
    Unexpected(&'static str),
    /// The `Hello` answers another challenge than the one issued on this connection.
    StaleChallenge,
    WrongNonce,
    DeadlinePassed,
    NoCommonVersion {
        ours: (u16, u16),
        theirs: (u16, u16),
    },
    /// A connector claiming to be a seed that is not in the configuration.
    UnknownSeed(SocketAddr),
    /// The claimed listen address is on another IP than the connection comes from.
    AddressMismatch {
        claimed: SocketAddr,
        from: std::net::IpAddr,
    },
    /// The remote refused us, with its reason.
    Refused(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Unexpected(what) => write!(f, "unexpected {what} during handshake"),
            HandshakeError::StaleChallenge => write!(f, "answer to a challenge not issued here"),
            HandshakeError::WrongNonce => write!(f, "wrong proof-of-work nonce"),
            HandshakeError::DeadlinePassed => write!(f, "handshake deadline passed"),
            HandshakeError::NoCommonVersion { ours, theirs } => write!(
                f,
                "no common protocol version (ours {}..={}, theirs {}..={})",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            HandshakeError::UnknownSeed(a) => {
                write!(f, "{a} claims to be a seed but is not configured")
            }
            HandshakeError::AddressMismatch { claimed, from } => {
                write!(f, "claims address {claimed} but connects from {from}")
            }
            HandshakeError::Refused(r) => write!(f, "refused by remote: {r}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What the acceptor learns about an admitted connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub role: Role,
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub version: u16,
}

/// The acceptor's side of one connection's handshake.
pub struct AcceptorHandshake {
    challenge: [u8; 32],
    difficulty: u8,
    local: SocketAddr,
    deadline: Instant,
}

impl AcceptorHandshake {
    /// A fresh random challenge for one connection.
    pub fn new(
        rng: &mut impl RngCore,
        difficulty: u8,
        local: SocketAddr,
        deadline: Instant,
    ) -> Self {
        let mut challenge = [0u8; 32];
        rng.fill_bytes(&mut challenge);
        AcceptorHandshake {
            challenge,
            difficulty,
            local,
            deadline,
        }
    }

    pub fn challenge_msg(&self) -> Msg {
        Msg::Challenge {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            difficulty: self.difficulty,
            challenge: self.challenge,
            acceptor: self.local,
        }
    }

    /// Checks the connector's answer: deadline, version, echoed challenge, one hash, then its
    /// identity: a claimed seed must be configured, and the claimed address must be on the IP
    /// the connection comes from (`from`), unless both are loopback and `loopback_exempt`.
    pub fn on_hello(
        &self,
        msg: Msg,
        now: Instant,
        known_seeds: &[SocketAddr],
        from: std::net::IpAddr,
        loopback_exempt: bool,
    ) -> Result<Admitted, HandshakeError> {
        if now > self.deadline {
            return Err(HandshakeError::DeadlinePassed);
        }
        let Msg::Hello {
            version,
            role,
            addr,
            incarnation,
            challenge,
            nonce,
        } = msg
        else {
            return Err(HandshakeError::Unexpected(msg.name()));
        };
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(HandshakeError::NoCommonVersion {
                ours: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
                theirs: (version, version),
            });
        }
        if challenge != self.challenge {
            return Err(HandshakeError::StaleChallenge);
        }
        if !pow::verify(&self.challenge, &addr, &self.local, self.difficulty, nonce) {
            return Err(HandshakeError::WrongNonce);
        }
        if role == Role::Seed && !known_seeds.contains(&addr) {
            return Err(HandshakeError::UnknownSeed(addr));
        }
        let both_loopback = addr.ip().is_loopback() && from.is_loopback();
        if addr.ip() != from && !(both_loopback && loopback_exempt) {
            return Err(HandshakeError::AddressMismatch {
                claimed: addr,
                from,
            });
        }
        Ok(Admitted {
            role,
            addr,
            incarnation,
            version,
        })
    }
}

/// The connector's side: what it needs to answer a challenge.
pub struct ConnectorIdentity {
    pub role: Role,
    pub addr: SocketAddr,
    pub incarnation: u64,
}

/// A challenge read and checked, ready to be solved (the expensive part, done by the caller
/// on its own thread).
#[derive(Debug, Clone)]
pub struct Puzzle {
    pub version: u16,
    pub difficulty: u8,
    pub challenge: [u8; 32],
    pub acceptor: SocketAddr,
}

impl ConnectorIdentity {
    /// Reads the acceptor's first frame and picks the highest common version.
    pub fn on_challenge(&self, msg: Msg) -> Result<Puzzle, HandshakeError> {
        let (min_version, max_version, difficulty, challenge, acceptor) = match msg {
            Msg::Challenge {
                min_version,
                max_version,
                difficulty,
                challenge,
                acceptor,
            } => (min_version, max_version, difficulty, challenge, acceptor),
            Msg::Reject { reason } => return Err(HandshakeError::Refused(reason)),
            other => return Err(HandshakeError::Unexpected(other.name())),
        };
        let version = PROTOCOL_VERSION.min(max_version);
        if version < MIN_PROTOCOL_VERSION || version < min_version {
            return Err(HandshakeError::NoCommonVersion {
                ours: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
                theirs: (min_version, max_version),
            });
        }
        Ok(Puzzle {
            version,
            difficulty,
            challenge,
            acceptor,
        })
    }

    /// Solves the puzzle; `None` if the deadline passes first.
    pub fn solve(&self, puzzle: &Puzzle, start: u64, deadline: Instant) -> Option<Msg> {
        let nonce = pow::solve(
            &puzzle.challenge,
            &self.addr,
            &puzzle.acceptor,
            puzzle.difficulty,
            start,
            Some(deadline),
        )?;
        Some(Msg::Hello {
            version: puzzle.version,
            role: self.role,
            addr: self.addr,
            incarnation: self.incarnation,
            challenge: puzzle.challenge,
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::time::Duration;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const LO: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn setup() -> (AcceptorHandshake, ConnectorIdentity, Instant) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let now = Instant::now();
        let acc = AcceptorHandshake::new(
            &mut rng,
            8,
            a("127.0.0.1:9001"),
            now + Duration::from_secs(10),
        );
        let con = ConnectorIdentity {
            role: Role::Peer,
            addr: a("127.0.0.1:9101"),
            incarnation: 1,
        };
        (acc, con, now)
    }

    #[test]
    fn honest_connector_is_admitted() {
        let (acc, con, now) = setup();
        let puzzle = con.on_challenge(acc.challenge_msg()).unwrap();
        let hello = con
            .solve(&puzzle, 0, now + Duration::from_secs(10))
            .unwrap();
        let adm = acc.on_hello(hello, now, &[], LO, true).unwrap();
        assert_eq!(adm.addr, a("127.0.0.1:9101"));
        assert_eq!(adm.role, Role::Peer);
    }

    #[test]
    fn wrong_nonce_stale_challenge_and_late_answers_are_refused() {
        let (acc, con, now) = setup();
        let puzzle = con.on_challenge(acc.challenge_msg()).unwrap();
        let hello = con
            .solve(&puzzle, 0, now + Duration::from_secs(10))
            .unwrap();
        let Msg::Hello { nonce, .. } = hello.clone() else {
            unreachable!()
        };
        // Find a nonce that does not verify.
        let mut bad = nonce.wrapping_add(1);
        while pow::verify(&puzzle.challenge, &con.addr, &puzzle.acceptor, 8, bad) {
            bad = bad.wrapping_add(1);
        }
        let mut wrong = hello.clone();
        if let Msg::Hello { nonce, .. } = &mut wrong {
            *nonce = bad;
        }
        assert_eq!(
            acc.on_hello(wrong, now, &[], LO, true),
            Err(HandshakeError::WrongNonce)
        );

        // The same answer replayed to another connection's challenge.
        let (acc2, _, _) = {
            let mut rng = rand::rngs::StdRng::seed_from_u64(4);
            (
                AcceptorHandshake::new(
                    &mut rng,
                    8,
                    a("127.0.0.1:9001"),
                    now + Duration::from_secs(10),
                ),
                (),
                (),
            )
        };
        assert_eq!(
            acc2.on_hello(hello.clone(), now, &[], LO, true),
            Err(HandshakeError::StaleChallenge)
        );

        assert_eq!(
            acc.on_hello(hello, now + Duration::from_secs(11), &[], LO, true),
            Err(HandshakeError::DeadlinePassed)
        );
        assert_eq!(
            acc.on_hello(Msg::Register, now, &[], LO, true),
            Err(HandshakeError::Unexpected("Register"))
        );
    }

    #[test]
    fn unknown_seed_is_refused() {
        let (acc, _, now) = setup();
        let con = ConnectorIdentity {
            role: Role::Seed,
            addr: a("127.0.0.1:9009"),
            incarnation: 1,
        };
        let puzzle = con.on_challenge(acc.challenge_msg()).unwrap();
        let hello = con
            .solve(&puzzle, 0, now + Duration::from_secs(10))
            .unwrap();
        assert!(matches!(
            acc.on_hello(hello.clone(), now, &[a("127.0.0.1:9002")], LO, true),
            Err(HandshakeError::UnknownSeed(_))
        ));
        assert!(acc
            .on_hello(hello, now, &[a("127.0.0.1:9009")], LO, true)
            .is_ok());
    }

    #[test]
    fn the_claimed_address_must_be_on_the_connecting_ip() {
        let (acc, con, now) = setup();
        let puzzle = con.on_challenge(acc.challenge_msg()).unwrap();
        let hello = con
            .solve(&puzzle, 0, now + Duration::from_secs(10))
            .unwrap();
        let elsewhere: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert!(matches!(
            acc.on_hello(hello.clone(), now, &[], elsewhere, true),
            Err(HandshakeError::AddressMismatch { .. })
        ));
        // Another loopback address counts as the same host only when loopback is exempt.
        let other_lo: std::net::IpAddr = "127.0.0.7".parse().unwrap();
        assert!(acc
            .on_hello(hello.clone(), now, &[], other_lo, true)
            .is_ok());
        assert!(acc.on_hello(hello, now, &[], other_lo, false).is_err());
    }

    #[test]
    fn versions_are_negotiated() {
        let (_, con, _) = setup();
        let future = Msg::Challenge {
            min_version: 1,
            max_version: 9,
            difficulty: 0,
            challenge: [0; 32],
            acceptor: a("127.0.0.1:1"),
        };
        assert_eq!(con.on_challenge(future).unwrap().version, PROTOCOL_VERSION);
        let too_new = Msg::Challenge {
            min_version: 5,
            max_version: 9,
            difficulty: 0,
            challenge: [0; 32],
            acceptor: a("127.0.0.1:1"),
        };
        assert!(matches!(
            con.on_challenge(too_new),
            Err(HandshakeError::NoCommonVersion { .. })
        ));
    }
}
