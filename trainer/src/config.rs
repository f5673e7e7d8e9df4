//! A training run's configuration: `train.yaml` (see `trainer/train.yaml`, every key with its
//! default) read into [`RawTrainConfig`], checked once by `TrainConfig::try_from` into the
//! [`TrainConfig`] that [`crate::train_loop`] takes, so nothing downstream validates again.
//!
//! The engine's shape (`logo_engine::config`, after candle's `LlamaConfig → Config`): serde
//! reads the file into the raw struct (unknown keys and wrong types refused, naming the key),
//! one `TryFrom` checks every range. `logo-trainer` lays its command-line flags over the file
//! (a flag given wins over the file, the file wins over the default); errors here name the
//! config key (`batch_size`, `loss.beta`), and only the binary names the flag.
//!
//! ```
//! use logo_trainer::config::{GradientMode, RawTrainConfig, TrainConfig};
//! let raw = RawTrainConfig::from_yaml_str(
//!     "data: out/data\nloss: {beta: 2.5, gamma: 0.25}\ngradient: decoupled\n",
//!     std::path::Path::new("/runs"),
//! ).unwrap();
//! let cfg = TrainConfig::try_from(raw).unwrap();
//! assert_eq!(cfg.data, std::path::Path::new("/runs/out/data"));
//! assert_eq!((cfg.loss.beta, cfg.loss.sft_weight), (2.5, 0.1));
//! assert_eq!(cfg.gradient, GradientMode::Decoupled);
//! assert_eq!(cfg.batch_size, 1);
//! ```

use std::ops::Deref;
use std::path::{Path, PathBuf};

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

/// How a micro-batch's LoRA gradient is computed (the `gradient` key); all three give the same
/// gradient (tests/grad_vs_peft.rs) and differ in compute and activation memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GradientMode {
    /// `shared_prompt` (default): each sample's prompt runs once for its M + 1 responses
    /// ([`crate::shared_prompt`]): one prompt forward and backward per sample instead of
    /// M + 1, activation memory almost flat in M.
    #[default]
    #[value(name = "shared_prompt")]
    SharedPrompt,
    /// `joint`: the M + 1 sequences `prompt ⧺ response` of each sample as one batch
    /// ([`crate::train_loop::backward_joint`]): activation memory grows with M.
    #[value(name = "joint")]
    Joint,
    /// `decoupled`: one response at a time ([`crate::decoupled`]): activation memory
    /// independent of M, ~1.5× the compute.
    #[value(name = "decoupled")]
    Decoupled,
}

impl GradientMode {
    /// The key's spelling: `shared_prompt`, `joint` or `decoupled`.
    pub fn as_str(self) -> &'static str {
        match self {
            GradientMode::SharedPrompt => "shared_prompt",
            GradientMode::Joint => "joint",
            GradientMode::Decoupled => "decoupled",
        }
    }
}

