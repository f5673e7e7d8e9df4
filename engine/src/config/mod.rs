//! `pipeline.yaml`: every LOGO hyper-parameter of the data construction, with the paper's
//! defaults (section 4.1 and Appendix D).
//!
//! The file mirrors [`RawPipelineConfig`]; unknown keys, wrong types and out-of-range values
//! stop the run before any work with an error naming the key ([`EngineError::Config`]).
//! Relative paths are resolved against the folder of the YAML file. Candle's `LlamaConfig →
//! Config` shape: the YAML deserialises into the raw struct, and one `TryFrom` checks every
//! range and yields the [`PipelineConfig`] that every stage and [`crate::pipeline::run`]
//! receive, so nothing downstream validates again.
//!
//! ```
//! let cfg = logo_engine::config::PipelineConfig::from_yaml_str(
//!     "source: {paths: [docs.jsonl]}\nmodel: {path: model.gguf}\n",
//!     std::path::Path::new("."),
//! ).unwrap();
//! assert_eq!(cfg.chunker.chunk_size, 512);
//! assert_eq!(cfg.sampler.num_chunks, 16);
//! assert_eq!(cfg.sampler.threshold, 6);
//! assert_eq!(cfg.sampler.num_negatives, 2);
//! ```

use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The whole pipeline as written in `pipeline.yaml` (not yet range-checked: see
/// [`PipelineConfig`]). Sections follow the stages in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipelineConfig {
    /// Seed of every random choice (chunk fill, position biases, sampling); default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Input documents.
    pub source: SourceConfig,
    /// The policy model (generator) and its tokenizer.
    pub model: ModelConfig,
    /// Question generation for raw documents (paper 4.1, second corpus).
    #[serde(default)]
    pub questions: QuestionsConfig,
    /// Chunking.
    #[serde(default)]
    pub chunker: ChunkerConfig,
    /// Importance scoring.
    #[serde(default)]
    pub scorer: ScorerConfig,
    /// Preference / dis-preference context selection.
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// Response generation.
    #[serde(default)]
    pub generator: GeneratorConfig,
    /// Positional indices synthesis.
    #[serde(default)]
    pub positions: PositionsConfig,
    /// Output.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Streaming: batch sizes and channel bounds.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

fn default_seed() -> u64 {
    42
}

/// Input documents: JSON Lines or Parquet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Files or glob patterns (`data/*.jsonl`); `.jsonl`/`.json` are JSON Lines, `.parquet`
    /// Parquet. Each record holds `context` or `input` (the document), optionally `question` or
    /// `instructions` (string or list) and `answer`, `answers` or `outputs` (string or list, same
    /// length as the questions).
    pub paths: Vec<PathBuf>,
    /// Documents per record batch; default 8.
    #[serde(default = "default_source_batch")]
    pub batch_size: usize,
}

fn default_source_batch() -> usize {
    8
}

/// The policy model π_θ used by question generation and the generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A GGUF file of a Llama-family model (the embedded default is SmolLM2-135M-Instruct), or
    /// a Hugging Face folder of a Llama or Mistral model (`config.json`, safetensors,
    /// `tokenizer.json`, `tokenizer_config.json` with its `chat_template`), run in f32.
    pub path: PathBuf,
    /// `tokenizer.json` (or a Hugging Face folder holding one and its chat template) to use
    /// instead of the model's own: the tokenizer rebuilt from the GGUF metadata, or the
    /// folder's.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Name written to the output's `generator` column; default: the GGUF's `general.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// A PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`; the
    /// trainer's output or any plain PEFT LoRA on the same base) folded into the weights at
    /// load time (see [`crate::adapter`]); default none.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// Weights in memory of a GGUF (a folder is always `f32`): `f32` (default, dequantised:
    /// LOGO prompts are long and answers short, and f32 prefill measured 2–3× faster than Q8_0
    /// on CPU), `q8_0` (requantised, fastest decode) or `native` (as stored). See
    /// `bench/results/generation.json`.
    #[serde(default)]
    pub weights: WeightFormat,
    /// CPU threads for the model's matrix products; default: every core (2 threads measured
    /// 1.7× faster prefill than 1 on a 2-core machine).
    #[serde(default = "all_cores")]
    pub threads: usize,
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How the GGUF weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// Requantised to Q8_0.
    Q8_0,
    /// Dequantised to f32.
    #[default]
    F32,
    /// As stored in the file.
    Native,
}

