//! The engine folds a PEFT adapter into candle's GGUF weights; the trainer applies it as LoRA
//! in libtorch. Two independent implementations of the same adapted model must give the same
//! next-token logits.

mod common;
#[path = "../../trainer/tests/common/numeric.rs"]
mod numeric;

use logo_policy::config::ModelConfig;
use logo_policy::model::Policy;
use logo_policy::tokenizer::encode_text;
use tch::{Device, Kind, Tensor};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn adapter_merged_by_the_engine_equals_the_trainers_lora() {
    let Some(cfg) = common::embedded("adapter_merged_by_the_engine_equals_the_trainers_lora")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::random_adapter(&cfg.path, dir.path(), 0.05);

    let mut base = Policy::load(&cfg).unwrap();
    let tok = base.tokenizer().clone();
    let text = "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon";
    let ids = encode_text(&tok, text).unwrap();
    let base_logits = base.next_token_logits(&ids).unwrap();
    drop(base);
    let mut adapted = Policy::load(&ModelConfig {
        adapter: Some(dir.path().to_path_buf()),
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!(adapted.adapter(), Some(dir.path()));
    let candle_logits = adapted.next_token_logits(&ids).unwrap();
    drop(adapted);

    // The trainer: unmerged LoRA (y = W x + B A x · scaling), libtorch, f32.
    let lora = logo_trainer::peft::read_adapter_config(dir.path()).unwrap();
    let model =
        logo_trainer::model::Llama::load(&cfg.path, Some(&lora), Device::Cpu, Kind::Float).unwrap();
    logo_trainer::peft::load_adapter(&model, dir.path()).unwrap();
    let n = ids.len() as i64;
    let input = Tensor::from_slice(&ids.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, n]);
    let pos = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
    let logits = tch::no_grad(|| model.forward(&input, &pos)).unwrap();
    let last: Vec<f32> = Vec::try_from(logits.get(0).get(n - 1).contiguous()).unwrap();

    let changed = max_abs_diff(&base_logits, &candle_logits);
    let agree = max_abs_diff(&last, &candle_logits);
    eprintln!(
        "adapter moves logits by up to {changed:.3}; engine vs trainer differ by {agree:.2e}"
    );
    assert!(
        changed > 0.5,
        "the adapter should change the logits (max diff {changed})"
    );
    numeric::assert_within(
        "engine (merged, candle) vs trainer (LoRA, libtorch), max |logits|",
        agree as f64,
        2e-3,
    );
    // Same arg-max token.
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    assert_eq!(argmax(&last), argmax(&candle_logits));
}

#[test]
fn adapter_for_another_base_is_a_named_error() {
    let Some(cfg) = common::embedded("adapter_for_another_base_is_a_named_error") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::random_adapter(&cfg.path, dir.path(), 0.05);
    // Rewrite one factor with the wrong width: a q_proj adapter for a model of hidden size 64.
    let path = dir.path().join("adapter_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" {
            *t = Tensor::zeros([4, 64], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let e = Policy::load(&ModelConfig {
        adapter: Some(dir.path().to_path_buf()),
        ..cfg.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("another base model"),
        "{e}"
    );
    // The quantised backend names the GGUF tensor.
    let e = Policy::load(&ModelConfig {
        adapter: Some(dir.path().to_path_buf()),
        weights: logo_policy::config::WeightFormat::Q8_0,
        ..cfg
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("another base model"),
        "{e}"
    );
}
