//! A node's Ed25519 key pair: who the node is, where its address is only where it is reached.
//! The secret key lives in a file of its own (64 hex characters), created with mode 0600 on
//! first start. The handshake signs with it ([`NodeKey::sign`], [`verify`]); the keys of the
//! configured seeds, given in `seeds.yaml` or pinned on first use, are in [`SeedKeys`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::wire::{PublicKey, Role, Signature};

/// Why a key file could not be used.
#[derive(Debug)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct NodeKey {
    signing: SigningKey,
}

/// `keys/<role>-<ip>-<port>.key` under the working directory.
pub fn default_path(role: Role, addr: &SocketAddr) -> PathBuf {
    let role = match role {
        Role::Seed => "seed",
        Role::Peer => "peer",
    };
    PathBuf::from("keys").join(format!("{role}-{}-{}.key", addr.ip(), addr.port()))
}

impl NodeKey {
    /// Reads the key in `path`, or creates one there (mode 0600, its directory too).
    pub fn load_or_create(path: &Path) -> Result<NodeKey, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        KeyError(format!(
                            "key file {}: expected 64 hex characters (an Ed25519 secret key)",
                            path.display()
                        ))
                    })?;
                Ok(NodeKey {
                    signing: SigningKey::from_bytes(&bytes),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signing = SigningKey::generate(&mut rand::rngs::OsRng);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| KeyError(format!("cannot create {}: {e}", dir.display())))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        KeyError(format!("cannot create key file {}: {e}", path.display()))
                    })?;
                writeln!(f, "{}", hex::encode(signing.to_bytes())).map_err(|e| {
                    KeyError(format!("cannot write key file {}: {e}", path.display()))
                })?;
                Ok(NodeKey { signing })
            }
            Err(e) => Err(KeyError(format!(
                "cannot read key file {}: {e}",
                path.display()
            ))),
        }
    }

    /// A key from its 32 secret bytes (the simulator and tests derive keys this way).
    pub fn from_secret(secret: [u8; 32]) -> NodeKey {
        NodeKey {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    /// The public key, as 64 hex characters.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public())
    }

    pub fn public(&self) -> PublicKey {
        self.signing.verifying_key().to_bytes()
    }

    /// An Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg).to_bytes()
    }
}

/// Does `sig` sign `msg` under `key`? Strict verification: a malformed key, a small-order key
/// or a non-canonical signature is simply `false`. On a thread that called
/// [`remember_verifications`], each answer is remembered and given again for the same
/// arguments.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
    REMEMBERED.with(|remembered| match remembered.borrow_mut().as_mut() {
        None => verify_now(key, msg, sig),
        Some(map) => *map
            .entry((*key, *sig, msg.to_vec()))
            .or_insert_with(|| verify_now(key, msg, sig)),
    })
}

/// The answers of [`verify`] on this thread, once [`remember_verifications`] was called.
type Remembered = std::collections::HashMap<(PublicKey, Signature, Vec<u8>), bool>;

thread_local! {
    static REMEMBERED: std::cell::RefCell<Option<Remembered>> =
        const { std::cell::RefCell::new(None) };
}

/// From now on this thread remembers what [`verify`] answered (a pure function of its
/// arguments, so the answers are the same; only the work is saved). For the simulator, which
/// runs every node on one thread: thousands of peers check the same seeds' signatures on the
/// same list entries, and the seeds each other's votes, each an Ed25519 verification.
pub fn remember_verifications() {
    REMEMBERED.with(|remembered| {
        remembered.borrow_mut().get_or_insert_with(Remembered::new);
    });
}

fn verify_now(key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .is_ok()
}

/// What a change's signatures prove, checked against the seeds' keys a node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certified {
    /// At least a majority of distinct configured seeds signed it, each signature valid.
    Yes,
    /// Too few valid signatures from seeds whose keys are known, but enough if those of these
    /// configured seeds, whose keys this node has not seen yet, are good.
    KeysUnknown(Vec<SocketAddr>),
    /// Too few good signatures whatever the unknown keys are.
    No,
}

