//! The documents stand on the repository alone: every file they name in backticks exists, and
//! none points to a specification that is not here.

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
        for bad in ["SPEC ", "SPEC\u{a7}"] {
            assert!(!text.contains(bad), "{doc} mentions `{bad}`");
        }
    }
}
