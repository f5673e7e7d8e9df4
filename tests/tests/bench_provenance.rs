//! Every committed result says where it came from: each `bench/results/*.json`, and the
//! `provenance.json` of each folder of results, carries `command`, `git_commit` and `machine`
//! (written by `bench/provenance.py`, the one implementation every benchmark uses). A result
//! without them cannot be regenerated or trusted, so it fails here rather than being read.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results")
}

/// The files that must carry provenance: top-level JSON files and each folder's
/// `provenance.json` (a folder without one is reported as such).
fn result_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.push(path.join("provenance.json"));
        } else if path.extension().is_some_and(|x| x == "json") {
            files.push(path);
        }
    }
    files
}

/// What is wrong with `doc`'s provenance, if anything.
fn provenance_errors(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    match doc.get("command").and_then(Value::as_str) {
        Some(c) if !c.trim().is_empty() => {}
        _ => errors.push("no `command` (a non-empty string)".to_string()),
    }
    match doc.get("git_commit").and_then(Value::as_str) {
        Some(c) if c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        other => errors.push(format!("`git_commit` {other:?} is not 40 hex digits")),
    }
    match doc.get("machine") {
        Some(Value::Object(m)) if m.contains_key("cpus") => {}
        Some(Value::Object(_)) => errors.push("`machine` lacks `cpus`".to_string()),
        _ => errors.push("no `machine` object".to_string()),
    }
    errors
}

#[test]
fn every_committed_result_carries_command_commit_and_machine() {
    let dir = results_dir();
    let files = result_files(&dir);
    assert!(
        files.len() >= 5,
        "{} holds {} results",
        dir.display(),
        files.len()
    );
    let mut bad = Vec::new();
    for path in &files {
        let name = path.strip_prefix(&dir).unwrap().display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                bad.push(format!("{name}: {e}"));
                continue;
            }
        };
        let doc: Value = match serde_json::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                bad.push(format!("{name}: not JSON: {e}"));
                continue;
            }
        };
        bad.extend(
            provenance_errors(&doc)
                .into_iter()
                .map(|e| format!("{name}: {e}")),
        );
    }
    assert!(
        bad.is_empty(),
        "results without provenance (regenerate them with `scripts/just results`):\n{}",
        bad.join("\n")
    );
}

/// The check itself rejects what it should: a result as the benchmarks wrote them before
/// provenance (a `machine` string, a Unix time, no command or commit) fails on every key.
#[test]
fn provenance_check_rejects_a_result_without_it() {
    let old = serde_json::json!({"benchmark": "x", "machine": "2-core", "unix_time": 1});
    let errors = provenance_errors(&old);
    assert_eq!(errors.len(), 3, "{errors:?}");
    let short = serde_json::json!({"command": "bench/x.sh", "git_commit": "abc123",
        "machine": {"cpus": 2}});
    assert_eq!(provenance_errors(&short).len(), 1);
    let good = serde_json::json!({"command": "bench/x.sh", "machine": {"cpus": 2},
        "git_commit": "d7fb2a3c82e20bafebe72dfc79695a67b1647fcf"});
    assert!(provenance_errors(&good).is_empty());
}
