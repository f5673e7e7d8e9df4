//! `logo-trainer bench`: time full LOGO training steps (forward, backward, AdamW) on a
//! synthetic sample of a given prompt length and M, and report step time, tokens/s, peak
//! memory and an estimated MFU as JSON. Reference implementations (transformers + PEFT,
//! `bench/hf_peft_logo_step.py`) run on the same weights through
//! [`crate::peft::export_hf`].
//!
//! FLOPs per step follow the usual accounting (Kaplan et al. 2020; PaLM, Chowdhery et al.
//! 2022, App. B): a forward pass costs 2·N FLOPs per token for the N weights of the decoder
//! layers, plus 4·L·d_attn FLOPs per (query, key) pair for attention scores and values (a
//! causal sequence of T tokens has T²/2 pairs), plus 2·V·H per row whose logits are computed
//! (only the rows that predict a response token). The backward pass through a frozen base's
//! weight matrices (and the frozen head) computes activation gradients only, as many FLOPs as
//! their forward (the weight gradients, the other half of a full backward, are skipped; LoRA's
//! are negligible); attention has no weights, and its backward computes the gradients of both
//! operands of each of its two matrix products, 2× its forward. So a LoRA step ≈ 2× the
//! forward of the matrices and head + 3× the forward of attention. These are model FLOPs: the
//! decoupled gradient's second forward and checkpointing's recomputation are not counted (MFU
//! as in PaLM); with `gradient: shared_prompt` the prompt is counted once, since it is computed once.
//! Tokens per second count each real token of the sample once (the prompt and every response:
//! P + Σ|y|), whatever the gradient mode computes.
//!
//! On CUDA the report also gives the peak memory of PyTorch's caching allocator
//! (`torch.cuda.max_memory_allocated`, through the shim in `csrc/cuda_memory.cpp`).

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{parse_device, GradientMode};
use crate::data::{collate, Example};
use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::loss::LossConfig;
use logo_formats::hf_config::LlamaConfig;

use crate::model::Llama;
use crate::optim::{AdamW, AdamWConfig};

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Base model (HF folder or GGUF).
    pub model: PathBuf,
    /// Prompt tokens P of the sample.
    pub prompt_tokens: usize,
    /// Tokens of each response.
    pub response_tokens: usize,
    /// M.
    pub num_negatives: usize,
    /// Virtual context K the prompt's synthetic positions spread over.
    pub target_length: usize,
    /// Measured steps (one warm-up step runs first).
    pub steps: usize,
    /// `cpu`, `cuda`, `cuda:N`, `auto`.
    pub device: String,
    /// LoRA settings.
    pub lora: LoraConfig,
    /// Peak dense TFLOP/s of the device for MFU (e.g. 989 for an H100/H200 in bf16); none on
    /// CPU unless given.
    pub peak_tflops: Option<f64>,
    /// Seed of the synthetic sample.
    pub seed: u64,
    /// How the gradient is computed ([`GradientMode`]; `logo-trainer bench` defaults to
    /// `joint`, training to `shared_prompt`).
    pub gradient: GradientMode,
    /// Per-layer activation checkpointing; default off.
    #[serde(default)]
    pub checkpointing: bool,
    /// Use a random-weight model of this shape instead of `model`.
    #[serde(default)]
    pub random_model: Option<RandomModel>,
    /// dtype of the base weights and activations: `bf16`, `f16` or `f32`; default bf16 on CUDA,
    /// f32 on CPU. LoRA weights and the loss stay f32.
    #[serde(default)]
    pub dtype: Option<String>,
}

/// The shape of a random-weight Llama (HF `config.json` names); RoPE θ 500000, RMSNorm ε 1e-5,
/// untied embeddings, as Llama 3.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomModel {
    /// H.
    pub hidden_size: usize,
    /// SwiGLU width.
    pub intermediate_size: usize,
    /// L.
    pub num_hidden_layers: usize,
    /// nh.
    pub num_attention_heads: usize,
    /// nkv.
    pub num_key_value_heads: usize,
    /// V.
    pub vocab_size: usize,
}

impl RandomModel {
    /// A ~1B Llama: H 2048, 16 layers, 32 heads, 8 KV heads, SwiGLU 5632, V 32000 (0.85B
    /// weights).
    pub fn llama_1b() -> Self {
        RandomModel {
            hidden_size: 2048,
            intermediate_size: 5632,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            vocab_size: 32000,
        }
    }

