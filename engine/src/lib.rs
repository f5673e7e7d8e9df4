//! logo-engine: a streaming dataflow engine that turns long documents with questions into LOGO
//! preference data (Tang et al., "LOGO — Long cOntext aliGnment via efficient preference
//! Optimization", section 3.2.2, Fig. 2, Appendix D).
//!
//! The pipeline is a chain of typed stages over Arrow record batches, each on its own thread
//! between bounded channels:
//!
//! ```text
//! source → questions (optional) → chunker → scorer → sampler → generator → positions → Parquet sink
//! ```
//!
//! Every table that crosses a stage boundary has its schema in `logo_schemas`; the policy model
//! that writes questions and responses (loading, tokenizer, chat template, generation backends)
//! is `logo_policy`. Configuration is
//! [`config::PipelineConfig`] (`pipeline.yaml`); the run is [`pipeline::run`].
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod pipeline;
pub mod sink;
pub mod source;
#[cfg(feature = "sql")]
pub mod sql;
pub mod stage;
pub mod stages;

pub use error::{EngineError, Result};
