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

/// Kills the child on drop, so a failing assertion leaves no process behind.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `2026-12-01 20:39:16.617  ` at the start of a line.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() > 25
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && &line[23..25] == "  "
}

#[test]
fn the_screen_shows_one_format_on_stdout_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    // A seed that never answers (a socket bound and held, so the peer cannot be handed the
    // same port, and never serving): the peer warns about it on stderr while its .txt lines go
    // to stdout.
    let seed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let seed_addr = seed.local_addr().unwrap();
    let config = dir.path().join("seeds.yaml");
    std::fs::write(
        &config,
        format!("seeds: [\"{seed_addr}\"]\npow: {{ difficulty: 8, timeout: 1s }}\n"),
    )
    .unwrap();
    let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--addr", "127.0.0.1:0", "-v", "--config"])
        .arg(&config)
        .arg("--out-dir")
        .arg(dir.path().join("out"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let _guard = Guard(child);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !(read("stdout").contains("listening") && read("stderr").contains("warning: ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "stdout: {}\nstderr: {}",
            read("stdout"),
            read("stderr")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (stdout, stderr) = (read("stdout"), read("stderr"));
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(stamped(line), "not in the .txt format: {line:?}\n{stderr}");
    }
    assert!(
        stderr
            .lines()
            .any(|l| l[25..].starts_with("warning: seed ") && l.contains("unreachable")),
        "{stderr}"
    );
    // Plain information carries no level tag, exactly like a .txt line.
    assert!(
        stderr
            .lines()
            .any(|l| l[25..].starts_with("peer 127.0.0.1:")),
        "{stderr}"
    );
}

#[test]
fn report_help_defines_every_figure_the_report_prints() {
    let o = run(Path::new(env!("CARGO_BIN_EXE_report")), &["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for figure in [
        "seeds",
        "peers",
        "messages generated",
        "coverage",
        "expected deliveries",
        "time to reach all",
        "p50",
        "p99",
        "max",
        "duplicates per delivery",
        "withdrawn before sending",
        "frames per system call",
        "dead peer",
        "dead peers none",
        "from its last logged line",
        "frozen peer",
        "left peer",
        "false removals",
        "rejected connections",
        "earlier runs left out",
        "expected_deliveries",
    ] {
        assert!(
            help.contains(figure),
            "`{figure}` is not defined in:\n{help}"
        );
    }
}

#[test]
fn a_peer_given_a_seeds_address_says_so_and_exits_2() {
    // A reused port: the peer would dial itself to register and link to itself.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("gossipnet-cli-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("seeds.yaml");
    std::fs::write(&config, format!("seeds: [\"127.0.0.1:{port}\"]\n")).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let out = dir.join("out");
    let o = run(
        Path::new(env!("CARGO_BIN_EXE_peer")),
        &[
            "--addr",
            &addr,
            "--config",
            config.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
        ],
    );
    let err = stderr(&o);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{addr} is one of the seeds in"))
            && err.contains("a peer needs an address of its own"),
        "{err}"
    );
}
