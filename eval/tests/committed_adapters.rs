//! The experiment's committed adapters (`bench/results/experiment_*/stages/train-*/adapter`,
//! the final adapters and the checkpoints a later part resumes from) are plain PEFT LoRA
//! adapters: `PeftModel.from_pretrained` on the base exported as a Hugging Face folder
//! (`logo-trainer export-hf`) reads every stored tensor into a LoRA weight of the model
//! (`tests/py/peft_load.py`), and its next-token logits equal those of the engine's policy with
//! the same adapter folded in. Fails under `CI=true` when the model, the venv's
//! transformers/peft or the committed adapters are missing.

mod common;
#[path = "../../trainer/tests/common/numeric.rs"]
mod numeric;

use std::path::{Path, PathBuf};
use std::process::Command;

use logo_policy::config::ModelConfig;
use logo_policy::model::Policy;
use logo_policy::tokenizer::{encode_text, load_tokenizer};
use tch::Tensor;

/// Every folder holding `adapter_config.json` under the committed training stages: a stage's
/// `adapter/` and its `adapter/checkpoint-*/`, sorted.
fn committed_adapters(results: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(experiments) = std::fs::read_dir(results) else {
        return out;
    };
    for experiment in experiments.flatten() {
        let stages = experiment.path().join("stages");
        let Ok(stages) = std::fs::read_dir(&stages) else {
            continue;
        };
        for stage in stages.flatten() {
            if !stage.file_name().to_string_lossy().starts_with("train-") {
                continue;
            }
            let adapter = stage.path().join("adapter");
            let mut candidates = vec![adapter.clone()];
            if let Ok(entries) = std::fs::read_dir(&adapter) {
                candidates.extend(entries.flatten().map(|e| e.path()));
            }
            out.extend(
                candidates
                    .into_iter()
                    .filter(|p| p.join("adapter_config.json").is_file()),
            );
        }
    }
    out.sort();
    out
}

#[test]
fn committed_adapters_load_with_peft_and_give_the_policys_logits() {
    let test = "committed_adapters_load_with_peft_and_give_the_policys_logits";
    let Some(cfg) = common::embedded(test) else {
        return;
    };
    let py = match logo_env::paths::venv_python_with(&["transformers", "peft", "safetensors"]) {
        Ok(py) => py,
        Err(why) => return logo_env::paths::fixture_missing(&why),
    };
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    let adapters = committed_adapters(&results);
    if adapters.is_empty() {
        return logo_env::paths::fixture_missing(&format!(
            "{test}: no committed adapter under {}/experiment_*/stages/train-*",
            results.display()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    logo_trainer::peft::export_hf(&cfg.path, None, &hf).unwrap();
    let tok = load_tokenizer(&cfg).unwrap();
    let ids = encode_text(
        &tok,
        "Answer from the document. The contract ends on 31 March; the fee is",
    )
    .unwrap();
    let spec = serde_json::json!({
        "model": hf,
        "adapters": adapters,
        "input_ids": ids,
        "out": dir.path(),
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/peft_load.py");
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
    let mut base = Policy::load(&cfg).unwrap();
    let base_logits = base.next_token_logits(&ids).unwrap();
    drop(base);
    for (i, adapter) in adapters.iter().enumerate() {
        let loaded: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("loaded-{i}.json"))).unwrap(),
        )
        .unwrap();
        let (stored, matched, params) = (
            loaded["stored"].as_u64().unwrap(),
            loaded["matched"].as_u64().unwrap(),
            loaded["lora_params"].as_u64().unwrap(),
        );
        // Every stored tensor is a LoRA weight of the PEFT model, and every LoRA weight of
        // the model came from the file (none left at PEFT's initialisation).
        assert!(
            stored > 0 && stored == matched && matched == params,
            "{}: {loaded}",
            adapter.display()
        );
        let reference =
            Tensor::read_safetensors(dir.path().join(format!("logits-{i}.safetensors"))).unwrap();
        let reference: Vec<f32> = Vec::try_from(&reference[0].1).unwrap();
        let mut adapted = Policy::load(&ModelConfig {
            adapter: Some(adapter.clone()),
            ..cfg.clone()
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
        eprintln!(
            "{}: {stored} tensors; training moved the logits by {moved:.3}; policy vs PEFT {agree:.2e}",
            adapter.display()
        );
        assert!(
            moved > 1e-3,
            "{}: the adapter is a no-op ({moved})",
            adapter.display()
        );
        numeric::assert_within(
            "policy (candle, folded) vs PEFT, max |logits|",
            agree as f64,
            2e-3,
        );
    }
}
