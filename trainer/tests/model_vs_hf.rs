//! The model against independent implementations.
//!
//! - HF transformers `LlamaForCausalLM` / `Qwen2ForCausalLM` (tiny random f32 models made by
//!   `tests/py/hf_reference.py`, nothing downloaded): logits within 1e-4 with contiguous and
//!   LOGO-style synthesised `position_ids`, llama3 and linear rope scaling, untied heads,
//!   attention biases, an explicit `head_dim`.
//! - PEFT `PeftModel.from_pretrained`: our saved adapter gives our logits within 1e-4.
//! - candle `quantized_llama` on the embedded SmolLM2 GGUF (both dequantised to f32).
//! - Ourselves: zero-initialised LoRA changes nothing; `merge_lora` equals the adapter.
//!
//! Tests needing the python venv (`$LOGO_CACHE/venv` with `tests/py/requirements.txt`) or the
//! GGUF (`$LOGO_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf`; `LOGO_CACHE` defaults to
//! `$HOME/.cache/logo`) print a message and pass when those are absent.

#[path = "common/numeric.rs"]
mod numeric;

use std::path::{Path, PathBuf};
use std::process::Command;

use logo_env::paths::venv_python_with;
use logo_trainer::lora::LoraConfig;
use logo_trainer::model::Llama;
use logo_trainer::peft::{load_adapter, merge_lora, save_adapter};
use numeric::assert_within;
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// The venv's python if it can import transformers, peft and safetensors; else prints why
/// the test is skipped.
fn reference_python(test: &str) -> Option<PathBuf> {
    venv_python_with(&["transformers", "peft", "safetensors"])
        .map_err(|why| logo_env::paths::fixture_missing(&format!("{test}: {why}")))
        .ok()
}

/// Runs `hf_reference.py` on `spec` and returns its `case{i}` logits in order.
fn run_reference(python: &Path, work: &Path, spec: serde_json::Value) -> Vec<Tensor> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/hf_reference.py");
    let spec_path = work.join("spec.json");
    let out = work.join("reference.safetensors");
    let mut spec = spec;
    spec["out"] = json!(out.to_str().unwrap());
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let output = Command::new(python)
        .arg(&script)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "hf_reference.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut named = Tensor::read_safetensors(&out).unwrap();
    named.sort_by_key(|(k, _)| k.trim_start_matches("case").parse::<usize>().unwrap());
    named.into_iter().map(|(_, t)| t).collect()
}

/// A batch as `(input_ids, position_ids)` JSON and tensors.
struct Case {
    ids: Vec<Vec<i64>>,
    pos: Vec<Vec<i64>>,
}

impl Case {
    fn json(&self) -> serde_json::Value {
        json!({"input_ids": self.ids, "position_ids": self.pos})
    }

    fn tensors(&self) -> (Tensor, Tensor) {
        let t = |v: &Vec<Vec<i64>>| Tensor::from_slice2(v);
        (t(&self.ids), t(&self.pos))
    }
}

/// Deterministic token ids in 0..vocab.
fn ids(seed: i64, b: usize, t: usize, vocab: i64) -> Vec<Vec<i64>> {
    (0..b)
        .map(|r| {
            (0..t)
                .map(|c| (seed * 7919 + r as i64 * 104729 + c as i64 * 7_333) % vocab)
                .collect()
        })
        .collect()
}

/// Contiguous positions, and LOGO-style synthesised ones (chunks of three with jumps, not
/// starting at zero, reaching 65K), in one batch each.
fn cases(vocab: i64) -> Vec<Case> {
    let t = 12;
    let contiguous: Vec<Vec<i64>> = vec![(0..t as i64).collect(), (0..t as i64).collect()];
    let synthesised = vec![
        vec![0, 1, 2, 50, 51, 52, 300, 301, 302, 4000, 4001, 4002],
        vec![
            17, 18, 19, 900, 901, 902, 30000, 30001, 30002, 65530, 65531, 65532,
        ],
    ];
    vec![
        Case {
            ids: ids(1, 2, t, vocab),
            pos: contiguous,
        },
        Case {
            ids: ids(2, 2, t, vocab),
            pos: synthesised,
        },
    ]
}

