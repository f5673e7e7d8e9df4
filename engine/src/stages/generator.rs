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
//! [`logo_schemas::generations_schema`] ([`GeneratedRecord`]). Prompts are ChatML
//! ([`ChatTemplate::prompt`]); responses end with `<|im_end|>`, the end of turn the model must
//! learn. Generation is sequential: one model, and a second rayon thread was measured to slow
//! decoding on the target 2-core machine.
//!
//! Seeds: response `r` (0 = chosen, 1..=M = rejected) of sample `s` is sampled with
//! `derive_seed(cfg.seed, ["generator", s, r])`, so the output does not depend on batch
//! boundaries.

use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{GeneratedRecord, Record, SampledRecord};
use tokenizers::Tokenizer;

use crate::config::{ChosenSource, PipelineConfig};
use crate::error::{EngineError, Result};
use crate::model::{encode_text, ChatTemplate, GenerateOptions, Generation, Policy};
use crate::replay::ReplayCache;
use crate::seed::derive_seed;
use crate::stage::{emit, Reject, Stage, StageContext};

const STAGE: &str = "generator";

/// Tokens of the chat template around the chunks and question (system message excluded);
/// used only for the up-front context-length warning.
const TEMPLATE_ALLOWANCE: usize = 64;

/// The generator stage (see the module doc). Holds the shared policy; each response locks it
/// for the duration of one generation.
pub struct GeneratorStage {
    policy: Arc<Mutex<Policy>>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    system_prompt: String,
    chosen: ChosenSource,
    max_new_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    max_positions: usize,
    generator: String,
    settings: String,
    schema: SchemaRef,
    replay: Option<Arc<ReplayCache>>,
}

