//! logo-eval: what LOGO training changed, measured the way the paper does (section 4.2–4.3):
//! needle in a haystack across lengths and depths ([`niah`], Fig. 3 and App. B), long-context
//! QA with LongBench/SQuAD metrics ([`qa`], [`metrics`]), and sliding-window perplexity
//! ([`perplexity`], [`window`], Fig. 4), for a base model and a PEFT adapter side by side
//! ([`report`], [`plot`]).
//!
//! Generation is the engine's [`logo_engine::model::Policy`] (one implementation with the
//! generator stage; an adapter is folded into its weights by [`logo_engine::adapter`]);
//! perplexity uses the trainer's [`logo_trainer::model::Llama`], which takes any position ids.
#![deny(missing_docs)]

pub mod error;
pub mod metrics;
pub mod niah;
pub mod perplexity;
pub mod plot;
pub mod progress;
pub mod qa;
pub mod report;
pub mod window;

pub use error::{EvalError, Result};
