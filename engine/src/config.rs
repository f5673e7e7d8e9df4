//! `pipeline.yaml`: every LOGO hyper-parameter of the data construction, with the paper's
//! defaults (section 4.1 and Appendix D).
//!
//! The file mirrors [`PipelineConfig`]; unknown keys, wrong types and out-of-range values stop
//! the run before any work with an error naming the key ([`EngineError::Config`]). Relative paths
//! are resolved against the folder of the YAML file.
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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The whole pipeline. Sections follow the stages in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
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
}

fn default_passage_tokens() -> usize {
    384
}
fn default_question_tokens() -> usize {
    96
}

impl Default for QuestionsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            passage_tokens: default_passage_tokens(),
            max_new_tokens: default_question_tokens(),
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
    /// an end-of-turn token: `skip` (default) skips the sample, `regenerate` first retries it
    /// with a new derived seed, up to `max_regenerations` times.
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

/// What to do with a response that hit `max_new_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLength {
    /// Skip the sample (counted as `generator: response hit max_new_tokens`).
    #[default]
    Skip,
    /// Regenerate with a new derived seed, then skip.
    Regenerate,
}

/// An OpenAI-compatible completions server (or several serving the same model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URLs, e.g. `http://127.0.0.1:8080` (a trailing `/v1` is accepted); requests are
    /// balanced across them (least requests in flight first).
    pub endpoints: Vec<String>,
    /// The model the servers must serve (an id listed by `GET /v1/models`); sent as `model`.
    pub model: String,
    /// Name of the environment variable holding the API key (sent as `Authorization: Bearer`);
    /// the key itself is never logged, printed or written.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight across all endpoints; default 64 (enough to fill a vLLM batch).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Timeout of one request, seconds; default 600.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: f64,
    /// First retry delay after a 429, a 5xx, a timeout or a connection error, seconds; doubled
    /// each retry (with jitter) up to `backoff_max_s`; a `Retry-After` header wins. Default 0.5.
    #[serde(default = "default_backoff_initial_s")]
    pub backoff_initial_s: f64,
    /// Longest retry delay, seconds; default 30.
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: f64,
    /// Consecutive failures after which an endpoint leaves the rotation; default 3.
    #[serde(default = "default_failures_before_removal")]
    pub failures_before_removal: u32,
    /// Seconds an endpoint stays out of the rotation before it is tried again; default 10.
    #[serde(default = "default_probe_interval_s")]
    pub probe_interval_s: f64,
    /// The run fails when no endpoint has answered for this long, seconds; default 300.
    #[serde(default = "default_unavailable_timeout_s")]
    pub unavailable_timeout_s: f64,
    /// Check at start-up that the server's `/tokenize` agrees with logo's tokenizer on a probe
    /// string (llama-server, vLLM and SGLang have `/tokenize`); default true.
    #[serde(default = "default_true")]
    pub check_tokenizer: bool,
    /// Positions of the served model (prompt + response); default: `llama.context_length`
    /// of the GGUF at `model.path`.
    #[serde(default)]
    pub context_length: Option<usize>,
}

