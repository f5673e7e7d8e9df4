//! Shared helpers of the eval integration tests: the embedded model, a random PEFT adapter.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use logo_policy::config::{ModelConfig, WeightFormat};
use logo_policy::model::default_model_config;
use logo_trainer::lora::LoraConfig;
use tch::{Kind, Tensor};

/// The embedded GGUF's config (f32 weights, 2 threads), or `None` with a recorded skip (a
/// failure under `CI=true`).
pub fn embedded(test: &str) -> Option<ModelConfig> {
    let cfg = default_model_config();
    if cfg.path.exists() {
        Some(ModelConfig {
            weights: WeightFormat::F32,
            threads: 2,
            ..cfg
        })
    } else {
        logo_env::paths::fixture_missing(&format!(
            "{test}: the embedded model {} (run scripts/just setup)",
            cfg.path.display()
        ));
        None
    }
}

/// `../shared/data/<rel>` if present, else `None` with a recorded skip (a failure under
/// `CI=true`).
pub fn shared_data(test: &str, rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        logo_env::paths::fixture_missing(&format!("{test}: {} not found", p.display()));
        None
    }
}

/// Writes a PEFT adapter for the model at `model` into `dir`: r 4 on q/k/v/o and the
/// embedding, every factor random (normal · `scale`, seeded), so that it changes the logits.
pub fn random_adapter(model: &Path, dir: &Path, scale: f64) {
    // libtorch has one global generator: tests of one binary run in parallel threads, so the
    // seed and the draws hold a lock, and every run writes the same adapter.
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(7);
    let lora = LoraConfig::default().with_r(4).with_dropout(0.0);
    let m = logo_trainer::model::Llama::load(model, Some(&lora), tch::Device::Cpu, Kind::Float)
        .expect("load model with adapters");
    {
        let _g = tch::no_grad_guard();
        // By name: the store's map iterates in a different order in every process.
        for (_, mut t) in m.lora_parameters() {
            let r = Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu)) * scale;
            t.copy_(&r);
        }
    }
    logo_trainer::peft::save_adapter(&m, dir, "SmolLM2-135M-Instruct").expect("save adapter");
}

/// `policy` as the `engine` generator of NIAH and QA: the in-process backend, with the policy's
/// tokenizer and chat template.
pub fn engine_backend(
    policy: logo_policy::model::Policy,
) -> (
    logo_policy::backend::InProcess,
    tokenizers::Tokenizer,
    logo_policy::tokenizer::ChatTemplate,
) {
    let tokenizer = policy.tokenizer().clone();
    let template = logo_policy::tokenizer::ChatTemplate::from_tokenizer(&tokenizer).unwrap();
    let backend =
        logo_policy::backend::InProcess::new(std::sync::Arc::new(std::sync::Mutex::new(policy)));
    (backend, tokenizer, template)
}
