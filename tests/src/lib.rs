//! Helpers of the end-to-end tests: where the binaries, the embedded model and the shared
//! sample data are, and skipping with a message when something is absent (failing under
//! `CI=true`).
#![deny(missing_docs)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A built binary of the workspace (`logo-engine`, ...), found next to the test executable
/// (`target/<profile>/deps/..`). Panics with a hint when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --release --workspace` before the tests (the justfile's `test` does)",
        path.display()
    );
    path
}

/// Runs a binary with arguments and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .args(args)
        .output()
        .expect("binary starts")
}

/// Runs `scripts/<name>` of the checkout with `python3` and `args`; returns its exit code and
/// its stdout followed by its stderr.
pub fn python_script(name: &str, args: &[&Path]) -> (Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code(),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `../shared/data` of the checkout, if present.
pub fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    p.is_dir()
        .then(|| p.canonicalize().expect("canonical path"))
}

/// The embedded default model in the cache, if fetched (`scripts/just setup`).
pub fn embedded_model() -> Option<PathBuf> {
    let p = logo_env::paths::default_model_path();
    p.is_file().then_some(p)
}

/// Returns `Some(value)`, or records that the test is skipped because `what` (a fixture) is
/// absent and returns `None`; under `CI=true` it fails instead
/// ([`logo_env::paths::fixture_missing`]).
pub fn or_skip<T>(value: Option<T>, what: &str) -> Option<T> {
    logo_env::paths::require_fixture(value, &format!("{what} is absent"))
}

/// Output as text, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
