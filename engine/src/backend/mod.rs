//! Generation backends: who writes the policy's responses `π_θ(Q, C)` (LOGO section 3.2.2,
//! "Preference and Dis-preference Data Synthesis"), chosen by `generator.backend`:
//!
//! - [`InProcess`] (`in_process`, the default): the candle [`Policy`](crate::model::Policy)
//!   of `model`, one generation at a time;
//! - [`OpenAi`] (`openai`): any OpenAI-compatible server (vLLM, SGLang, llama.cpp's
//!   `llama-server`, TGI) through `POST /v1/completions` with the prompt as token ids, many
//!   requests in flight, retries and load balancing across endpoints.
//!
//! Both take the prompt as ids that logo tokenised and chat-templated itself, so the model
//! sees exactly the training prompt's tokens, and both report why a response ended
//! ([`FinishReason`]): a response that hit `max_new_tokens` must never be closed with an
//! end-of-turn token it did not generate.

mod in_process;
mod openai;

use std::sync::Arc;

pub use in_process::InProcess;
pub use openai::OpenAi;

use crate::config::{BackendKind, PipelineConfig};
use crate::error::{EngineError, Result};
use crate::model::{GenerateOptions, Policy};

/// Why a generation ended (OpenAI `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model generated a stop token (end of turn or end of text); not part of the ids.
    Stop,
    /// `max_new_tokens` (OpenAI `max_tokens`) was reached: the response is cut.
    Length,
}

impl FinishReason {
    /// `"stop"` or `"length"`, as OpenAI spells it (the `*_finish_reason` columns).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One response written by a [`GenerationBackend`].
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The response's ids `[n]` without the stop token: the generated ids in process, the
    /// server's text re-encoded as text by logo's tokenizer for `openai`.
    pub token_ids: Vec<u32>,
    /// The response text (control tokens other than the stop token kept as text).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The model that wrote it: the server's `model` field, or the policy's name in process.
    pub model: String,
    /// Requests retried before this one succeeded (429, 5xx, timeouts, connection errors).
    pub retries: u32,
}

/// Something that continues a chat-templated prompt. Implementations are shared by the stage's
/// worker threads (`Send + Sync`); the same prompt, options and model give the same response
/// (greedy, or seeded sampling where the server honours `seed`).
pub trait GenerationBackend: Send + Sync + std::fmt::Debug {
    /// Continues `prompt_ids` `[T]` until a stop token or `opts.max_new_tokens` tokens, with
    /// `opts.temperature`, `opts.top_p` and `opts.seed`. Blocks the calling thread.
    ///
    /// Errors: [`EngineError::Model`] (bad prompt, model failure, the server refused the
    /// request or no endpoint answered for `generator.openai.unavailable_timeout_s`),
    /// [`EngineError::Tokenizer`].
    fn complete(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<Completion>;

    /// The model name written to the `generator` column.
    fn name(&self) -> &str;

    /// The longest `prompt + max_new_tokens` the model accepts, tokens.
    fn max_positions(&self) -> usize;

    /// How many [`GenerationBackend::complete`] calls may usefully run at once (1 in process).
    fn max_in_flight(&self) -> usize;

    /// A JSON description for `generator_settings` (backend kind, endpoints); never secrets.
    fn describe(&self) -> serde_json::Value;
}

/// Builds the backend `cfg.generator.backend` names: [`InProcess`] over `policy` (which must
/// then be `Some`), or [`OpenAi`] after its start-up checks (`GET /v1/models` serves
/// `generator.openai.model`; `/tokenize` of a probe string agrees with `tokenizer`), sending
/// `stop_ids` (the chat template's, end of turn first) as `stop_token_ids`.
///
/// Errors: [`EngineError::Config`] (bad `generator.openai`, a missing API key variable, a
/// server that does not serve the model or tokenises differently, no endpoint answering).
pub fn from_config(
    cfg: &PipelineConfig,
    policy: Option<Arc<std::sync::Mutex<Policy>>>,
    tokenizer: &tokenizers::Tokenizer,
    stop_ids: Vec<u32>,
) -> Result<Arc<dyn GenerationBackend>> {
    match cfg.generator.backend {
        BackendKind::InProcess => {
            let policy = policy.ok_or_else(|| {
                EngineError::Internal("in_process backend without a policy".into())
            })?;
            Ok(Arc::new(InProcess::new(policy)))
        }
        BackendKind::Openai => {
            let o = cfg
                .generator
                .openai
                .as_ref()
                .ok_or_else(|| EngineError::Config {
                    key: "generator.openai".into(),
                    message: "required with generator.backend: openai".into(),
                })?;
            let max_positions = match o.context_length {
                Some(n) => n,
                None => crate::model::context_length_of(&cfg.model.path).map_err(|e| {
                    EngineError::Config {
                        key: "generator.openai.context_length".into(),
                        message: format!(
                            "not given, and not readable from model.path ({e}); set it to the \
                             served model's context length"
                        ),
                    }
                })?,
            };
            Ok(Arc::new(OpenAi::connect(
                o,
                tokenizer.clone(),
                stop_ids,
                max_positions,
            )?))
        }
    }
}