/// Question generation for documents without questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionsConfig {
    /// Generate a question and answer for rows without a question; default false (such rows are
    /// rejected).
    #[serde(default)]
    pub enabled: bool,
    /// Tokens of the passage shown to the model; default 384.
    #[serde(default = "default_passage_tokens")]
    pub passage_tokens: usize,
    /// Generation budget, tokens; default 96.
    #[serde(default = "default_question_tokens")]
    pub max_new_tokens: usize,
    /// Further attempts after an unparseable reply, each sampled with a derived seed at
    /// temperature 0.7 (the first is greedy); default 3.
    #[serde(default = "default_question_retries")]
    pub max_retries: usize,
}

fn default_passage_tokens() -> usize {
    384
}
fn default_question_tokens() -> usize {
    96
}
fn default_question_retries() -> usize {
    3
}

impl Default for QuestionsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            passage_tokens: default_passage_tokens(),
            max_new_tokens: default_question_tokens(),
            max_retries: default_question_retries(),
        }
    }
}

/// Chunker (paper 3.2.2: equal-length chunks of 512 tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    /// Tokens per chunk; default 512 (paper 4.1).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
}

fn default_chunk_size() -> usize {
    512
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            chunk_size: default_chunk_size(),
        }
    }
}

/// Entity scorer backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerBackend {
    /// Normalised, stemmed content terms with stop words removed (default).
    #[default]
    Lexical,
    /// A named-entity recogniser (closest to the paper's spaCy evaluator).
    Ner,
}

/// Importance scoring (paper 3.2.2, "Importance Scoring with Automatic Evaluator").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerConfig {
    /// Which entity extractor; default `lexical`.
    #[serde(default)]
    pub backend: ScorerBackend,
    /// Add the reference answer's entities to the question's, as the paper's code does;
    /// default true.
    #[serde(default = "yes")]
    pub use_answer: bool,
}

fn yes() -> bool {
    true
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            backend: ScorerBackend::default(),
            use_answer: true,
        }
    }
}

/// Preference / dis-preference data synthesis (paper 3.2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// N: chunks in the shared training context C'; default 16 (paper 4.1).
    #[serde(default = "default_num_chunks")]
    pub num_chunks: usize,
    /// δ: a chunk is relevant when its score s_i > δ; default 6 (paper 4.1).
    #[serde(default = "default_threshold")]
    pub threshold: i32,
    /// M: dis-preferred responses per sample; default 2 (paper 4.1).
    #[serde(default = "default_num_negatives")]
    pub num_negatives: usize,
}

fn default_num_chunks() -> usize {
    16
}
fn default_threshold() -> i32 {
    6
}
fn default_num_negatives() -> usize {
    2
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            num_chunks: default_num_chunks(),
            threshold: default_threshold(),
            num_negatives: default_num_negatives(),
        }
    }
}

/// Where the preferred response comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChosenSource {
    /// Generated by the policy from the relevant chunks (paper: P_preference).
    #[default]
    Generated,
    /// The source's reference answer (rows without one are skipped).
    Reference,
}

