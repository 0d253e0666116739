//! The attacker's client of the wire protocol, written from `docs/PROTOCOL.md` alone: frames,
//! fields, the connection handshake (`Challenge`, proof of work, transcript hash, Ed25519
//! signatures, `Welcome`), and a listener that answers the seeds' dial-back. Nothing here comes
//! from the `gossipnet` crate: the tests that use it (`tests/identity.rs`, `tests/rooted.rs`)
//! keep an attacker's view of the protocol, and a correct handshake made by this client being
//! welcomed shows the client follows the document.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{raw, PATIENCE};

/// Our highest protocol version ("Versions": this document describes version 8).
pub const VERSION: u16 = 8;
/// `limits.max_frame` default ("Framing").
pub const MAX_FRAME: usize = 1 << 20;
/// "Messages", 0x02 Hello: `role: u8` (1 peer, 2 seed).
pub const ROLE_PEER: u8 = 1;
pub const ROLE_SEED: u8 = 2;
/// "Seeds among themselves": what a seed signs a change under.
pub const CHANGE_CONTEXT: &[u8] = b"gossipnet/2 change";

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// SHA-256 of the parts one after the other.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

// ---- Framing ----

/// "Framing": `len: u32 | body`, big-endian, `len` counting the body only.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Whole frames out of a byte stream, by hand ("Framing": frames back to back, and a receiver
/// must not assume one frame per segment).
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame's `len`, once its four bytes are in.
    pub fn next_len(&self) -> Option<usize> {
        Some(u32::from_be_bytes(self.buf.get(..4)?.try_into().unwrap()) as usize)
    }

    /// The next whole frame's body (tag byte and fields), if it is all in.
    pub fn next(&mut self) -> Option<Vec<u8>> {
        let len = self.next_len()?;
        let body = self.buf.get(4..4 + len)?.to_vec();
        self.buf.drain(..4 + len);
        Some(body)
    }
}

/// What reading a connection gave.
#[derive(Debug)]
pub enum Next {
    /// One frame's body (tag byte and fields).
    Frame(Vec<u8>),
    /// The remote closed (EOF or reset).
    Closed,
    /// Nothing for [`PATIENCE`].
    Silent,
}

/// A TCP connection with a read buffer. "Framing": `len: u32 | body`, frames back to back.
pub struct Conn {
    pub s: TcpStream,
    frames: Frames,
}

impl Conn {
    pub fn new(s: TcpStream) -> Conn {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Conn {
            s,
            frames: Frames::default(),
        }
    }