impl std::fmt::Debug for GeneratorStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorStage")
            .field("generator", &self.generator)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl GeneratorStage {
    /// Builds the stage from `cfg.generator` (`max_new_tokens`, `temperature`, `top_p`,
    /// `chosen`, `system_prompt`), `cfg.seed` and the shared policy.
    ///
    /// `generator_settings` is the JSON
    /// `{"max_new_tokens", "temperature", "top_p", "seed", "weights", "chosen"}`.
    /// When `sampler.num_chunks × chunker.chunk_size + max_new_tokens` may exceed the model's
    /// positions ([`Policy::max_positions`]: 8192 for SmolLM2 with f32 weights, 4096 with the
    /// quantised backend), a warning is logged: such samples are
    /// skipped with reason `prompt exceeds the model's context`.
    ///
    /// Errors: [`EngineError::Config`] (`generator.max_new_tokens` leaves no room for a
    /// prompt).
    pub fn try_new(cfg: &PipelineConfig, policy: Arc<Mutex<Policy>>) -> Result<Self> {
        let (tokenizer, template, name, weights, max_positions) = {
            let p = policy.lock().unwrap_or_else(PoisonError::into_inner);
            (
                p.tokenizer().clone(),
                p.template(),
                p.name().to_string(),
                p.weights(),
                p.max_positions(),
            )
        };
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
        let settings = serde_json::json!({
            "max_new_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "top_p": g.top_p,
            "seed": cfg.seed,
            "weights": weights,
            "chosen": g.chosen,
        })
        .to_string();
        Ok(Self {
            policy,
            tokenizer,
            template,
            system_prompt: g.system_prompt.clone(),
            chosen: g.chosen,
            max_new_tokens: g.max_new_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            seed: cfg.seed,
            max_positions,
            generator: name,
            settings,
            schema: logo_schemas::generations_schema(),
            replay: None,
        })
    }

    /// Answers generations from `replay` when it holds them, and stores the others there
    /// ([`crate::replay`]).
    pub fn with_replay(mut self, replay: Arc<ReplayCache>) -> Self {
        self.replay = Some(replay);
        self
    }

    /// Options of response `index` (0 = chosen, 1..=M = rejected) of `sample_id`.
    fn options(&self, sample_id: &str, index: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: derive_seed(self.seed, &[STAGE, sample_id, &index.to_string()]),
            min_new_tokens: 0,
        }
    }

    fn generate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Generation> {
        let generate = || {
            self.policy
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .generate(prompt, opts)
        };
        match &self.replay {
            Some(r) => r.generate(prompt, opts, generate),
            None => generate(),
        }
    }

    /// A generation prompt over the chunks `ids` of `row`.
    fn prompt_over(&self, row: &SampledRecord, question: &str, ids: &[u32]) -> Result<Vec<u32>> {
        let chunks: Vec<&[u32]> = ids
            .iter()
            .map(|&i| row.chunk_input_ids[i as usize].as_slice())
            .collect();
        Ok(self
            .template
            .prompt(&self.tokenizer, &self.system_prompt, &chunks, question)?
            .0)
    }

    /// Generates one response; `None` (skip counted) when it is empty after trimming.
    fn respond(
        &self,
        prompt: &[u32],
        sample_id: &str,
        index: usize,
        ctx: &StageContext,
    ) -> Result<Option<(String, Vec<u32>)>> {
        let g = self.generate(prompt, &self.options(sample_id, index))?;
        ctx.stats.add_tokens(STAGE, g.token_ids.len() as u64);
        if g.text.trim().is_empty() {
            ctx.stats.skip(STAGE, "empty response");
            return Ok(None);
        }
        let mut ids = g.token_ids;
        ids.push(self.template.im_end);
        Ok(Some((g.text, ids)))
    }

    /// Builds the output row of one sample; `Ok(Ok(None))` when skipped (counted), `Ok(Err)`
    /// for a bad row.
    fn sample(
        &self,
        row: SampledRecord,
        ctx: &StageContext,
    ) -> Result<std::result::Result<Option<GeneratedRecord>, Reject>> {
        if let Err(reject) = check_row(&row) {
            return Ok(Err(reject));
        }
        let question = row.question.clone().unwrap_or_default();
        let training_chunks: Vec<&[u32]> = row
            .context_chunk_ids
            .iter()
            .map(|&i| row.chunk_input_ids[i as usize].as_slice())
            .collect();
        let (prompt_input_ids, prompt_segments) = self.template.prompt(
            &self.tokenizer,
            &self.system_prompt,
            &training_chunks,
            &question,
        )?;

        let reference = match self.chosen {
            ChosenSource::Reference => match row.answer.as_deref().map(str::trim) {
                Some(a) if !a.is_empty() => Some(a.to_string()),
                _ => {
                    ctx.stats.skip(STAGE, "no reference answer");
                    return Ok(Ok(None));
                }
            },
            ChosenSource::Generated => None,
        };
        // Every generation prompt is built (and its length checked) before any generation.
        let chosen_prompt = match reference {
            Some(_) => None,
            None => Some(self.prompt_over(&row, &question, &row.chosen_chunk_ids)?),
        };
        let rejected_prompts = row
            .rejected_chunk_ids
            .iter()
            .map(|ids| self.prompt_over(&row, &question, ids))
            .collect::<Result<Vec<_>>>()?;
        let longest = chosen_prompt
            .iter()
            .chain(&rejected_prompts)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        if longest + self.max_new_tokens > self.max_positions {
            ctx.stats.skip(STAGE, "prompt exceeds the model's context");
            return Ok(Ok(None));
        }

        let (chosen, chosen_input_ids, chosen_origin) = match (reference, chosen_prompt) {
            (Some(answer), _) => {
                let mut ids = encode_text(&self.tokenizer, &answer)?;
                ids.push(self.template.im_end);
                (answer, ids, "reference")
            }
            (None, Some(prompt)) => match self.respond(&prompt, &row.sample_id, 0, ctx)? {
                Some((text, ids)) => (text, ids, "generated"),
                None => return Ok(Ok(None)),
            },
            (None, None) => {
                return Err(EngineError::Internal(
                    "generator: neither a reference nor a chosen prompt".into(),
                ))
            }
        };
        let mut rejected = Vec::with_capacity(rejected_prompts.len());
        let mut rejected_input_ids = Vec::with_capacity(rejected_prompts.len());
        for (j, prompt) in rejected_prompts.iter().enumerate() {
            match self.respond(prompt, &row.sample_id, j + 1, ctx)? {
                Some((text, ids)) => {
                    rejected.push(text);
                    rejected_input_ids.push(ids);
                }
                None => return Ok(Ok(None)),
            }
        }
        let context_chunk_scores = row
            .context_chunk_ids
            .iter()
            .map(|&i| row.chunk_scores[i as usize])
            .collect();
        Ok(Ok(Some(GeneratedRecord {
            sample_id: row.sample_id,
            document_id: row.document_id,
            question_index: row.question_index,
            source_file: row.source_file,
            source_row: row.source_row,
            question: row.question,
            answer: row.answer,
            question_origin: row.question_origin,
            context_chunk_ids: row.context_chunk_ids,
            context_chunk_scores,
            prompt_input_ids,
            prompt_segments,
            chosen,
            chosen_input_ids,
            chosen_origin: chosen_origin.into(),
            rejected,
            rejected_input_ids,
            rejected_strategy: row.rejected_strategy,
            generator: self.generator.clone(),
            generator_settings: self.settings.clone(),
        })))
    }
}

