//! Answer generation for NIAH and QA, by one of two backends (`logo-eval --generator`):
//!
//! - **engine** ([`Generator::Engine`]): the engine's [`Policy`] (candle, the adapter folded
//!   into the weights, greedy or seeded sampling); every prompt is prefilled on its own, and
//!   prompt + answer must fit the model's trained context (8192 for SmolLM2).
//! - **torch** ([`Generator::Torch`]): the trainer's libtorch [`Llama`] (the adapter unmerged,
//!   as trained) with a key/value cache ([`Llama::extend`]), greedy only. The prompts of one
//!   group (the needle depths of one haystack length, the questions of one document) share
//!   their prefill: the prompt with the largest total common prefix with the others (the
//!   *trunk*) is prefilled once, and every prompt forks the trunk's cache at its common prefix
//!   and reads only the rest. Positions are `0..n` computed from the ids, so prompts may run
//!   past the trained length (12K, 16K). It can also read out, for every generated token, the
//!   key each attention head attends to most (for [`crate::retrieval`]).
//!
//! - **server** ([`Generator::Server`]): any OpenAI-compatible server (vLLM, SGLang,
//!   llama.cpp's `llama-server`) through the engine's [`OpenAi`] backend, the same one the
//!   data was generated with: prompts as token ids, a group's prompts all in flight at once
//!   (up to `max_in_flight`), so an 8B model is evaluated on GPUs. The server's own weights
//!   answer (an adapter is evaluated by serving it, e.g. vLLM `--lora-modules`).
//!
//! All stop at the chat template's stop tokens (`<|im_end|>`, `<|endoftext|>`), which are
//! not part of the answer.

use logo_engine::backend::{GenerationBackend, OpenAi};
use logo_engine::model::{ChatTemplate, Policy};
use logo_trainer::model::{KvCache, Llama};
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};
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
    /// With `capture` (torch only): for generated token i, `[layers × heads]` (layer-major)
    /// indices into the prompt ⧺ answer of the key each head's query attends to most while
    /// token i is predicted.
    pub argmax: Option<Vec<Vec<i64>>>,
}

/// The trainer's model (with its adapter, if any), the tokenizer and the chat template.
#[derive(Debug)]
pub struct TorchGenerator<'m> {
    /// The model; LoRA adapters unmerged.
    pub model: &'m Llama,
    /// The base model's tokenizer (from the GGUF).
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
}

/// A model served by an OpenAI-compatible server, the tokenizer and the chat template.
#[derive(Debug)]
pub struct ServerGenerator {
    /// The engine's `openai` backend (start-up checks done: model served, tokenizer agrees).
    pub backend: OpenAi,
    /// The model's tokenizer (from the GGUF).
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
}

/// Where answers come from.
#[derive(Debug)]
pub enum Generator<'a> {
    /// The engine's policy (`--generator engine`).
    Engine(&'a mut Policy),
    /// The trainer's model with a KV cache (`--generator torch`).
    Torch(&'a TorchGenerator<'a>),
    /// An OpenAI-compatible server (`--generator server`).
    Server(&'a ServerGenerator),
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

impl Generator<'_> {
    /// The tokenizer prompts are built with.
    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            Generator::Engine(p) => p.tokenizer(),
            Generator::Torch(t) => &t.tokenizer,
            Generator::Server(s) => &s.tokenizer,
        }
    }

    /// The chat template (ChatML). Errors: [`crate::error::EvalError::Engine`] when the
    /// engine's model has another template ([`Policy::template`]).
    pub fn template(&self) -> crate::error::Result<ChatTemplate> {
        Ok(match self {
            Generator::Engine(p) => p.template()?,
            Generator::Torch(t) => t.template,
            Generator::Server(s) => s.template,
        })
    }

    /// `engine`, `torch` or `server`.
    pub fn name(&self) -> &'static str {
        match self {
            Generator::Engine(_) => "engine",
            Generator::Torch(_) => "torch",
            Generator::Server(_) => "server",
        }
    }

    /// Answers every prompt of `prompts` (chat-templated ids), in order. The torch backend
    /// shares the prefill of their common prefixes (see the module doc) and, with `capture`,
    /// fills [`Answer::argmax`]; the engine backend generates each prompt alone; the server
    /// backend sends them all at once (at most `max_in_flight` in flight).
    ///
    /// Errors: [`EvalError::Config`] (`--generator`) for sampling or `capture` requested from
    /// a backend that cannot; engine and trainer errors (an empty prompt, an id outside the
    /// vocabulary, the engine's position limit).
    pub fn generate_group(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        decoding: &Decoding,
        capture: bool,
    ) -> Result<Vec<Answer>> {
        match self {
            Generator::Engine(policy) => {
                if capture {
                    return Err(EvalError::Config {
                        key: "--generator".into(),
                        message: "the retrieval score needs attention weights: use --generator \
                                  torch"
                            .into(),
                    });
                }
                prompts
                    .iter()
                    .map(|p| {
                        let g = policy.generate(p, &decoding.options(max_new_tokens))?;
                        Ok(Answer {
                            token_ids: g.token_ids,
                            text: g.text,
                            argmax: None,
                        })
                    })
                    .collect()
            }
            Generator::Torch(t) => {
                if decoding.temperature > 0.0 {
                    return Err(EvalError::Config {
                        key: "--generator".into(),
                        message: "the torch generator is greedy only (--temperature 0); use \
                                  --generator engine to sample"
                            .into(),
                    });
                }
                t.generate_group(prompts, max_new_tokens, capture)
            }
            Generator::Server(s) => {
                if capture {
                    return Err(EvalError::Config {
                        key: "--generator".into(),
                        message: "the retrieval score needs attention weights: use --generator \
                                  torch"
                            .into(),
                    });
                }
                s.generate_group(prompts, &decoding.options(max_new_tokens))
            }
        }
    }
}

