//! `logo-trainer --config FILE`: the flags given on the command line win over the file's keys,
//! the file wins over the defaults, and the flags of the two earlier gradient booleans map onto
//! the `gradient` key (`--print-config` shows the validated settings without training).

use std::path::Path;
use std::process::Command;

use logo_trainer::config::{GradientMode, RawTrainConfig};

/// The settings `logo-trainer ARGS --print-config` would train with, and its stderr.
fn print_config(args: &[&str]) -> Result<RawTrainConfig, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_logo-trainer"))
        .args(args)
        .arg("--print-config")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(RawTrainConfig::from_yaml_str(&text, Path::new("/")).unwrap())
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("train.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_flag_overrides_a_key_and_a_key_overrides_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "data: data\nbatch_size: 2\nloss: {beta: 2.5, gamma: 0.25}\nlora: {r: 16}\n\
         gradient: decoupled\n",
    );
    let from_file = print_config(&["--config", &file]).unwrap();
    assert_eq!(
        from_file.data,
        dir.path().join("data"),
        "relative to the file"
    );
    assert_eq!(from_file.batch_size, 2);
    assert_eq!((from_file.loss.beta, from_file.loss.gamma), (2.5, 0.25));
    assert_eq!(from_file.lora.r, 16);
    assert_eq!(from_file.gradient, GradientMode::Decoupled);
    let d = RawTrainConfig::default();
    assert_eq!(from_file.loss.sft_weight, d.loss.sft_weight, "default kept");
    assert_eq!(from_file.optim.lr, d.optim.lr, "default kept");

    let flags = print_config(&[
        "--config",
        &file,
        "--beta",
        "10",
        "--lora-r",
        "4",
        "--batch-size",
        "1",
        "--gradient",
        "joint",
        "--data",
        "/elsewhere",
        "--quiet",
    ])
    .unwrap();
    assert_eq!(flags.loss.beta, 10.0, "flag over key");
    assert_eq!(flags.loss.gamma, 0.25, "key kept");
    assert_eq!(flags.lora.r, 4);
    assert_eq!(
        flags.batch_size, 1,
        "a flag equal to the default still wins"
    );
    assert_eq!(flags.gradient, GradientMode::Joint);
    assert_eq!(flags.data, Path::new("/elsewhere"));
    assert!(!flags.progress);
}

#[test]
fn the_earlier_gradient_flags_set_the_key() {
    let base = ["--data", "/d"];
    let gradient = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        print_config(&args).unwrap().gradient
    };
    assert_eq!(gradient(&[]), GradientMode::SharedPrompt);
    assert_eq!(gradient(&["--share-prompt"]), GradientMode::SharedPrompt);
    assert_eq!(gradient(&["--no-share-prompt"]), GradientMode::Joint);
    assert_eq!(gradient(&["--decoupled"]), GradientMode::Decoupled);
    assert_eq!(
        gradient(&["--no-share-prompt", "--decoupled"]),
        GradientMode::Decoupled
    );
}

/// The binary's messages name the key and its flag; a key without a flag (or an unknown one)
/// only the key.
#[test]
fn errors_name_the_key_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "data: d\nlora: {rank: 8}\n");
    let e = print_config(&["--config", &file]).unwrap_err();
    assert!(e.contains("config key lora.rank: unknown key"), "{e}");
    let file = write_config(dir.path(), "data: d\nbatch_size: 0\n");
    let e = print_config(&["--config", &file]).unwrap_err();
    assert!(
        e.contains("config key batch_size (--batch-size): must be >= 1"),
        "{e}"
    );
    let e = print_config(&["--config", &file, "--batch-size", "3", "--beta=-1"]).unwrap_err();
    assert!(
        e.contains("config key loss.beta (--beta): must be finite"),
        "{e}"
    );
    let e = print_config(&[]).unwrap_err();
    assert!(e.contains("config key data (--data): required"), "{e}");
}
