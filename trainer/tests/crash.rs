//! Crash safety of training: a real `logo-trainer` process killed with SIGKILL in the middle
//! of a run, then resumed from its newest complete checkpoint, ends with the uninterrupted
//! run's loss curve (to 1e-6) and final adapter.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use logo_schemas::{TrainingSample, SCHEMA_VERSION};
use logo_trainer::checkpoint::{latest_checkpoint, read_metrics};
use tch::Tensor;

const STEPS: usize = 120;

fn trainer(dir: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logo-trainer"));
    c.args(["--data", &dir.join("data").display().to_string()])
        .args(["--model", &dir.join("model").display().to_string()])
        .args(["--output", &out.display().to_string()])
        .args(["--batch-size", "1", "--max-steps", &STEPS.to_string()])
        .args(["--save-steps", "7", "--lr", "5e-3", "--lora-r", "4"])
        .args(["--device", "cpu", "--quiet", "--seed", "5"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("LOGO_FAULT")
        .env("OMP_NUM_THREADS", "1");
    c
}

fn adapter(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn kill_9_then_resume_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model_locked(&dir.path().join("model"));
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let rows: Vec<TrainingSample> = (0..16).map(sample).collect();
    write_parquet(
        &dir.path().join("data/a.parquet"),
        &rows,
        Some(SCHEMA_VERSION),
    );
    let full = dir.path().join("full");
    let o = trainer(dir.path(), &full).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Killed once a few checkpoints exist (steps 7, 14, 21, ... of 120).
    let killed = dir.path().join("killed");
    let mut child = trainer(dir.path(), &killed)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !killed.join("checkpoint-21").is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint-21 after 300 s"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        !killed.join("summary.json").exists(),
        "the run finished before the kill: the test proves nothing"
    );
    let ckpt = latest_checkpoint(&killed).expect("a complete checkpoint");
    let at: usize = ckpt.file_name().unwrap().to_str().unwrap()["checkpoint-".len()..]
        .parse()
        .unwrap();
    assert!((21..STEPS).contains(&at), "{}", ckpt.display());
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing in {}", ckpt.display());
    }

    let o = trainer(dir.path(), &killed)
        .args(["--resume", ckpt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let a = read_metrics(&full.join("metrics.jsonl")).unwrap();
    let b = read_metrics(&killed.join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), STEPS);
    assert_eq!(
        b.iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=STEPS).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-6,
            "step {}: loss {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
    let (fa, fb) = (
        adapter(&full.join("adapter_model.safetensors")),
        adapter(&killed.join("adapter_model.safetensors")),
    );
    assert_eq!(fa.len(), fb.len());
    for ((na, ta), (nb, tb)) in fa.iter().zip(&fb) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{na}: max |diff| {diff}");
    }
    // Nothing temporary is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