    /// The next frame; `len` must be 1 ..= `limits.max_frame`. `Silent` once a read times out
    /// (the stream's read timeout: [`PATIENCE`] unless changed) or after [`PATIENCE`].
    pub fn next(&mut self) -> Next {
        let start = Instant::now();
        let mut chunk = [0u8; 4096];
        for _ in 0..10_000 {
            if let Some(len) = self.frames.next_len() {
                assert!((1..=MAX_FRAME).contains(&len), "frame length {len}");
            }
            if let Some(body) = self.frames.next() {
                return Next::Frame(body);
            }
            if start.elapsed() > PATIENCE {
                return Next::Silent;
            }
            match self.s.read(&mut chunk) {
                Ok(0) => return Next::Closed,
                Ok(n) => self.frames.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {
                    return Next::Silent
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Next::Silent,
                Err(_) => return Next::Closed,
            }
        }
        Next::Silent
    }

    /// The next whole frame's body by `deadline`, however many reads time out meanwhile (the
    /// stream's read timeout is 100 ms from here on); `None` if the remote closed first or
    /// nothing came in time.
    pub fn next_by(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        self.s
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(body) = self.frames.next() {
                return Some(body);
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.frames.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends the bodies as frames, in one write; false if the write failed.
    pub fn send(&mut self, bodies: &[&[u8]]) -> bool {
        let out: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
        self.s.write_all(&out).is_ok()
    }

    /// The stream and what was read of it past the frames taken (to serve the link elsewhere).
    pub fn into_parts(self) -> (TcpStream, Frames) {
        (self.s, self.frames)
    }
}

// ---- Field types ----

/// Fields read one after the other out of a body ("Field types"); `None` once one is truncated
/// or not what its type says.
pub struct Fields<'a> {
    pub body: &'a [u8],
    pub at: usize,
}

impl<'a> Fields<'a> {
    /// From the start of `body` (its tag byte first).
    pub fn new(body: &'a [u8]) -> Fields<'a> {
        Fields { body, at: 0 }
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let f = self.body.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(f)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    /// `addr`: `n: u8` then `n` bytes of ASCII `ip:port`, parsed strictly.
    pub fn addr(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        let a = String::from_utf8(self.take(n)?.to_vec()).ok()?;
        a.parse::<SocketAddr>().ok()?;
        Some(a)
    }
    /// `text`: `n: u16` then `n` bytes of UTF-8.
    pub fn text(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// Whether the body was consumed exactly ("Framing": trailing bytes are malformed).
    pub fn done(&self) -> bool {
        self.at == self.body.len()
    }
}

/// `addr`: `n: u8` then `n` bytes of ASCII `ip:port`.
pub fn addr_field(a: &str) -> Vec<u8> {
    let mut f = vec![a.len() as u8];
    f.extend_from_slice(a.as_bytes());
    f
}

/// A `member`: `addr`, `incarnation: u64`, then `key` ("Field types"); the member of a
/// registration is "encoded as in `Vote`".
pub fn member(addr: &str, incarnation: u64, key: &[u8; 32]) -> Vec<u8> {
    let mut m = addr_field(addr);
    m.extend_from_slice(&incarnation.to_be_bytes());
    m.extend_from_slice(key);
    m
}

/// What a seed signs to vote a member in ("Seeds among themselves"): `"gossipnet/2 change" |
/// op u8 | member`, `op` 1 (add).
pub fn change_message(addr: &str, incarnation: u64, key: &[u8; 32]) -> Vec<u8> {
    let mut m = CHANGE_CONTEXT.to_vec();
    m.push(1);
    m.extend(member(addr, incarnation, key));
    m
}

// ---- Messages ----

/// "Messages", 0x01 Challenge: `min_version: u16`, `max_version: u16`, `difficulty: u8`,
/// `challenge: [32]`, `acceptor: addr`, `acceptor_key: key`. `body` is kept for the transcript.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub body: Vec<u8>,
    pub difficulty: u8,
    pub challenge: [u8; 32],
    pub acceptor: String,
    pub acceptor_key: [u8; 32],
}

/// A Challenge whose versions include ours ([`VERSION`]); what is wrong with it otherwise.
pub fn parse_challenge(body: &[u8]) -> Result<Challenge, String> {
    let mut f = Fields::new(body);
    if f.u8() != Some(0x01) {
        return Err(format!("not a Challenge: {body:?}"));
    }
    let fields = (|| {
        Some((
            f.u16()?,
            f.u16()?,
            f.u8()?,
            f.bytes::<32>()?,
            f.addr()?,
            f.bytes::<32>()?,
        ))
    })();
    let Some((min, max, difficulty, challenge, acceptor, acceptor_key)) =
        fields.filter(|_| f.done())
    else {
        return Err(format!(
            "a Challenge not in the documented layout: {body:?}"
        ));
    };
    if !(min..=max).contains(&VERSION) {
        return Err(format!("versions {min}..={max}"));
    }
    Ok(Challenge {
        body: body.to_vec(),
        difficulty,
        challenge,
        acceptor,
        acceptor_key,
    })
}

/// A Challenge as an acceptor sends it (a fresh random challenge, only our version).
pub fn challenge_body(difficulty: u8, acceptor: &str, key: &[u8; 32]) -> Vec<u8> {
    let mut b = vec![0x01];
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.push(difficulty);
    b.extend_from_slice(&rand::random::<[u8; 32]>());
    b.extend(addr_field(acceptor));
    b.extend_from_slice(key);
    b
}

/// "Messages", 0x02 Hello, without its last field (`signature: sig`).
#[derive(Debug, Clone)]
pub struct Hello {
    pub role: u8,
    pub addr: String,
    pub incarnation: u64,
    pub challenge: [u8; 32],
    pub key: [u8; 32],
    pub nonce: u64,
}

/// `version: u16`, `role: u8`, `addr: addr`, `incarnation: u64`, `challenge: [32]`, `key:
/// key`, `nonce: u64`: the Hello body without its signature.
pub fn hello_unsigned(h: &Hello) -> Vec<u8> {
    let mut b = vec![0x02];
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.push(h.role);
    b.extend(addr_field(&h.addr));
    b.extend_from_slice(&h.incarnation.to_be_bytes());
    b.extend_from_slice(&h.challenge);
    b.extend_from_slice(&h.key);
    b.extend_from_slice(&h.nonce.to_be_bytes());
    b
}

/// A Hello body's fields (what an honest connector sends a fake acceptor); `None` if `body` is
/// not a Hello in the documented layout.
pub fn parse_hello(body: &[u8]) -> Option<Hello> {
    let mut f = Fields::new(body);
    if f.u8()? != 0x02 {
        return None;
    }
    let _version = f.u16()?;
    let role = f.u8()?;
    let addr = f.addr()?;
    let incarnation = f.u64()?;
    let challenge = f.bytes::<32>()?;
    let key = f.bytes::<32>()?;
    let nonce = f.u64()?;
    f.bytes::<64>()?;
    f.done().then_some(Hello {
        role,
        addr,
        incarnation,
        challenge,
        key,
        nonce,
    })
}

/// The honest answer to `ch` in `role`, claiming `claimed` (incarnation: now): work solved in
/// the peer role (step 3), nonce 0 in the seed role.
pub fn hello_for(ch: &Challenge, role: u8, claimed: &str, key: &SigningKey) -> Hello {
    let public = key.verifying_key().to_bytes();
    Hello {
        role,
        addr: claimed.to_string(),
        incarnation: unix_ms(),
        challenge: ch.challenge,
        key: public,
        nonce: if role == ROLE_PEER {
            solve(ch, &public, claimed, 0)
        } else {
            0
        },
    }
}

/// 0x04 Reject: `reason: text`. `None` for another message; a `Reject` not in that layout
/// panics.
pub fn reject_reason(body: &[u8]) -> Option<String> {
    if body.first() != Some(&0x04) {
        return None;
    }
    let mut f = Fields { body, at: 1 };
    let reason = f.text();
    assert!(
        reason.is_some() && f.done(),
        "a Reject not in the documented layout: {body:?}"
    );
    reason
}

/// A certificate's signatures: `n` × (`seed: addr`, `sig`).
pub type Signatures = Vec<(String, [u8; 64])>;

/// 0x11 Registered: `incarnation: u64`, `n: u8`, `n` × (`seed: addr`, `sig`), the certificate of
/// the registration; `None` if `body` is not one.
pub fn parse_registered(body: &[u8]) -> Option<(u64, Signatures)> {
    if body.first() != Some(&0x11) {
        return None;
    }
    let mut f = Fields { body, at: 1 };
    let incarnation = f.u64()?;
    let n = f.u8()?;
    let cert = (0..n)
        .map(|_| Some((f.addr()?, f.bytes::<64>()?)))
        .collect::<Option<Vec<_>>>()?;
    f.done().then_some((incarnation, cert))
}

// ---- Proof of work ----

/// "Connection start", step 3: the work hash, `SHA-256( challenge[32] | key[32] | len(c) u8 |
/// c | len(a) u8 | a | nonce u64 )`, `c` the connector's address, `a` the acceptor's.
pub fn work_hash(ch: &Challenge, key: &[u8; 32], connector: &str, nonce: u64) -> [u8; 32] {
    sha256(&[
        &ch.challenge,
        key,
        &addr_field(connector),
        &addr_field(&ch.acceptor),
        &nonce.to_be_bytes(),
    ])
}

pub fn leading_zero_bits(h: &[u8]) -> u32 {
    let mut n = 0;
    for b in h {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Whether the work hash has at least `d` leading zero bits.
pub fn work_ok(ch: &Challenge, key: &[u8; 32], connector: &str, nonce: u64) -> bool {
    leading_zero_bits(&work_hash(ch, key, connector, nonce)) >= u32::from(ch.difficulty)
}

/// The first nonce from `from` that meets the difficulty. Our own `max_difficulty` is 20.
pub fn solve(ch: &Challenge, key: &[u8; 32], connector: &str, from: u64) -> u64 {
    assert!(
        ch.difficulty <= 20,
        "difficulty {} is a work bomb",
        ch.difficulty
    );
    (from..from + (1 << 28))
        .find(|&n| work_ok(ch, key, connector, n))
        .expect("no solution")
}

// ---- Transcript and signatures ----

/// Step 4: `T = SHA-256("gossipnet/2 handshake" | Challenge body | Hello body without its
/// last 64 bytes)`.
pub fn transcript(challenge_body: &[u8], hello_unsigned: &[u8]) -> [u8; 32] {
    sha256(&[b"gossipnet/2 handshake", challenge_body, hello_unsigned])
}

/// `prefix | T`: what the Hello's and the Welcome's signatures sign.
pub fn prefixed(prefix: &[u8], t: &[u8; 32]) -> Vec<u8> {
    [prefix, t.as_slice()].concat()
}

/// Step 4: the Hello body with `signature` = `signer`'s signature of `"gossipnet/2 hello" | T`.
pub fn signed_hello(ch: &Challenge, h: &Hello, signer: &SigningKey) -> Vec<u8> {
    let mut body = hello_unsigned(h);
    let t = transcript(&ch.body, &body);
    let sig = signer.sign(&prefixed(b"gossipnet/2 hello", &t));
    body.extend_from_slice(&sig.to_bytes());
    body
}

/// Step 6: a Welcome body, `"gossipnet/2 welcome" | T` signed by `signer`.
pub fn welcome_body(ch_body: &[u8], hello_body: &[u8], signer: &SigningKey) -> Vec<u8> {
    let t = transcript(ch_body, &hello_body[..hello_body.len() - 64]);
    let sig = signer.sign(&prefixed(b"gossipnet/2 welcome", &t));
    [&[0x03u8][..], &sig.to_bytes()].concat()
}

// ---- Dialing ----

/// A connection and the Challenge it opened with.
pub struct Dial {
    pub conn: Conn,
    pub ch: Challenge,
}

impl Dial {
    /// Reads the Challenge `conn` (to `to`) opens with: a common version, in the documented
    /// layout (step 2). The acceptor's address is not checked here.
    pub fn open(mut conn: Conn, to: SocketAddr) -> Dial {
        let Next::Frame(body) = conn.next() else {
            panic!("no Challenge from {to}");
        };
        let ch = parse_challenge(&body).unwrap_or_else(|e| panic!("{e}"));
        Dial { conn, ch }
    }
}

/// A connection to `a` and the Challenge it opened with, checked as step 2 says: a common
/// version and the address we dialed.
pub fn dial(a: SocketAddr) -> Dial {
    let d = Dial::open(Conn::new(raw(a)), a);
    assert_eq!(
        d.ch.acceptor,
        a.to_string(),
        "the Challenge names another address"
    );
    d
}

/// Completes the handshake on `d` in `role`, claiming `claimed` and `incarnation`, with `key`
/// (the Welcome checked as `expect_welcome` does).
pub fn welcomed_on(
    mut d: Dial,
    role: u8,
    claimed: &str,
    incarnation: u64,
    key: &SigningKey,
) -> Dial {
    let mut h = hello_for(&d.ch, role, claimed, key);
    h.incarnation = incarnation;
    let hello = signed_hello(&d.ch, &h, key);
    expect_welcome(&mut d, &hello);
    d
}

/// A connection to `target` that completed the handshake in `role`, claiming `claimed`, with
/// `key` (the Welcome checked as `expect_welcome` does).
pub fn welcomed(role: u8, target: SocketAddr, claimed: &str, key: &SigningKey) -> Dial {
    welcomed_on(dial(target), role, claimed, unix_ms(), key)
}

/// Sends `hello` (nothing if empty) and expects `Reject` and then the close (step 5); returns
/// the reason.
pub fn expect_reject(d: &mut Dial, hello: &[u8]) -> String {
    if !hello.is_empty() {
        assert!(d.conn.send(&[hello]), "write failed");
    }
    let body = match d.conn.next() {
        Next::Frame(b) => b,
        other => panic!("expected Reject, got {other:?}"),
    };
    let reason = reject_reason(&body).unwrap_or_else(|| panic!("expected Reject, got {body:?}"));
    assert!(!reason.is_empty(), "a Reject without a reason");
    assert!(
        matches!(d.conn.next(), Next::Closed),
        "not closed after Reject ({reason})"
    );
    reason
}

/// Sends `hello` and expects a `Welcome` whose signature verifies under the Challenge's key
/// (step 6, `verify_strict` as "Field types" says for `sig`).
pub fn expect_welcome(d: &mut Dial, hello: &[u8]) {
    assert!(d.conn.send(&[hello]), "write failed");
    let body = match d.conn.next() {
        Next::Frame(b) => b,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert_eq!(
        body.len(),
        65,
        "expected Welcome, got {body:?} {:?}",
        reject_reason(&body)
    );
    assert_eq!(
        body[0],
        0x03,
        "expected Welcome, got {:?}",
        reject_reason(&body)
    );
    let t = transcript(&d.ch.body, &hello[..hello.len() - 64]);
    let key = VerifyingKey::from_bytes(&d.ch.acceptor_key).unwrap();
    let sig = Signature::from_bytes(&body[1..].try_into().unwrap());
    key.verify_strict(&prefixed(b"gossipnet/2 welcome", &t), &sig)
        .expect("the Welcome's signature does not verify");
}

// ---- Listening ----

/// A thread that serves until it is told to stop (or its time is up): told and joined when
/// dropped.
pub struct Serving {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Serving {
    /// Runs `serve` on a thread of its own, with the flag that says stop.
    pub fn start(serve: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Serving {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Serving {
            stop,
            thread: Some(std::thread::spawn(move || serve(flag))),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The seeds' dial-back ("Joining", step 2: the `Challenge` must show the key the peer
/// registered with): a listener at a member's address that answers every handshake as the
/// holder of `key` (`Challenge` showing it, `Welcome` signed by it), holding each connection
/// open (unread) until it is dropped (at most `4 × PATIENCE`); and the member's registration
/// links (`links`), closed when it is dropped too.
pub struct DialBack {
    pub at: SocketAddr,
    /// Dropped after the listener's thread (fields drop in order): then the links close.
    _serving: Serving,
    pub links: Arc<Mutex<Vec<Conn>>>,
}

/// What a member does with a neighbour link a peer opened to it: the welcomed connection and
/// the fields of the peer's `Hello`.
pub type Neighbour = Box<dyn FnMut(Conn, Hello) + Send>;

impl DialBack {
    /// Listens at `at` (port 0: one the system picks).
    pub fn start(at: SocketAddr, key: SigningKey) -> DialBack {
        DialBack::listen(at, key, None)
    }

    /// As `start`, for a member that also takes neighbours: a connection whose `Hello` is in
    /// the peer role (a peer that found the member in a `PeerList` dialing it, "Joining", step
    /// 3) is handed, once welcomed, to `neighbour` instead of being held.
    pub fn start_serving(
        at: SocketAddr,
        key: SigningKey,
        neighbour: impl FnMut(Conn, Hello) + Send + 'static,
    ) -> DialBack {
        DialBack::listen(at, key, Some(Box::new(neighbour)))
    }

    fn listen(at: SocketAddr, key: SigningKey, mut neighbour: Option<Neighbour>) -> DialBack {
        let listener = TcpListener::bind(at).unwrap();
        listener.set_nonblocking(true).unwrap();
        let at = listener.local_addr().unwrap();
        let serving = Serving::start(move |stop| {
            let start = Instant::now();
            let mut open = Vec::new();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < 4 * PATIENCE {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let mut conn = Conn::new(s);
                        let ch =
                            challenge_body(8, &at.to_string(), &key.verifying_key().to_bytes());
                        conn.send(&[&ch]);
                        let mut peer = None;
                        if let Next::Frame(hello) = conn.next() {
                            if hello.len() > 64 {
                                conn.send(&[&welcome_body(&ch, &hello, &key)]);
                                peer = parse_hello(&hello).filter(|h| h.role == ROLE_PEER);
                            }
                        }
                        match (peer, neighbour.as_mut()) {
                            (Some(hello), Some(serve)) => serve(conn, hello),
                            // Held open (and unread) until the attacker goes.
                            _ => open.push(conn),
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        DialBack {
            at,
            _serving: serving,
            links: Arc::new(Mutex::new(Vec::new())),
        }
    }
}
