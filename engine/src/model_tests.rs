//! Tests of the policy model (and the shared test helpers other modules use:
//! [`embedded_config`], [`shared_policy`], [`shared_policy_and_tokenizer`]).

use super::*;
use crate::gguf::read_gguf;
use candle_core::quantized::GgmlDType;
use std::sync::{Arc, Mutex, OnceLock};

/// The embedded model's config, or `None` (a recorded skip; a failure under `CI=true`,
/// [`logo_env::paths::fixture_missing`]) when the file is absent.
pub(crate) fn embedded_config(test: &str) -> Option<ModelConfig> {
    let cfg = default_model_config();
    if cfg.path.exists() {
        Some(cfg)
    } else {
        logo_env::paths::fixture_missing(&format!(
            "{test}: the embedded model {} (scripts/just setup, or set LOGO_CACHE)",
            cfg.path.display()
        ));
        None
    }
}

/// One q8_0 policy shared by every test of the crate (loading takes seconds).
pub(crate) fn shared_policy(test: &str) -> Option<Arc<Mutex<Policy>>> {
    static POLICY: OnceLock<Arc<Mutex<Policy>>> = OnceLock::new();
    let cfg = embedded_config(test)?;
    Some(
        POLICY
            .get_or_init(|| Arc::new(Mutex::new(Policy::load(&cfg).expect("load policy"))))
            .clone(),
    )
}

/// The shared policy as an in-process [`crate::backend::GenerationBackend`].
pub(crate) fn in_process(
    policy: &Arc<Mutex<Policy>>,
) -> Arc<dyn crate::backend::GenerationBackend> {
    Arc::new(crate::backend::InProcess::new(policy.clone()))
}

/// [`shared_policy`] and a copy of its tokenizer.
pub(crate) fn shared_policy_and_tokenizer(test: &str) -> Option<(Arc<Mutex<Policy>>, Tokenizer)> {
    let policy = shared_policy(test)?;
    let tok = policy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .tokenizer()
        .clone();
    Some((policy, tok))
}

#[test]
fn generation_is_deterministic_and_sensible() {
    let Some(policy) = shared_policy("generation_is_deterministic_and_sensible") else {
        return;
    };
    let mut p = policy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(p.weights(), WeightFormat::F32);
    assert_eq!(p.vocab_size(), 49152);
    let tok = p.tokenizer().clone();
    let t = p.template().unwrap();
    let ctx = encode_text(&tok, "Paris is the capital of France.").unwrap();
    let (ids, _) = t
        .prompt(
            &tok,
            "Answer briefly.",
            &[&ctx],
            "What is the capital of France?",
        )
        .unwrap();
    let greedy = GenerateOptions::greedy(16);
    let a = p.generate(&ids, &greedy).unwrap();
    let b = p.generate(&ids, &greedy).unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert!(!a.token_ids.is_empty());
    assert!(a.stopped_on_eos || a.token_ids.len() == 16, "{a:?}");
    assert_eq!(a.prompt_tokens, ids.len());
    assert!(a.text.contains("Paris"), "{:?}", a.text);
    let sampled = GenerateOptions {
        max_new_tokens: 12,
        temperature: 1.0,
        top_p: 0.9,
        seed: 7,
        min_new_tokens: 0,
    };
    let c = p.generate(&ids, &sampled).unwrap();
    let d = p.generate(&ids, &sampled).unwrap();
    assert_eq!(c.token_ids, d.token_ids);
    // min_new_tokens forces exactly max_new_tokens tokens.
    let forced = GenerateOptions {
        min_new_tokens: 8,
        ..GenerateOptions::greedy(8)
    };
    let e = p.generate(&ids, &forced).unwrap();
    assert_eq!(e.token_ids.len(), 8);
    assert!(!e.stopped_on_eos);
}

