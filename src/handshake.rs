//! The admission handshake (protocol version 2) as plain state: the acceptor issues a
//! challenge and checks the connector's `Hello`; the connector turns a `Challenge` into a
//! `Hello` and checks the acceptor's `Welcome`. Both ends sign the transcript, so each knows
//! the other's key, and the proof of work is bound to the connector's key. No sockets here;
//! `net.rs` moves the frames and enforces the deadline on reads.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::keys::{self, NodeKey, SeedKeys};
use crate::pow;
use crate::wire::{
    Msg, PublicKey, Role, Signature, LEN_PREFIX, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// What the transcript hash starts with.
pub const TRANSCRIPT_DOMAIN: &[u8] = b"gossipnet/2 handshake";
/// What the connector signs: this, then the transcript hash.
pub const HELLO_DOMAIN: &[u8] = b"gossipnet/2 hello";
/// What the acceptor signs: this, then the transcript hash.
pub const WELCOME_DOMAIN: &[u8] = b"gossipnet/2 welcome";

/// Why a handshake failed. Each is logged as a `rejected` event by the acceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The first frame was not a `Hello` (or, for the connector, not a `Challenge`).
    Unexpected(&'static str),
    /// The `Hello` answers another challenge than the one issued on this connection.
    StaleChallenge,
    WrongNonce,
    /// A signature does not verify under the key shown.
    BadSignature,
    DeadlinePassed,
    NoCommonVersion {
        ours: (u16, u16),
        theirs: (u16, u16),
    },
    /// A connector claiming to be a seed that is not in the configuration.
    UnknownSeed(SocketAddr),
    /// A node whose key is known (a configured or pinned seed, a listed peer) showed another.
    WrongKey {
        addr: SocketAddr,
        expected: PublicKey,
        shown: PublicKey,
    },
    /// The claimed listen address is on another IP than the connection comes from.
    AddressMismatch {
        claimed: SocketAddr,
        from: IpAddr,
    },
    /// The acceptor says it is another address than the one dialed.
    WrongAcceptor {
        dialed: SocketAddr,
        says: SocketAddr,
    },
    /// The acceptor asked for more work than this node does (`pow.max_difficulty`).
    TooHard {
        asked: u8,
        max: u8,
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
            HandshakeError::BadSignature => {
                write!(f, "handshake signature does not verify under the key shown")
            }
            HandshakeError::DeadlinePassed => write!(f, "handshake deadline passed"),
            HandshakeError::NoCommonVersion { ours, theirs } => write!(
                f,
                "no common protocol version (ours {}..={}, theirs {}..={})",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            HandshakeError::UnknownSeed(a) => {
                write!(f, "{a} claims to be a seed but is not configured")
            }
            HandshakeError::WrongKey {
                addr,
                expected,
                shown,
            } => write!(
                f,
                "{addr} showed key {} but its key is {}",
                keys::short(shown),
                keys::short(expected)
            ),
            HandshakeError::AddressMismatch { claimed, from } => {
                write!(f, "claims address {claimed} but connects from {from}")
            }
            HandshakeError::WrongAcceptor { dialed, says } => {
                write!(f, "dialed {dialed} but it says it is {says}")
            }
            HandshakeError::TooHard { asked, max } => write!(
                f,
                "asked for {asked} bits of proof of work, more than pow.max_difficulty ({max})"
            ),
            HandshakeError::Refused(r) => write!(f, "refused by remote: {r}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The transcript hash both ends sign: SHA-256 over [`TRANSCRIPT_DOMAIN`], the `Challenge`
/// body and the `Hello` body without its signature (bodies as on the wire: tag and fields).
pub fn transcript(challenge: &Msg, hello: &Msg) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_DOMAIN);
    let c = challenge.encode();
    h.update(&c[LEN_PREFIX..]);
    let hello = hello.encode();
    let signature_len = std::mem::size_of::<Signature>();
    h.update(&hello[LEN_PREFIX..hello.len() - signature_len]);
    h.finalize().into()
}

fn signed(domain: &[u8], transcript: &[u8; 32]) -> Vec<u8> {
    [domain, transcript].concat()
}

/// What the acceptor learns about an admitted connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub role: Role,
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub version: u16,
    pub key: PublicKey,
    /// A seed listed without a key showed one for the first time: pin it.
    pub pin: bool,
    /// The transcript hash, for the signed `Welcome`.
    pub transcript: [u8; 32],
}

/// The acceptor's side of one connection's handshake.
pub struct AcceptorHandshake {
    challenge: [u8; 32],
    difficulty: u8,
    local: SocketAddr,
    local_key: PublicKey,
    deadline: Instant,
}

/// What the acceptor checks a connector against.
pub struct Admission<'a> {
    /// The configured seeds' addresses.
    pub seeds: &'a [SocketAddr],
    pub seed_keys: &'a SeedKeys,
    /// The IP the connection comes from.
    pub from: IpAddr,
    pub loopback_exempt: bool,
}

impl AcceptorHandshake {
    /// A fresh random challenge for one connection.
    pub fn new(
        rng: &mut impl RngCore,
        difficulty: u8,
        local: SocketAddr,
        local_key: PublicKey,
        deadline: Instant,
    ) -> Self {
        let mut challenge = [0u8; 32];
        rng.fill_bytes(&mut challenge);
        AcceptorHandshake {
            challenge,
            difficulty,
            local,
            local_key,
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
            acceptor_key: self.local_key,
        }
    }

    /// Checks the connector's answer: deadline, version, echoed challenge; then either the
    /// proof of work (one hash), or, for a connector claiming the seed role, that it is a
    /// configured seed showing its known key (configured seeds pay no work); that the
    /// claimed address is on the IP the connection comes from (unless both are loopback and
    /// loopback is exempt); and last the signature over the transcript.
    pub fn on_hello(
        &self,
        msg: Msg,
        now: Instant,
        ctx: &Admission<'_>,
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
            key,
            nonce,
            signature,
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
        let mut pin = false;
        if role == Role::Seed {
            if !ctx.seeds.contains(&addr) {
                return Err(HandshakeError::UnknownSeed(addr));
            }
            match ctx.seed_keys.check(&addr, &key) {
                Ok(known) => pin = !known,
                Err(expected) => {
                    return Err(HandshakeError::WrongKey {
                        addr,
                        expected,
                        shown: key,
                    })
                }
            }
        } else {
            let bound = pow::Bound {
                challenge: &self.challenge,
                key: &key,
                connector: &addr,
                acceptor: &self.local,
            };
            if !pow::verify(bound, self.difficulty, nonce) {
                return Err(HandshakeError::WrongNonce);
            }
        }
        let both_loopback = addr.ip().is_loopback() && ctx.from.is_loopback();
        if addr.ip() != ctx.from && !(both_loopback && ctx.loopback_exempt) {
            return Err(HandshakeError::AddressMismatch {
                claimed: addr,
                from: ctx.from,
            });
        }
        let hello = Msg::Hello {
            version,
            role,
            addr,
            incarnation,
            challenge,
            key,
            nonce,
            signature,
        };
        let t = transcript(&self.challenge_msg(), &hello);
        if !keys::verify(&key, &signed(HELLO_DOMAIN, &t), &signature) {
            return Err(HandshakeError::BadSignature);
        }
        Ok(Admitted {
            role,
            addr,
            incarnation,
            version,
            key,
            pin,
            transcript: t,
        })
    }

    /// The signed `Welcome` for an admitted connector.
    pub fn welcome(key: &NodeKey, admitted: &Admitted) -> Msg {
        Msg::Welcome {
            signature: key.sign(&signed(WELCOME_DOMAIN, &admitted.transcript)),
        }
    }
}

/// The connector's side: who it is and how much work it is willing to do.
pub struct Connector<'a> {
    pub role: Role,
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub key: &'a NodeKey,
    /// Harder challenges are refused (`pow.max_difficulty`).
    pub max_difficulty: u8,
}

