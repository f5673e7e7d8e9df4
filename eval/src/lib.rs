//! logo-eval: what LOGO training changed, measured the way the paper does (section 4.2–4.3):
//! needle in a haystack across lengths and depths ([`niah`], Fig. 3 and App. B), long-context
//! QA with LongBench/SQuAD metrics ([`qa`], [`metrics`]), and sliding-window perplexity
//! ([`perplexity`], [`window`], Fig. 4), for a base model and a PEFT adapter side by side
//! ([`report`], [`plot`]).
//!
//! Generation ([`generate`]) goes through the policy crate's
//! [`logo_policy::backend::GenerationBackend`]: the candle [`logo_policy::model::Policy`] (one
//! implementation with the engine's generator stage; an adapter is folded into its weights by
//! [`logo_policy::adapter`]), an OpenAI-compatible server, or the trainer's
//! [`logo_trainer::model::Llama`] with a KV cache ([`generate::TorchBackend`]: prompts sharing
//! a prefix share its prefill, no 8K limit, attention read-out for the retrieval score of
//! [`retrieval`]); perplexity uses the trainer's model, which takes any position ids.
#![deny(missing_docs)]

pub mod error;
pub mod experiment;
pub mod generate;
pub mod metrics;
pub mod niah;
pub mod options;
pub mod perplexity;
pub mod plot;
pub mod progress;
pub mod qa;
pub mod report;
pub mod retrieval;
pub mod window;

pub use error::{EvalError, Result};

/// How answers are decoded: greedy by default (`temperature` 0), else seeded nucleus sampling
/// with the policy's sampler ([`logo_policy::model::GenerateOptions`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    /// Softmax temperature; 0 = greedy (arg-max).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; ignored when greedy.
    pub top_p: f64,
    /// Sampler seed; the same seed, prompt and weights give the same answer.
    pub seed: u64,
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Decoding {
    /// The policy's options for an answer of at most `max_new_tokens` tokens.
    pub fn options(&self, max_new_tokens: usize) -> logo_policy::model::GenerateOptions {
        logo_policy::model::GenerateOptions {
            max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            min_new_tokens: 0,
        }
    }
}
