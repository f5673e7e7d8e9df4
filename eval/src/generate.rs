//! Answer generation for NIAH and QA: a [`GenerationBackend`] of the policy crate, chosen by
//! `logo-eval --generator`, with the tokenizer and chat template the prompts are built with
//! ([`Generator`]):
//!
//! - **engine**: [`logo_policy::backend::InProcess`], the candle policy (the adapter folded
//!   into the weights, greedy or seeded sampling); every prompt is prefilled on its own, and
//!   prompt + answer must fit the model's trained context (8192 for SmolLM2).
//! - **torch**: [`TorchBackend`] (this module), the trainer's libtorch [`Llama`] (the adapter
//!   unmerged, as trained) with a key/value cache ([`Llama::extend`]), greedy only. The prompts
//!   of one group (the needle depths of one haystack length, the questions of one document)
//!   share their prefill: the prompt with the largest total common prefix with the others (the
//!   *trunk*) is prefilled once, and every prompt forks the trunk's cache at its common prefix
//!   and reads only the rest. Positions are `0..n` computed from the ids, so prompts may run
//!   past the trained length (12K, 16K). It also reads out, for every generated token, the
//!   key each attention head attends to most (for [`crate::retrieval`]).
//! - **server**: [`logo_policy::backend::OpenAi`], any OpenAI-compatible server (vLLM,
//!   SGLang, llama.cpp's `llama-server`), the backend the data was generated with: prompts as
//!   token ids, a group's prompts all in flight at once (up to `max_in_flight`), so an 8B
//!   model is evaluated on GPUs. The server's own weights answer (an adapter is evaluated by
//!   serving it, e.g. vLLM `--lora-modules`).
//!
//! All stop at the chat template's stop tokens (`<|im_end|>`, `<|endoftext|>`), which are
//! not part of the answer.

use std::sync::{Mutex, MutexGuard, PoisonError};

use logo_policy::backend::{Completion, FinishReason, GenerationBackend};
use logo_policy::model::GenerateOptions;
use logo_policy::tokenizer::ChatTemplate;
use logo_policy::{PolicyError, Result as PolicyResult};
use logo_trainer::model::{KvCache, Llama};
use tokenizers::Tokenizer;

use crate::error::Result;
use crate::Decoding;

/// Tokens read per prefill pass of the torch backend (bounds the attention scores of a pass
/// to `heads × PREFILL_CHUNK × context` floats).
pub const PREFILL_CHUNK: usize = 1024;

/// One generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Generated ids, stop token excluded.
    pub token_ids: Vec<u32>,
    /// Decoded text.
    pub text: String,
    /// The stop token that ended it (not in `token_ids`); `None` when `max_new_tokens` did
    /// (or a server did not say, see [`Completion::stop_token_id`]).
    pub stop_token_id: Option<u32>,
    /// With `capture` (torch only): for generated token i, `[layers × heads]` (layer-major)
    /// indices into the prompt ⧺ answer of the key each head's query attends to most while
    /// token i is predicted.
    pub argmax: Option<Vec<Vec<i64>>>,
}

/// What NIAH and QA generate with: a backend, and the tokenizer and chat template their prompts
/// are built with (the base model's, whatever the backend).
#[derive(Debug)]
pub struct Generator<'a> {
    /// The `--generator` value written to the reports (`engine`, `torch`, `server`).
    pub kind: &'static str,
    /// Who answers.
    pub backend: &'a dyn GenerationBackend,
    /// The base model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
}

impl Generator<'_> {
    /// Answers every prompt of `prompts` (chat-templated ids), in order, through
    /// [`GenerationBackend::complete_group`] or, with `capture`,
    /// [`GenerationBackend::complete_group_with_attention`] (filling [`Answer::argmax`]).
    ///
    /// Errors: the backend's ([`PolicyError::Config`] for sampling or `capture` asked of a
    /// backend that cannot; an empty prompt, an id outside the vocabulary, the position limit).
    pub fn generate_group(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        decoding: &Decoding,
        capture: bool,
    ) -> Result<Vec<Answer>> {
        let opts = decoding.options(max_new_tokens);
        let answer = |c: Completion, argmax| Answer {
            token_ids: c.token_ids,
            text: c.text,
            stop_token_id: c.stop_token_id,
            argmax,
        };
        Ok(if capture {
            self.backend
                .complete_group_with_attention(prompts, &opts)?
                .into_iter()
                .map(|(c, a)| answer(c, Some(a)))
                .collect()
        } else {
            self.backend
                .complete_group(prompts, &opts)?
                .into_iter()
                .map(|c| answer(c, None))
                .collect()
        })
    }
}

