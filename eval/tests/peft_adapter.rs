//! "Any PEFT LoRA on the same base": an adapter written by PEFT itself (Python,
//! `tests/py/peft_adapter.py`, with MLP targets the trainer does not use by default) folded
//! into the engine's policy gives the next-token logits of PEFT's own adapted model. Skipped
//! with a message when the venv lacks transformers/peft (`scripts/setup-venv.sh`).

mod common;
#[path = "../../trainer/tests/common/numeric.rs"]
mod numeric;

use std::path::PathBuf;
use std::process::Command;

use logo_policy::config::ModelConfig;
use logo_policy::model::Policy;
use logo_policy::tokenizer::encode_text;
use tch::Tensor;

#[test]
fn peft_written_adapter_gives_pefts_logits() {
    let Some(cfg) = common::embedded("peft_written_adapter_gives_pefts_logits") else {
        return;
    };
    let py = match logo_env::paths::venv_python_with(&["transformers", "peft", "safetensors"]) {
        Ok(py) => py,
        Err(why) => return logo_env::paths::fixture_missing(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    logo_trainer::peft::export_hf(&cfg.path, None, &hf).unwrap();
    let tok = logo_policy::tokenizer::load_tokenizer(&cfg).unwrap();
    let ids = encode_text(&tok, "Marie Curie was born in Warsaw and later moved to").unwrap();
    let adapter = dir.path().join("adapter");
    let logits_path = dir.path().join("logits.safetensors");
    let spec = serde_json::json!({
        "model": hf,
        "adapter": adapter,
        "input_ids": ids,
        "logits": logits_path,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/peft_adapter.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = Tensor::read_safetensors(&logits_path).unwrap();
    let reference: Vec<f32> = Vec::try_from(&reference[0].1).unwrap();

    let mut base = Policy::load(&cfg).unwrap();
    let base_logits = base.next_token_logits(&ids).unwrap();
    drop(base);
    let mut adapted = Policy::load(&ModelConfig {
        adapter: Some(adapter),
        ..cfg
    })
    .unwrap();
    let ours = adapted.next_token_logits(&ids).unwrap();
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let moved = diff(&base_logits, &reference);
    let agree = diff(&ours, &reference);
    eprintln!("PEFT's adapter moves logits by {moved:.3}; engine vs PEFT differ by {agree:.2e}");
    assert!(
        moved > 0.1,
        "the adapter should change the logits ({moved})"
    );
    numeric::assert_within("engine (candle) vs PEFT, max |logits|", agree as f64, 2e-3);
}