fn default_true() -> bool {
    true
}
fn default_max_regenerations() -> usize {
    3
}
fn default_regenerate_temperature() -> f64 {
    0.8
}
fn default_max_in_flight() -> usize {
    64
}
fn default_request_timeout_s() -> f64 {
    600.0
}
fn default_backoff_initial_s() -> f64 {
    0.5
}
fn default_backoff_max_s() -> f64 {
    30.0
}
fn default_failures_before_removal() -> u32 {
    3
}
fn default_probe_interval_s() -> f64 {
    10.0
}
fn default_unavailable_timeout_s() -> f64 {
    300.0
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
        let mut cfg: PipelineConfig =
            serde_yaml::from_str(text).map_err(|e| EngineError::ConfigSyntax(e.to_string()))?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

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

    /// Checks every range; the error names the key and the allowed values.
    /// Errors: [`EngineError::Config`].
    pub fn validate(&self) -> Result<()> {
        fn bad(key: &str, message: String) -> Result<()> {
            Err(EngineError::Config {
                key: key.into(),
                message,
            })
        }
        if self.source.paths.is_empty() {
            return bad("source.paths", "must list at least one file or glob".into());
        }
        if self.source.batch_size == 0 {
            return bad("source.batch_size", "must be >= 1 (got 0)".into());
        }
        if !(1..=64).contains(&self.model.threads) {
            return bad(
                "model.threads",
                format!("must be in 1..=64 (got {})", self.model.threads),
            );
        }
        if !(16..=32768).contains(&self.chunker.chunk_size) {
            return bad(
                "chunker.chunk_size",
                format!(
                    "must be in 16..=32768 tokens (got {})",
                    self.chunker.chunk_size
                ),
            );
        }
        if !(1..=1024).contains(&self.sampler.num_chunks) {
            return bad(
                "sampler.num_chunks",
                format!("must be in 1..=1024 (got {})", self.sampler.num_chunks),
            );
        }
        if self.sampler.threshold < 0 {
            return bad(
                "sampler.threshold",
                format!("must be >= 0 (got {})", self.sampler.threshold),
            );
        }
        if !(1..=64).contains(&self.sampler.num_negatives) {
            return bad(
                "sampler.num_negatives",
                format!("must be in 1..=64 (got {})", self.sampler.num_negatives),
            );
        }
        if !(1..=8192).contains(&self.generator.max_new_tokens) {
            return bad(
                "generator.max_new_tokens",
                format!(
                    "must be in 1..=8192 (got {})",
                    self.generator.max_new_tokens
                ),
            );
        }
        if !(0.0..=5.0).contains(&self.generator.temperature) {
            return bad(
                "generator.temperature",
                format!("must be in 0.0..=5.0 (got {})", self.generator.temperature),
            );
        }
        if !(self.generator.top_p > 0.0 && self.generator.top_p <= 1.0) {
            return bad(
                "generator.top_p",
                format!("must be in (0, 1] (got {})", self.generator.top_p),
            );
        }
        if self.generator.max_regenerations > 64 {
            return bad(
                "generator.max_regenerations",
                format!(
                    "must be in 0..=64 (got {})",
                    self.generator.max_regenerations
                ),
            );
        }
        if !(0.0..=5.0).contains(&self.generator.regenerate_temperature) {
            return bad(
                "generator.regenerate_temperature",
                format!(
                    "must be in 0.0..=5.0 (got {})",
                    self.generator.regenerate_temperature
                ),
            );
        }
        match (self.generator.backend, &self.generator.openai) {
            (BackendKind::Openai, None) => {
                return bad(
                    "generator.openai",
                    "required with generator.backend: openai (endpoints, model)".into(),
                )
            }
            (BackendKind::Openai, Some(o)) => o.validate()?,
            (BackendKind::InProcess, _) => {}
        }
        if self.questions.enabled && !(16..=8192).contains(&self.questions.passage_tokens) {
            return bad(
                "questions.passage_tokens",
                format!(
                    "must be in 16..=8192 (got {})",
                    self.questions.passage_tokens
                ),
            );
        }
        if !(1..=1024).contains(&self.questions.max_new_tokens) {
            return bad(
                "questions.max_new_tokens",
                format!(
                    "must be in 1..=1024 (got {})",
                    self.questions.max_new_tokens
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.positions.continuous_ratio) {
            return bad(
                "positions.continuous_ratio",
                format!(
                    "must be in 0.0..=1.0 (got {})",
                    self.positions.continuous_ratio
                ),
            );
        }
        // The real training sequence must fit in K: N chunks, template and question, and a
        // response of max_new_tokens (+1 for the end-of-turn token).
        let real =
            self.sampler.num_chunks * self.chunker.chunk_size + self.generator.max_new_tokens + 1;
        if self.positions.target_length < real || self.positions.target_length > u32::MAX as usize {
            return bad(
                "positions.target_length",
                format!(
                    "must be >= num_chunks × chunk_size + max_new_tokens + 1 = {real} and < 2^32 (got {})",
                    self.positions.target_length
                ),
            );
        }
        if self.sink.row_group_size == 0 {
            return bad("sink.row_group_size", "must be >= 1 (got 0)".into());
        }
        if self.sink.unit_rows == 0 {
            return bad("sink.unit_rows", "must be >= 1 (got 0)".into());
        }
        if !(1..=1024).contains(&self.runtime.channel_capacity) {
            return bad(
                "runtime.channel_capacity",
                format!(
                    "must be in 1..=1024 (got {})",
                    self.runtime.channel_capacity
                ),
            );
        }
        Ok(())
    }
}

impl OpenAiConfig {
    /// Checks the endpoints (non-empty, `http://` or `https://`) and every range.
    /// Errors: [`EngineError::Config`] naming the `generator.openai.*` key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(EngineError::Config {
                key: format!("generator.openai.{key}"),
                message,
            })
        };
        if self.endpoints.is_empty() {
            return bad("endpoints", "must list at least one base URL".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return bad(
                    &format!("endpoints[{i}]"),
                    format!("must start with http:// or https:// (got {e:?})"),
                );
            }
        }
        if self.model.trim().is_empty() {
            return bad("model", "must name the served model".into());
        }
        if !(1..=4096).contains(&self.max_in_flight) {
            return bad(
                "max_in_flight",
                format!("must be in 1..=4096 (got {})", self.max_in_flight),
            );
        }
        for (key, v) in [
            ("request_timeout_s", self.request_timeout_s),
            ("backoff_initial_s", self.backoff_initial_s),
            ("backoff_max_s", self.backoff_max_s),
            ("probe_interval_s", self.probe_interval_s),
            ("unavailable_timeout_s", self.unavailable_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(
                    key,
                    format!("must be a positive number of seconds (got {v})"),
                );
            }
        }
        if self.failures_before_removal == 0 {
            return bad("failures_before_removal", "must be >= 1 (got 0)".into());
        }
        if let Some(env) = &self.api_key_env {
            if env.is_empty() {
                return bad("api_key_env", "must name an environment variable".into());
            }
        }
        Ok(())
    }
}