/// max |a - b| over all elements (both moved to f32 CPU).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let d = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max();
    d.double_value(&[])
}

/// Our logits for each case, from the model at `dir`.
fn our_logits(model: &Llama, cases: &[Case]) -> Vec<Tensor> {
    let _guard = tch::no_grad_guard();
    cases
        .iter()
        .map(|c| {
            let (i, p) = c.tensors();
            model.forward(&i, &p).unwrap()
        })
        .collect()
}

/// Builds a random HF model from `config` with python, then compares our logits with HF's on
/// [`cases`]; returns the largest difference.
fn compare_with_hf(test: &str, model_class: &str, config: serde_json::Value) -> Option<f64> {
    let python = reference_python(test)?;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let vocab = config["vocab_size"].as_i64().unwrap();
    let cases = cases(vocab);
    let reference = run_reference(
        &python,
        work.path(),
        json!({
            "action": "make", "model_class": model_class, "dir": dir.to_str().unwrap(),
            "seed": 3, "config": config,
            "cases": cases.iter().map(Case::json).collect::<Vec<_>>(),
        }),
    );
    let model = Llama::load(&dir, None, Device::Cpu, Kind::Float).unwrap();
    let ours = our_logits(&model, &cases);
    let mut worst = 0f64;
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        let d = max_abs_diff(a, b);
        let scale = b.abs().max().double_value(&[]);
        println!("{test}: case {i}: max |ours - HF| = {d:.3e} (max |logit| {scale:.2})");
        assert!(
            scale > 0.5,
            "reference logits too small to be a test: {scale}"
        );
        worst = worst.max(d);
    }
    assert_within(&format!("{test}: max |ours - HF| logits"), worst, 1e-4);
    Some(worst)
}

fn tiny_config() -> serde_json::Value {
    json!({
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
        "max_position_embeddings": 4096,
    })
}

#[test]
fn hf_llama_logits_match_with_synthesised_positions() {
    compare_with_hf("hf_llama_default_rope", "llama", tiny_config());
}

#[test]
fn hf_llama_logits_match_llama3_rope_untied_bias() {
    let mut config = tiny_config();
    config["tie_word_embeddings"] = json!(false);
    config["attention_bias"] = json!(true);
    // hd 16, θ 500000: wavelengths 2π … 4.8e5, so with an original context of 64 (low 64,
    // high 16) all three llama3 regions (kept, smoothed, divided) occur.
    config["rope_parameters"] = json!({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    });
    compare_with_hf("hf_llama_llama3_rope", "llama", config);
}

#[test]
fn hf_llama_logits_match_linear_rope_explicit_head_dim() {
    let mut config = tiny_config();
    config["head_dim"] = json!(32);
    config["num_key_value_heads"] = json!(1);
    config["mlp_bias"] = json!(true);
    config["rope_parameters"] =
        json!({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0});
    compare_with_hf("hf_llama_linear_rope", "llama", config);
}

#[test]
fn hf_qwen2_logits_match() {
    let mut config = tiny_config();
    config["tie_word_embeddings"] = json!(false);
    compare_with_hf("hf_qwen2", "qwen2", config);
}

