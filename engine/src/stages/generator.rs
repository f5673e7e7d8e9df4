//! Generator stage: the policy model writes the preferred response and the M dis-preferred
//! ones of each sample, and the shared training prompt `{Q, C'}` is tokenised (LOGO section
//! 3.2.2, "Preference and Dis-preference Data Synthesis"):
//!
//! ```text
//! P_preference       = π_θ(Q, C_>δ)                      ← chosen_chunk_ids
//! P'_dis-preference  = π_θ(Q, C_<δ)                      ← rejected_chunk_ids[j], "irrelevant"
//! P''_dis-preference = π_θ(Q, C_<δ ∪ C_>δ)               ← rejected_chunk_ids[j], "partial"
//! training sample    = ({Q, C', y_w}, {Q, C', y_l^(j)}_{j=1..M})   (Eq. 3)
//! ```
//!
//! Input: [`logo_schemas::sampled_schema`] batches ([`SampledRecord`]); output:
//! [`logo_schemas::generations_schema`] ([`GeneratedRecord`]). Prompts follow the model's chat
//! template, rendered with the chunks' text and tokenised as transformers does
//! ([`PromptTemplate::prompt`]; the chunks' spans in `prompt_segments` come from the
//! tokenizer's offsets, a token belonging to the chunk it starts in); a response that the model ended itself (finish reason `stop`) ends with exactly the
//! stop token the model wrote ([`Completion::stop_token_id`]: the id sampled in process, the
//! id the server reports), the token the model must learn; it is recorded in
//! `chosen_stop_token_id` / `rejected_stop_token_id`. A model may end a turn with a token other
//! than its template's end of turn (`<eos>` where the template writes `<end_of_turn>`,
//! `<|im_end|>` under a template closing turns with `<|endoftext|>`): the response keeps the
//! model's. A reference answer (`chosen: reference`) ends with the template's end of turn
//! (`<|im_end|>`, `<|eot_id|>`, `</s>`).
//!
//! Responses come from a [`GenerationBackend`] (`generator.backend`): every response of
//! every row of a batch is requested at once, up to [`GenerationBackend::max_in_flight`] in
//! flight (1 in process: one model, and a second rayon thread was measured to slow decoding
//! on the target 2-core machine); rows are emitted in input order whatever finishes first.
//!
//! Pairs that carry a preference:
//! - a response that hit `max_new_tokens` (finish reason `length`) is never closed with an
//!   end-of-turn token it did not write; nor is a `stop` whose stop token the server did not
//!   identify (a server that reports none, see `logo_policy::backend::OpenAi`): both are
//!   judged as cut (a stop of that kind is recorded as finish reason `stop` with a null stop
//!   id, and counted). Per role (`generator.on_length`, [`OnLength`]): a cut
//!   chosen response is regenerated (default) or the sample skipped (`response hit
//!   max_new_tokens`); a cut rejected response is kept as written (default: its ids without an
//!   end of turn, `rejected_finish_reason` `length`; Eq. 2 only lowers its mean
//!   log-probability, so a cut one still carries the error pattern), regenerated or skipped;
//! - a rejected response equal to the chosen one or to an earlier rejected one (case and
//!   whitespace folded, [`normalise`]) is regenerated; after `max_regenerations` the sample
//!   is skipped (`rejected equal to another response`).
//!
//! Seeds: attempt `a` of response `r` (0 = chosen, 1..=M = rejected) of sample `s` is
//! sampled with `derive_seed(cfg.seed, ["generator", s, r])` for `a = 0` and
//! `derive_seed(cfg.seed, ["generator", s, r, "regenerate", a])` after, at temperature
//! `max(temperature, regenerate_temperature)`; so the output does not depend on batch
//! boundaries or on the order in which the server answers.
//!
//! Why this file is over 600 lines: a stage is one file implementing one trait (the
//! project's layout), and this one is a single state machine: each row becomes a [`Plan`]
//! whose response slots are requested, judged (length, duplicates), regenerated and finished
//! into one output row; splitting the steps of that machine across files would separate
//! code that reads the same private struct. Its tests are the `tests` module at its bottom.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{GeneratedRecord, Record, SampledRecord};
use tokenizers::Tokenizer;

use crate::config::{ChosenSource, LengthAction, OnLength, PipelineConfig};
use crate::error::{EngineError, Result};
use crate::stage::{emit, RowOutcome, Stage, StageContext};
use crate::stages::seed::derive_seed;
use logo_formats::rejects::Reject;
use logo_policy::backend::{Completion, FinishReason, GenerationBackend};
use logo_policy::model::GenerateOptions;
use logo_policy::prompt::ResponsePrompt;
use logo_policy::template::PromptTemplate;
use logo_policy::tokenizer::encode_text;

const STAGE: &str = "generator";

/// Tokens of the chat template around the chunks and question (system message excluded);
/// used only for the up-front context-length warning.
const TEMPLATE_ALLOWANCE: usize = 64;

/// Skip reason: a response hit `max_new_tokens` (and could not be regenerated).
pub const SKIP_LENGTH: &str = "response hit max_new_tokens";
/// Skip reason: a rejected response stayed equal to the chosen or another rejected one.
pub const SKIP_DUPLICATE: &str = "rejected equal to another response";
/// Skip reason: a response ended on a stop token the server did not identify (and could not
/// be regenerated), judged like a cut one.
pub const SKIP_UNKNOWN_STOP: &str = "stop token not identified by the server";
/// Skip reason: a response was empty after trimming.
pub const SKIP_EMPTY: &str = "empty response";

/// The generator stage (see the module doc).
pub struct GeneratorStage {
    backend: Arc<dyn GenerationBackend>,
    tokenizer: Tokenizer,
    template: PromptTemplate,
    /// The response prompt (`generator.prompt`, `generator.system_prompt`).
    prompt: ResponsePrompt,
    chosen: ChosenSource,
    max_new_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    on_length: OnLength,
    max_regenerations: usize,
    regenerate_temperature: f64,
    max_positions: usize,
    generator: String,
    settings: String,
    schema: SchemaRef,
}

impl std::fmt::Debug for GeneratorStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorStage")
            .field("generator", &self.generator)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Case- and whitespace-folded text: lower case, runs of whitespace as one space, trimmed;