pub use logo_schemas::paths::cache_dir;

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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n";

    fn parse(extra: &str) -> Result<PipelineConfig> {
        PipelineConfig::from_yaml_str(&format!("{MIN}{extra}"), Path::new("/base"))
    }

    #[test]
    fn paper_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.chunker.chunk_size, 512);
        assert_eq!(c.sampler.num_chunks, 16);
        assert_eq!(c.sampler.threshold, 6);
        assert_eq!(c.sampler.num_negatives, 2);
        assert_eq!(c.positions.target_length, 65536);
        assert_eq!(c.positions.continuous_ratio, 0.9);
        assert_eq!(c.seed, 42);
        assert_eq!(c.source.paths, vec![PathBuf::from("/base/d.jsonl")]);
        assert_eq!(c.model.adapter, None);
    }

    #[test]
    fn adapter_path_is_resolved_like_the_model() {
        let c = PipelineConfig::from_yaml_str(
            "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf, adapter: out/adapter}\n",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(c.model.path, PathBuf::from("/base/m.gguf"));
        assert_eq!(c.model.adapter, Some(PathBuf::from("/base/out/adapter")));
    }

    #[test]
    fn unknown_key_is_named_with_allowed_keys() {
        let e = parse("chunker: {chunk_sise: 10}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `chunk_sise`"), "{e}");
        assert!(e.contains("expected `chunk_size`"), "{e}");
        let e = parse("sampler: {delta: 3}\n").unwrap_err().to_string();
        assert!(e.contains("`delta`") && e.contains("`threshold`"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e = parse("sampler: {num_chunks: many}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("num_chunks") && e.contains("invalid type"),
            "{e}"
        );
        let e = parse("scorer: {backend: spacy}\n").unwrap_err().to_string();
        assert!(
            e.contains("unknown variant `spacy`") && e.contains("`lexical`"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let e = parse("sampler: {num_negatives: 0}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config key sampler.num_negatives: must be in 1..=64 (got 0)"
        );
        let e = parse("positions: {continuous_ratio: 1.5}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config key positions.continuous_ratio: must be in 0.0..=1.0 (got 1.5)"
        );
        let e = parse("positions: {target_length: 1000}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("positions.target_length") && e.contains("8321"),
            "{e}"
        );
        let e = parse("sampler: {threshold: -1}\n").unwrap_err().to_string();
        assert_eq!(e, "config key sampler.threshold: must be >= 0 (got -1)");
    }
}