/// A challenge read and checked, ready to be solved (the expensive part, done by the caller
/// on its own thread).
#[derive(Debug, Clone)]
pub struct Puzzle {
    pub version: u16,
    pub difficulty: u8,
    pub acceptor: SocketAddr,
    pub acceptor_key: PublicKey,
    /// The challenge as received, for the transcript.
    challenge_msg: Msg,
    challenge: [u8; 32],
}

/// A `Hello` ready to send, and the transcript the `Welcome` must sign.
pub struct Answer {
    pub hello: Msg,
    pub transcript: [u8; 32],
}

impl Connector<'_> {
    /// Reads the acceptor's first frame: picks the highest common version, checks that the
    /// acceptor is the address dialed and shows the key expected for it (if one is), and
    /// that the work asked is within `max_difficulty` (a seed pays none, so it does not care).
    pub fn on_challenge(
        &self,
        msg: Msg,
        dialed: SocketAddr,
        expected_key: Option<PublicKey>,
    ) -> Result<Puzzle, HandshakeError> {
        let Msg::Challenge {
            min_version,
            max_version,
            difficulty,
            challenge,
            acceptor,
            acceptor_key,
        } = msg
        else {
            return match msg {
                Msg::Reject { reason } => Err(HandshakeError::Refused(reason)),
                other => Err(HandshakeError::Unexpected(other.name())),
            };
        };
        let version = PROTOCOL_VERSION.min(max_version);
        if version < MIN_PROTOCOL_VERSION || version < min_version {
            return Err(HandshakeError::NoCommonVersion {
                ours: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
                theirs: (min_version, max_version),
            });
        }
        if acceptor != dialed {
            return Err(HandshakeError::WrongAcceptor {
                dialed,
                says: acceptor,
            });
        }
        if let Some(expected) = expected_key.filter(|k| *k != acceptor_key) {
            return Err(HandshakeError::WrongKey {
                addr: dialed,
                expected,
                shown: acceptor_key,
            });
        }
        if self.role == Role::Peer && difficulty > self.max_difficulty {
            return Err(HandshakeError::TooHard {
                asked: difficulty,
                max: self.max_difficulty,
            });
        }
        Ok(Puzzle {
            version,
            difficulty,
            acceptor,
            acceptor_key,
            challenge_msg: msg,
            challenge,
        })
    }

    /// Solves the puzzle (a seed skips the work) and signs the answer; `None` if the
    /// deadline passes first.
    pub fn solve(&self, puzzle: &Puzzle, start: u64, deadline: Instant) -> Option<Answer> {
        let key = self.key.public();
        let nonce = match self.role {
            Role::Seed => 0,
            Role::Peer => pow::solve(
                pow::Bound {
                    challenge: &puzzle.challenge,
                    key: &key,
                    connector: &self.addr,
                    acceptor: &puzzle.acceptor,
                },
                puzzle.difficulty,
                start,
                Some(deadline),
            )?,
        };
        let mut hello = Msg::Hello {
            version: puzzle.version,
            role: self.role,
            addr: self.addr,
            incarnation: self.incarnation,
            challenge: puzzle.challenge,
            key,
            nonce,
            signature: [0; 64],
        };
        let t = transcript(&puzzle.challenge_msg, &hello);
        if let Msg::Hello { signature, .. } = &mut hello {
            *signature = self.key.sign(&signed(HELLO_DOMAIN, &t));
        }
        Some(Answer {
            hello,
            transcript: t,
        })
    }

    /// Checks the acceptor's last frame: a `Welcome` signed by the key its challenge showed.
    pub fn on_welcome(
        &self,
        msg: Msg,
        puzzle: &Puzzle,
        answer: &Answer,
    ) -> Result<(), HandshakeError> {
        match msg {
            Msg::Welcome { signature } => {
                let msg = signed(WELCOME_DOMAIN, &answer.transcript);
                if keys::verify(&puzzle.acceptor_key, &msg, &signature) {
                    Ok(())
                } else {
                    Err(HandshakeError::BadSignature)
                }
            }
            Msg::Reject { reason } => Err(HandshakeError::Refused(reason)),
            other => Err(HandshakeError::Unexpected(other.name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const ACCEPTOR: &str = "127.0.0.1:9001";
    const CONNECTOR: &str = "127.0.0.1:9101";

    struct Setup {
        acc: AcceptorHandshake,
        acc_key: NodeKey,
        con_key: NodeKey,
        now: Instant,
        seed_keys: SeedKeys,
    }

    fn setup() -> Setup {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let now = Instant::now();
        let acc_key = NodeKey::from_secret([1; 32]);
        let acc = AcceptorHandshake::new(
            &mut rng,
            8,
            a(ACCEPTOR),
            acc_key.public(),
            now + Duration::from_secs(10),
        );
        Setup {
            acc,
            acc_key,
            con_key: NodeKey::from_secret([2; 32]),
            now,
            seed_keys: SeedKeys::default(),
        }
    }

    fn connector(key: &NodeKey, role: Role) -> Connector<'_> {
        Connector {
            role,
            addr: a(CONNECTOR),
            incarnation: 1,
            key,
            max_difficulty: 24,
        }
    }

    fn ctx<'a>(seeds: &'a [SocketAddr], keys: &'a SeedKeys, from: IpAddr) -> Admission<'a> {
        Admission {
            seeds,
            seed_keys: keys,
            from,
            loopback_exempt: true,
        }
    }

    fn answer(s: &Setup, con: &Connector<'_>) -> (Puzzle, Answer) {
        let puzzle = con
            .on_challenge(s.acc.challenge_msg(), a(ACCEPTOR), None)
            .unwrap();
        let ans = con
            .solve(&puzzle, 0, s.now + Duration::from_secs(10))
            .unwrap();
        (puzzle, ans)
    }

    #[test]
    fn both_ends_learn_each_others_key() {
        let s = setup();
        let con = connector(&s.con_key, Role::Peer);
        let (puzzle, ans) = answer(&s, &con);
        assert_eq!(puzzle.acceptor_key, s.acc_key.public());
        let adm = s
            .acc
            .on_hello(ans.hello.clone(), s.now, &ctx(&[], &s.seed_keys, LO))
            .unwrap();
        assert_eq!(adm.addr, a(CONNECTOR));
        assert_eq!(adm.role, Role::Peer);
        assert_eq!(adm.key, s.con_key.public());
        assert_eq!(adm.transcript, ans.transcript);
        let welcome = AcceptorHandshake::welcome(&s.acc_key, &adm);
        con.on_welcome(welcome, &puzzle, &ans).unwrap();
        // A Welcome signed by any other key is refused.
        let forged = AcceptorHandshake::welcome(&NodeKey::from_secret([9; 32]), &adm);
        assert_eq!(
            con.on_welcome(forged, &puzzle, &ans),
            Err(HandshakeError::BadSignature)
        );
    }

    #[test]
    fn an_answer_cannot_be_claimed_by_another_key_or_altered() {
        let s = setup();
        let con = connector(&s.con_key, Role::Peer);
        let (_, ans) = answer(&s, &con);
        let c = ctx(&[], &s.seed_keys, LO);
        // Another key put in: the work no longer verifies (it is bound to the key).
        let mut other_key = ans.hello.clone();
        if let Msg::Hello { key, .. } = &mut other_key {
            *key = NodeKey::from_secret([5; 32]).public();
        }
        assert_eq!(
            s.acc.on_hello(other_key, s.now, &c),
            Err(HandshakeError::WrongNonce)
        );
        // Another incarnation: the signature no longer verifies.
        let mut altered = ans.hello.clone();
        if let Msg::Hello { incarnation, .. } = &mut altered {
            *incarnation = 2;
        }
        assert_eq!(
            s.acc.on_hello(altered, s.now, &c),
            Err(HandshakeError::BadSignature)
        );
    }

    #[test]
    fn wrong_nonce_stale_challenge_and_late_answers_are_refused() {
        let s = setup();
        let con = connector(&s.con_key, Role::Peer);
        let (puzzle, ans) = answer(&s, &con);
        let c = ctx(&[], &s.seed_keys, LO);
        let Msg::Hello { nonce, .. } = ans.hello.clone() else {
            unreachable!()
        };
        let key = s.con_key.public();
        let bound = pow::Bound {
            challenge: &puzzle.challenge,
            key: &key,
            connector: &con.addr,
            acceptor: &puzzle.acceptor,
        };
        let mut bad = nonce.wrapping_add(1);
        while pow::verify(bound, 8, bad) {
            bad = bad.wrapping_add(1);
        }
        let mut wrong = ans.hello.clone();
        if let Msg::Hello { nonce, .. } = &mut wrong {
            *nonce = bad;
        }
        assert_eq!(
            s.acc.on_hello(wrong, s.now, &c),
            Err(HandshakeError::WrongNonce)
        );
        // The same answer replayed to another connection's challenge.
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let acc2 = AcceptorHandshake::new(
            &mut rng,
            8,
            a(ACCEPTOR),
            s.acc_key.public(),
            s.now + Duration::from_secs(10),
        );
        assert_eq!(
            acc2.on_hello(ans.hello.clone(), s.now, &c),
            Err(HandshakeError::StaleChallenge)
        );
        assert_eq!(
            s.acc
                .on_hello(ans.hello, s.now + Duration::from_secs(11), &c),
            Err(HandshakeError::DeadlinePassed)
        );
        assert_eq!(
            s.acc.on_hello(Msg::Register, s.now, &c),
            Err(HandshakeError::Unexpected("Register"))
        );
    }

    #[test]
    fn seeds_pay_no_work_but_must_be_configured_and_show_their_key() {
        let s = setup();
        let seed_key = NodeKey::from_secret([3; 32]);
        let con = connector(&seed_key, Role::Seed);
        let (_, ans) = answer(&s, &con);
        // Not a configured seed.
        assert!(matches!(
            s.acc.on_hello(
                ans.hello.clone(),
                s.now,
                &ctx(&[a("127.0.0.1:9002")], &s.seed_keys, LO)
            ),
            Err(HandshakeError::UnknownSeed(_))
        ));
        // Configured without a key: admitted without work, to be pinned.
        let seeds = [a(CONNECTOR)];
        let adm = s
            .acc
            .on_hello(ans.hello.clone(), s.now, &ctx(&seeds, &s.seed_keys, LO))
            .unwrap();
        assert!(adm.pin);
        // Configured with another key: refused.
        let other = SeedKeys::load(BTreeMap::from([(a(CONNECTOR), [8; 32])]), None).unwrap();
        assert!(matches!(
            s.acc
                .on_hello(ans.hello.clone(), s.now, &ctx(&seeds, &other, LO)),
            Err(HandshakeError::WrongKey { .. })
        ));
        // Configured with its key: admitted, nothing to pin.
        let right =
            SeedKeys::load(BTreeMap::from([(a(CONNECTOR), seed_key.public())]), None).unwrap();
        let adm = s
            .acc
            .on_hello(ans.hello, s.now, &ctx(&seeds, &right, LO))
            .unwrap();
        assert!(!adm.pin);
    }

    #[test]
    fn the_claimed_address_must_be_on_the_connecting_ip() {
        let s = setup();
        let con = connector(&s.con_key, Role::Peer);
        let (_, ans) = answer(&s, &con);
        let elsewhere: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(matches!(
            s.acc
                .on_hello(ans.hello.clone(), s.now, &ctx(&[], &s.seed_keys, elsewhere)),
            Err(HandshakeError::AddressMismatch { .. })
        ));
        // Another loopback address counts as the same host only when loopback is exempt.
        let other_lo: IpAddr = "127.0.0.7".parse().unwrap();
        let mut c = ctx(&[], &s.seed_keys, other_lo);
        assert!(s.acc.on_hello(ans.hello.clone(), s.now, &c).is_ok());
        c.loopback_exempt = false;
        assert!(s.acc.on_hello(ans.hello, s.now, &c).is_err());
    }

    #[test]
    fn the_connector_checks_address_key_difficulty_and_version() {
        let s = setup();
        let con = connector(&s.con_key, Role::Peer);
        let challenge = s.acc.challenge_msg();
        assert!(matches!(
            con.on_challenge(challenge.clone(), a("127.0.0.1:9999"), None),
            Err(HandshakeError::WrongAcceptor { .. })
        ));
        assert!(matches!(
            con.on_challenge(challenge.clone(), a(ACCEPTOR), Some([7; 32])),
            Err(HandshakeError::WrongKey { .. })
        ));
        assert!(con
            .on_challenge(challenge, a(ACCEPTOR), Some(s.acc_key.public()))
            .is_ok());
        let with = |difficulty: u8, min_version: u16, max_version: u16| Msg::Challenge {
            min_version,
            max_version,
            difficulty,
            challenge: [0; 32],
            acceptor: a(ACCEPTOR),
            acceptor_key: [1; 32],
        };
        assert_eq!(
            con.on_challenge(
                with(40, PROTOCOL_VERSION, PROTOCOL_VERSION),
                a(ACCEPTOR),
                None
            )
            .err(),
            Some(HandshakeError::TooHard { asked: 40, max: 24 })
        );
        // A seed does no work, so any difficulty is fine to it.
        let seed_key = NodeKey::from_secret([3; 32]);
        assert!(connector(&seed_key, Role::Seed)
            .on_challenge(
                with(40, PROTOCOL_VERSION, PROTOCOL_VERSION),
                a(ACCEPTOR),
                None
            )
            .is_ok());
        assert_eq!(
            con.on_challenge(with(0, 1, 9), a(ACCEPTOR), None)
                .unwrap()
                .version,
            PROTOCOL_VERSION
        );
        assert!(matches!(
            con.on_challenge(with(0, PROTOCOL_VERSION + 1, 9), a(ACCEPTOR), None),
            Err(HandshakeError::NoCommonVersion { .. })
        ));
        assert!(matches!(
            con.on_challenge(with(0, 1, 1), a(ACCEPTOR), None),
            Err(HandshakeError::NoCommonVersion { .. })
        ));
        // Version 2's items have no nonce, version 3's peer lists no certificates, version 4
        // has no `TreeRoot`: none is talked to.
        for old in [2, 3, 4] {
            assert!(matches!(
                con.on_challenge(with(0, old, old), a(ACCEPTOR), None),
                Err(HandshakeError::NoCommonVersion { .. })
            ));
        }
    }
}