/// two responses are duplicates when their folded texts are equal.
pub fn normalise(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One response being generated: its prompt, attempts so far and latest result.
#[derive(Debug)]
struct Slot {
    prompt: Vec<u32>,
    attempt: usize,
    seed: u64,
    result: Option<Completion>,
    pending: bool,
}

/// One finished response of a [`Plan`], as the sample stores it.
struct Response {
    text: String,
    /// The response's token ids: the stop token the model wrote appended when it ended it
    /// (`stop` with a known stop id), nothing appended when it was cut (`length`) or its stop
    /// token is unknown (kept rejected responses only).
    input_ids: Vec<u32>,
    /// The id appended to `input_ids` (the stop token; the end of turn of a reference).
    stop_token_id: Option<u32>,
    /// `stop`, `length` (a kept cut rejected response), or `reference` for the dataset's
    /// answer.
    finish_reason: String,
    /// The sampling seed (0 for the reference).
    seed: u64,
    /// The model that wrote it (as the backend names it).
    model: String,
}

/// True when the end of `c` is not known: cut at `max_new_tokens`, or stopped on a token the
/// server did not identify. Such a response gets no end id; [`GeneratorStage::judge`] applies
/// `generator.on_length` to it.
fn end_unknown(c: &Completion) -> bool {
    c.finish_reason == FinishReason::Length || c.stop_token_id.is_none()
}

impl Response {
    /// The response of a completed `slot`: the stop token the model wrote
    /// ([`Completion::stop_token_id`]) is appended to a response it ended itself; a cut one or
    /// one whose stop token is unknown (kept only as a rejected response, see
    /// [`GeneratorStage::judge`]) keeps exactly the ids the model wrote.
    fn generated(slot: Slot) -> Response {
        let c = slot.result.expect("complete");
        let mut input_ids = c.token_ids;
        let stop_token_id = match c.finish_reason {
            FinishReason::Stop => c.stop_token_id,
            FinishReason::Length => None,
        };
        input_ids.extend(stop_token_id);
        Response {
            text: c.text,
            input_ids,
            stop_token_id,
            finish_reason: c.finish_reason.as_str().into(),
            seed: slot.seed,
            model: c.model,
        }
    }
}

/// One sample of a batch while its responses are generated.
#[derive(Debug)]
struct Plan {
    row: SampledRecord,
    prompt_input_ids: Vec<u32>,
    prompt_segments: Vec<u32>,
    /// The reference answer when `chosen: reference`.
    reference: Option<String>,
    /// Index 0: the chosen response (absent with a reference), 1..=M: the rejected ones.
    slots: Vec<Option<Slot>>,
    skipped: Option<&'static str>,
}

impl GeneratorStage {
    /// Builds the stage from `cfg.generator` (`max_new_tokens`, `temperature`, `top_p`,
    /// `chosen`, `prompt`, `system_prompt`, `on_length`, `max_regenerations`,
    /// `regenerate_temperature`), `cfg.seed`, the backend, and the model's tokenizer and chat
    /// template ([`PromptTemplate::load`]).
    ///
    /// `generator_settings` is the JSON
    /// `{"prompt": {"system", "user"}, "max_new_tokens", "temperature", "top_p", "seed", "chosen", "on_length",
    /// "max_regenerations", "regenerate_temperature", "backend": {..}}`.
    /// When `sampler.num_chunks × chunker.chunk_size + max_new_tokens` may exceed the model's
    /// positions ([`GenerationBackend::max_positions`]: 8192 for SmolLM2 with f32 weights,
    /// 4096 with the quantised backend), a warning is logged: such samples are
    /// skipped with reason `prompt exceeds the model's context`.
    ///
    /// Errors: [`EngineError::Config`] (`generator.max_new_tokens` leaves no room for a
    /// prompt; `generator.prompt`), [`EngineError::Io`] (an unreadable prompt file).
    pub fn try_new(
        cfg: &PipelineConfig,
        backend: Arc<dyn GenerationBackend>,
        tokenizer: Tokenizer,
        template: PromptTemplate,
    ) -> Result<Self> {
        let max_positions = backend.max_positions();
        let g = &cfg.generator;
        if g.max_new_tokens + TEMPLATE_ALLOWANCE >= max_positions {
            return Err(EngineError::Config {
                key: "generator.max_new_tokens".into(),
                message: format!(
                    "must leave room for a prompt in the model's {max_positions} positions \
                     (got {})",
                    g.max_new_tokens
                ),
            });
        }
        let worst =
            cfg.sampler.num_chunks * cfg.chunker.chunk_size + TEMPLATE_ALLOWANCE + g.max_new_tokens;
        if worst > max_positions {
            tracing::warn!(
                "generator: num_chunks × chunk_size + max_new_tokens ≈ {worst} tokens may exceed \
                 the model's {max_positions} positions; such samples are skipped"
            );
        }
        let prompt = g.response_prompt()?;
        let mut settings = serde_json::json!({
            "prompt": {"system": prompt.system, "user": prompt.user},
            "max_new_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "seed": cfg.seed,
            "chosen": g.chosen,
            "on_length": g.on_length,
            "max_regenerations": g.max_regenerations,
            "regenerate_temperature": g.regenerate_temperature,
            "backend": backend.describe(),
        });
        if let Some(w) = backend.describe().get("weights") {
            settings["weights"] = w.clone();
        }
        Ok(Self {
            generator: backend.name().to_string(),
            backend,
            tokenizer,
            template,
            prompt,
            chosen: g.chosen,
            max_new_tokens: g.max_new_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            seed: cfg.seed,
            on_length: g.on_length,
            max_regenerations: g.max_regenerations,
            regenerate_temperature: g.regenerate_temperature,
            max_positions,
            settings: settings.to_string(),
            schema: logo_schemas::generations_schema(),
        })
    }

    /// Options of attempt `attempt` (0 = first) of response `index` (0 = chosen, 1..=M =
    /// rejected) of `sample_id` (seeds and temperatures: see the module doc).
    fn options(&self, sample_id: &str, index: usize, attempt: usize) -> GenerateOptions {
        let (seed, temperature) = if attempt == 0 {
            (
                derive_seed(self.seed, &[STAGE, sample_id, &index.to_string()]),
                self.temperature,
            )
        } else {
            (
                derive_seed(
                    self.seed,
                    &[
                        STAGE,
                        sample_id,
                        &index.to_string(),
                        "regenerate",
                        &attempt.to_string(),
                    ],
                ),
                self.temperature.max(self.regenerate_temperature),
            )
        };
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature,
            top_p: self.top_p,
            seed,
            min_new_tokens: 0,
        }
    }

    /// One generation from (prompt ids, settings, seed): the only call into the backend.
    /// Errors: as [`GenerationBackend::complete`].
    pub fn generate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Completion> {
        Ok(self.backend.complete(prompt, opts)?)
    }

    /// A generation prompt over the chunks `ids` of `row` (their text, see
    /// [`PromptTemplate::prompt`]).
    fn prompt_over(&self, row: &SampledRecord, question: &str, ids: &[u32]) -> Result<Vec<u32>> {
        let chunks: Vec<&str> = ids
            .iter()
            .map(|&i| row.chunk_text[i as usize].as_str())
            .collect();
        Ok(self.template.prompt(&self.prompt, &chunks, question)?.0)
    }

    /// The plan of one row: its prompts built and lengths checked before any generation;
    /// [`RowOutcome::Reject`] for a bad row, [`RowOutcome::Skip`] without a reference answer
    /// (`chosen: reference`) or with a prompt too long for the model. Errors: tokenizer and
    /// template failures.
    fn plan(&self, row: SampledRecord) -> Result<RowOutcome<Plan>> {
        if let Err(reject) = check_row(&row) {
            return Ok(RowOutcome::Reject(reject));
        }
        let question = row.key.question.clone().unwrap_or_default();
        let training_chunks: Vec<&str> = row
            .context_chunk_ids
            .iter()
            .map(|&i| row.chunk_text[i as usize].as_str())
            .collect();
        let (prompt_input_ids, prompt_segments) =
            self.template
                .prompt(&self.prompt, &training_chunks, &question)?;
        let mut plan = Plan {
            prompt_input_ids,
            prompt_segments,
            reference: None,
            slots: Vec::new(),
            skipped: None,
            row,
        };
        match self.chosen {
            ChosenSource::Reference => match plan.row.key.answer.as_deref().map(str::trim) {
                Some(a) if !a.is_empty() => plan.reference = Some(a.to_string()),
                _ => return Ok(RowOutcome::Skip("no reference answer")),
            },
            ChosenSource::Generated => {}
        }
        let chosen_prompt = match plan.reference {
            Some(_) => None,
            None => Some(self.prompt_over(&plan.row, &question, &plan.row.chosen_chunk_ids)?),
        };
        let mut prompts = vec![chosen_prompt];
        for ids in &plan.row.rejected_chunk_ids {
            prompts.push(Some(self.prompt_over(&plan.row, &question, ids)?));
        }
        let longest = prompts.iter().flatten().map(Vec::len).max().unwrap_or(0);
        if longest + self.max_new_tokens > self.max_positions {
            return Ok(RowOutcome::Skip("prompt exceeds the model's context"));
        }
        plan.slots = prompts
            .into_iter()
            .map(|p| {
                p.map(|prompt| Slot {
                    prompt,
                    attempt: 0,
                    seed: 0,
                    result: None,
                    pending: true,
                })
            })
            .collect();
        Ok(RowOutcome::Keep(plan))
    }

    /// Runs every pending slot of `plans`, up to [`GenerationBackend::max_in_flight`] at once
    /// on scoped threads; results are stored in their slots, so completion order is
    /// irrelevant. Errors: the first backend error (by slot order).
    fn run_pending(&self, plans: &mut [Plan], ctx: &StageContext) -> Result<()> {
        let mut jobs: Vec<(usize, usize, GenerateOptions)> = Vec::new();
        for (p, plan) in plans.iter().enumerate() {
            if plan.skipped.is_some() {
                continue;
            }
            for (r, slot) in plan.slots.iter().enumerate() {
                if let Some(slot) = slot.as_ref().filter(|s| s.pending) {
                    jobs.push((p, r, self.options(&plan.row.key.sample_id, r, slot.attempt)));
                }
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let results: Vec<Mutex<Option<Result<Completion>>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = self.backend.max_in_flight().clamp(1, jobs.len());
        {
            let plans: &[Plan] = plans;
            let (jobs, results, next) = (&jobs, &results, &next);
            let work = move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((p, r, opts)) = jobs.get(k) else {
                    break;
                };
                let prompt = &plans[*p].slots[*r].as_ref().expect("pending slot").prompt;
                let out = self.generate(prompt, opts);
                let failed = out.is_err();
                *results[k].lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
                if failed {
                    // Stop handing out work; the error ends the run.
                    next.store(jobs.len(), Ordering::Relaxed);
                }
            };
            if workers == 1 {
                work();
            } else {
                std::thread::scope(|scope| {
                    for _ in 0..workers {
                        scope.spawn(work);
                    }
                });
            }
        }
        for ((p, r, opts), result) in jobs.into_iter().zip(results) {
            let Some(result) = result.into_inner().unwrap_or_else(PoisonError::into_inner) else {
                continue; // not started after an earlier error
            };
            let c = result?;
            ctx.stats.add_tokens(STAGE, c.token_ids.len() as u64);
            ctx.stats.count(STAGE, "retries", u64::from(c.retries));
            let slot = plans[p].slots[r].as_mut().expect("pending slot");
            slot.seed = opts.seed;
            slot.result = Some(c);
            slot.pending = false;
        }
        Ok(())
    }

    /// Judges the finished slots of `plan`: marks slots to regenerate (counted), or marks the
    /// sample skipped (counted when [`GeneratorStage::finish`]'s outcome is settled); leaves
    /// it alone when it is complete and carries a preference.
    fn judge(&self, plan: &mut Plan, ctx: &StageContext) {
        if plan.skipped.is_some() {
            return;
        }
        let max = self.max_regenerations;
        let mut skip = None;
        for (r, slot) in plan.slots.iter_mut().enumerate() {
            let Some(slot) = slot.as_mut() else {
                continue;
            };
            let Some(c) = slot.result.as_ref() else {
                continue;
            };
            // Slot 0 is the chosen response; 1..=M the rejected ones.
            let action = match r {
                0 => self.on_length.chosen,
                _ => self.on_length.rejected,
            };
            if c.text.trim().is_empty() {
                skip = skip.or(Some(SKIP_EMPTY));
            } else if end_unknown(c) {
                let (event, reason) = match c.finish_reason {
                    FinishReason::Length => ("regenerations after length", SKIP_LENGTH),
                    FinishReason::Stop => (
                        "regenerations after a stop without a stop token id",
                        SKIP_UNKNOWN_STOP,
                    ),
                };
                match action {
                    // Counted once, in `process`, for the samples that are kept.
                    LengthAction::Keep => {}
                    LengthAction::Regenerate if slot.attempt < max => {
                        slot.attempt += 1;
                        slot.pending = true;
                        slot.result = None;
                        ctx.stats.count(STAGE, event, 1);
                    }
                    LengthAction::Regenerate | LengthAction::Skip => {
                        skip = skip.or(Some(reason));
                    }
                }
            }
        }
        if skip.is_none() && plan.slots.iter().flatten().all(|s| s.result.is_some()) {
            // Every response is in: rejected ones equal to an earlier response are redone.
            let mut seen: Vec<String> = Vec::new();
            if let Some(r) = &plan.reference {
                seen.push(normalise(r));
            }
            for slot in plan.slots.iter_mut() {
                let Some(slot) = slot.as_mut() else {
                    continue;
                };
                let text = normalise(&slot.result.as_ref().expect("complete").text);
                if seen.contains(&text) {
                    if slot.attempt < max {
                        slot.attempt += 1;
                        slot.pending = true;
                        slot.result = None;
                        ctx.stats.count(STAGE, "regenerations after a duplicate", 1);
                    } else {
                        skip = Some(SKIP_DUPLICATE);
                        break;
                    }
                }
                seen.push(text);
            }
        }
        if let Some(reason) = skip {
            plan.skipped = Some(reason);
        }
    }

    /// The output row of a complete plan; [`RowOutcome::Skip`] with the reason
    /// [`GeneratorStage::judge`] gave. Errors: [`EngineError::Internal`] for a plan that is
    /// not complete. It is over 80 lines: it fills every column of the output row (responses, their
    /// ids and ends, lineage, stop ids) in one place, in schema order.
    fn finish(&self, plan: Plan) -> Result<RowOutcome<GeneratedRecord>> {
        if let Some(reason) = plan.skipped {
            return Ok(RowOutcome::Skip(reason));
        }
        let end = self.template.end_of_turn();
        let mut slots = plan.slots.into_iter();
        let chosen_slot = slots.next().flatten();
        let (chosen, chosen_origin) = match (plan.reference, chosen_slot) {
            (Some(answer), _) => {
                let mut input_ids = encode_text(&self.tokenizer, &answer)?;
                input_ids.push(end);
                let chosen = Response {
                    text: answer,
                    input_ids,
                    stop_token_id: Some(end),
                    finish_reason: "reference".into(),
                    seed: 0,
                    model: self.generator.clone(),
                };
                (chosen, "reference")
            }
            (None, Some(slot)) => (Response::generated(slot), "generated"),
            (None, None) => {
                return Err(EngineError::Internal(
                    "generator: neither a reference nor a chosen response".into(),
                ))
            }
        };
        let responses = slots
            .map(|slot| {
                let slot = slot.ok_or_else(|| {
                    EngineError::Internal("generator: a rejected response without a prompt".into())
                })?;
                Ok(Response::generated(slot))
            })
            .collect::<Result<Vec<_>>>()?;
        // The model that answered last (a server may name a revision); the reference has none.
        let model = responses.last().map_or(&chosen.model, |r| &r.model).clone();
        let m = responses.len();
        let (mut rejected, mut rejected_input_ids) = (Vec::with_capacity(m), Vec::with_capacity(m));
        let (mut rejected_finish_reason, mut rejected_seed) =
            (Vec::with_capacity(m), Vec::with_capacity(m));
        let mut rejected_stop_token_id = Vec::with_capacity(m);
        for r in responses {
            rejected.push(r.text);
            rejected_input_ids.push(r.input_ids);
            rejected_finish_reason.push(r.finish_reason);
            rejected_stop_token_id.push(r.stop_token_id);
            rejected_seed.push(r.seed);
        }
        let row = plan.row;
        let context_chunk_scores = row
            .context_chunk_ids
            .iter()
            .map(|&i| row.chunk_scores[i as usize])
            .collect();
        Ok(RowOutcome::Keep(GeneratedRecord {
            key: row.key,
            context_chunk_ids: row.context_chunk_ids,
            context_chunk_scores,
            prompt_input_ids: plan.prompt_input_ids,
            prompt_segments: plan.prompt_segments,
            chosen: chosen.text,
            chosen_input_ids: chosen.input_ids,
            chosen_origin: chosen_origin.into(),
            rejected,
            rejected_input_ids,
            rejected_strategy: row.rejected_strategy,
            generator: self.generator.clone(),
            generator_settings: self.settings.clone(),
            chosen_chunk_ids: row.chosen_chunk_ids,
            rejected_chunk_ids: row.rejected_chunk_ids,
            chosen_finish_reason: chosen.finish_reason,
            rejected_finish_reason,
            chosen_stop_token_id: chosen.stop_token_id,
            rejected_stop_token_id,
            chosen_seed: (chosen_origin == "generated").then_some(chosen.seed),
            rejected_seed,
            generator_model: model,
        }))
    }
}

/// Checks the row's selections against its chunks; a bad row is rejected, not fatal.
fn check_row(row: &SampledRecord) -> std::result::Result<(), Reject> {
    let reject = |field: &str, reason: String| Reject {
        stage: STAGE.into(),
        file: row.key.source_file.clone(),
        row: row.key.source_row,
        field: Some(field.into()),
        reason: format!("sample {}: {reason}", row.key.sample_id),
    };
    let n = row.chunk_input_ids.len();
    if row.chunk_text.len() != n {
        return Err(reject(
            "chunk_text",
            format!(
                "expected {n} chunk texts (one per chunk), got {}",
                row.chunk_text.len()
            ),
        ));
    }
    if row
        .key
        .question
        .as_deref()
        .is_none_or(|q| q.trim().is_empty())
    {
        return Err(reject("question", "missing question".into()));
    }
    if row.chunk_scores.len() != n {
        return Err(reject(
            "chunk_scores",
            format!(
                "expected {n} scores (one per chunk), got {}",
                row.chunk_scores.len()
            ),
        ));
    }
    let lists = std::iter::once(("context_chunk_ids", &row.context_chunk_ids))
        .chain(std::iter::once(("chosen_chunk_ids", &row.chosen_chunk_ids)))
        .chain(
            row.rejected_chunk_ids
                .iter()
                .map(|r| ("rejected_chunk_ids", r)),
        );
    for (field, ids) in lists {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(reject(
                field,
                format!("chunk index {bad} out of range (the document has {n} chunks)"),
            ));
        }
    }
    if row.rejected_strategy.len() != row.rejected_chunk_ids.len() {
        return Err(reject(
            "rejected_strategy",
            format!(
                "expected {} strategies (one per rejected context), got {}",
                row.rejected_chunk_ids.len(),
                row.rejected_strategy.len()
            ),
        ));
    }
    Ok(())
}