#[test]
fn every_weight_format_loads_and_answers() {
    let Some(cfg) = embedded_config("every_weight_format_loads_and_answers") else {
        return;
    };
    for weights in [WeightFormat::Q8_0, WeightFormat::Native] {
        let mut p = Policy::load(&ModelConfig {
            weights,
            ..cfg.clone()
        })
        .unwrap();
        assert_eq!(p.weights(), weights);
        assert_eq!(p.vocab_size(), 49152);
        assert_eq!(p.name(), "Smollm2 135M 8k Lc100K Mix1 Ep2");
        let tok = p.tokenizer().clone();
        let ctx = encode_text(&tok, "Paris is the capital of France.").unwrap();
        let (ids, _) = p
            .template()
            .unwrap()
            .prompt(
                &tok,
                "Answer briefly.",
                &[&ctx],
                "What is the capital of France?",
            )
            .unwrap();
        // Observed for q8_0, f32 and native alike: "Paris is the capital of France."
        let g = p.generate(&ids, &GenerateOptions::greedy(8)).unwrap();
        assert!(g.text.starts_with("Paris"), "{weights:?}: {:?}", g.text);
    }
    let named = Policy::load(&ModelConfig {
        name: Some("my-policy".into()),
        weights: WeightFormat::Native,
        ..cfg
    })
    .unwrap();
    assert_eq!(named.name(), "my-policy");
}

#[test]
fn too_long_prompt_is_a_model_error() {
    let Some(policy) = shared_policy("too_long_prompt_is_a_model_error") else {
        return;
    };
    let mut p = policy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // f32 weights run the dense backend: SmolLM2's whole trained context of 8192.
    assert_eq!(p.max_positions(), 8192);
    let ids = vec![100u32; 8192 - 4];
    let e = p.generate(&ids, &GenerateOptions::greedy(8)).unwrap_err();
    assert!(matches!(e, EngineError::Model(_)), "{e}");
    assert!(
        e.to_string()
            .contains("8196 exceeds the 8192 positions of candle's llama"),
        "{e}"
    );
    let e = p.generate(&[], &GenerateOptions::greedy(8)).unwrap_err();
    assert_eq!(e.to_string(), "model: generate: empty prompt");
    let e = p
        .generate(&[60_000], &GenerateOptions::greedy(8))
        .unwrap_err();
    assert!(e.to_string().contains("token id 60000"), "{e}");
}

/// The dense backend (candle `llama`, HF layout, q/k un-permuted) and the quantised one
/// (candle `quantized_llama` on the same f32 weights, GGUF layout) are independent
/// implementations of one model: same logits. The dense one also reads past 4096 tokens.
#[test]
fn dense_backend_equals_quantized_llama_and_reads_past_4096() {
    let test = "dense_backend_equals_quantized_llama_and_reads_past_4096";
    let Some((policy, tok)) = shared_policy_and_tokenizer(test) else {
        return;
    };
    let mut dense = policy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ids = encode_text(
        &tok,
        "The committee met on Tuesday. It decided, after a long debate, that the bridge",
    )
    .unwrap();
    let a = dense.next_token_logits(&ids).unwrap();
    let cfg = embedded_config(test).unwrap();
    let mut quantized = Policy::load(&ModelConfig {
        weights: WeightFormat::F32,
        ..cfg
    })
    .unwrap();
    // Force the quantised backend on f32 weights.
    if let Backend::Dense(_) = quantized.backend {
        let path = default_model_path();
        let (content, mut reader) = read_gguf(&path).unwrap();
        let heads = logo_formats::gguf_config::head_counts(&content).unwrap();
        let m = convert_weights(
            content,
            &mut reader,
            Some(GgmlDType::F32),
            None,
            heads,
            &path,
        )
        .unwrap();
        quantized.backend = Backend::Quantized {
            pristine: Box::new(m.clone()),
            model: Box::new(m),
        };
    }
    assert_eq!(quantized.max_positions(), MAX_POSITIONS);
    let b = quantized.next_token_logits(&ids).unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-3,
        "dense vs quantized_llama logits differ by {diff}"
    );
    // 4500 tokens: beyond quantized_llama's table, within the dense backend's.
    let long: Vec<u32> = ids.iter().copied().cycle().take(4500).collect();
    let e = quantized.next_token_logits(&long).unwrap_err();
    assert!(e.to_string().contains("exceeds the 4096 positions"), "{e}");
    let logits = dense.next_token_logits(&long).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}