/// Writes a random tiny Llama folder (config.json + model.safetensors) without python.
fn write_random_model(dir: &Path, tied: bool) {
    let (v, h, i, layers, nh, nkv) = (96i64, 32i64, 64i64, 2, 4i64, 2i64);
    let hd = h / nh;
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "model_type": "llama", "vocab_size": v, "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": layers, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    tch::manual_seed(11);
    let mat =
        |o: i64, n: i64| Tensor::randn([o, n], (Kind::Float, Device::Cpu)) / (n as f64).sqrt();
    let norm = |n: i64| Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.1 + 1.0;
    let mut named = vec![
        ("model.embed_tokens.weight".to_string(), mat(v, h)),
        ("model.norm.weight".to_string(), norm(h)),
    ];
    if !tied {
        named.push(("lm_head.weight".to_string(), mat(v, h)));
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, t) in [
            ("self_attn.q_proj.weight", mat(nh * hd, h)),
            ("self_attn.k_proj.weight", mat(nkv * hd, h)),
            ("self_attn.v_proj.weight", mat(nkv * hd, h)),
            ("self_attn.o_proj.weight", mat(h, nh * hd)),
            ("mlp.gate_proj.weight", mat(i, h)),
            ("mlp.up_proj.weight", mat(i, h)),
            ("mlp.down_proj.weight", mat(h, i)),
            ("input_layernorm.weight", norm(h)),
            ("post_attention_layernorm.weight", norm(h)),
        ] {
            named.push((format!("{p}.{name}"), t));
        }
    }
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
}

/// Sets every LoRA B (and the embedding's A, zero at init) to random values so the adapter
/// changes the output.
fn randomize_adapters(model: &Llama) {
    tch::manual_seed(5);
    let _guard = tch::no_grad_guard();
    for (name, mut t) in model.lora_parameters() {
        if name.ends_with("lora_B.weight") || name.ends_with("lora_embedding_A") {
            let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.5;
            t.copy_(&r);
        }
    }
}

#[test]
fn zero_initialised_lora_leaves_logits_unchanged() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    write_random_model(&dir, true);
    let cases = cases(96);
    let base = Llama::load(&dir, None, Device::Cpu, Kind::Float).unwrap();
    let lora = LoraConfig::default().with_target_modules([
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "embed_tokens",
    ]);
    let adapted = Llama::load(&dir, Some(&lora), Device::Cpu, Kind::Float).unwrap();
    // 7 linear targets × 2 layers × (A, B) + embedding (A, B).
    assert_eq!(
        adapted
            .lora_var_store()
            .unwrap()
            .trainable_variables()
            .len(),
        30
    );
    for (a, b) in our_logits(&base, &cases)
        .iter()
        .zip(&our_logits(&adapted, &cases))
    {
        let d = max_abs_diff(a, b);
        println!("zero LoRA: max |base - adapted| = {d:.3e}");
        assert_within("zero-initialised LoRA vs base, max |logits|", d, 1e-6);
    }
}

#[test]
fn merge_lora_matches_unmerged_adapter_and_round_trips() {
    for tied in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("model");
        write_random_model(&dir, tied);
        let cases = cases(96);
        let lora = LoraConfig::default();
        let mut model = Llama::load(&dir, Some(&lora), Device::Cpu, Kind::Float).unwrap();
        randomize_adapters(&model);
        let base = Llama::load(&dir, None, Device::Cpu, Kind::Float).unwrap();
        let adapted = our_logits(&model, &cases);
        let moved = max_abs_diff(&adapted[1], &our_logits(&base, &cases)[1]);
        assert!(
            moved > 1e-2,
            "adapter should change the logits, moved {moved:e}"
        );

        // Save, then load into a fresh model: identical logits.
        let adapter_dir = work.path().join("adapter");
        save_adapter(&model, &adapter_dir, "tiny").unwrap();
        let reloaded = Llama::load(&dir, Some(&lora), Device::Cpu, Kind::Float).unwrap();
        load_adapter(&reloaded, &adapter_dir).unwrap();
        for (a, b) in adapted.iter().zip(&our_logits(&reloaded, &cases)) {
            assert_eq!(max_abs_diff(a, b), 0.0, "reloaded adapter differs");
        }

        merge_lora(&mut model).unwrap();
        assert!(model.lora_var_store().is_none());
        assert!(!model.config().tie_word_embeddings);
        for (i, (a, b)) in adapted.iter().zip(&our_logits(&model, &cases)).enumerate() {
            let d = max_abs_diff(a, b);
            println!("merge (tied {tied}): case {i}: max |adapter - merged| = {d:.3e}");
            assert_within(
                &format!("merge (tied {tied}): max |adapter - merged| logits"),
                d,
                1e-4,
            );
        }
    }
}