/// A training run as written in `train.yaml` (not yet range-checked: see [`TrainConfig`]).
/// Every key is optional and defaults to the value named here (`RawTrainConfig::default()`,
/// the paper's settings of section 4.1 where it gives one); unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTrainConfig {
    /// Folder of the engine's Parquet output (`logo-engine run`); required (default empty).
    pub data: PathBuf,
    /// Base model: a Hugging Face folder (`config.json`, `*.safetensors`) or a GGUF file;
    /// default the embedded SmolLM2-135M-Instruct GGUF,
    /// `${LOGO_CACHE}/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub model: PathBuf,
    /// Output folder (adapter, checkpoints, `metrics.jsonl`, `training.png`); default
    /// `adapter`.
    pub output: PathBuf,
    /// Checkpoint folder (`output/checkpoint-N`) to resume from; default none.
    pub resume: Option<PathBuf>,
    /// β, γ, λ of Eq. 2/3 and the objective ([`LossConfig`]).
    pub loss: LossConfig,
    /// LoRA rank, alpha, dropout, targets ([`LoraConfig`]).
    pub lora: LoraConfig,
    /// AdamW ([`AdamWConfig`]).
    pub optim: AdamWConfig,
    /// Optimizer steps; default none: one pass over the data.
    pub max_steps: Option<usize>,
    /// Stop after this optimizer step, leaving `checkpoint-{step}/` to resume from, without the
    /// final adapter and `summary.json`; the learning-rate schedule still runs to `max_steps`.
    /// For runs cut into parts that each fit a time limit. Default none: run to the end.
    pub stop_after_step: Option<usize>,
    /// Samples per micro-batch on each rank (each is M + 1 sequences); default 1.
    pub batch_size: usize,
    /// Micro-batches per optimizer step; default 1.
    pub grad_accum: usize,
    /// Linear warm-up steps; default 0.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak (cosine decay); default 0.1.
    pub min_lr_ratio: f64,
    /// Gradient clipping norm (0 = off); default 1.0.
    pub max_grad_norm: f64,
    /// Checkpoint every this many steps (0 = only at the end); default 0.
    pub save_steps: usize,
    /// Rows in the shuffle buffer; default 256.
    pub shuffle_buffer: usize,
    /// Seed of data order, LoRA init and dropout; default 42.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when libtorch sees a GPU); default `auto`.
    pub device: String,
    /// Draw a progress bar; default true.
    pub progress: bool,
    /// How the gradient is computed ([`GradientMode`]): `shared_prompt` (default), `joint`
    /// or `decoupled`.
    pub gradient: GradientMode,
    /// Per-layer activation checkpointing ([`crate::model::Llama::backward_checkpointed`]):
    /// keep only layer inputs, recompute each layer in the backward (~1.3× compute, activation
    /// memory of one layer). `auto` (default): on CUDA when the estimated activations exceed
    /// 80 % of the free device memory ([`crate::memory`]), off on CPU; `on`; `off`.
    pub checkpointing: Checkpointing,
}

impl Default for RawTrainConfig {
    /// The defaults of `logo-trainer train` (its `--help` shows these values): the paper's
    /// β 10, γ 3, λ 0.1 ([`LossConfig`]), LoRA r 8 on attention and embeddings
    /// ([`LoraConfig`]), AdamW at 1e-4 ([`AdamWConfig`]), one sample per micro-batch, cosine
    /// decay to 10 %, clipping at 1.0, the shared-prompt gradient, the embedded model.
    /// `data` is empty: a run names it.
    fn default() -> Self {
        RawTrainConfig {
            data: PathBuf::new(),
            model: logo_env::paths::default_model_path(),
            output: PathBuf::from("adapter"),
            resume: None,
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
            progress: true,
            gradient: GradientMode::SharedPrompt,
            checkpointing: Checkpointing::Auto,
        }
    }
}