/// The trainer's libtorch model (with its adapter, if any) as a [`GenerationBackend`]: greedy,
/// a key/value cache shared by the prompts of a group, attention read-out (see the module doc).
#[derive(Debug)]
pub struct TorchBackend {
    model: Mutex<Llama>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    name: String,
}

/// A libtorch or trainer failure as a policy model error.
fn model_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Model(e.to_string())
}

impl TorchBackend {
    /// `model` (LoRA adapters unmerged) answering with `template`'s stop tokens; `name` is
    /// reported as the completions' model.
    pub fn new(model: Llama, tokenizer: Tokenizer, template: ChatTemplate, name: &str) -> Self {
        Self {
            model: Mutex::new(model),
            tokenizer,
            template,
            name: name.to_string(),
        }
    }

    /// The model (for perplexity, which runs on the same weights).
    pub fn model(&self) -> MutexGuard<'_, Llama> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Greedy only: errors ([`PolicyError::Config`], key `generator`) for a temperature > 0.
    fn check_greedy(opts: &GenerateOptions) -> PolicyResult<()> {
        if opts.temperature > 0.0 {
            return Err(PolicyError::Config {
                key: "generator".into(),
                message: "the torch generator is greedy only (temperature 0); use the engine \
                          generator to sample"
                    .into(),
            });
        }
        Ok(())
    }

    /// `a` as a completion: `stop` with the stop id it ended on, else `length`.
    fn completion(&self, a: Answer) -> (Completion, Option<Vec<Vec<i64>>>) {
        let finish_reason = match a.stop_token_id {
            Some(_) => FinishReason::Stop,
            None => FinishReason::Length,
        };
        (
            Completion {
                token_ids: a.token_ids,
                text: a.text,
                finish_reason,
                stop_token_id: a.stop_token_id,
                model: self.name.clone(),
                retries: 0,
            },
            a.argmax,
        )
    }
}

impl GenerationBackend for TorchBackend {
    /// A group of one. Errors: as [`GenerationBackend::complete_group`].
    fn complete(&self, prompt_ids: &[u32], opts: &GenerateOptions) -> PolicyResult<Completion> {
        let mut group = self.complete_group(&[prompt_ids.to_vec()], opts)?;
        Ok(group.remove(0))
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// No limit of its own: positions are computed from the ids (memory is the limit).
    fn max_positions(&self) -> usize {
        usize::MAX
    }

    fn max_in_flight(&self) -> usize {
        1
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "torch"})
    }

    /// The shared-prefill group (module doc). Errors: [`PolicyError::Config`] for sampling or
    /// an empty prompt; [`PolicyError::Model`] for the model's failures.
    fn complete_group(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
    ) -> PolicyResult<Vec<Completion>> {
        Self::check_greedy(opts)?;
        Ok(self
            .generate_group(prompts, opts.max_new_tokens, false)?
            .into_iter()
            .map(|a| self.completion(a).0)
            .collect())
    }

    fn attention_heads(&self) -> Option<(usize, usize)> {
        let c = self.model().config().clone();
        Some((c.num_hidden_layers, c.num_attention_heads))
    }

    /// As [`TorchBackend::complete_group`], with the attention read-out.
    fn complete_group_with_attention(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
    ) -> PolicyResult<Vec<(Completion, Vec<Vec<i64>>)>> {
        Self::check_greedy(opts)?;
        Ok(self
            .generate_group(prompts, opts.max_new_tokens, true)?
            .into_iter()
            .map(|a| {
                let (c, argmax) = self.completion(a);
                (c, argmax.unwrap_or_default())
            })
            .collect())
    }
}

/// Length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The index of the prompt whose summed common prefix with all prompts is largest (the first
/// on ties), or 0 for an empty slice.
pub fn trunk_of(prompts: &[Vec<u32>]) -> usize {
    let mut best: (usize, Option<usize>) = (0, None);
    for (i, p) in prompts.iter().enumerate() {
        let total: usize = prompts.iter().map(|q| common_prefix(p, q)).sum();
        if best.1.is_none_or(|b| total > b) {
            best = (i, Some(total));
        }
    }
    best.0
}

