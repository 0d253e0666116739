//! A node's Ed25519 key pair: who the node is, where its address is only where it is reached.
//! The secret key lives in a file of its own (64 hex characters), created with mode 0600 on
//! first start. Signing and verifying in the handshake build on this (protocol version 2).

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::wire::Role;

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

    /// The public key, as 64 hex characters.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
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
    fn the_default_path_names_role_and_address() {
        let p = default_path(Role::Seed, &"127.0.0.1:9001".parse().unwrap());
        assert_eq!(p, PathBuf::from("keys/seed-127.0.0.1-9001.key"));
    }
}
