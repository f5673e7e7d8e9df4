//! The LoRA gradients of the LOGO loss equal those of an independent implementation
//! (PyTorch + HF transformers + PEFT, `tests/py/logo_grad_reference.py`) on a tiny random
//! Llama, with synthetic non-contiguous positions, M = 2 and two samples. Skipped with a
//! message when the venv lacks transformers/peft (`scripts/setup-venv.sh`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::numeric::{assert_within, relative};
use logo_env::paths::venv_python_with;
use logo_trainer::data::{collate, Example};
use logo_trainer::lora::LoraConfig;
use logo_trainer::loss::LossConfig;
use logo_trainer::model::Llama;
use logo_trainer::peft::save_adapter;
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

/// The tiny HF model (written by transformers), an adapter with every factor random, the loss
/// settings, and the f32 model with that adapter.
struct Setup {
    work: tempfile::TempDir,
    model_dir: PathBuf,
    adapter_dir: PathBuf,
    lora: LoraConfig,
    cfg: LossConfig,
    model: Llama,
}

fn setup(py: &Path) -> Setup {
    let _seeded = common::rng_lock();
    let work = tempfile::tempdir().unwrap();
    let model_dir = work.path().join("model");
    run_py(
        py,
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
        ..LossConfig::default()
    };
    Setup {
        work,
        model_dir,
        adapter_dir,
        lora,
        cfg,
        model,
    }
}

/// PEFT's gradients (f32, by PEFT key) and loss (key `loss`) for [`examples`], with the base
/// model in `dtype` (`float32`, `bfloat16`).
fn peft_reference(py: &Path, s: &Setup, dtype: &str) -> HashMap<String, Tensor> {
    let samples: Vec<serde_json::Value> = examples()
        .iter()
        .map(|e| {
            let mut responses = vec![e.chosen_ids.clone()];
            responses.extend(e.rejected_ids.clone());
            json!({"prompt_ids": e.prompt_ids, "prompt_positions": e.prompt_positions, "responses": responses})
        })
        .collect();
    let out = s.work.path().join(format!("grads_{dtype}.safetensors"));
    run_py(
        py,
        "logo_grad_reference.py",
        &json!({"model_dir": s.model_dir, "adapter_dir": s.adapter_dir, "out": out,
                "beta": s.cfg.beta, "gamma": s.cfg.gamma, "sft_weight": s.cfg.sft_weight,
                "samples": samples, "dtype": dtype}),
        s.work.path(),
    );
    Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn lora_gradients_equal_peft_reference() {
    let py = match venv_python_with(&["transformers", "peft", "safetensors"]) {
        Ok(py) => py,
        Err(why) => return logo_env::paths::fixture_missing(&why),
    };
    let s = setup(&py);
    let (model, cfg) = (&s.model, &s.cfg);
    let batch = collate(&examples(), Device::Cpu).unwrap();
    let out = batch_loss(model, &batch, cfg, true).unwrap();
    out.loss.backward();

    let reference = peft_reference(&py, &s, "float32");
    let ref_loss = reference["loss"].double_value(&[0]);
    let our_loss = out.loss.double_value(&[]);
    assert_within("loss vs PEFT", relative(ref_loss, our_loss), 1e-5);

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
        assert_within(&format!("{key} gradient vs PEFT"), diff, 1e-4);
    }
    println!(
        "LoRA gradients vs PEFT: worst relative max difference {worst:.2e}, loss {our_loss:.6}"
    );
}

/// Relative L2 difference of every LoRA gradient `a[name]` vs `b[name]` (PEFT keys), worst.
fn worst_relative(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    a.iter()
        .filter(|(k, _)| k.as_str() != "loss")
        .map(|(k, x)| {
            let y = &b[k];
            (x - y).norm().double_value(&[]) / x.norm().double_value(&[]).max(1e-12)
        })
        .fold(0.0, f64::max)
}

/// The GPU's precision (bf16 base weights and activations, f32 LoRA weights, gradients and
/// loss) loses no more than PEFT's own bf16 does: in every gradient mode (joint, shared
/// prompt, decoupled with checkpointing), our bf16 gradients are as close to the f32 ones
/// as PEFT's bf16 gradients are to PEFT's f32 ones (within a factor 2).
#[test]
fn bf16_gradients_are_as_close_to_f32_as_pefts() {
    use logo_trainer::decoupled::backward_decoupled;
    use logo_trainer::shared_prompt::backward_shared_prompt;
    use logo_trainer::train_loop::backward_joint;
    let py = match venv_python_with(&["transformers", "peft", "safetensors"]) {
        Ok(py) => py,
        Err(why) => return logo_env::paths::fixture_missing(&why),
    };
    let s = setup(&py);
    let peft32 = peft_reference(&py, &s, "float32");
    let peft16 = peft_reference(&py, &s, "bfloat16");
    let peft_err = worst_relative(&peft32, &peft16);
    let bf16 = Llama::load(&s.model_dir, Some(&s.lora), Device::Cpu, Kind::BFloat16).unwrap();
    logo_trainer::peft::load_adapter(&bf16, &s.adapter_dir).unwrap();
    let examples = examples();
    let batch = collate(&examples, Device::Cpu).unwrap();
    let grads = |model: &Llama, run: &dyn Fn(&Llama)| -> HashMap<String, Tensor> {
        let (_, named) = common::lora_grads(model, &|| {
            run(model);
            0.0
        });
        named
            .into_iter()
            .map(|(k, g)| {
                assert_eq!(g.kind(), Kind::Float, "{k}: f32 gradient");
                (format!("base_model.model.{k}"), g)
            })
            .collect()
    };
    let (cfg, dev) = (&s.cfg, Device::Cpu);
    let ours32 = grads(&s.model, &|m| {
        backward_joint(m, &batch, cfg, false, 1, 1.0).unwrap();
    });
    assert_within(
        "f32 joint gradient vs PEFT f32",
        worst_relative(&peft32, &ours32),
        1e-4,
    );
    type Run<'a> = Box<dyn Fn(&Llama) + 'a>;
    let modes: [(&str, Run); 3] = [
        (
            "joint",
            Box::new(|m| {
                backward_joint(m, &batch, cfg, false, 1, 1.0).unwrap();
            }),
        ),
        (
            "shared prompt",
            Box::new(|m| {
                backward_shared_prompt(m, &examples, cfg, dev, false, 1, 1.0).unwrap();
            }),
        ),
        (
            "decoupled + checkpointing",
            Box::new(|m| {
                backward_decoupled(m, &examples, cfg, dev, true, 1, 1.0).unwrap();
            }),
        ),
    ];
    for (mode, run) in modes {
        let ours16 = grads(&bf16, run.as_ref());
        let ours_err = worst_relative(&ours32, &ours16);
        println!(
            "bf16 vs f32, worst relative gradient difference: ours ({mode}) {ours_err:.2e}, PEFT {peft_err:.2e}"
        );
        assert!(
            ours_err <= 2.0 * peft_err + 1e-3,
            "{mode}: ours {ours_err:.3e}, PEFT {peft_err:.3e}"
        );
    }
}
