//! A training run's configuration ([`TrainConfig`]): its defaults, written once here and
//! taken by `logo-trainer`'s options, and its range checks, run once before any work.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::loss::LossConfig;
use crate::optim::AdamWConfig;

/// Per-layer activation checkpointing of a run: decided from the memory (`auto`), or forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// On CUDA when the estimated activations exceed 80 % of the free device memory
    /// ([`crate::memory::needs_checkpointing`]); off on CPU.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl<'de> Deserialize<'de> for Checkpointing {
    /// `"auto"`, `"on"`, `"off"`, or a boolean (`trainer_state.json` of earlier runs:
    /// true = on, false = off).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Checkpointing::On),
            Raw::Bool(false) => Ok(Checkpointing::Off),
            Raw::Name(n) => match n.as_str() {
                "auto" => Ok(Checkpointing::Auto),
                "on" => Ok(Checkpointing::On),
                "off" => Ok(Checkpointing::Off),
                _ => Err(serde::de::Error::custom(format!(
                    "checkpointing: expected auto, on or off, got {n:?}"
                ))),
            },
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Folder of the engine's Parquet output.
    pub data: PathBuf,
    /// Base model: a Hugging Face folder (config.json, *.safetensors) or a GGUF file.
    pub model: PathBuf,
    /// Output folder.
    pub output: PathBuf,
    /// β, γ, λ of Eq. 2/3.
    pub loss: LossConfig,
    /// LoRA rank, alpha, dropout, targets.
    pub lora: LoraConfig,
    /// AdamW.
    pub optim: AdamWConfig,
    /// Optimizer steps; `None`: one pass over the data.
    pub max_steps: Option<usize>,
    /// Stop after this optimizer step, leaving `checkpoint-{step}/` to resume from, without the
    /// final adapter and `summary.json`; the learning-rate schedule still runs to `max_steps`.
    /// For runs cut into parts that each fit a time limit. `None`: run to the end.
    #[serde(default)]
    pub stop_after_step: Option<usize>,
    /// Samples per micro-batch on each rank (each is M + 1 sequences).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Gradient clipping norm (0 = off).
    pub max_grad_norm: f64,
    /// Checkpoint every this many steps (0 = only at the end).
    pub save_steps: usize,
    /// Rows in the shuffle buffer.
    pub shuffle_buffer: usize,
    /// Seed of data order, LoRA init and dropout.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Checkpoint folder to resume from.
    pub resume: Option<PathBuf>,
    /// Draw a progress bar.
    pub progress: bool,
    /// Compute the gradient one response at a time ([`crate::decoupled`]): activation memory
    /// independent of M for ~1.5× the compute. Without it and without `share_prompt`, all
    /// M + 1 sequences of the micro-batch form one batch (the joint backward).
    #[serde(default)]
    pub decoupled: bool,
    /// Per-layer activation checkpointing ([`Llama::backward_checkpointed`]): keep only layer
    /// inputs, recompute each layer in the backward (~1.3× compute, activation memory of one
    /// layer). `auto` (default): on CUDA when the estimated activations exceed 80 % of the
    /// free device memory ([`crate::memory`]), off on CPU.
    #[serde(default)]
    pub checkpointing: Checkpointing,
    /// Run each sample's prompt once for its M + 1 responses ([`crate::shared_prompt`]): one
    /// prompt forward and backward per sample instead of M + 1, activation memory almost flat
    /// in M. Excludes `decoupled`.
    #[serde(default)]
    pub share_prompt: bool,
}

impl Default for TrainConfig {
    /// The defaults of `logo-trainer train` (its `--help` shows these values): the paper's
    /// β 10, γ 3, λ 0.1 ([`LossConfig`]), LoRA r 8 on attention and embeddings
    /// ([`LoraConfig`]), AdamW at 1e-4 ([`AdamWConfig`]), one sample per micro-batch, cosine
    /// decay to 10 %, clipping at 1.0, the shared-prompt backward. `data` and `model` are
    /// empty: a run names them.
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            model: PathBuf::new(),
            output: PathBuf::from("adapter"),
            loss: LossConfig::default(),
            lora: LoraConfig::default(),
            optim: AdamWConfig::default(),
            max_steps: None,
            stop_after_step: None,
            batch_size: 1,
            grad_accum: 1,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            save_steps: 0,
            shuffle_buffer: 256,
            seed: 42,
            device: "auto".into(),
            resume: None,
            progress: true,
            decoupled: false,
            checkpointing: Checkpointing::Auto,
            share_prompt: true,
        }
    }
}

