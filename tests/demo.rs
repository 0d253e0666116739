//! `scripts/demo.sh --fast` as a user runs it (with the test build's binaries): it must end by
//! itself, leave no process behind, and print a report whose figures are right.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_fast_with_kills_reports_full_coverage_and_both_deaths() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_peer")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let status = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .args([
            "--fast",
            "--seeds",
            "3",
            "--peers",
            "6",
            "--kill",
            "2",
            "--duration",
            "20",
            "--out",
        ])
        .arg(&run)
        .env("GOSSIPNET_BIN", bin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "demo.sh exited with {status}");

    // No process of this run is left: every node wrote its last words or was killed by us.
    let leftover = Command::new("pgrep")
        .args(["-f", &run.join("seeds.yaml").to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );

    let report = Command::new(env!("CARGO_BIN_EXE_report"))
        .arg(&run)
        .arg("--json")
        .output()
        .unwrap();
    assert!(report.status.success());
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(r["seeds"], 3);
    assert_eq!(r["peers"], 6);
    assert!(r["messages"].as_u64().unwrap() >= 40, "{r}");
    assert_eq!(r["coverage"], 1.0, "{r}");
    assert_eq!(r["false_removals"], 0, "{r}");
    let dead = r["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 2, "{r}");
    for d in dead {
        assert!(d["reported_after_s"].is_number(), "{r}");
        assert!(d["removed_after_s"].is_number(), "{r}");
    }
    let faults = std::fs::read_to_string(run.join("faults.jsonl")).unwrap();
    assert!(
        faults.contains("\"signal\":\"KILL\"") && faults.contains("\"signal\":\"STOP\""),
        "{faults}"
    );
}
