//! `scripts/gpu-check.sh` (the GPU benchmark that runs a prebuilt binary on a GPU machine) in
//! its CPU dry run: every flag it passes parses, and it writes one JSON per run and a summary.

use std::path::Path;
use std::process::Command;

#[test]
fn gpu_check_dry_run_writes_json() {
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
        .env("GPU_CHECK_MS", "1 2")
        .env("GPU_CHECK_STEPS", "1")
        .env("PYTHON", &python)
        .env("OUT", out.path())
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    for m in [1, 2] {
        for mode in ["share-prompt", "decoupled_ckpt"] {
            let path = out.path().join(format!("m{m}_{mode}.json"));
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(r["config"]["num_negatives"], m, "{}", path.display());
            assert_eq!(r["config"]["random_model"]["hidden_size"], 64);
            assert_eq!(r["config"]["target_length"], 4096);
            assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0);
            // (M + 1) sequences of 240 + 16 tokens; with the shared prompt 240 + (M + 1)·16.
            let expected = if mode == "share-prompt" {
                240 + (m + 1) * 16
            } else {
                (m + 1) * 256
            };
            assert_eq!(r["computed_tokens_per_step"], expected);
            assert!(r["cuda_max_allocated_bytes"].is_null()); // CPU
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["runs"].as_object().unwrap().len(), 4);
    assert_eq!(summary["gpu"], "dry run on CPU");
}