    /// The validated configuration. Errors: [`TrainerError::Config`] (e.g. heads that do not
    /// divide H).
    pub fn config(&self) -> Result<LlamaConfig> {
        let json = serde_json::json!({
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": false,
        });
        serde_json::from_value(json).map_err(|e| TrainerError::Config {
            key: "random_model".into(),
            message: e.to_string(),
        })
    }
}

/// Resolves `bf16`, `f16`, `f32` (`None`: bf16 on CUDA, f32 on CPU). Errors:
/// [`TrainerError::Config`] (`dtype`).
pub fn parse_dtype(dtype: Option<&str>, device: Device) -> Result<Kind> {
    match dtype {
        None if device.is_cuda() => Ok(Kind::BFloat16),
        None => Ok(Kind::Float),
        Some("bf16") => Ok(Kind::BFloat16),
        Some("f16") => Ok(Kind::Half),
        Some("f32") => Ok(Kind::Float),
        Some(other) => Err(TrainerError::Config {
            key: "dtype".into(),
            message: format!("unknown dtype {other} (allowed: bf16, f16, f32)"),
        }),
    }
}

/// The measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// What was measured.
    pub config: BenchConfig,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// dtype of the base weights and activations.
    pub dtype: String,
    /// Base-model weights.
    pub model_parameters: usize,
    /// Real tokens per step, each once: P + Σ|y| (the prompt and the M + 1 responses).
    pub tokens_per_step: usize,
    /// Tokens the step's forward runs: with the shared-prompt gradient P + Σ|y| (the prompt once),
    /// otherwise (M + 1)·P + Σ|y| (the decoupled gradient runs each forward twice; counted
    /// once here).
    pub computed_tokens_per_step: usize,
    /// Seconds of each measured step.
    pub step_seconds: Vec<f64>,
    /// Median step time, seconds.
    pub median_step_seconds: f64,
    /// tokens_per_step / median step time.
    pub tokens_per_second: f64,
    /// Estimated FLOPs of one step (module doc).
    pub flops_per_step: f64,
    /// Achieved TFLOP/s.
    pub achieved_tflops: f64,
    /// achieved / peak, when a peak is known.
    pub mfu: Option<f64>,
    /// Peak resident set size of the process, bytes (Linux `VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// Peak bytes allocated by PyTorch's CUDA caching allocator during the run, model
    /// included (`torch.cuda.max_memory_allocated`); `None` on CPU.
    pub cuda_max_allocated_bytes: Option<u64>,
    /// Peak bytes the allocator held from CUDA (`torch.cuda.max_memory_reserved`).
    pub cuda_max_reserved_bytes: Option<u64>,
    /// Loss of the last step (sanity).
    pub last_loss: f64,
}

/// A deterministic synthetic LOGO sample: random prompt and responses, prompt positions in
/// continuous chunks of 256 tokens spread evenly over `target_length` (as the index
/// synthesizer's continuous strategy would), responses continuing after the prompt.
pub fn synthetic_example(vocab: usize, cfg: &BenchConfig) -> Example {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut ids =
        |n: usize| -> Vec<i64> { (0..n).map(|_| rng.random_range(3..vocab as i64)).collect() };
    let p = cfg.prompt_tokens;
    let chunks = p.div_ceil(256).max(1);
    let room = cfg
        .target_length
        .saturating_sub(p + cfg.response_tokens + 1);
    let gap = room / chunks;
    let prompt_positions = (0..p).map(|t| (t + (t / 256) * gap) as i64).collect();
    Example {
        sample_id: "bench".into(),
        prompt_ids: ids(p),
        prompt_positions,
        chosen_ids: ids(cfg.response_tokens),
        rejected_ids: (0..cfg.num_negatives)
            .map(|_| ids(cfg.response_tokens))
            .collect(),
    }
}

