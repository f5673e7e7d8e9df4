//! The `in_process` backend: the candle [`Policy`] of `model`, one generation at a time.

use std::sync::{Arc, Mutex, PoisonError};

use super::{Completion, FinishReason, GenerationBackend};
use crate::error::Result;
use crate::model::{GenerateOptions, Policy};

/// The candle policy as a [`GenerationBackend`]: [`Policy::generate`] under the shared lock
/// (question generation uses the same policy), so one generation runs at a time.
#[derive(Debug)]
pub struct InProcess {
    policy: Arc<Mutex<Policy>>,
    name: String,
    max_positions: usize,
    weights: crate::config::WeightFormat,
}

impl InProcess {
    /// Wraps the shared policy.
    pub fn new(policy: Arc<Mutex<Policy>>) -> Self {
        let (name, max_positions, weights) = {
            let p = policy.lock().unwrap_or_else(PoisonError::into_inner);
            (p.name().to_string(), p.max_positions(), p.weights())
        };
        Self {
            policy,
            name,
            max_positions,
            weights,
        }
    }
}

impl GenerationBackend for InProcess {
    /// [`Policy::generate`]; finish reason `stop` when a stop token ended it, else `length`.
    /// Errors: as [`Policy::generate`].
    fn complete(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<Completion> {
        let g = self
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generate(prompt_ids, opts)?;
        Ok(Completion {
            token_ids: g.token_ids,
            text: g.text,
            finish_reason: if g.stopped_on_eos {
                FinishReason::Stop
            } else {
                FinishReason::Length
            },
            model: self.name.clone(),
            retries: 0,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn max_in_flight(&self) -> usize {
        1
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "in_process", "weights": self.weights})
    }
}