impl RawTrainConfig {
    /// Reads a YAML file; relative paths inside (`data`, `model`, `output`, `resume`) are
    /// resolved against its folder, `~` and `${LOGO_CACHE}` expanded. Not range-checked: see
    /// [`TrainConfig::try_from`]. Errors: [`TrainerError::Io`] (unreadable),
    /// [`TrainerError::Config`] (not YAML, unknown key, wrong type; the key is named).
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml_str(&text, base).map_err(|e| match e {
            TrainerError::Config { key, message } => TrainerError::Config {
                key,
                message: format!("{message} (in {})", path.display()),
            },
            e => e,
        })
    }

    /// Parses YAML text; relative paths are resolved against `base`, `~` and `${LOGO_CACHE}`
    /// expanded. Errors: [`TrainerError::Config`] naming the key (dotted, `lora.r`) for an
    /// unknown key or a wrong type, `(file)` when the text is not a YAML mapping.
    pub fn from_yaml_str(text: &str, base: &Path) -> Result<Self> {
        let mut raw: RawTrainConfig = serde_yaml::from_str(text).map_err(syntax_error)?;
        let fix = |p: &mut PathBuf| {
            let expanded = expand_home(p);
            *p = if expanded.is_relative() && !expanded.as_os_str().is_empty() {
                base.join(expanded)
            } else {
                expanded
            };
        };
        fix(&mut raw.data);
        fix(&mut raw.model);
        fix(&mut raw.output);
        if let Some(r) = raw.resume.as_mut() {
            fix(r);
        }
        Ok(raw)
    }

    /// The configuration as YAML, every key written (what `logo-trainer --print-config`
    /// prints); [`RawTrainConfig::from_yaml_str`] reads it back equal.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a RawTrainConfig serialises")
    }

    /// Checks every range; the error names the key and what is allowed. Run by
    /// `TrainConfig::try_from`, the one place a configuration is validated.
    /// Errors: [`TrainerError::Config`].
    pub fn validate(&self) -> Result<()> {
        // Written so that NaN fails every range check (a NaN compares false).
        let (l, o) = (&self.loss, &self.optim);
        require("data", !self.data.as_os_str().is_empty(), || {
            "required: the output folder of `logo-engine run` (*.parquet)".into()
        })?;
        require("batch_size", self.batch_size >= 1, || "must be >= 1".into())?;
        require("grad_accum", self.grad_accum >= 1, || "must be >= 1".into())?;
        require("optim.lr", o.lr > 0.0 && o.lr < 1.0, || {
            format!("must be in (0, 1) (got {})", o.lr)
        })?;
        require("loss.beta", l.beta > 0.0 && l.beta.is_finite(), || {
            format!("must be finite and > 0 (got {})", l.beta)
        })?;
        require("loss.gamma", l.gamma.is_finite(), || {
            format!("must be finite (got {})", l.gamma)
        })?;
        require("loss.sft_weight", non_negative(l.sft_weight), || {
            format!("must be finite and >= 0 (got {})", l.sft_weight)
        })?;
        require("max_grad_norm", non_negative(self.max_grad_norm), || {
            format!(
                "must be finite and >= 0, 0 = no clipping (got {})",
                self.max_grad_norm
            )
        })?;
        require("optim.weight_decay", non_negative(o.weight_decay), || {
            format!("must be finite and >= 0 (got {})", o.weight_decay)
        })?;
        let unit = 0.0..1.0;
        require("optim.beta1", unit.contains(&o.beta1), || {
            format!("must be in [0, 1) (got {})", o.beta1)
        })?;
        require("optim.beta2", unit.contains(&o.beta2), || {
            format!("must be in [0, 1) (got {})", o.beta2)
        })?;
        require("optim.eps", o.eps > 0.0 && o.eps.is_finite(), || {
            format!("must be finite and > 0 (got {})", o.eps)
        })?;
        require("max_steps", self.max_steps != Some(0), || {
            "must be >= 1".into()
        })?;
        require("stop_after_step", self.stop_after_step != Some(0), || {
            "must be >= 1".into()
        })?;
        require(
            "min_lr_ratio",
            (0.0..=1.0).contains(&self.min_lr_ratio),
            || format!("must be in [0, 1] (got {})", self.min_lr_ratio),
        )?;
        require("device", device_syntax_ok(&self.device), || {
            format!(
                "unknown device {} (allowed: cpu, cuda, cuda:N, auto)",
                self.device
            )
        })?;
        self.lora.validate()?;
        Ok(())
    }
}

/// A [`RawTrainConfig`] whose every range was checked, once, by its `TryFrom`: what
/// [`crate::train_loop::train`] and the [`crate::train_loop::Trainer`] take. Read-only: the
/// keys are reached through `Deref`; a changed configuration is a raw one
/// ([`TrainConfig::into_raw`]) validated again. Serialises as the raw configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct TrainConfig(RawTrainConfig);

impl TryFrom<RawTrainConfig> for TrainConfig {
    type Error = TrainerError;

    /// Checks every range ([`RawTrainConfig::validate`]). Errors: [`TrainerError::Config`]
    /// naming the key and the allowed values.
    fn try_from(raw: RawTrainConfig) -> Result<Self> {
        raw.validate()?;
        Ok(TrainConfig(raw))
    }
}

impl Deref for TrainConfig {
    type Target = RawTrainConfig;

    fn deref(&self) -> &RawTrainConfig {
        &self.0
    }
}

impl TrainConfig {
    /// Reads and validates a YAML file ([`RawTrainConfig::from_path`], then `try_from`).
    /// Errors: [`TrainerError::Io`], [`TrainerError::Config`].
    pub fn from_path(path: &Path) -> Result<Self> {
        RawTrainConfig::from_path(path)?.try_into()
    }

    /// The raw configuration, to change and validate again.
    pub fn into_raw(self) -> RawTrainConfig {
        self.0
    }

    /// The raw configuration (what `trainer_state.json` records).
    pub fn raw(&self) -> &RawTrainConfig {
        &self.0
    }
}

