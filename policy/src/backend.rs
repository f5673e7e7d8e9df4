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
//! ([`FinishReason`]) and with which stop token ([`Completion::stop_token_id`]): a response
//! is closed with exactly the stop token the model wrote, never with one it did not generate
//! (an end of turn after a response cut at `max_new_tokens`, or the template's end of turn
//! after a response the model ended with its end-of-sequence token).

mod in_process;
mod openai;

use std::sync::Arc;

pub use in_process::InProcess;
pub use openai::OpenAi;

use crate::config::{BackendKind, ModelConfig, OpenAiConfig};
use crate::error::{PolicyError, Result};
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
    /// The id of the stop token that ended it (not part of `token_ids`): `Some(id)` for
    /// [`FinishReason::Stop`] when the backend knows which token the model wrote (always in
    /// process; for `openai`, where the server reports it: vLLM `stop_reason` or the last of
    /// `token_ids`, SGLang `matched_stop`, llama-server the last id of `logprobs.content`; see
    /// [`OpenAi`]); `None` for [`FinishReason::Length`], and for a `stop` the server did not
    /// identify (a response that must then be treated as cut: no end id is appended to it).
    pub stop_token_id: Option<u32>,
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
    /// Errors: [`PolicyError::Model`] (bad prompt, model failure, the server refused the
    /// request or no endpoint answered for `generator.openai.unavailable_timeout_s`),
    /// [`PolicyError::Tokenizer`].
    fn complete(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<Completion>;

    /// The model name written to the `generator` column.
    fn name(&self) -> &str;

    /// The longest `prompt + max_new_tokens` the model accepts, tokens.
    fn max_positions(&self) -> usize;

    /// How many [`GenerationBackend::complete`] calls may usefully run at once (1 in process).
    fn max_in_flight(&self) -> usize;

    /// A JSON description for `generator_settings` (backend kind, endpoints); never secrets.
    fn describe(&self) -> serde_json::Value;

    /// Continues every prompt of `prompts` (chat-templated ids, each `[T_i]`) with the same
    /// `opts`; the completions come back in prompt order. The default runs them one after the
    /// other; a backend that can do better overrides it ([`OpenAi`]: up to
    /// [`GenerationBackend::max_in_flight`] requests at once; `logo-eval`'s libtorch model:
    /// prompts that share a prefix share its prefill). Errors: as
    /// [`GenerationBackend::complete`], the first that occurs.
    fn complete_group(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
    ) -> Result<Vec<Completion>> {
        prompts.iter().map(|p| self.complete(p, opts)).collect()
    }

    /// `(layers, heads)` of the attention read-out of
    /// [`GenerationBackend::complete_group_with_attention`], or `None` (the default) when the
    /// backend cannot read attention.
    fn attention_heads(&self) -> Option<(usize, usize)> {
        None
    }

    /// [`GenerationBackend::complete_group`], greedy, also reading out for generated token
    /// `i` of each prompt `[layers × heads]` (layer-major) indices into prompt ⧺ response of
    /// the key each head's query attends to most while token `i` is predicted (the retrieval
    /// score of LOGO Appendix B, Eq. 5, needs them). Errors: [`PolicyError::Config`] (key
    /// `generator`) from a backend that cannot read attention (the default), else as
    /// [`GenerationBackend::complete_group`].
    fn complete_group_with_attention(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
    ) -> Result<Vec<(Completion, Vec<Vec<i64>>)>> {
        let _ = (prompts, opts);
        Err(PolicyError::Config {
            key: "generator".into(),
            message: format!(
                "the {} backend cannot read attention weights (the retrieval score needs them): \
                 use logo-eval's torch generator",
                self.name()
            ),
        })
    }
}

/// Builds the backend `kind` names (`generator.backend`): [`InProcess`] over `policy` (which
/// must then be `Some`), or [`OpenAi`] over `openai` (which must then be `Some`) after its
/// start-up checks (`GET /v1/models` serves `openai.model`; `/tokenize` of a probe string
/// agrees with `tokenizer`), sending `stop_ids` (the chat template's, end of turn first) as
/// `stop_token_ids`. The server's context length is `openai.context_length`, else the one
/// `model.path` declares.
///
/// Errors: [`PolicyError::Config`] (bad `generator.openai`, a missing API key variable, a
/// server that does not serve the model or tokenises differently, no endpoint answering),
/// [`PolicyError::Internal`] for `in_process` without a policy.
pub fn from_config(
    kind: BackendKind,
    openai: Option<&OpenAiConfig>,
    model: &ModelConfig,
    policy: Option<Arc<std::sync::Mutex<Policy>>>,
    tokenizer: &tokenizers::Tokenizer,
    stop_ids: Vec<u32>,
) -> Result<Arc<dyn GenerationBackend>> {
    match kind {
        BackendKind::InProcess => {
            let policy = policy.ok_or_else(|| {
                PolicyError::Internal("in_process backend without a policy".into())
            })?;
            Ok(Arc::new(InProcess::new(policy)))
        }
        BackendKind::Openai => {
            let o = openai.ok_or_else(|| PolicyError::Config {
                key: "generator.openai".into(),
                message: "required with generator.backend: openai".into(),
            })?;
            let max_positions = match o.context_length {
                Some(n) => n,
                None => crate::model::context_length_of(&model.path).map_err(|e| {
                    PolicyError::Config {
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
