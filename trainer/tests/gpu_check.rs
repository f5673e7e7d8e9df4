//! `scripts/gpu-check.sh` (the GPU benchmark that runs a prebuilt binary on a GPU machine) in
//! its CPU dry run: every flag of its default plan parses, and it writes ONE archive with a
//! JSON per run and a summary, and a summary table on stdout.

use std::path::Path;
use std::process::Command;

#[test]
fn gpu_check_dry_run_writes_one_archive() {
    let python = std::env::var("VIRTUAL_ENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "python3".into());
    let has_torch = Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        return logo_env::paths::fixture_missing(&format!(
            "{python} cannot import torch (the script finds libtorch through it)"
        ));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .env("LOGO_TRAINER_BIN", env!("CARGO_BIN_EXE_logo-trainer"))
        .env("GPU_CHECK_DRY_RUN", "1")
        .env("GPU_CHECK_STEPS", "1")
        .env("PYTHON", &python)
        .env("OUT", out.path())
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stderr}");
    // One file comes back: the archive.
    let files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec!["gpu-check.tgz"]);
    let unpacked = tempfile::tempdir().unwrap();
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(out.path().join("gpu-check.tgz"))
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(tar.success());
    let plan = [
        ("1b", 1, "share-prompt"),
        ("1b", 8, "share-prompt"),
        ("8b", 1, "share-prompt"),
        ("8b", 1, "share-prompt_ckpt"),
        ("1b", 1, "share-prompt_ckpt"),
        ("1b", 8, "share-prompt_ckpt"),
        ("1b", 1, "decoupled_ckpt"),
        ("1b", 8, "decoupled_ckpt"),
        ("1b", 1, "joint"),
        ("1b", 8, "joint"),
    ];
    for (size, m, mode) in plan {
        let name = format!("{size}_m{m}_{mode}");
        let path = unpacked.path().join(format!("{name}.json"));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(r["config"]["num_negatives"], m, "{}", path.display());
        let layers = if size == "1b" { 2 } else { 4 };
        assert_eq!(r["config"]["random_model"]["num_hidden_layers"], layers);
        assert_eq!(r["config"]["target_length"], 4096);
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0);
        // Each real token once: 240 + (M + 1)·16. Computed: the prompt once with the shared
        // prompt, else (M + 1) sequences of 240 + 16.
        assert_eq!(r["tokens_per_step"], 240 + (m + 1) * 16);
        let computed = if mode.starts_with("share-prompt") {
            240 + (m + 1) * 16
        } else {
            (m + 1) * 256
        };
        assert_eq!(r["computed_tokens_per_step"], computed, "{name}");
        assert!(r["cuda_max_allocated_bytes"].is_null()); // CPU
        assert!(stdout.lines().any(|l| l.starts_with(&name)), "{stdout}");
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(unpacked.path().join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["runs"].as_object().unwrap().len(), plan.len());
    assert_eq!(summary["gpu"], "dry run on CPU");
    assert!(stdout.lines().count() <= 24, "one screen: {stdout}");
}