/// The `config` of a `trainer_state.json`, also of runs before the `gradient` key: their
/// booleans `share_prompt` and `decoupled` become `gradient` (`share_prompt` → `shared_prompt`,
/// else `decoupled` → `decoupled`, else `joint`). Errors: the deserializer's, naming the key.
pub fn deserialize_state_config<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<RawTrainConfig, D::Error> {
    let mut value = serde_json::Value::deserialize(d)?;
    if let Some(map) = value.as_object_mut() {
        let share = map.remove("share_prompt").and_then(|v| v.as_bool());
        let decoupled = map.remove("decoupled").and_then(|v| v.as_bool());
        if (share.is_some() || decoupled.is_some()) && !map.contains_key("gradient") {
            let mode = if share == Some(true) {
                GradientMode::SharedPrompt
            } else if decoupled == Some(true) {
                GradientMode::Decoupled
            } else {
                GradientMode::Joint
            };
            map.insert("gradient".into(), mode.as_str().into());
        }
    }
    RawTrainConfig::deserialize(value).map_err(serde::de::Error::custom)
}

/// A serde_yaml error as [`TrainerError::Config`] naming the dotted key it concerns
/// (`lora.rank`): an unknown key names itself, a wrong type the key holding it.
fn syntax_error(e: serde_yaml::Error) -> TrainerError {
    let text = e.to_string();
    // serde_yaml writes `path.to.parent: message at line L column C` (no path at the top).
    let (path, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (Some(p.to_string()), m.to_string()),
        _ => (None, text.clone()),
    };
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'));
    let (key, message) = match (unknown, path) {
        (Some((field, rest)), Some(p)) => (format!("{p}.{field}"), format!("unknown key{rest}")),
        (Some((field, rest)), None) => (field.to_string(), format!("unknown key{rest}")),
        (None, Some(p)) => (p, message),
        (None, None) => ("(file)".to_string(), message),
    };
    TrainerError::Config { key, message }
}

