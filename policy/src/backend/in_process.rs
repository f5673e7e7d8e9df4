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
    /// [`Policy::generate`]; finish reason `stop` with the stop id the model sampled
    /// ([`crate::model::Generation::stop_token_id`]) when a stop token ended it, else `length`
    /// with no stop id. Errors: as [`Policy::generate`].
    fn complete(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<Completion> {
        let g = self
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generate(prompt_ids, opts)?;
        Ok(Completion {
            token_ids: g.token_ids,
            text: g.text,
            finish_reason: match g.stop_token_id {
                Some(_) => FinishReason::Stop,
                None => FinishReason::Length,
            },
            stop_token_id: g.stop_token_id,
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

#[cfg(test)]
mod tests {
    //! Tests of [`super`] (`in_process.rs`).

    use super::*;
    use crate::fixtures::shared_policy;
    use crate::tokenizer::encode_text;

    /// The completion carries exactly the stop id the model sampled: the arg-max of the
    /// logits after prompt ⧺ response (computed apart, by one prefill), which is a stop id and
    /// not in the response's ids; a cut completion has none.
    #[test]
    fn the_completion_records_the_stop_id_the_model_sampled() {
        let Some(policy) = shared_policy("the_completion_records_the_stop_id_the_model_sampled")
        else {
            return;
        };
        let backend = InProcess::new(policy.clone());
        let (prompt, stops) = {
            let p = policy.lock().unwrap_or_else(PoisonError::into_inner);
            let tok = p.tokenizer().clone();
            let ctx = encode_text(&tok, "Paris is the capital of France.").unwrap();
            let (ids, _) = p
                .template()
                .unwrap()
                .prompt(
                    &tok,
                    "Answer briefly.",
                    &[&ctx],
                    "What is the capital of France?",
                )
                .unwrap();
            (ids, p.stop_ids().to_vec())
        };
        let c = backend
            .complete(&prompt, &GenerateOptions::greedy(32))
            .unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop, "{c:?}");
        let stop = c.stop_token_id.expect("a stop id");
        assert!(stops.contains(&stop), "{stop} not in {stops:?}");
        assert!(!c.token_ids.contains(&stop));
        let mut full = prompt.clone();
        full.extend(&c.token_ids);
        let logits = policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_token_logits(&full)
            .unwrap();
        let argmax = (0..logits.len())
            .max_by(|&i, &j| logits[i].total_cmp(&logits[j]))
            .unwrap();
        assert_eq!(argmax as u32, stop);
        // Cut at max_new_tokens: no stop id.
        let cut = backend
            .complete(&prompt, &GenerateOptions::greedy(2))
            .unwrap();
        assert_eq!(
            (cut.finish_reason, cut.stop_token_id, cut.token_ids.len()),
            (FinishReason::Length, None, 2)
        );
    }
}