/// Response generation by the policy model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Generation budget per response, tokens; default 128.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (default) is greedy.
    #[serde(default)]
    pub temperature: f64,
    /// Nucleus sampling mass when temperature > 0; default 0.9.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Preferred response: `generated` (default) or `reference`.
    #[serde(default)]
    pub chosen: ChosenSource,
    /// System message of the chat template.
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
    /// Where responses are generated: `in_process` (default, the candle policy of `model`) or
    /// `openai` (an OpenAI-compatible server, settings in `generator.openai`).
    #[serde(default)]
    pub backend: BackendKind,
    /// A response that ended at `max_new_tokens` (finish reason `length`) is never closed with
    /// an end-of-turn token; per role, `skip` skips the sample, `regenerate` first retries it
    /// with a new derived seed (up to `max_regenerations` times), `keep` (rejected only) keeps
    /// it as written. Default `{chosen: regenerate, rejected: keep}`; see [`OnLength`].
    #[serde(default)]
    pub on_length: OnLength,
    /// Most regenerations of one response (after `length`, or a rejected response equal to the
    /// chosen one or to another rejected one); then the sample is skipped. Default 3.
    #[serde(default = "default_max_regenerations")]
    pub max_regenerations: usize,
    /// Temperature of a regeneration when `temperature` is lower (a greedy regeneration would
    /// repeat itself whatever its seed); default 0.8.
    #[serde(default = "default_regenerate_temperature")]
    pub regenerate_temperature: f64,
    /// The server(s) of `backend: openai`.
    #[serde(default)]
    pub openai: Option<OpenAiConfig>,
}

/// Which [`crate::backend::GenerationBackend`] writes the responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The candle policy loaded from `model` (the embedded default).
    #[default]
    InProcess,
    /// Any OpenAI-compatible server (vLLM, SGLang, llama.cpp's llama-server, TGI) through
    /// `POST /v1/completions` with the prompt as token ids.
    Openai,
}

pub(crate) fn default_true() -> bool {
    true
}
fn default_max_regenerations() -> usize {
    3
}
fn default_regenerate_temperature() -> f64 {
    0.8
}
fn default_max_new_tokens() -> usize {
    128
}
fn default_top_p() -> f64 {
    0.9
}
fn default_system_prompt() -> String {
    "You are a helpful assistant. Answer the question using only the given context.".into()
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new_tokens(),
            temperature: 0.0,
            top_p: default_top_p(),
            chosen: ChosenSource::default(),
            system_prompt: default_system_prompt(),
            backend: BackendKind::default(),
            on_length: OnLength::default(),
            max_regenerations: default_max_regenerations(),
            regenerate_temperature: default_regenerate_temperature(),
            openai: None,
        }
    }
}

/// Positional indices synthesis (paper Eq. 4, Appendix D).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsConfig {
    /// K: the virtual context length, tokens; every position id of prompt and responses is
    /// below it. Default 65536 (8× Llama-3's 8K, paper 4.1).
    #[serde(default = "default_target_length")]
    pub target_length: usize,
    /// Fraction of samples using continuous-chunk synthesis; the rest use sparse. Default 0.9
    /// (the paper's 9:1).
    #[serde(default = "default_continuous_ratio")]
    pub continuous_ratio: f64,
    /// How the continuous samples' per-chunk biases are drawn (`sorted`, the default;
    /// `paper`; `off`: plain `0..k`, no synthesis at all). See
    /// [`crate::stages::positions`].
    #[serde(default)]
    pub scheme: PositionScheme,
}

/// Draw of the continuous samples' biases (paper Eq. 4); `positions.scheme` in the YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionScheme {
    /// S − 1 uniform draws from `[0, K − R − k]`, sorted (order statistics), first bias 0:
    /// strictly increasing ids (the documented variant of Eq. 4; the default).
    #[default]
    Sorted,
    /// Eq. 4 as printed: segment c ≥ 1 of S gets its own bias `b_c ~ U(1, ⌊c·(K − R − k)/(S −
    /// 1)⌋)`, independently (the first segment 0): ids may repeat or go back between
    /// segments; written as `position_strategy` `paper`.
    Paper,
    /// No synthesis: every sample's ids are `0..k` (`position_strategy` `off`), the ablation
    /// without Eq. 4.
    Off,
}

fn default_target_length() -> usize {
    65536
}
fn default_continuous_ratio() -> f64 {
    0.9
}

impl Default for PositionsConfig {
    fn default() -> Self {
        Self {
            target_length: default_target_length(),
            continuous_ratio: default_continuous_ratio(),
            scheme: PositionScheme::default(),
        }
    }
}