impl Stage for GeneratorStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn input_schema(&self) -> SchemaRef {
        logo_schemas::sampled_schema()
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Generates every response of the batch (rounds of concurrent requests until no
    /// response needs regenerating) and emits the kept rows in input order. Bad rows go to
    /// `ctx.rejects`; skipped samples are counted (`no reference answer`, `empty response`,
    /// `prompt exceeds the model's context`, [`SKIP_LENGTH`], [`SKIP_UNKNOWN_STOP`],
    /// [`SKIP_DUPLICATE`]).
    /// Errors: schema mismatch, backend failures, rejects file I/O.
    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let rows = SampledRecord::from_batch(&batch)?;
        let mut plans = Vec::with_capacity(rows.len());
        for row in rows {
            plans.extend(self.plan(row)?.settle(STAGE, ctx)?);
        }
        loop {
            let pending = plans
                .iter()
                .any(|p| p.skipped.is_none() && p.slots.iter().flatten().any(|s| s.pending));
            if !pending {
                break;
            }
            self.run_pending(&mut plans, ctx)?;
            for plan in &mut plans {
                self.judge(plan, ctx);
            }
        }
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            let row = self.finish(plan)?.settle(STAGE, ctx)?;
            if let Some(r) = &row {
                let cut = r.rejected_finish_reason.iter().filter(|f| *f == "length");
                ctx.stats
                    .count(STAGE, "cut rejected responses kept", cut.count() as u64);
                let unknown = r
                    .rejected_finish_reason
                    .iter()
                    .zip(&r.rejected_stop_token_id)
                    .filter(|(f, id)| *f == "stop" && id.is_none());
                ctx.stats.count(
                    STAGE,
                    "rejected responses kept without a stop token id",
                    unknown.count() as u64,
                );
            }
            out.extend(row);
        }
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    //! Tests of [`super`] (`generator.rs`).

