//! The range checks of a [`RawPipelineConfig`], run once by `PipelineConfig::try_from`: each
//! error names the key and the allowed values.

use super::{BackendKind, RawPipelineConfig};
use crate::error::{EngineError, Result};

impl RawPipelineConfig {
    /// Checks every range; the error names the key and the allowed values. Run by
    /// `PipelineConfig::try_from`, the one place a configuration is validated.
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