/// Expands a leading `~` (home) and `${LOGO_CACHE}` ([`logo_env::paths::cache_dir`]).
fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("${LOGO_CACHE}") {
        return logo_env::paths::cache_dir().join(rest);
    }
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// `cpu`, `auto`, `cuda` or `cuda:N` (whether that GPU exists is [`parse_device`]'s check).
fn device_syntax_ok(s: &str) -> bool {
    matches!(s, "cpu" | "auto" | "cuda")
        || s.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// Resolves `cpu`, `cuda`, `cuda:N`, `auto` to a libtorch device. Errors:
/// [`TrainerError::Config`] (key `device`) for an unknown name, CUDA without a GPU, or an
/// absent `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = |m: &str| TrainerError::Config {
        key: "device".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: TrainerError) -> String {
        match e {
            TrainerError::Config { key, .. } => key,
            e => panic!("expected a config error, got {e}"),
        }
    }

    /// `trainer/train.yaml` writes every key with its default: it reads back as
    /// `RawTrainConfig::default()` with its two paths.
    #[test]
    fn the_example_file_holds_the_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let raw = RawTrainConfig::from_path(&dir.join("train.yaml")).unwrap();
        let want = RawTrainConfig {
            data: dir.join("../out/data"),
            output: dir.join("../out/adapter"),
            ..RawTrainConfig::default()
        };
        assert_eq!(raw, want);
        TrainConfig::try_from(raw).unwrap();
    }

    /// File → validated → file: the YAML written back reads as the same configuration, every
    /// key set away from its default included.
    #[test]
    fn a_config_file_round_trips() {
        let text = "data: /runs/data\nmodel: /models/m.gguf\noutput: /runs/out\n\
                    resume: /runs/out/checkpoint-40\n\
                    loss: {beta: 2.5, gamma: 0.25, sft_weight: 0.0, objective: simpo}\n\
                    lora: {r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: [q_proj]}\n\
                    optim: {lr: 5.0e-4, beta1: 0.8, beta2: 0.99, eps: 1.0e-6, weight_decay: 0.01}\n\
                    max_steps: 80\nstop_after_step: 40\nbatch_size: 2\ngrad_accum: 4\n\
                    warmup_steps: 5\nmin_lr_ratio: 0.5\nmax_grad_norm: 0.0\nsave_steps: 10\n\
                    shuffle_buffer: 8\nseed: 7\ndevice: cpu\nprogress: false\n\
                    gradient: decoupled\ncheckpointing: on\n";
        let cfg =
            TrainConfig::try_from(RawTrainConfig::from_yaml_str(text, Path::new("/")).unwrap())
                .unwrap();
        assert_eq!(cfg.loss.objective, crate::loss::Objective::Simpo);
        assert_eq!(cfg.lora.target_modules, ["q_proj"]);
        assert_eq!((cfg.max_steps, cfg.stop_after_step), (Some(80), Some(40)));
        assert_eq!(cfg.gradient, GradientMode::Decoupled);
        assert_eq!(cfg.checkpointing, Checkpointing::On);
        let written = cfg.raw().to_yaml();
        let again = TrainConfig::try_from(
            RawTrainConfig::from_yaml_str(&written, Path::new("/x")).unwrap(),
        )
        .unwrap();
        assert_eq!(again, cfg);
        assert_eq!(again.raw().to_yaml(), written);
    }

    /// An unknown or mistyped key, at the top or in a section, is an error naming the dotted
    /// key; so is a wrong type.
    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let base = Path::new(".");
        for (text, key, says) in [
            ("batch_sise: 2\n", "batch_sise", "unknown key"),
            ("lora: {rank: 8}\n", "lora.rank", "unknown key"),
            (
                "loss: {beta: 1, lambda: 0.1}\n",
                "loss.lambda",
                "unknown key",
            ),
            (
                "optim: {learning_rate: 1}\n",
                "optim.learning_rate",
                "unknown key",
            ),
            ("share_prompt: true\n", "share_prompt", "unknown key"),
            ("batch_size: two\n", "batch_size", "invalid type"),
            ("gradient: shared\n", "gradient", "unknown variant"),
        ] {
            let e = RawTrainConfig::from_yaml_str(text, base).unwrap_err();
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("config key {key}: {says}")),
                "{text:?}: {message}"
            );
        }
    }

    /// Out-of-range values name their key (no flag: that is the binary's business).
    #[test]
    fn ranges_name_the_key() {
        let ok = RawTrainConfig {
            data: "d".into(),
            ..RawTrainConfig::default()
        };
        type Set = fn(&mut RawTrainConfig);
        let cases: [(&str, Set); 9] = [
            ("data", |c| c.data = PathBuf::new()),
            ("batch_size", |c| c.batch_size = 0),
            ("grad_accum", |c| c.grad_accum = 0),
            ("loss.beta", |c| c.loss.beta = 0.0),
            ("loss.sft_weight", |c| c.loss.sft_weight = -1.0),
            ("optim.beta2", |c| c.optim.beta2 = 1.0),
            ("max_steps", |c| c.max_steps = Some(0)),
            ("device", |c| c.device = "gpu".into()),
            ("lora.r", |c| c.lora.r = 0),
        ];
        for (key, set) in cases {
            let mut raw = ok.clone();
            set(&mut raw);
            assert_eq!(key_of(TrainConfig::try_from(raw).unwrap_err()), key);
        }
    }

    /// A `trainer_state.json` of a run before the `gradient` key holds `share_prompt` and
    /// `decoupled`: they read as `gradient`.
    #[test]
    fn an_earlier_state_maps_its_booleans_onto_gradient() {
        #[derive(Deserialize)]
        struct State {
            #[serde(deserialize_with = "deserialize_state_config")]
            config: RawTrainConfig,
        }
        let state = |share: bool, decoupled: bool| {
            let mut value = serde_json::to_value(RawTrainConfig::default()).unwrap();
            let map = value.as_object_mut().unwrap();
            map.remove("gradient");
            map.insert("share_prompt".into(), share.into());
            map.insert("decoupled".into(), decoupled.into());
            map.insert("checkpointing".into(), false.into());
            let json = serde_json::json!({ "config": value }).to_string();
            serde_json::from_str::<State>(&json).unwrap().config
        };
        assert_eq!(state(true, false).gradient, GradientMode::SharedPrompt);
        assert_eq!(state(false, true).gradient, GradientMode::Decoupled);
        assert_eq!(state(false, false).gradient, GradientMode::Joint);
        assert_eq!(state(false, false).checkpointing, Checkpointing::Off);
    }
}