/// Checks the signatures of a change (`bytes`, as `wire::change_bytes` makes them): only
/// configured seeds count, each once; a signature counts if it verifies under the key `keys`
/// gives for its seed. Stops verifying once a majority is reached.
pub fn certified(
    bytes: &[u8],
    signatures: &[(SocketAddr, Signature)],
    majority: usize,
    seeds: &[SocketAddr],
    keys: &BTreeMap<SocketAddr, PublicKey>,
) -> Certified {
    let mut good: Vec<SocketAddr> = Vec::with_capacity(majority);
    let mut unknown: Vec<SocketAddr> = Vec::new();
    for (seed, sig) in signatures {
        if good.len() >= majority {
            break;
        }
        if !seeds.contains(seed) || good.contains(seed) || unknown.contains(seed) {
            continue;
        }
        match keys.get(seed) {
            Some(key) if verify(key, bytes, sig) => good.push(*seed),
            Some(_) => {}
            None => unknown.push(*seed),
        }
    }
    if good.len() >= majority {
        Certified::Yes
    } else if good.len() + unknown.len() >= majority {
        Certified::KeysUnknown(unknown)
    } else {
        Certified::No
    }
}

/// A public key from 64 hex characters.
pub fn parse_public(text: &str) -> Option<PublicKey> {
    let bytes = hex::decode(text.trim()).ok()?;
    let key = <[u8; 32]>::try_from(bytes).ok()?;
    VerifyingKey::from_bytes(&key).ok()?;
    Some(key)
}

/// Short form of a key for log lines: its first 8 hex characters.
pub fn short(key: &PublicKey) -> String {
    hex::encode(&key[..4])
}

/// What the node knows of the configured seeds' keys: those `seeds.yaml` gives, and those
/// pinned on first use (trust on first use) in a file, one `ip:port hex` line each. A seed
/// listed without a key is trusted with the first key it shows; a different key later is
/// refused. The file is read again before each pin, so nodes sharing a directory agree on
/// the first key any of them saw.
#[derive(Debug, Default)]
pub struct SeedKeys {
    configured: BTreeMap<SocketAddr, PublicKey>,
    pinned: BTreeMap<SocketAddr, PublicKey>,
    file: Option<PathBuf>,
}

impl SeedKeys {
    /// The configured keys and the pins in `file` (which need not exist yet). `None`: pins
    /// are kept in memory only.
    pub fn load(
        configured: BTreeMap<SocketAddr, PublicKey>,
        file: Option<PathBuf>,
    ) -> Result<SeedKeys, KeyError> {
        let mut keys = SeedKeys {
            configured,
            pinned: BTreeMap::new(),
            file,
        };
        keys.reload()?;
        Ok(keys)
    }

    fn reload(&mut self) -> Result<(), KeyError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(KeyError(format!("cannot read {}: {e}", path.display())));
            }
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line.split_once(' ').and_then(|(addr, key)| {
                Some((addr.parse::<SocketAddr>().ok()?, parse_public(key)?))
            });
            let Some((addr, key)) = parsed else {
                return Err(KeyError(format!(
                    "{} line {}: expected \"IP:PORT KEY\" (a seed and its 64-hex-character public key)",
                    path.display(),
                    n + 1
                )));
            };
            // The first pin of an address stands.
            self.pinned.entry(addr).or_insert(key);
        }
        Ok(())
    }

    /// The key this seed must show, if one is known.
    pub fn expected(&self, addr: &SocketAddr) -> Option<PublicKey> {
        self.configured
            .get(addr)
            .or_else(|| self.pinned.get(addr))
            .copied()
    }

    /// Is `key` the one known for the seed at `addr` (`Ok(true)`), or is none known
    /// (`Ok(false)`, to be pinned once the key is proven)? `Err` carries the expected key.
    pub fn check(&self, addr: &SocketAddr, key: &PublicKey) -> Result<bool, PublicKey> {
        match self.expected(addr) {
            Some(k) if k == *key => Ok(true),
            Some(k) => Err(k),
            None => Ok(false),
        }
    }

    /// Pins `key` for `addr` (first use). Returns the key that stands: `key`, or one another
    /// node sharing the file pinned first.
    pub fn pin(&mut self, addr: SocketAddr, key: PublicKey) -> Result<PublicKey, KeyError> {
        self.reload()?;
        if let Some(k) = self.expected(&addr) {
            return Ok(k);
        }
        if let Some(path) = &self.file {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| KeyError(format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| KeyError(format!("cannot open {}: {e}", path.display())))?;
            // One write, so appends from several nodes do not interleave.
            f.write_all(format!("{addr} {}\n", hex::encode(key)).as_bytes())
                .map_err(|e| KeyError(format!("cannot write {}: {e}", path.display())))?;
        }
        self.pinned.insert(addr, key);
        Ok(key)
    }
}