/// Estimated model FLOPs of one LoRA LOGO step on `example` (module doc): the M + 1 sequences
/// `prompt ⧺ response` each in full, or with `share_prompt` (the shared-prompt gradient) the prompt once and each response
/// attending to it; 2× the forward of weights and head, 3× the forward of attention.
pub fn step_flops(model: &LlamaConfig, example: &Example, share_prompt: bool) -> f64 {
    let (h, i) = (model.hidden_size as f64, model.intermediate_size as f64);
    let d_q = (model.num_attention_heads * model.head_dim) as f64;
    let d_kv = (model.num_key_value_heads * model.head_dim) as f64;
    let layers = model.num_hidden_layers as f64;
    // q, o: H·d_q each; k, v: H·d_kv each; gate, up, down: H·I each.
    let layer_weights = layers * (2.0 * h * d_q + 2.0 * h * d_kv + 3.0 * h * i);
    let per_token = 2.0 * layer_weights;
    let per_pair = 4.0 * layers * d_q;
    let p = example.prompt_ids.len() as f64;
    let responses: Vec<f64> = std::iter::once(example.chosen_ids.len())
        .chain(example.rejected_ids.iter().map(Vec::len))
        .map(|r| r as f64)
        .collect();
    let scored: f64 = responses.iter().sum();
    let logits = 2.0 * model.vocab_size as f64 * h * scored;
    // (weights, attention) forward FLOPs.
    let (weights, attention) = if share_prompt {
        let pairs: f64 = responses.iter().map(|&r| r * (p + r / 2.0)).sum();
        (per_token * (p + scored), per_pair * (p * p / 2.0 + pairs))
    } else {
        let tokens: f64 = responses.iter().map(|&r| p + r).sum();
        let pairs: f64 = responses.iter().map(|&r| (p + r) * (p + r) / 2.0).sum();
        (per_token * tokens, per_pair * pairs)
    };
    2.0 * (weights + logits) + 3.0 * attention
}

/// Peak bytes allocated and reserved by PyTorch's CUDA caching allocator on CUDA device
/// `index` since the process started (`torch.cuda.max_memory_allocated`,
/// `max_memory_reserved`). `None` when the shim was not built (no libtorch headers at build
/// time) or no CUDA allocator is registered.
pub fn cuda_peak_memory(index: usize) -> Option<(u64, u64)> {
    #[cfg(logo_cuda_memory)]
    {
        extern "C" {
            fn logo_cuda_peak_memory(
                device: std::ffi::c_int,
                allocated_peak: *mut i64,
                reserved_peak: *mut i64,
            ) -> std::ffi::c_int;
        }
        let (mut allocated, mut reserved) = (0i64, 0i64);
        // SAFETY: the shim writes two i64 and catches every C++ exception.
        let code = unsafe { logo_cuda_peak_memory(index as _, &mut allocated, &mut reserved) };
        (code == 0).then_some((allocated as u64, reserved as u64))
    }
    #[cfg(not(logo_cuda_memory))]
    {
        let _ = index;
        None
    }
}

/// Peak resident set size of this process in bytes (`VmHWM` of /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs the benchmark. Errors: [`TrainerError::Config`] (device, dtype, random model shape, a
/// size of 0) before any work; model loading, torch.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    check(cfg)?;
    let device = parse_device(&cfg.device)?;
    let kind = parse_dtype(cfg.dtype.as_deref(), device)?;
    let random = cfg.random_model.map(|r| r.config()).transpose()?;
    tch::manual_seed(cfg.seed as i64);
    let model = match random {
        Some(c) => Llama::random(c, Some(&cfg.lora), device, kind, cfg.seed as i64)?,
        None => Llama::load(&cfg.model, Some(&cfg.lora), device, kind)?,
    };
    let params: usize = model
        .base_var_store()
        .variables()
        .values()
        .map(|t| t.numel())
        .sum();
    let example = synthetic_example(model.config().vocab_size, cfg);
    let batch = collate(std::slice::from_ref(&example), device)?;
    let (times, last_loss) = time_steps(&model, &example, cfg)?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let shared = cfg.gradient == GradientMode::SharedPrompt;
    let flops = step_flops(model.config(), &example, shared);
    let real_tokens = example.prompt_ids.len()
        + example.chosen_ids.len()
        + example.rejected_ids.iter().map(Vec::len).sum::<usize>();
    let computed_tokens = if shared { real_tokens } else { batch.tokens };
    let cuda_peak = match device {
        Device::Cuda(i) => cuda_peak_memory(i),
        _ => None,
    };
    let achieved = flops / median / 1e12;
    Ok(BenchReport {
        config: cfg.clone(),
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        dtype: format!("{kind:?}"),
        model_parameters: params,
        tokens_per_step: real_tokens,
        computed_tokens_per_step: computed_tokens,
        step_seconds: times,
        median_step_seconds: median,
        tokens_per_second: real_tokens as f64 / median,
        flops_per_step: flops,
        achieved_tflops: achieved,
        mfu: cfg.peak_tflops.map(|p| achieved / p),
        peak_rss_bytes: peak_rss_bytes(),
        cuda_max_allocated_bytes: cuda_peak.map(|p| p.0),
        cuda_max_reserved_bytes: cuda_peak.map(|p| p.1),
        last_loss,
    })
}

