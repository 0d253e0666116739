//! Every node has an Ed25519 key pair in a file of its own: printed on request, the same across
//! restarts, and named in the node's `started` record.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn print_key(bin: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .arg("--print-key")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn print_key_creates_a_private_key_once_and_started_names_it() {
    let mut net = Net::new(1, "");
    let dir = net.dir.path().to_path_buf();
    let own = dir.join("my.key");
    let peer = env!("CARGO_BIN_EXE_peer");
    let a = print_key(
        peer,
        &dir,
        &["--addr", "127.0.0.1:0", "--key-file", own.to_str().unwrap()],
    );
    assert_eq!(a.len(), 64);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    let mode = std::fs::metadata(&own).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is private");
    let b = print_key(
        peer,
        &dir,
        &["--addr", "127.0.0.1:0", "--key-file", own.to_str().unwrap()],
    );
    assert_eq!(a, b, "the same key the second time");

    // A seed's key, by the default path under its working directory, is the one it starts with.
    let seed = net.seeds[0];
    let printed = print_key(
        env!("CARGO_BIN_EXE_seed"),
        &dir,
        &["--addr", &seed.to_string()],
    );
    assert!(dir
        .join(format!("keys/seed-{}-{}.key", seed.ip(), seed.port()))
        .exists());
    net.start_seeds();
    let evs = net.events("seed", seed);
    let started = of(&evs, "started");
    assert_eq!(started[0]["key"].as_str(), Some(printed.as_str()));
    let p = net.start_peer();
    let evs = net.events("peer", p);
    let key = of(&evs, "started")[0]["key"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(key.len(), 64, "the peer's started record names its key");
    assert_ne!(key, printed);

    // A damaged key file is a clear error, exit 2.
    std::fs::write(&own, "garbage\n").unwrap();
    let out = Command::new(peer)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--print-key",
            "--key-file",
            own.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex characters"));
}
