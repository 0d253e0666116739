//! Usage errors of the real binaries: clap's whole message (what is missing, the "similar
//! argument" tip, the usage line) reaches the user, with exit code 2. (Configuration errors
//! stay one line naming the key: tests/foundation.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn seed_alone_names_the_missing_argument_and_exits_2() {
    let o = run(Path::new(env!("CARGO_BIN_EXE_seed")), &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("required arguments were not provided"),
        "{err}"
    );
    // The list of what is missing, cut off before: the line naming --addr.
    assert!(
        err.lines()
            .any(|l| l.contains("--addr <IP:PORT>") && !l.contains("Usage")),
        "{err}"
    );
    assert!(err.contains("Usage: seed --addr <IP:PORT>"), "{err}");
}

#[test]
fn a_mistyped_flag_gets_the_similar_argument_tip() {
    let o = run(Path::new(env!("CARGO_BIN_EXE_peer")), &["--adr", "x"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unexpected argument '--adr'"), "{err}");
    assert!(err.contains("similar argument exists: '--addr'"), "{err}");
    assert!(err.contains("Usage: peer"), "{err}");
}

#[test]
fn report_alone_names_the_run_directory() {
    let o = run(Path::new(env!("CARGO_BIN_EXE_report")), &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.lines().any(|l| l.trim() == "<RUN_DIR>"), "{err}");
    assert!(err.contains("Usage: report"), "{err}");
}

#[test]
fn a_bad_value_says_what_was_expected() {
    let o = run(
        Path::new(env!("CARGO_BIN_EXE_seed")),
        &["--addr", "localhost"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'localhost' for '--addr <IP:PORT>'"),
        "{err}"
    );
}

#[test]
fn help_and_version_exit_0() {
    for bin in [env!("CARGO_BIN_EXE_seed"), env!("CARGO_BIN_EXE_peer")] {
        for flag in ["--help", "--version"] {
            let o = run(Path::new(bin), &[flag]);
            assert_eq!(o.status.code(), Some(0), "{bin} {flag}: {}", stderr(&o));
            assert!(!o.stdout.is_empty());
        }
    }
}

/// The examples parse their arguments with the same helper. `cargo test` builds them next to
/// the binaries; a run of this test file alone (`--test cli`) may not have.
fn example(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_peer"))
        .parent()?
        .join("examples")
        .join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping example {name}: not built (cargo build --examples)");
        None
    }
}

#[test]
fn the_examples_print_clap_errors_too() {
    if let Some(chat) = example("chat") {
        let o = run(&chat, &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("<API_ADDR>") && err.contains("<NAME>"),
            "{err}"
        );
    }
    if let Some(bench) = example("bench") {
        let o = run(&bench, &["latncy"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("similar subcommand exists: 'latency'"),
            "{err}"
        );
    }
    if let Some(pow) = example("pow_bench") {
        let o = run(&pow, &["40"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("40 is not in 0..=32"), "{err}");
    }
}