/// Where a node keeps the seed keys it pinned: `known-seeds` beside its key file.
pub fn known_seeds_path(key_file: &Path) -> PathBuf {
    match key_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join("known-seeds"),
        None => PathBuf::from("known-seeds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_created_private_once_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("peer.key");
        let a = NodeKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        assert_eq!(a.public_hex().len(), 64);
        std::fs::write(&path, "not a key\n").unwrap();
        let e = NodeKey::load_or_create(&path).err().unwrap();
        assert!(e.0.contains("64 hex characters"), "{e}");
    }

    #[test]
    fn remembered_verifications_give_the_same_answers() {
        let a = NodeKey::from_secret([7; 32]);
        let sig = a.sign(b"hello");
        let cases = [
            (a.public(), &b"hello"[..], sig, true),
            (a.public(), &b"hellp"[..], sig, false),
            ([0; 32], &b"hello"[..], sig, false),
        ];
        // A thread of its own: the memory is the thread's.
        std::thread::spawn(move || {
            remember_verifications();
            for _ in 0..2 {
                for (key, msg, sig, good) in cases {
                    assert_eq!(verify(&key, msg, &sig), good);
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let a = NodeKey::from_secret([1; 32]);
        let b = NodeKey::from_secret([2; 32]);
        let sig = a.sign(b"hello");
        assert!(verify(&a.public(), b"hello", &sig));
        assert!(!verify(&a.public(), b"hellp", &sig));
        assert!(!verify(&b.public(), b"hello", &sig));
        assert!(!verify(&[0; 32], b"hello", &sig));
        assert_eq!(parse_public(&a.public_hex()), Some(a.public()));
        assert_eq!(parse_public("abc"), None);
    }

    #[test]
    fn a_seed_key_is_pinned_once_and_a_different_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys").join("known-seeds");
        let s1: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let s2: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let (k1, k2) = (NodeKey::from_secret([1; 32]).public(), [7u8; 32]);
        let configured = BTreeMap::from([(s2, NodeKey::from_secret([2; 32]).public())]);
        let mut keys = SeedKeys::load(configured.clone(), Some(file.clone())).unwrap();
        assert_eq!(keys.check(&s1, &k1), Ok(false));
        assert_eq!(keys.pin(s1, k1).unwrap(), k1);
        assert_eq!(keys.check(&s1, &k1), Ok(true));
        assert_eq!(keys.check(&s1, &k2), Err(k1));
        // A configured key is never replaced by a pin.
        assert_eq!(keys.check(&s2, &k1), Err(configured[&s2]));
        // Another node sharing the file sees the pin; its own later pin does not win.
        let mut other = SeedKeys::load(BTreeMap::new(), Some(file.clone())).unwrap();
        assert_eq!(other.expected(&s1), Some(k1));
        assert_eq!(other.pin(s1, k2).unwrap(), k1);
        std::fs::write(&file, "garbage\n").unwrap();
        let e = SeedKeys::load(BTreeMap::new(), Some(file)).err().unwrap();
        assert!(e.0.contains("line 1"), "{e}");
    }

    #[test]
    fn the_default_path_names_role_and_address() {
        let p = default_path(Role::Seed, &"127.0.0.1:9001".parse().unwrap());
        assert_eq!(p, PathBuf::from("keys/seed-127.0.0.1-9001.key"));
    }
}
