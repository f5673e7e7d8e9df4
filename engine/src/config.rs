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

use logo_policy::config::{BackendKind, ModelConfig, OpenAiConfig};
use logo_policy::prompt::ResponsePrompt;

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
    /// The response prompt file (`{system, user}` with `{context}` and `{question}`, see
    /// [`ResponsePrompt`]), relative to the pipeline file; default logo's
    /// (`policy/prompts/response.yaml`: a short answer from the given context).
    #[serde(default)]
    pub prompt: Option<PathBuf>,
    /// Replaces the prompt's system message when set.
    #[serde(default)]
    pub system_prompt: Option<String>,
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

impl GeneratorConfig {
    /// The response prompt: the file of `prompt` (else the default) with `system_prompt`, when
    /// set, as its system message. Errors: [`EngineError::Io`] (unreadable file),
    /// [`EngineError::Config`] (`generator.prompt`: the file, its key and what is wrong).
    pub fn response_prompt(&self) -> Result<ResponsePrompt> {
        let mut p = match &self.prompt {
            Some(path) => ResponsePrompt::from_file(path)?,
            None => ResponsePrompt::default(),
        };
        if let Some(system) = &self.system_prompt {
            p.system = system.clone();
        }
        Ok(p)
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new_tokens(),
            temperature: 0.0,
            top_p: default_top_p(),
            chosen: ChosenSource::default(),
            prompt: None,
            system_prompt: None,
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
        if let Some(p) = self.generator.prompt.as_mut() {
            fix(p);
        }
    }
}

use logo_env::paths::cache_dir;

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
mod validate;

pub use on_length::{LengthAction, OnLength};

#[cfg(test)]
mod tests {
    //! Tests of `pipeline.yaml` parsing and validation.

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

    #[test]
    fn on_length_per_role_with_its_default_and_the_short_form() {
        let c = parse("").unwrap();
        assert_eq!(c.generator.on_length.chosen, LengthAction::Regenerate);
        assert_eq!(c.generator.on_length.rejected, LengthAction::Keep);
        let c = parse("generator: {on_length: skip}\n").unwrap();
        assert_eq!(
            c.generator.on_length,
            OnLength {
                chosen: LengthAction::Skip,
                rejected: LengthAction::Skip
            }
        );
        let c = parse("generator: {on_length: {rejected: regenerate}}\n").unwrap();
        assert_eq!(
            c.generator.on_length,
            OnLength {
                chosen: LengthAction::Regenerate,
                rejected: LengthAction::Regenerate
            }
        );
        let e = parse("generator: {on_length: {chosen: keep}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config key generator.on_length.chosen: keep is for rejected"),
            "{e}"
        );
        let e = parse("generator: {on_length: keep}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("generator.on_length.chosen"), "{e}");
        let e = parse("generator: {on_length: {rejectd: keep}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("on_length") && e.contains("expected skip"),
            "{e}"
        );
    }
}
