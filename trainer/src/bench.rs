//! `logo-trainer bench`: time full LOGO training steps (forward, backward, AdamW) on a
//! synthetic sample of a given prompt length and M, and report step time, tokens/s, peak
//! memory and an estimated MFU as JSON. Also [`export_hf`], which writes a model (e.g. the
//! dequantised embedded GGUF) as a Hugging Face folder so that reference implementations
//! (transformers + PEFT, `bench/hf_peft_logo_step.py`) run on the same weights.
//!
//! FLOPs per step follow the usual accounting (Kaplan et al. 2020; PaLM, Chowdhery et al.
//! 2022, App. B): a forward pass costs 2·N FLOPs per token for N weights plus
//! 4·L·T·d_attn per token for attention scores and values (T: sequence length, causal half
//! counted); the backward pass through a frozen base computes activation gradients only,
//! about as many FLOPs as the forward (the base's weight gradients, the other half of a full
//! backward, are skipped; LoRA's are negligible). So a LoRA step ≈ 2× the forward.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{collate, Example};
use crate::decoupled::backward_decoupled;
use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::loss::LossConfig;
use crate::model::{Llama, LlamaConfig};
use crate::optim::{AdamW, AdamWConfig};
use crate::shared_prompt::backward_shared_prompt;
use crate::train_loop::{backward_joint, parse_device};

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
    /// Use the decoupled (memory flat in M) gradient ([`crate::decoupled`]).
    pub decoupled: bool,
    /// Per-layer activation checkpointing.
    #[serde(default)]
    pub checkpointing: bool,
    /// Compute the prompt once for the M + 1 responses ([`crate::shared_prompt`]).
    #[serde(default)]
    pub share_prompt: bool,
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
    /// Base-model weights.
    pub model_parameters: usize,
    /// Real tokens per step: (M + 1)·P + responses (the decoupled gradient runs each
    /// forward twice; tokens are counted once).
    pub tokens_per_step: usize,
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

/// Estimated FLOPs of one LoRA LOGO step on `example` (module doc).
pub fn step_flops(model: &LlamaConfig, params: usize, example: &Example) -> f64 {
    let p = example.prompt_ids.len();
    let seqs: Vec<usize> = std::iter::once(example.chosen_ids.len())
        .chain(example.rejected_ids.iter().map(Vec::len))
        .map(|r| p + r)
        .collect();
    let d_attn = (model.num_attention_heads * model.head_dim) as f64;
    let layers = model.num_hidden_layers as f64;
    let forward: f64 = seqs
        .iter()
        .map(|&t| {
            let t = t as f64;
            2.0 * params as f64 * t + 4.0 * layers * d_attn * t * t / 2.0
        })
        .sum();
    2.0 * forward
}

/// Peak resident set size of this process in bytes (`VmHWM` of /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs the benchmark. Errors: model loading, torch.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let device = parse_device(&cfg.device)?;
    let kind = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    tch::manual_seed(cfg.seed as i64);
    let model = Llama::load(&cfg.model, Some(&cfg.lora), device, kind)?;
    let params: usize = model
        .base_var_store()
        .variables()
        .values()
        .map(|t| t.numel())
        .sum();
    let example = synthetic_example(model.config().vocab_size, cfg);
    let batch = collate(std::slice::from_ref(&example), device)?;
    let vars: Vec<(String, Tensor)> = model
        .lora_var_store()
        .ok_or_else(|| TrainerError::Internal("bench model has no LoRA".into()))?
        .variables()
        .into_iter()
        .collect();
    let mut opt = AdamW::new(vars, AdamWConfig::default());
    let loss_cfg = LossConfig::default();
    let mut times = Vec::with_capacity(cfg.steps);
    let mut last_loss = f64::NAN;
    for i in 0..=cfg.steps {
        let start = Instant::now();
        let out = if cfg.share_prompt {
            backward_shared_prompt(
                &model,
                std::slice::from_ref(&example),
                &loss_cfg,
                device,
                cfg.checkpointing,
                i as i64,
                1.0,
            )?
        } else if cfg.decoupled {
            backward_decoupled(
                &model,
                std::slice::from_ref(&example),
                &loss_cfg,
                device,
                cfg.checkpointing,
                i as i64,
                1.0,
            )?
        } else {
            backward_joint(&model, &batch, &loss_cfg, cfg.checkpointing, i as i64, 1.0)?
        };
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
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let flops = step_flops(model.config(), params, &example);
    let achieved = flops / median / 1e12;
    Ok(BenchReport {
        config: cfg.clone(),
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        model_parameters: params,
        tokens_per_step: batch.tokens,
        step_seconds: times,
        median_step_seconds: median,
        tokens_per_second: batch.tokens as f64 / median,
        flops_per_step: flops,
        achieved_tflops: achieved,
        mfu: cfg.peak_tflops.map(|p| achieved / p),
        peak_rss_bytes: peak_rss_bytes(),
        last_loss,
    })
}

fn device_index(device: Device) -> i64 {
    match device {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

/// Writes `model` (HF folder or GGUF) as a Hugging Face Llama folder: `config.json` and
/// `model.safetensors` (f32, HF tensor names). With `adapter` (a PEFT LoRA folder, ours or any
/// on the same base), the adapter is merged into the base weights first (W + B·A·scaling).
/// Tokenizer files are not written. Errors: [`TrainerError::Io`], model or adapter loading.
pub fn export_hf(model_path: &Path, adapter: Option<&Path>, out: &Path) -> Result<()> {
    let model = match adapter {
        None => Llama::load(model_path, None, Device::Cpu, Kind::Float)?,
        Some(dir) => {
            let lora = crate::lora::read_adapter_config(dir)?;
            let mut model = Llama::load(model_path, Some(&lora), Device::Cpu, Kind::Float)?;
            crate::lora::load_adapter(&model, dir)?;
            crate::lora::merge_lora(&mut model)?;
            model
        }
    };
    let c = model.config();
    std::fs::create_dir_all(out).map_err(|e| TrainerError::io(out, e))?;
    let mut config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    if c.rope_scaling.is_some() {
        return Err(TrainerError::Config {
            key: "export-hf".into(),
            message: "models with rope_scaling are not exported yet".into(),
        });
    }
    if let Some(pad) = c.pad_token_id {
        config["pad_token_id"] = pad.into();
    }
    let path = out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json"))
        .map_err(|e| TrainerError::io(&path, e))?;
    let mut named: Vec<(String, Tensor)> = model.base_var_store().variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, out.join("model.safetensors"))?;
    Ok(())
}
