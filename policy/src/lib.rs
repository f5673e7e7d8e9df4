//! logo-policy: the policy model π_θ of LOGO's data synthesis (Tang et al., section 3.2.2,
//! "Preference and Dis-preference Data Synthesis": `P = π_θ(Q, C)`), shared by the engine's
//! question and generator stages and by `logo-eval`.
//!
//! ```text
//! config (ModelConfig, OpenAiConfig)
//!    │
//!    ├─ model ── load: GGUF (gguf) or HF folder (dense), LoRA folded in (adapter)
//!    │            └─ tokenizer + template: the prompt's ids, as transformers renders them
//!    └─ backend: GenerationBackend ── InProcess (model) │ OpenAi (vLLM, SGLang, llama-server)
//! ```
//!
//! Everything here takes and returns token ids that logo tokenised and chat-templated itself,
//! so a generation request and a training sample carry the same prompt.
#![deny(missing_docs)]

pub mod adapter;
pub mod backend;
pub mod config;
pub mod dense;
pub mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod gguf;
pub mod model;
pub mod prompt;
pub mod template;
pub mod tokenizer;

pub use error::{PolicyError, Result};