    use super::*;
    use logo_policy::fixtures::{in_process, shared_policy_and_tokenizer};
    use logo_schemas::SampleKey;

    fn chatml(tok: &Tokenizer) -> PromptTemplate {
        PromptTemplate::chatml(tok).unwrap()
    }
    use crate::stage::RunStats;
    use logo_formats::rejects::Rejects;

    fn config(extra: &str) -> PipelineConfig {
        PipelineConfig::from_yaml_str(
            &format!(
                "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
             generator: {{max_new_tokens: 48, on_length: regenerate{extra}}}\n\
             sampler: {{num_chunks: 2}}\nchunker: {{chunk_size: 64}}\n"
            ),
            std::path::Path::new("/"),
        )
        .unwrap()
    }

    fn row(tok: &Tokenizer, id: &str) -> SampledRecord {
        let texts = [
            "The Eiffel Tower is in Paris. It was finished in 1889.",
            "Bananas are yellow fruits rich in potassium.",
            "The river Thames flows through London.",
        ];
        SampledRecord {
            key: SampleKey {
                sample_id: id.into(),
                document_id: "doc:1".into(),
                question_index: 0,
                source_file: "doc.jsonl".into(),
                source_row: 1,
                question: Some("When was the Eiffel Tower finished?".into()),
                answer: Some("In 1889.".into()),
                question_origin: "source".into(),
            },
            chunk_input_ids: texts.iter().map(|t| encode_text(tok, t).unwrap()).collect(),
            chunk_text: texts.iter().map(|t| t.to_string()).collect(),
            chunk_scores: vec![7, 0, 1],
            context_chunk_ids: vec![0, 2],
            chosen_chunk_ids: vec![0],
            rejected_chunk_ids: vec![vec![1], vec![1, 0]],
            rejected_strategy: vec!["irrelevant".into(), "partial".into()],
        }
    }

