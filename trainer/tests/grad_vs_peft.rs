//! The LoRA gradients of the LOGO loss equal those of an independent implementation
//! (PyTorch + HF transformers + PEFT, `tests/py/logo_grad_reference.py`) on a tiny random
//! Llama, with synthetic non-contiguous positions, M = 2 and two samples. Skipped with a
//! message when the venv lacks transformers/peft (`scripts/setup-venv.sh`).

use std::path::Path;
use std::process::Command;

use logo_schemas::paths::venv_python_with;
use logo_trainer::data::{collate, Example};
use logo_trainer::lora::{save_adapter, LoraConfig};
use logo_trainer::loss::LossConfig;
use logo_trainer::model::Llama;
use logo_trainer::train_loop::batch_loss;
use serde_json::json;
use tch::{Device, Kind, Tensor};

fn run_py(python: &Path, script: &str, spec: &serde_json::Value, work: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let spec_path = work.join(format!(
        "{}.json",
        script.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn examples() -> Vec<Example> {
    let ex = |seed: i64, p: usize| Example {
        sample_id: format!("s{seed}"),
        prompt_ids: (0..p as i64)
            .map(|t| (t * 13 + seed * 7) % 96 + 1)
            .collect(),
        // Two continuous chunks with a gap, as the engine's index synthesizer writes.
        prompt_positions: (0..p as i64)
            .map(|t| if t < 5 { t } else { t + 300 + seed })
            .collect(),
        chosen_ids: vec![17, 23, 5, 2],
        rejected_ids: vec![vec![40, 41, 2], vec![60 + seed, 61, 62, 63, 2]],
    };
    vec![ex(1, 9), ex(2, 12)]
}

#[test]
fn lora_gradients_equal_peft_reference() {
    let py = match venv_python_with(&["transformers", "peft", "safetensors"]) {
        Ok(py) => py,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let work = tempfile::tempdir().unwrap();
    let model_dir = work.path().join("model");
    run_py(
        &py,
        "hf_reference.py",
        &json!({
            "action": "make", "seed": 5, "dir": model_dir, "out": work.path().join("unused.safetensors"),
            "config": {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
                       "max_position_embeddings": 4096},
        }),
        work.path(),
    );
    let lora = LoraConfig::default()
        .with_r(4)
        .with_alpha(8.0)
        .with_dropout(0.0);
    let model = Llama::load(&model_dir, Some(&lora), Device::Cpu, Kind::Float).unwrap();
    // Non-zero adapters everywhere, so every gradient path is exercised.
    tch::manual_seed(9);
    {
        let _g = tch::no_grad_guard();
        for (_, mut t) in model.lora_parameters() {
            let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2;
            t.copy_(&r);
        }
    }
    let adapter_dir = work.path().join("adapter");
    save_adapter(&model, &adapter_dir, "tiny").unwrap();

    let cfg = LossConfig {
        beta: 2.5,
        gamma: 0.25,
        sft_weight: 0.1,
    };
    let batch = collate(&examples(), Device::Cpu).unwrap();
    let out = batch_loss(&model, &batch, &cfg, true).unwrap();
    out.loss.backward();

    let samples: Vec<serde_json::Value> = examples()
        .iter()
        .map(|e| {
            let mut responses = vec![e.chosen_ids.clone()];
            responses.extend(e.rejected_ids.clone());
            json!({"prompt_ids": e.prompt_ids, "prompt_positions": e.prompt_positions, "responses": responses})
        })
        .collect();
    let ref_path = work.path().join("grads.safetensors");
    run_py(
        &py,
        "logo_grad_reference.py",
        &json!({"model_dir": model_dir, "adapter_dir": adapter_dir, "out": ref_path,
                "beta": cfg.beta, "gamma": cfg.gamma, "sft_weight": cfg.sft_weight,
                "samples": samples}),
        work.path(),
    );
    let reference: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&ref_path)
        .unwrap()
        .into_iter()
        .collect();
    let ref_loss = reference["loss"].double_value(&[0]);
    let our_loss = out.loss.double_value(&[]);
    assert!(
        (ref_loss - our_loss).abs() < 1e-5,
        "loss: ours {our_loss}, PEFT {ref_loss}"
    );

    let ours = model.lora_var_store().unwrap().variables();
    assert_eq!(ours.len() + 1, reference.len(), "same trainable parameters");
    let mut worst = 0.0f64;
    for (name, param) in ours {
        let key = format!("base_model.model.{name}");
        let theirs = reference
            .get(&key)
            .unwrap_or_else(|| panic!("PEFT has no {key}"));
        let g = param.grad();
        let scale = theirs.abs().max().double_value(&[]).max(1e-6);
        let diff = (&g - theirs).abs().max().double_value(&[]) / scale;
        worst = worst.max(diff);
        assert!(diff < 1e-4, "{key}: relative max difference {diff}");
    }
    println!(
        "LoRA gradients vs PEFT: worst relative max difference {worst:.2e}, loss {our_loss:.6}"
    );
}
