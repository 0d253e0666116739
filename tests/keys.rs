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

/// A seed listed without a key is trusted on first use: its key is pinned (with a warning and
/// a `key_pinned` record) in `keys/known-seeds`, and a node at its address with another key is
/// refused from then on. A seed whose key file does not match the key listed for it exits 2.
#[test]
fn a_seed_listed_without_a_key_is_pinned_on_first_use_and_an_impostor_refused() {
    let mut net = Net::new(1, "");
    let seed = net.seeds[0];
    let dir = net.dir.path().to_path_buf();
    // The same network, the seed listed by address only.
    let keyed = std::fs::read_to_string(&net.config).unwrap();
    let tail = keyed.split_once('\n').unwrap().1.to_string();
    std::fs::write(&net.config, format!("seeds: [\"{seed}\"]\n{tail}")).unwrap();
    let real = print_key(
        env!("CARGO_BIN_EXE_seed"),
        &dir,
        &["--addr", &seed.to_string()],
    );
    net.start_seeds();
    let p = net.start_peer();
    let pinned = of(&net.events("peer", p), "key_pinned")
        .iter()
        .map(|e| {
            (
                e["seed"].as_str().unwrap().to_string(),
                e["key"].as_str().unwrap().to_string(),
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(pinned, vec![(seed.to_string(), real.clone())]);
    let known = std::fs::read_to_string(dir.join("keys/known-seeds")).unwrap();
    assert!(known.contains(&format!("{seed} {real}")), "{known}");

    // Another process takes the seed's address with a key of its own.
    net.kill(seed);
    let other = dir.join("impostor.key");
    net.spawn_with(
        "seed",
        seed,
        &["--key-file".into(), other.display().to_string()],
    );
    let evs = net.jsonl("seed", seed);
    wait_until("the impostor seed is up", || {
        of(&events(&evs), "started").len() == 2
    });
    let q = addr(free_port());
    net.spawn("peer", q);
    let log = dir.join(format!("peer-{}.log", q.port()));
    wait_until("the new peer refuses the impostor's key", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("{seed} showed key"))
    });
    assert!(
        of(&net.events("peer", q), "registered_with").is_empty(),
        "a peer registered with a seed showing another key than the pinned one"
    );

    // A key listed for a seed that its key file does not hold: exit 2, one line.
    net.kill(seed);
    let impostor = print_key(
        env!("CARGO_BIN_EXE_seed"),
        &dir,
        &[
            "--addr",
            &seed.to_string(),
            "--key-file",
            other.to_str().unwrap(),
        ],
    );
    let listed = vec![format!("{{ addr: \"{seed}\", key: \"{impostor}\" }}")];
    std::fs::write(&net.config, fast_config(&listed, "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seed"))
        .args(["--addr", &seed.to_string(), "--config"])
        .arg(&net.config)
        .arg("--out-dir")
        .arg(dir.join("out2"))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lists key") && err.lines().count() == 1,
        "{err}"
    );
}