    #[test]
    fn generates_chosen_and_m_rejected() {
        let Some((policy, tok)) = shared_policy_and_tokenizer("generates_chosen_and_m_rejected")
        else {
            return;
        };
        let mut stage =
            GeneratorStage::try_new(&config(""), in_process(&policy), tok.clone(), chatml(&tok))
                .unwrap();
        let mut bad = row(&tok, "doc:1#q1");
        bad.rejected_chunk_ids[0] = vec![9];
        let input = SampledRecord::to_batch(&[row(&tok, "doc:1#q0"), bad]).unwrap();
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let out = stage.process(input, &ctx).unwrap();
        assert_eq!(rejects.counts().get(STAGE), Some(&1));
        let recs = out
            .first()
            .map(|b| GeneratedRecord::from_batch(b).unwrap())
            .unwrap_or_default();
        let snap = stats.snapshot();
        assert_eq!(recs.len(), 1, "skipped: {:?}", snap.skipped);
        assert_eq!(out[0].schema(), logo_schemas::generations_schema());
        let r = &recs[0];
        // SmolLM2-135M q8_0 greedy, observed: chosen (from chunk 0) "The Eiffel Tower was
        // finished in 1889"; rejected[0] (bananas only) "The Eiffel Tower was finished on July
        // 14," (a hallucination, P'); rejected[1] (bananas + chunk 0) "... in 1889".
        assert!(r.chosen.contains("1889"), "{:?}", r.chosen);
        assert_eq!(r.key.sample_id, "doc:1#q0");
        assert_eq!(r.rejected.len(), 2);
        assert_eq!(r.rejected_input_ids.len(), 2);
        assert_eq!(r.rejected_strategy, vec!["irrelevant", "partial"]);
        assert_eq!(r.context_chunk_scores, vec![7, 1]);
        assert_eq!(r.chosen_origin, "generated");
        assert_eq!(r.generator, "Smollm2 135M 8k Lc100K Mix1 Ep2");
        let settings: serde_json::Value = serde_json::from_str(&r.generator_settings).unwrap();
        assert_eq!(settings["weights"], "f32");
        assert_eq!(settings["max_new_tokens"], 48);
        assert_eq!(settings["backend"]["backend"], "in_process");
        for ids in std::iter::once(&r.chosen_input_ids).chain(&r.rejected_input_ids) {
            assert_eq!(ids.last(), Some(&2), "{ids:?}"); // <|im_end|>
            assert!(ids.len() >= 2 && ids.len() <= 49);
            assert!(!ids[..ids.len() - 1].contains(&2));
        }
        // The stop id the model sampled, recorded: each response's last id.
        assert_eq!(r.chosen_stop_token_id, r.chosen_input_ids.last().copied());
        let last: Vec<Option<u32>> = r
            .rejected_input_ids
            .iter()
            .map(|ids| ids.last().copied())
            .collect();
        assert_eq!(r.rejected_stop_token_id, last);
        // The training prompt: prefix + 2 chunks + suffix.
        assert_eq!(r.prompt_segments.len(), 4);
        assert_eq!(
            r.prompt_segments.iter().sum::<u32>() as usize,
            r.prompt_input_ids.len()
        );
        let input = row(&tok, "x");
        assert_eq!(
            r.prompt_segments[1] as usize,
            input.chunk_input_ids[0].len()
        );
        assert_eq!(
            r.prompt_segments[2] as usize,
            input.chunk_input_ids[2].len()
        );
        let generated: u64 = r.chosen_input_ids.len() as u64 - 1
            + r.rejected_input_ids
                .iter()
                .map(|x| x.len() as u64 - 1)
                .sum::<u64>();
        // Every generated token is counted, those of regenerated responses too.
        assert!(snap.tokens.get(STAGE).is_some_and(|&t| t >= generated));
        // The pair carries a preference: no rejected response equals the chosen one.
        for x in &r.rejected {
            assert_ne!(normalise(x), normalise(&r.chosen));
        }
        assert_eq!(r.chosen_finish_reason, "stop");
        assert_eq!(r.rejected_finish_reason, vec!["stop", "stop"]);
        assert_eq!(r.chosen_chunk_ids, vec![0]);
        assert_eq!(r.rejected_chunk_ids, vec![vec![1], vec![1, 0]]);
        assert_eq!(r.generator_model, r.generator);
        assert_eq!(
            r.chosen_seed,
            Some(derive_seed(42, &[STAGE, "doc:1#q0", "0"]))
        );

        // Same seed, same sample: same responses whatever the batch holds.
        let again = stage
            .process(
                SampledRecord::to_batch(&[row(&tok, "doc:1#q0")]).unwrap(),
                &ctx,
            )
            .unwrap();
        let again = GeneratedRecord::from_batch(&again[0]).unwrap();
        assert_eq!(again[0], recs[0]);
    }