#[test]
fn saved_adapter_loads_in_peft_with_same_logits() {
    let test = "peft_adapter";
    let Some(python) = reference_python(test) else {
        return;
    };
    for tied in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("model");
        let mut config = tiny_config();
        config["tie_word_embeddings"] = json!(tied);
        let cases = cases(128);
        run_reference(
            &python,
            work.path(),
            json!({"action": "make", "dir": dir.to_str().unwrap(), "seed": 5, "config": config}),
        );
        let lora = LoraConfig::default().with_dropout(0.1);
        let model = Llama::load(&dir, Some(&lora), Device::Cpu, Kind::Float).unwrap();
        randomize_adapters(&model);
        let adapter = work.path().join("adapter");
        save_adapter(&model, &adapter, dir.to_str().unwrap()).unwrap();
        let reference = run_reference(
            &python,
            work.path(),
            json!({
                "action": "peft", "dir": dir.to_str().unwrap(),
                "adapter": adapter.to_str().unwrap(),
                "cases": cases.iter().map(Case::json).collect::<Vec<_>>(),
            }),
        );
        let base = Llama::load(&dir, None, Device::Cpu, Kind::Float).unwrap();
        let base_logits = our_logits(&base, &cases);
        for (i, ((a, b), c)) in our_logits(&model, &cases)
            .iter()
            .zip(&reference)
            .zip(&base_logits)
            .enumerate()
        {
            let d = max_abs_diff(a, b);
            let moved = max_abs_diff(b, c);
            println!(
                "{test} (tied {tied}): case {i}: max |ours - PEFT| = {d:.3e}, adapter moved \
                 logits by {moved:.3e}"
            );
            assert!(moved > 1e-2, "the adapter should change PEFT's logits");
            assert_within(
                &format!("{test} (tied {tied}): max |ours - PEFT| logits"),
                d,
                1e-4,
            );
        }
    }
}

/// candle's `quantized_llama` on the same GGUF, last-position logits [V] f32 for each prefix
/// length in `lens`. `CANDLE_DEQUANTIZE_ALL=1` makes its matmuls run on f32-dequantised weights
/// (otherwise they quantise the activations to Q8_1 too); candle reads the flag once per thread,
/// so it runs in a fresh thread.
fn candle_logits(gguf: &Path, prompt: &[u32], lens: &[usize]) -> Vec<Vec<f32>> {
    use candle_transformers::models::quantized_llama::ModelWeights;
    // Edition 2021: `set_var` is safe; only this test touches candle.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let gguf = gguf.to_path_buf();
    let prompt = prompt.to_vec();
    let lens = lens.to_vec();
    std::thread::spawn(move || {
        let device = candle_core::Device::Cpu;
        let mut file = std::fs::File::open(&gguf).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let mut model = ModelWeights::from_gguf(content, &mut file, &device).unwrap();
        lens.iter()
            .map(|&n| {
                model.clear_kv_cache();
                let x = candle_core::Tensor::new(&prompt[..n], &device)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = model.forward(&x, 0).unwrap(); // (1, V)
                logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    })
    .join()
    .unwrap()
}

#[test]
fn gguf_logits_match_candle_quantized_llama() {
    let gguf = logo_env::paths::default_model_path();
    if !gguf.is_file() {
        return logo_env::paths::fixture_missing(&format!("{} is absent", gguf.display()));
    }
    let model = Llama::load(&gguf, None, Device::Cpu, Kind::Float).unwrap();
    let cfg = model.config();
    let expected = logo_formats::hf_config::LlamaConfig::smollm2_135m();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.vocab_size,
            cfg.rope_theta,
            cfg.tie_word_embeddings,
        ),
        (
            expected.num_hidden_layers,
            expected.hidden_size,
            expected.num_attention_heads,
            expected.num_key_value_heads,
            expected.head_dim,
            expected.intermediate_size,
            expected.vocab_size,
            expected.rope_theta,
            expected.tie_word_embeddings,
        )
    );
    // "<|im_start|>user\nWhat is the capital of France?<|im_end|>" style ids; any valid ids do.
    let prompt: Vec<u32> = vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198];
    let lens = [1usize, 5, 12];
    let reference = candle_logits(&gguf, &prompt, &lens);
    let _guard = tch::no_grad_guard();
    for (n, theirs) in lens.iter().zip(&reference) {
        let ids: Vec<i64> = prompt[..*n].iter().map(|&x| x as i64).collect();
        let pos: Vec<i64> = (0..*n as i64).collect();
        let logits = model
            .forward(&Tensor::from_slice2(&[ids]), &Tensor::from_slice2(&[pos]))
            .unwrap();
        let last = logits.get(0).get(*n as i64 - 1);
        let theirs = Tensor::from_slice(theirs);
        let d = max_abs_diff(&last, &theirs);
        let scale = theirs.abs().max().double_value(&[]);
        let argmax = (
            last.argmax(0, false).int64_value(&[]),
            theirs.argmax(0, false).int64_value(&[]),
        );
        println!("gguf: prefix {n}: max |ours - candle| = {d:.3e} (max |logit| {scale:.2}), argmax {argmax:?}");
        // Same f32 weights, different kernels (libtorch vs gemm) and rope layouts (rotate-half
        // vs interleaved): only summation order differs, ~1e-6 relative per layer over 30
        // layers and logits ~20 → 1e-3 absolute is a bound a real bug (a wrong permute, eps or
        // θ) exceeds by orders of magnitude.
        assert_within(
            &format!("gguf prefix {n}: max |ours - candle| logits"),
            d,
            1e-3,
        );
        assert_eq!(argmax.0, argmax.1);
    }
}