/// The sizes, before any model loads. Errors: [`TrainerError::Config`] naming the key.
fn check(cfg: &BenchConfig) -> Result<()> {
    let bad = |key: &str, message: String| TrainerError::Config {
        key: key.into(),
        message,
    };
    for (key, v) in [
        ("prompt_tokens", cfg.prompt_tokens),
        ("response_tokens", cfg.response_tokens),
        ("num_negatives", cfg.num_negatives),
        ("steps", cfg.steps),
    ] {
        if v == 0 {
            return Err(bad(key, "must be >= 1".into()));
        }
    }
    if cfg.target_length < cfg.prompt_tokens + cfg.response_tokens {
        return Err(bad(
            "target_length",
            format!(
                "the virtual context K = {} must hold the prompt and a response ({} + {} tokens)",
                cfg.target_length, cfg.prompt_tokens, cfg.response_tokens
            ),
        ));
    }
    Ok(())
}

/// One warm-up and `cfg.steps` timed steps (forward, backward in the mode the flags ask for,
/// clipping, AdamW) on `example`: the step times, seconds (device synchronised), and the
/// last loss.
fn time_steps(model: &Llama, example: &Example, cfg: &BenchConfig) -> Result<(Vec<f64>, f64)> {
    let mode = cfg.gradient;
    let vars: Vec<(String, Tensor)> = model
        .lora_var_store()
        .ok_or_else(|| TrainerError::Internal("bench model has no LoRA".into()))?
        .variables()
        .into_iter()
        .collect();
    let mut opt = AdamW::new(vars, AdamWConfig::default());
    let loss_cfg = LossConfig::default();
    let device = model.device();
    let mut times = Vec::with_capacity(cfg.steps);
    let mut last_loss = f64::NAN;
    for i in 0..=cfg.steps {
        let start = Instant::now();
        let examples = std::slice::from_ref(example);
        let out = mode.backward(model, examples, &loss_cfg, cfg.checkpointing, i as i64, 1.0)?;
        opt.clip_grad_norm(1.0);
        opt.step(1e-4);
        opt.zero_grad();
        last_loss = out.loss.f_double_value(&[])?;
        if device.is_cuda() {
            tch::Cuda::synchronize(device_index(device));
        }
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((times, last_loss))
}

fn device_index(device: Device) -> i64 {
    match device {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model FLOPs by hand on a toy: H 4, I 8, L 1, nh 2, nkv 1 (hd 2), V 10; P 3, responses of
    /// 2 and 1 tokens. Layer weights 2·4·4 + 2·4·2 + 3·4·8 = 144, so 288 FLOPs per token;
    /// 4·1·4 = 16 per attention pair; logits 2·10·4·3 = 240. A step is 2× (weights + logits)
    /// plus 3× attention.
    /// Joint: weights 288·(5 + 4) = 2592, attention 16·25/2 + 16·16/2 = 328:
    /// 2·(2592 + 240) + 3·328 = 6648.
    /// Shared: weights 288·(3 + 2 + 1) = 1728, attention 16·9/2 + 16·2·(3 + 1) + 16·1·3.5 = 256:
    /// 2·(1728 + 240) + 3·256 = 4704.
    #[test]
    fn step_flops_by_hand() {
        let cfg = RandomModel {
            hidden_size: 4,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            vocab_size: 10,
        }
        .config()
        .unwrap();
        let example = Example {
            sample_id: "x".into(),
            prompt_ids: vec![1, 2, 3],
            prompt_positions: vec![0, 1, 2],
            chosen_ids: vec![4, 5],
            rejected_ids: vec![vec![6]],
        };
        assert_eq!(step_flops(&cfg, &example, false), 6648.0);
        assert_eq!(step_flops(&cfg, &example, true), 4704.0);
    }

    /// The ~1B preset has 0.85B weights (embedding and head 2·32000·2048, 16 layers of
    /// 2·2048² + 2·2048·512 + 3·2048·5632 plus two norms, final norm).
    #[test]
    fn llama_1b_preset_size() {
        let c = RandomModel::llama_1b().config().unwrap();
        let layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 5632 + 2 * 2048;
        let total = 2 * 32000 * 2048 + 16 * layer + 2048;
        assert_eq!(total, 852_559_872);
        assert_eq!((c.head_dim, c.num_key_value_heads), (64, 8));
    }

    /// Without a GPU the shim answers `None` instead of failing (its C++ exception is caught).
    #[test]
    fn cuda_peak_memory_without_a_gpu_is_none() {
        if tch::Cuda::is_available() {
            return logo_env::paths::not_applicable("a GPU is present");
        }
        assert_eq!(cuda_peak_memory(0), None);
    }
}