    #[test]
    fn sampled_output_ignores_batch_boundaries() {
        let Some((policy, tok)) =
            shared_policy_and_tokenizer("sampled_output_ignores_batch_boundaries")
        else {
            return;
        };
        let cfg = config(", temperature: 1.0, top_p: 0.95");
        let mut stage =
            GeneratorStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok)).unwrap();
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let mut run = |rows: &[SampledRecord]| -> Vec<GeneratedRecord> {
            let out = stage
                .process(SampledRecord::to_batch(rows).unwrap(), &ctx)
                .unwrap();
            out.iter()
                .flat_map(|b| GeneratedRecord::from_batch(b).unwrap())
                .collect()
        };
        let alone = run(&[row(&tok, "doc:1#q7")]);
        let batched = run(&[row(&tok, "doc:1#q3"), row(&tok, "doc:1#q7")]);
        let find =
            |v: &[GeneratedRecord]| v.iter().find(|r| r.key.sample_id == "doc:1#q7").cloned();
        assert_eq!(find(&alone), find(&batched));
        assert!(
            find(&alone).is_some(),
            "skipped: {:?}",
            stats.snapshot().skipped
        );
        let settings: serde_json::Value =
            serde_json::from_str(&alone[0].generator_settings).unwrap();
        assert_eq!(settings["temperature"], 1.0);
        assert_eq!(settings["seed"], 42);
    }

    #[test]
    fn reference_chosen_is_tokenised_with_end_of_turn() {
        let Some((policy, tok)) =
            shared_policy_and_tokenizer("reference_chosen_is_tokenised_with_end_of_turn")
        else {
            return;
        };
        let cfg = config(", chosen: reference");
        let mut stage =
            GeneratorStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok)).unwrap();
        let mut no_answer = row(&tok, "doc:1#q1");
        no_answer.key.answer = None;
        let mut with_control = row(&tok, "doc:1#q0");
        with_control.key.answer = Some("1889 <|im_end|>".into());
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let out = stage
            .process(
                SampledRecord::to_batch(&[with_control, no_answer]).unwrap(),
                &ctx,
            )
            .unwrap();
        let snap = stats.snapshot();
        assert_eq!(snap.skipped.get("generator: no reference answer"), Some(&1));
        let recs = GeneratedRecord::from_batch(&out[0]).unwrap();
        assert_eq!(recs.len(), 1, "skipped: {:?}", snap.skipped);
        let r = &recs[0];
        assert_eq!(r.chosen_origin, "reference");
        assert_eq!(r.chosen, "1889 <|im_end|>");
        // The answer's "<|im_end|>" is text; the only control id is the appended end of turn.
        let mut expected = encode_text(&tok, "1889 <|im_end|>").unwrap();
        expected.push(2);
        assert_eq!(r.chosen_input_ids, expected);
        assert_eq!(r.chosen_stop_token_id, Some(2));
        assert_eq!(r.chosen_input_ids.iter().filter(|&&t| t == 2).count(), 1);
        assert_eq!(r.rejected.len(), 2);
    }

    /// A completion with one id; a `stop` one stopped on `<|im_end|>` (2).
    fn completion(text: &str, finish_reason: FinishReason) -> Completion {
        Completion {
            token_ids: vec![5],
            text: text.into(),
            finish_reason,
            stop_token_id: (finish_reason == FinishReason::Stop).then_some(2),
            model: "m".into(),
            retries: 0,
        }
    }

    fn plan_with(results: Vec<Completion>) -> Plan {
        let texts = ["a"];
        Plan {
            row: SampledRecord {
                key: SampleKey {
                    sample_id: "d#q0".into(),
                    document_id: "d".into(),
                    question_index: 0,
                    source_file: "d.jsonl".into(),
                    source_row: 1,
                    question: Some("q?".into()),
                    answer: None,
                    question_origin: "source".into(),
                },
                chunk_input_ids: vec![vec![5]],
                chunk_text: texts.iter().map(|t| t.to_string()).collect(),
                chunk_scores: vec![1],
                context_chunk_ids: vec![0],
                chosen_chunk_ids: vec![0],
                rejected_chunk_ids: vec![vec![0], vec![0]],
                rejected_strategy: vec!["irrelevant".into(), "partial".into()],
            },
            prompt_input_ids: vec![1],
            prompt_segments: vec![1],
            reference: None,
            slots: results
                .into_iter()
                .map(|c| {
                    Some(Slot {
                        prompt: vec![1],
                        attempt: 0,
                        seed: 0,
                        result: Some(c),
                        pending: false,
                    })
                })
                .collect(),
            skipped: None,
        }
    }

    /// The judging rules on hand-made completions (no model needed).
    #[test]
    fn duplicates_and_cut_responses_are_regenerated_then_skipped() {
        let Some((policy, tok)) = shared_policy_and_tokenizer(
            "duplicates_and_cut_responses_are_regenerated_then_skipped",
        ) else {
            return;
        };
        let ctx_stats = RunStats::default();
        let rejects = Rejects::in_memory();
        let ctx = StageContext {
            rejects: &rejects,
            stats: &ctx_stats,
        };
        assert_eq!(
            normalise("  The  Tower\n is IN Paris. "),
            "the tower is in paris."
        );
        let stage = |extra: &str| {
            GeneratorStage::try_new(
                &config(extra),
                in_process(&policy),
                tok.clone(),
                chatml(&tok),
            )
            .unwrap()
        };
        // rejected[0] equals the chosen one up to case and whitespace: redone with attempt 1.
        let s = stage("");
        let mut plan = plan_with(vec![
            completion("In Paris.", FinishReason::Stop),
            completion("  in   PARIS. ", FinishReason::Stop),
            completion("In Lyon.", FinishReason::Stop),
        ]);
        s.judge(&mut plan, &ctx);
        assert_eq!(plan.skipped, None);
        let pending: Vec<(bool, usize)> = plan
            .slots
            .iter()
            .flatten()
            .map(|x| (x.pending, x.attempt))
            .collect();
        assert_eq!(pending, vec![(false, 0), (true, 1), (false, 0)]);
        // Attempt 1 uses another seed and at least regenerate_temperature.
        let (a, b) = (s.options("d#q0", 1, 0), s.options("d#q0", 1, 1));
        assert_ne!(a.seed, b.seed);
        assert_eq!((a.temperature, b.temperature), (0.0, 0.8));
        // No regeneration allowed: the duplicate skips the sample.
        let s0 = stage(", max_regenerations: 0");
        let mut plan = plan_with(vec![
            completion("In Paris.", FinishReason::Stop),
            completion("In Lyon.", FinishReason::Stop),
            completion("in lyon.", FinishReason::Stop),
        ]);
        s0.judge(&mut plan, &ctx);
        assert_eq!(plan.skipped, Some(SKIP_DUPLICATE));
        let outcome = s0.finish(plan).unwrap();
        assert_eq!(outcome, RowOutcome::Skip(SKIP_DUPLICATE));
        assert_eq!(outcome.settle(STAGE, &ctx).unwrap(), None);
        // A cut response: regenerated under on_length: regenerate, skipped under skip (the rule
        // for both roles when on_length is one value).
        let mut plan = plan_with(vec![
            completion("In Paris.", FinishReason::Length),
            completion("In Lyon.", FinishReason::Stop),
            completion("In Rome.", FinishReason::Stop),
        ]);
        s.judge(&mut plan, &ctx);
        assert!(plan.slots[0].as_ref().unwrap().pending);
        let skip = GeneratorStage::try_new(
            &PipelineConfig::from_yaml_str(
                "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n\
             generator: {max_new_tokens: 48, on_length: skip}\nsampler: {num_chunks: 2}\n\
             chunker: {chunk_size: 64}\n",
                std::path::Path::new("/"),
            )
            .unwrap(),
            in_process(&policy),
            tok.clone(),
            chatml(&tok),
        )
        .unwrap();
        let mut plan = plan_with(vec![
            completion("In Paris.", FinishReason::Length),
            completion("In Lyon.", FinishReason::Stop),
            completion("In Rome.", FinishReason::Stop),
        ]);
        skip.judge(&mut plan, &ctx);
        assert_eq!(plan.skipped, Some(SKIP_LENGTH));
        assert_eq!(
            skip.finish(plan).unwrap().settle(STAGE, &ctx).unwrap(),
            None
        );
        let snap = ctx_stats.snapshot();
        assert_eq!(
            snap.skipped
                .get("generator: rejected equal to another response"),
            Some(&1)
        );
        assert_eq!(
            snap.skipped.get("generator: response hit max_new_tokens"),
            Some(&1)
        );
        assert_eq!(
            snap.events
                .get("generator: regenerations after a duplicate"),
            Some(&1)
        );
        assert_eq!(
            snap.events.get("generator: regenerations after length"),
            Some(&1)
        );
    }

    /// The default `on_length: {chosen: regenerate, rejected: keep}`: a cut rejected response is
    /// kept with exactly the ids the model wrote (no end of turn appended) and `length` recorded;
    /// a cut chosen response is regenerated, never kept.
    #[test]
    fn a_cut_rejected_response_is_kept_without_an_end_of_turn() {
        let Some((policy, tok)) =
            shared_policy_and_tokenizer("a_cut_rejected_response_is_kept_without_an_end_of_turn")
        else {
            return;
        };
        let stats = RunStats::default();
        let rejects = Rejects::in_memory();
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let cfg = PipelineConfig::from_yaml_str(
            "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n\
         generator: {max_new_tokens: 48}\nsampler: {num_chunks: 2}\n\
         chunker: {chunk_size: 64}\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let stage =
            GeneratorStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok)).unwrap();
        let end = stage.template.end_of_turn();
        let with_ids = |ids: Vec<u32>, text: &str, f: FinishReason| Completion {
            token_ids: ids,
            ..completion(text, f)
        };
        let mut plan = plan_with(vec![
            with_ids(vec![11, 12], "In Paris.", FinishReason::Stop),
            with_ids(vec![21, 22, 23], "In Lyon, which is", FinishReason::Length),
            with_ids(vec![31], "In Rome.", FinishReason::Stop),
        ]);
        stage.judge(&mut plan, &ctx);
        assert_eq!(plan.skipped, None);
        assert!(plan.slots.iter().flatten().all(|s| !s.pending));
        let RowOutcome::Keep(row) = stage.finish(plan).unwrap() else {
            panic!("a sample with a cut rejected response is kept");
        };
        assert_eq!(row.chosen_input_ids, vec![11, 12, end]);
        assert_eq!(row.chosen_finish_reason, "stop");
        assert_eq!(
            row.rejected_input_ids,
            vec![vec![21, 22, 23], vec![31, end]]
        );
        assert_eq!(row.rejected_finish_reason, vec!["length", "stop"]);
        assert_eq!(row.chosen_stop_token_id, Some(end));
        assert_eq!(row.rejected_stop_token_id, vec![None, Some(end)]);
        assert_eq!(row.rejected, vec!["In Lyon, which is", "In Rome."]);
        // A cut chosen response is regenerated (attempt 1), not kept.
        let mut plan = plan_with(vec![
            with_ids(vec![11, 12], "In Paris, the", FinishReason::Length),
            with_ids(vec![21], "In Lyon.", FinishReason::Stop),
            with_ids(vec![31], "In Rome.", FinishReason::Stop),
        ]);
        stage.judge(&mut plan, &ctx);
        let pending: Vec<(bool, usize)> = plan
            .slots
            .iter()
            .flatten()
            .map(|x| (x.pending, x.attempt))
            .collect();
        assert_eq!(pending, vec![(true, 1), (false, 0), (false, 0)]);
        assert_eq!(
            stats
                .snapshot()
                .events
                .get("generator: regenerations after length"),
            Some(&1)
        );
    }

    /// Issue 23 (item 4): a response ends with exactly the stop token the model wrote, not the
    /// template's end of turn: a model that ends with `<|endoftext|>` (0) under a ChatML
    /// template (end of turn `<|im_end|>`, 2) keeps its 0, recorded in the stop id columns. A
    /// `stop` whose token the server did not identify gets no end id: a rejected one is kept
    /// as written (stop id null, `rejected responses kept without a stop token id`), a chosen
    /// one is regenerated like a cut one, then skipped (`stop token not identified by the
    /// server`).
    #[test]
    fn a_response_ends_with_the_stop_token_the_model_wrote() {
        let Some((policy, tok)) =
            shared_policy_and_tokenizer("a_response_ends_with_the_stop_token_the_model_wrote")
        else {
            return;
        };
        let stats = RunStats::default();
        let rejects = Rejects::in_memory();
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let cfg = |extra: &str| {
            PipelineConfig::from_yaml_str(
                &format!(
                    "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
                     generator: {{max_new_tokens: 48{extra}}}\nsampler: {{num_chunks: 2}}\n\
                     chunker: {{chunk_size: 64}}\n"
                ),
                std::path::Path::new("/"),
            )
            .unwrap()
        };
        let stage =
            GeneratorStage::try_new(&cfg(""), in_process(&policy), tok.clone(), chatml(&tok))
                .unwrap();
        assert_eq!(stage.template.end_of_turn(), 2);
        let stopped = |ids: Vec<u32>, text: &str, stop: Option<u32>| Completion {
            token_ids: ids,
            stop_token_id: stop,
            ..completion(text, FinishReason::Stop)
        };
        let mut plan = plan_with(vec![
            stopped(vec![11, 12], "In Paris.", Some(0)),
            stopped(vec![21], "In Lyon.", Some(2)),
            stopped(vec![31, 32], "In Rome.", None),
        ]);
        stage.judge(&mut plan, &ctx);
        assert_eq!(plan.skipped, None);
        let RowOutcome::Keep(row) = stage.finish(plan).unwrap() else {
            panic!("kept");
        };
        assert_eq!(row.chosen_input_ids, vec![11, 12, 0]);
        assert_eq!(row.chosen_stop_token_id, Some(0));
        assert_eq!(row.rejected_input_ids, vec![vec![21, 2], vec![31, 32]]);
        assert_eq!(row.rejected_stop_token_id, vec![Some(2), None]);
        assert_eq!(row.rejected_finish_reason, vec!["stop", "stop"]);
        let batch = GeneratedRecord::to_batch(std::slice::from_ref(&row)).unwrap();
        assert_eq!(GeneratedRecord::from_batch(&batch).unwrap(), vec![row]);

        // A chosen response with an unidentified stop: regenerated, then skipped.
        let chosen_unknown = || {
            plan_with(vec![
                stopped(vec![11], "In Paris.", None),
                stopped(vec![21], "In Lyon.", Some(2)),
                stopped(vec![31], "In Rome.", Some(2)),
            ])
        };
        let mut plan = chosen_unknown();
        stage.judge(&mut plan, &ctx);
        assert!(plan.slots[0].as_ref().unwrap().pending);
        let never = GeneratorStage::try_new(
            &cfg(", max_regenerations: 0"),
            in_process(&policy),
            tok.clone(),
            chatml(&tok),
        )
        .unwrap();
        let mut plan = chosen_unknown();
        never.judge(&mut plan, &ctx);
        assert_eq!(plan.skipped, Some(SKIP_UNKNOWN_STOP));
        let snap = stats.snapshot();
        assert_eq!(
            snap.events
                .get("generator: regenerations after a stop without a stop token id"),
            Some(&1)
        );
        assert_eq!(
            snap.events.get("generator: regenerations after length"),
            None
        );
    }
}
