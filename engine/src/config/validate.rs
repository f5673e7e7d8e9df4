//! The range checks of a [`RawPipelineConfig`], run once by `PipelineConfig::try_from`: each
//! error names the key and the allowed values.

use std::fmt::{Debug, Display};
use std::ops::RangeInclusive;

use super::{BackendKind, LengthAction, RawPipelineConfig};
use crate::error::{EngineError, Result};

/// `Err(Config)` for `key`.
fn bad(key: &str, message: String) -> Result<()> {
    Err(EngineError::Config {
        key: key.into(),
        message,
    })
}

/// `value` within `range`, else "must be in {range}{unit} (got {value})".
fn within<T: PartialOrd + Debug + Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    bad(key, format!("must be in {range:?}{unit} (got {value})"))
}

/// `value` ≥ 1, else "must be >= 1 (got 0)".
fn positive(key: &str, value: usize) -> Result<()> {
    if value == 0 {
        return bad(key, "must be >= 1 (got 0)".into());
    }
    Ok(())
}

impl RawPipelineConfig {
    /// Checks every range; the error names the key and the allowed values. Run by
    /// `PipelineConfig::try_from`, the one place a configuration is validated.
    /// Errors: [`EngineError::Config`].
    pub fn validate(&self) -> Result<()> {
        let (s, g, q) = (&self.sampler, &self.generator, &self.questions);
        g.response_prompt()?;
        if self.source.paths.is_empty() {
            return bad("source.paths", "must list at least one file or glob".into());
        }
        positive("source.batch_size", self.source.batch_size)?;
        within("model.threads", self.model.threads, 1..=64, "")?;
        let chunk_size = self.chunker.chunk_size;
        within("chunker.chunk_size", chunk_size, 16..=32768, " tokens")?;
        within("sampler.num_chunks", s.num_chunks, 1..=1024, "")?;
        if s.threshold < 0 {
            return bad(
                "sampler.threshold",
                format!("must be >= 0 (got {})", s.threshold),
            );
        }
        within("sampler.num_negatives", s.num_negatives, 1..=64, "")?;
        within("generator.max_new_tokens", g.max_new_tokens, 1..=8192, "")?;
        within("generator.temperature", g.temperature, 0.0..=5.0, "")?;
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return bad(
                "generator.top_p",
                format!("must be in (0, 1] (got {})", g.top_p),
            );
        }
        let (regenerations, regenerate_t) = (g.max_regenerations, g.regenerate_temperature);
        within("generator.max_regenerations", regenerations, 0..=64, "")?;
        within(
            "generator.regenerate_temperature",
            regenerate_t,
            0.0..=5.0,
            "",
        )?;
        if g.on_length.chosen == LengthAction::Keep {
            return bad(
                "generator.on_length.chosen",
                "keep is for rejected responses only: a cut preferred response closed as \
                 an answer would teach the model to stop mid-sentence (use regenerate or skip)"
                    .into(),
            );
        }
        match (g.backend, &g.openai) {
            (BackendKind::Openai, None) => {
                return bad(
                    "generator.openai",
                    "required with generator.backend: openai (endpoints, model)".into(),
                )
            }
            (BackendKind::Openai, Some(o)) => o.validate()?,
            (BackendKind::InProcess, _) => {}
        }
        if q.enabled {
            within("questions.passage_tokens", q.passage_tokens, 16..=8192, "")?;
        }
        within("questions.max_new_tokens", q.max_new_tokens, 1..=1024, "")?;
        within("questions.max_retries", q.max_retries, 0..=16, "")?;
        let ratio = self.positions.continuous_ratio;
        within("positions.continuous_ratio", ratio, 0.0..=1.0, "")?;
        // The real training sequence must fit in K: N chunks, template and question, and a
        // response of max_new_tokens (+1 for the end-of-turn token).
        let real = s.num_chunks * chunk_size + g.max_new_tokens + 1;
        if self.positions.target_length < real || self.positions.target_length > u32::MAX as usize {
            return bad(
                "positions.target_length",
                format!(
                    "must be >= num_chunks × chunk_size + max_new_tokens + 1 = {real} and < 2^32 (got {})",
                    self.positions.target_length
                ),
            );
        }
        positive("sink.row_group_size", self.sink.row_group_size)?;
        positive("sink.unit_rows", self.sink.unit_rows)?;
        let capacity = self.runtime.channel_capacity;
        within("runtime.channel_capacity", capacity, 1..=1024, "")
    }
}