impl TorchBackend {
    /// Greedy answers to `prompts` in order, the trunk's prefill shared (see the module doc);
    /// with `capture`, [`Answer::argmax`] filled. Errors: [`PolicyError::Config`] for an empty
    /// prompt; [`PolicyError::Model`] for the model's failures.
    fn generate_group(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        capture: bool,
    ) -> PolicyResult<Vec<Answer>> {
        let model = self.model();
        if prompts.is_empty() {
            return Ok(vec![]);
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(PolicyError::Config {
                key: "prompt".into(),
                message: "empty prompt".into(),
            });
        }
        let trunk = &prompts[trunk_of(prompts)];
        let shared = prompts
            .iter()
            .map(|p| common_prefix(p, trunk).min(p.len() - 1))
            .max()
            .unwrap_or(0);
        // Prefill the part of the trunk any prompt reuses.
        let mut cache = model
            .new_cache(trunk.len() + max_new_tokens)
            .map_err(model_err)?;
        read(&model, &mut cache, &trunk[..shared], false)?;
        prompts
            .iter()
            .map(|p| {
                let s = common_prefix(p, trunk).min(p.len() - 1).min(shared);
                let mut c = cache
                    .fork(s, p.len() - s + max_new_tokens)
                    .map_err(model_err)?;
                self.decode(&model, &mut c, &p[s..], max_new_tokens, capture)
            })
            .collect()
    }

    /// Reads the rest of a prompt and decodes greedily.
    fn decode(
        &self,
        model: &Llama,
        cache: &mut KvCache,
        rest: &[u32],
        max_new_tokens: usize,
        capture: bool,
    ) -> PolicyResult<Answer> {
        let (mut hidden, mut heads) =
            read(model, cache, rest, capture)?.expect("at least one token to read");
        let mut out = Vec::new();
        let mut argmax = Vec::new();
        let mut stop_token_id = None;
        while out.len() < max_new_tokens {
            let next = model
                .lm_logits(&hidden)
                .map_err(model_err)?
                .argmax(-1, false)
                .int64_value(&[0]) as u32;
            if self.template.is_stop(next) {
                stop_token_id = Some(next);
                break;
            }
            out.push(next);
            if let Some(h) = &heads {
                argmax.push(Vec::<i64>::try_from(&h.flatten(0, 1)).map_err(model_err)?);
            }
            if out.len() == max_new_tokens {
                break;
            }
            let pos = cache.len() as i64;
            (hidden, heads) = model
                .extend(cache, &[i64::from(next)], &[pos], capture)
                .map_err(model_err)?;
        }
        let text = self
            .tokenizer
            .decode(&out, false)
            .map_err(|e| PolicyError::Tokenizer(e.to_string()))?;
        Ok(Answer {
            token_ids: out,
            text,
            stop_token_id,
            argmax: capture.then_some(argmax),
        })
    }
}

/// Reads `ids` after the cache in passes of [`PREFILL_CHUNK`], positions continuing the
/// cache; returns the last pass's hidden state and argmax (`None` for no ids).
fn read(
    model: &Llama,
    cache: &mut KvCache,
    ids: &[u32],
    capture: bool,
) -> PolicyResult<Option<(tch::Tensor, Option<tch::Tensor>)>> {
    let mut last = None;
    for chunk in ids.chunks(PREFILL_CHUNK) {
        let start = cache.len() as i64;
        let ids: Vec<i64> = chunk.iter().map(|&t| i64::from(t)).collect();
        let pos: Vec<i64> = (start..start + ids.len() as i64).collect();
        last = Some(
            model
                .extend(cache, &ids, &pos, capture)
                .map_err(model_err)?,
        );
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_is_the_prompt_sharing_most() {
        // Depth-like prompts: each shares its first `d` tokens with the needle-free text.
        let base: Vec<u32> = (0..20).collect();
        let with_needle = |at: usize| -> Vec<u32> {
            let mut p = base[..at].to_vec();
            p.extend([99, 98]);
            p.extend(&base[at..18]);
            p
        };
        let prompts = vec![
            with_needle(0),
            with_needle(15),
            with_needle(5),
            with_needle(10),
        ];
        // with_needle(15) shares 15, 5, 10 with the others (and itself fully).
        assert_eq!(trunk_of(&prompts), 1);
        assert_eq!(common_prefix(&prompts[1], &prompts[3]), 10);
        assert_eq!(common_prefix(&prompts[0], &prompts[1]), 0);
        assert_eq!(trunk_of(&[]), 0);
        assert_eq!(trunk_of(&[vec![1, 2], vec![1, 2]]), 0);
    }
}