impl ServerGenerator {
    /// Answers `prompts` in order, each request on its own thread, at most
    /// [`GenerationBackend::max_in_flight`] at a time. Errors: the backend's (no endpoint
    /// answering for `unavailable_timeout_s`, a refused request).
    pub fn generate_group(
        &self,
        prompts: &[Vec<u32>],
        opts: &logo_engine::model::GenerateOptions,
    ) -> Result<Vec<Answer>> {
        let width = self.backend.max_in_flight().max(1);
        let mut answers = Vec::with_capacity(prompts.len());
        for batch in prompts.chunks(width) {
            let done: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|p| scope.spawn(move || self.backend.complete(p, opts)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("request thread"))
                    .collect()
            });
            for c in done {
                let c = c?;
                answers.push(Answer {
                    token_ids: c.token_ids,
                    text: c.text,
                    argmax: None,
                });
            }
        }
        Ok(answers)
    }
}

impl TorchGenerator<'_> {
    /// See [`Generator::generate_group`]. Errors: [`EvalError::Config`] for an empty prompt;
    /// trainer errors.
    pub fn generate_group(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        capture: bool,
    ) -> Result<Vec<Answer>> {
        if prompts.is_empty() {
            return Ok(vec![]);
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(EvalError::Config {
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
        let mut cache = self.model.new_cache(trunk.len() + max_new_tokens)?;
        self.read(&mut cache, &trunk[..shared], false)?;
        prompts
            .iter()
            .map(|p| {
                let s = common_prefix(p, trunk).min(p.len() - 1).min(shared);
                let mut c = cache.fork(s, p.len() - s + max_new_tokens)?;
                self.decode(&mut c, &p[s..], max_new_tokens, capture)
            })
            .collect()
    }

    /// Reads `ids` after the cache in passes of [`PREFILL_CHUNK`], positions continuing the
    /// cache; returns the last pass's hidden state and argmax (`None` for no ids).
    fn read(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        capture: bool,
    ) -> Result<Option<(tch::Tensor, Option<tch::Tensor>)>> {
        let mut last = None;
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let start = cache.len() as i64;
            let ids: Vec<i64> = chunk.iter().map(|&t| i64::from(t)).collect();
            let pos: Vec<i64> = (start..start + ids.len() as i64).collect();
            last = Some(self.model.extend(cache, &ids, &pos, capture)?);
        }
        Ok(last)
    }

    /// Reads the rest of a prompt and decodes greedily.
    fn decode(
        &self,
        cache: &mut KvCache,
        rest: &[u32],
        max_new_tokens: usize,
        capture: bool,
    ) -> Result<Answer> {
        let (mut hidden, mut heads) = self
            .read(cache, rest, capture)?
            .expect("at least one token to read");
        let mut out = Vec::new();
        let mut argmax = Vec::new();
        while out.len() < max_new_tokens {
            let next = self
                .model
                .lm_logits(&hidden)?
                .argmax(-1, false)
                .int64_value(&[0]) as u32;
            if self.template.is_stop(next) {
                break;
            }
            out.push(next);
            if let Some(h) = &heads {
                argmax.push(Vec::<i64>::try_from(&h.flatten(0, 1))?);
            }
            if out.len() == max_new_tokens {
                break;
            }
            let pos = cache.len() as i64;
            (hidden, heads) = self
                .model
                .extend(cache, &[i64::from(next)], &[pos], capture)?;
        }
        let text = self
            .tokenizer
            .decode(&out, false)
            .map_err(|e| logo_engine::error::EngineError::Tokenizer(e.to_string()))?;
        Ok(Answer {
            token_ids: out,
            text,
            argmax: capture.then_some(argmax),
        })
    }
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