/// Checks the row's selections against its chunks; a bad row is rejected, not fatal.
fn check_row(row: &SampledRecord) -> std::result::Result<(), Reject> {
    let reject = |field: &str, reason: String| Reject {
        stage: STAGE.into(),
        file: row.source_file.clone(),
        row: row.source_row,
        field: Some(field.into()),
        reason: format!("sample {}: {reason}", row.sample_id),
    };
    let n = row.chunk_input_ids.len();
    if row.question.as_deref().is_none_or(|q| q.trim().is_empty()) {
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

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Generates every row in order. Bad rows go to `ctx.rejects`; skipped samples are counted
    /// (`no reference answer`, `empty response`, `prompt exceeds the model's context`).
    /// Errors: schema mismatch, model failures, rejects file I/O.
    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let rows = SampledRecord::from_batch(&batch)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match self.sample(row, ctx)? {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => {}
                Err(reject) => ctx.rejects.push(reject)?,
            }
        }
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::shared_policy_and_tokenizer;
    use crate::stage::{Rejects, RunStats};

    fn config(extra: &str) -> PipelineConfig {
        PipelineConfig::from_yaml_str(
            &format!(
                "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
                 generator: {{max_new_tokens: 12{extra}}}\n\
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
            sample_id: id.into(),
            document_id: "doc:1".into(),
            question_index: 0,
            source_file: "doc.jsonl".into(),
            source_row: 1,
            question: Some("When was the Eiffel Tower finished?".into()),
            answer: Some("In 1889.".into()),
            question_origin: "source".into(),
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
        let mut stage = GeneratorStage::try_new(&config(""), policy.clone()).unwrap();
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
        assert_eq!(r.sample_id, "doc:1#q0");
        assert_eq!(r.rejected.len(), 2);
        assert_eq!(r.rejected_input_ids.len(), 2);
        assert_eq!(r.rejected_strategy, vec!["irrelevant", "partial"]);
        assert_eq!(r.context_chunk_scores, vec![7, 1]);
        assert_eq!(r.chosen_origin, "generated");
        assert_eq!(r.generator, "Smollm2 135M 8k Lc100K Mix1 Ep2");
        let settings: serde_json::Value = serde_json::from_str(&r.generator_settings).unwrap();
        assert_eq!(settings["weights"], "f32");
        assert_eq!(settings["max_new_tokens"], 12);
        for ids in std::iter::once(&r.chosen_input_ids).chain(&r.rejected_input_ids) {
            assert_eq!(ids.last(), Some(&2), "{ids:?}"); // <|im_end|>
            assert!(ids.len() >= 2 && ids.len() <= 13);
            assert!(!ids[..ids.len() - 1].contains(&2));
        }
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
        assert_eq!(snap.tokens.get(STAGE), Some(&generated));

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
        let mut stage = GeneratorStage::try_new(&cfg, policy.clone()).unwrap();
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
        let find = |v: &[GeneratedRecord]| v.iter().find(|r| r.sample_id == "doc:1#q7").cloned();
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
        let mut stage = GeneratorStage::try_new(&cfg, policy.clone()).unwrap();
        let mut no_answer = row(&tok, "doc:1#q1");
        no_answer.answer = None;
        let mut with_control = row(&tok, "doc:1#q0");
        with_control.answer = Some("1889 <|im_end|>".into());
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
        assert_eq!(r.chosen_input_ids.iter().filter(|&&t| t == 2).count(), 1);
        assert_eq!(r.rejected.len(), 2);
    }
}