/// How a micro-batch's LoRA gradient is computed, chosen once per run from
/// [`TrainConfig::share_prompt`] and [`TrainConfig::decoupled`]; all three give the same
/// gradient (tests/grad_vs_peft.rs) and differ in compute and activation memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientMode {
    /// The M + 1 sequences `prompt ⧺ response` of each sample as one batch
    /// ([`crate::train_loop::backward_joint`]): activation memory grows with M.
    Joint,
    /// One response at a time ([`crate::decoupled`]): memory independent of M, ~1.5× compute.
    Decoupled,
    /// Each sample's prompt once for its M + 1 responses ([`crate::shared_prompt`]).
    SharedPrompt,
}

impl GradientMode {
    /// The mode `cfg` asks for (`share_prompt` wins over the joint backward; `validate`
    /// refuses `share_prompt` with `decoupled`).
    pub fn of(cfg: &TrainConfig) -> Self {
        if cfg.share_prompt {
            GradientMode::SharedPrompt
        } else if cfg.decoupled {
            GradientMode::Decoupled
        } else {
            GradientMode::Joint
        }
    }
}

/// Resolves `cpu`, `cuda`, `cuda:N`, `auto`. Errors: [`TrainerError::Config`] (`--device`).
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = |m: &str| TrainerError::Config {
        key: "--device".into(),
        message: m.into(),
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(bad(
                    "CUDA requested but libtorch sees no GPU (allowed: cpu, cuda, cuda:N, auto)",
                ))
            }
        }
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if (n as i64) < tch::Cuda::device_count() => Ok(Device::Cuda(n)),
            Some(n) => Err(bad(&format!(
                "cuda:{n} is not present ({} GPUs)",
                tch::Cuda::device_count()
            ))),
            None => Err(bad(&format!(
                "unknown device {other} (allowed: cpu, cuda, cuda:N, auto)"
            ))),
        },
    }
}

impl TrainConfig {
    /// Range checks. Errors: [`TrainerError::Config`] naming the option.
    pub fn validate(&self) -> Result<()> {
        // Written so that NaN fails every range check (a NaN compares false).
        let (l, o) = (&self.loss, &self.optim);
        require("--batch-size", self.batch_size >= 1, || {
            "must be >= 1".into()
        })?;
        require("--grad-accum", self.grad_accum >= 1, || {
            "must be >= 1".into()
        })?;
        require("--lr", o.lr > 0.0 && o.lr < 1.0, || {
            format!("must be in (0, 1) (got {})", o.lr)
        })?;
        require("--beta", l.beta > 0.0 && l.beta.is_finite(), || {
            format!("must be finite and > 0 (got {})", l.beta)
        })?;
        require("--gamma", l.gamma.is_finite(), || {
            format!("must be finite (got {})", l.gamma)
        })?;
        require("--sft-weight", non_negative(l.sft_weight), || {
            format!("must be finite and >= 0 (got {})", l.sft_weight)
        })?;
        require("--max-grad-norm", non_negative(self.max_grad_norm), || {
            format!(
                "must be finite and >= 0, 0 = no clipping (got {})",
                self.max_grad_norm
            )
        })?;
        require("--weight-decay", non_negative(o.weight_decay), || {
            format!("must be finite and >= 0 (got {})", o.weight_decay)
        })?;
        let unit = 0.0..1.0;
        require(
            "optim.beta1/optim.beta2",
            unit.contains(&o.beta1) && unit.contains(&o.beta2),
            || format!("must be in [0, 1) (got {}, {})", o.beta1, o.beta2),
        )?;
        require("optim.eps", o.eps > 0.0 && o.eps.is_finite(), || {
            format!("must be finite and > 0 (got {})", o.eps)
        })?;
        require(
            "--share-prompt",
            !(self.share_prompt && self.decoupled),
            || {
                "cannot be combined with --decoupled (both bound memory in M; --share-prompt also \
             computes the prompt once)"
                    .into()
            },
        )?;
        require("--max-steps", self.max_steps != Some(0), || {
            "must be >= 1".into()
        })?;
        require("--stop-after-step", self.stop_after_step != Some(0), || {
            "must be >= 1".into()
        })?;
        require(
            "--min-lr-ratio",
            (0.0..=1.0).contains(&self.min_lr_ratio),
            || format!("must be in [0, 1] (got {})", self.min_lr_ratio),
        )?;
        self.lora.validate()?;
        Ok(())
    }
}

/// `Ok` when `ok`, else [`TrainerError::Config`] naming `key` with `message()`.
fn require(key: &str, ok: bool, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(TrainerError::Config {
            key: key.into(),
            message: message(),
        })
    }
}

/// Finite and ≥ 0 (false for NaN).
fn non_negative(v: f64) -> bool {
    v >= 0.0 && v.is_finite()
}