#[test]
fn bf16_training_graph_reaches_only_the_adapters() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    write_random_model(&dir, true);
    let (ids, pos) = cases(96)[1].tensors();
    let f32_model = Llama::load(&dir, None, Device::Cpu, Kind::Float).unwrap();
    let reference = tch::no_grad(|| f32_model.forward(&ids, &pos).unwrap());
    let model = Llama::load(
        &dir,
        Some(&LoraConfig::default()),
        Device::Cpu,
        Kind::BFloat16,
    )
    .unwrap();
    let hidden = model.hidden_states(&ids, &pos, true).unwrap();
    assert_eq!(hidden.kind(), Kind::BFloat16);
    assert_eq!(hidden.size(), vec![2, 12, 32]);
    // The head on selected rows only: [N,H] → [N,V] f32.
    let rows = hidden
        .flatten(0, 1)
        .index_select(0, &Tensor::from_slice(&[3i64, 20]));
    let logits = model.lm_logits(&rows).unwrap();
    assert_eq!((logits.kind(), logits.size()), (Kind::Float, vec![2, 96]));
    // bf16 keeps ~3 significant digits: within 5% of the f32 logits' range.
    let full = tch::no_grad(|| model.forward(&ids, &pos).unwrap());
    let d = max_abs_diff(&full, &reference);
    let scale = reference.abs().max().double_value(&[]);
    println!("bf16: max |bf16 - f32| = {d:.3e} (max |logit| {scale:.2})");
    assert!(d <= 0.05 * scale, "bf16 logits too far from f32: {d}");

    logits.sum(Kind::Float).backward();
    let vs = model.lora_var_store().unwrap();
    for (name, t) in vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name} should be f32");
        let grad = t.grad();
        assert!(grad.defined(), "{name} has no gradient");
        // At init B = 0 and the embedding's A = 0, so only those receive a non-zero gradient.
        let norm = grad.abs().sum(Kind::Float).double_value(&[]);
        let expect_nonzero = name.ends_with("lora_B.weight") || name.ends_with("lora_embedding_A");
        assert_eq!(norm > 0.0, expect_nonzero, "{name}: |grad| = {norm}");
    }
    for (name, t) in model.base_var_store().variables() {
        assert!(!t.requires_grad(), "base weight {name} must be frozen");
    }
}