/// Parquet output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Output folder, relative to the pipeline file's folder; default `out`.
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// Rows per Parquet row group; default 128.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// Input records (documents) per unit of work; default 16. Each unit's samples are one
    /// Parquet part, committed atomically; a rerun skips the finished units, and shards take
    /// units by index (`crate::sink`).
    #[serde(default = "default_unit_rows")]
    pub unit_rows: usize,
}

fn default_output() -> PathBuf {
    PathBuf::from("out")
}
fn default_row_group_size() -> usize {
    128
}
fn default_unit_rows() -> usize {
    16
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            output: default_output(),
            row_group_size: default_row_group_size(),
            unit_rows: default_unit_rows(),
        }
    }
}

/// Streaming limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Batches in flight between two stages; default 2. Memory is bounded by roughly
    /// `channel_capacity × stages × batch`.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
}

fn default_channel_capacity() -> usize {
    2
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            channel_capacity: default_channel_capacity(),
        }
    }
}

/// A [`RawPipelineConfig`] whose every range was checked, once, by its `TryFrom`: what the
/// stages and [`crate::pipeline::run`] take. Read-only: the sections are reached through
/// `Deref`; a changed configuration is a raw one ([`PipelineConfig::into_raw`]) validated
/// again. Serialises as the raw configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct PipelineConfig(RawPipelineConfig);

impl TryFrom<RawPipelineConfig> for PipelineConfig {
    type Error = EngineError;

    /// Checks every range ([`RawPipelineConfig::validate`]). Errors: [`EngineError::Config`]
    /// naming the key and the allowed values.
    fn try_from(raw: RawPipelineConfig) -> Result<Self> {
        raw.validate()?;
        Ok(PipelineConfig(raw))
    }
}

impl Deref for PipelineConfig {
    type Target = RawPipelineConfig;

    fn deref(&self) -> &RawPipelineConfig {
        &self.0
    }
}

impl PipelineConfig {
    /// Reads and validates a YAML file; relative paths inside (sources, model, output) are
    /// resolved against its folder.
    /// Errors: [`EngineError::Io`] (unreadable), [`EngineError::ConfigSyntax`] (not YAML,
    /// unknown key, wrong type), [`EngineError::Config`] (value out of range).
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml_str(&text, base)
    }

    /// Parses and validates YAML text; relative paths are resolved against `base`.
    /// Errors: [`EngineError::ConfigSyntax`], [`EngineError::Config`].
    pub fn from_yaml_str(text: &str, base: &Path) -> Result<Self> {
        // serde_yaml's message names the key path and the line and column itself.
        let mut raw: RawPipelineConfig =
            serde_yaml::from_str(text).map_err(|e| EngineError::ConfigSyntax(e.to_string()))?;
        raw.resolve_paths(base);
        raw.try_into()
    }

    /// The raw configuration, to change and validate again.
    pub fn into_raw(self) -> RawPipelineConfig {
        self.0
    }

    /// The raw configuration (what a manifest records).
    pub fn raw(&self) -> &RawPipelineConfig {
        &self.0
    }
}

impl RawPipelineConfig {
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            let expanded = expand_home(p);
            *p = if expanded.is_relative() {
                base.join(expanded)
            } else {
                expanded
            };
        };
        self.source.paths.iter_mut().for_each(fix);
        fix(&mut self.model.path);
        fix(&mut self.sink.output);
        if let Some(t) = self.model.tokenizer.as_mut() {
            fix(t);
        }
        if let Some(a) = self.model.adapter.as_mut() {
            fix(a);
        }
    }
}

pub use logo_env::paths::cache_dir;

/// Expands a leading `~` (home) and `${LOGO_CACHE}` ([`cache_dir`]) in a configured path.
fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("${LOGO_CACHE}") {
        return cache_dir().join(rest);
    }
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

mod on_length;
mod openai;
mod validate;

pub use on_length::{LengthAction, OnLength};
pub use openai::OpenAiConfig;

#[cfg(test)]
mod tests;
