//! The documents stand on the repository alone: every file they name in backticks or link to
//! exists, and none points to a specification or a path that is not here. The README opens
//! with the two commands a new user needs, the second the one CI runs.

use std::path::Path;

fn documents(root: &Path) -> Vec<(String, String)> {
    let mut docs = vec!["README.md".to_string(), "BENCHMARKS.md".to_string()];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    docs.into_iter()
        .map(|d| {
            let text = std::fs::read_to_string(root.join(&d)).unwrap();
            (d, text)
        })
        .collect()
}

#[test]
fn every_repository_path_the_documents_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefixes = [
        "src/",
        "docs/",
        "scripts/",
        "examples/",
        "tests/",
        "fuzz/",
        ".ci/",
    ];
    let mut missing = Vec::new();
    for (doc, text) in documents(root) {
        // Odd pieces between backticks are code spans.
        for span in text.split('`').skip(1).step_by(2) {
            let is_path = prefixes.iter().any(|p| span.starts_with(p))
                && span
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
            // A trailing slash names a directory tools create (fuzz/artifacts/).
            if is_path && !span.ends_with('/') && !root.join(span).exists() {
                missing.push(format!("{doc}: {span}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not in the repository: {missing:?}"
    );
}

#[test]
fn no_document_points_to_a_specification_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (doc, text) in documents(root) {
        // A specification by section number, or a path that leaves the repository.
        for bad in ["SPEC ", "SPEC\u{a7}", "../", "shared/"] {
            assert!(!text.contains(bad), "{doc} mentions `{bad}`");
        }
    }
}

#[test]
fn every_relative_link_in_the_documents_leads_to_a_repository_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for (doc, text) in documents(root) {
        let base = Path::new(&doc).parent().unwrap().to_path_buf();
        for piece in text.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") {
                continue;
            }
            if !root.join(&base).join(target).exists() {
                missing.push(format!("{doc}: {target}"));
            }
        }
    }
    assert!(missing.is_empty(), "links to nothing: {missing:?}");
}

/// The README opens with the two commands a new user needs, and CI runs the second as written.
#[test]
fn the_readme_starts_with_the_demo_and_the_test_command_ci_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let first_block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in README.md");
    let commands: Vec<&str> = first_block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["scripts/demo.sh", "cargo test"], "{first_block}");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim_start().starts_with("cargo test")),
        ".ci/run does not run `cargo test`"
    );
    assert!(
        readme.find("```sh").unwrap() < readme.find("## ").unwrap(),
        "the two commands come before the first section"
    );
}
