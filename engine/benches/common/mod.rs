//! Provenance of a benchmark's JSON: the command, the git commit and the machine, from
//! `bench/provenance.py` (the one implementation every benchmark of the repository uses; see
//! its docstring for the keys). `tests/tests/bench_provenance.rs` fails on a committed result
//! without them.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The command that reproduces this run of bench `name`: `cargo bench -p logo-engine --bench
/// NAME -- ARGS`, with `LOGO_BENCH_PYTHON=…` in front when it is set (it turns on the
/// reference measurement).
pub fn command(name: &str) -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut cmd = format!("cargo bench -p logo-engine --bench {name}");
    if !args.is_empty() {
        cmd = format!("{cmd} -- {}", args.join(" "));
    }
    match std::env::var("LOGO_BENCH_PYTHON") {
        Ok(py) if !py.is_empty() => format!("LOGO_BENCH_PYTHON={py} {cmd}"),
        _ => cmd,
    }
}

/// `report` (a JSON object) with the provenance keys of `command` in front.
///
/// # Panics
/// When `python3 bench/provenance.py` cannot run or prints no JSON object: a result without
/// provenance is not written at all.
pub fn stamp(report: Value, command: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("bench/provenance.py"))
        .arg(command)
        .current_dir(&root)
        .output()
        .expect("python3 bench/provenance.py");
    assert!(
        out.status.success(),
        "bench/provenance.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Value::Object(mut doc) = serde_json::from_slice(&out.stdout).expect("provenance JSON")
    else {
        panic!("bench/provenance.py printed no JSON object");
    };
    let Value::Object(fields) = report else {
        panic!("a benchmark report is a JSON object");
    };
    doc.extend(fields);
    Value::Object(doc)
}
