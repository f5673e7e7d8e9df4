//! Question generation for raw documents (LOGO section 4.1, second corpus: for RedPajama
//! instances "we prompt the open-source LCM Qwen2-70B-Instruct to generate questions for each
//! instance"). Here the policy model itself writes one question and its short answer from a
//! passage of the document.
//!
//! Input and output: [`logo_schemas::documents_schema`] batches ([`DocumentRecord`]). Rows
//! that already have a question pass through untouched, and so do all rows when
//! `questions.enabled` is false (the source rejected question-less rows then). For a row with
//! `question == None`:
//!
//! 1. a passage of `questions.passage_tokens` tokens starts at a position drawn from
//!    `rng_for(cfg.seed, ["questions", sample_id])` (the whole document when shorter);
//! 2. the model is asked, greedily, for `Question: …\nAnswer: …` (the reply is started with
//!    `Question:` so that it follows the format);
//! 3. the reply is parsed ([`parse_question_answer`]). When it holds no `Answer:` (small
//!    models often write "The answer is …" or a second question), its first line is taken as
//!    the question ([`question_line`]: up to the first `?`) and the model is asked again with
//!    its reply restarted as `Question: {question}\nAnswer:` ([`parse_answer`]);
//! 4. a reply that still does not parse is asked again, up to `questions.max_retries` times,
//!    sampled at temperature 0.7 with `derive_seed(cfg.seed, ["questions", sample_id,
//!    "retry", a])` (counted as `questions: retries`);
//! 5. `question`, `answer` and `question_origin = "generated"` are set. When no attempt
//!    parses, the row is dropped, counted as `questions: unparseable question`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{DocumentRecord, Record};
use rand::Rng;
use tokenizers::Tokenizer;

use crate::config::PipelineConfig;
use crate::error::{EngineError, Result};
use crate::stage::{emit, RowOutcome, Stage, StageContext};
use crate::stages::seed::{derive_seed, rng_for};
use logo_formats::rejects::Reject;
use logo_policy::backend::GenerationBackend;
use logo_policy::model::GenerateOptions;
use logo_policy::template::PromptTemplate;

const STAGE: &str = "questions";

/// System message of the question-writing prompt.
const SYSTEM: &str = "You are a helpful assistant that writes reading-comprehension questions.";

/// User message before the passage.
const BEFORE_PASSAGE: &str = "Passage:\n";

/// User message after the passage.
const AFTER_PASSAGE: &str = "\n\nWrite one question that can be answered from the passage above, \
and its short answer. Use exactly this format:\nQuestion: <the question>\nAnswer: <the short answer>";

/// What the assistant's reply is started with; the model continues it.
const REPLY_PREFIX: &str = "Question:";

/// Sampling temperature of a retry after an unparseable reply (the first attempt is greedy).
const RETRY_TEMPERATURE: f64 = 0.7;

/// Tokens of the prompt besides the passage (template, instructions), rounded up; used to
/// check `passage_tokens + max_new_tokens` against the model's positions.
const PROMPT_ALLOWANCE: usize = 128;

/// The question-generation stage (see the module doc).
pub struct QuestionsStage {
    backend: Arc<dyn GenerationBackend>,
    tokenizer: Arc<Tokenizer>,
    template: PromptTemplate,
    enabled: bool,
    passage_tokens: usize,
    max_new_tokens: usize,
    max_retries: usize,
    seed: u64,
    schema: SchemaRef,
}

impl std::fmt::Debug for QuestionsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuestionsStage")
            .field("enabled", &self.enabled)
            .field("passage_tokens", &self.passage_tokens)
            .field("max_new_tokens", &self.max_new_tokens)
            .finish_non_exhaustive()
    }
}

impl QuestionsStage {
    /// Builds the stage from `cfg.questions` (`enabled`, `passage_tokens`, `max_new_tokens`)
    /// and `cfg.seed`; `tokenizer` is the model's (from
    /// [`logo_policy::tokenizer::load_tokenizer`], an owned `Tokenizer` or an `Arc`), used to
    /// cut passages.
    ///
    /// Errors: [`EngineError::Config`] (`questions.passage_tokens`) when enabled and
    /// `passage_tokens + max_new_tokens + 128` exceeds the model's positions
    /// ([`GenerationBackend::max_positions`]);
    /// [`EngineError::Tokenizer`] when the tokenizer lacks the ChatML control tokens.
    pub fn try_new(
        cfg: &PipelineConfig,
        backend: Arc<dyn GenerationBackend>,
        tokenizer: impl Into<Arc<Tokenizer>>,
        template: PromptTemplate,
    ) -> Result<Self> {
        let tokenizer = tokenizer.into();
        let max_positions = backend.max_positions();
        let q = &cfg.questions;
        let needed = q.passage_tokens + q.max_new_tokens + PROMPT_ALLOWANCE;
        if q.enabled && needed > max_positions {
            return Err(EngineError::Config {
                key: "questions.passage_tokens".into(),
                message: format!(
                    "passage_tokens + max_new_tokens + {PROMPT_ALLOWANCE} (prompt) = {needed} \
                     exceeds the model's {max_positions} positions"
                ),
            });
        }
        Ok(Self {
            backend,
            tokenizer,
            template,
            enabled: q.enabled,
            passage_tokens: q.passage_tokens,
            max_new_tokens: q.max_new_tokens,
            max_retries: q.max_retries,
            seed: cfg.seed,
            schema: logo_schemas::documents_schema(),
        })
    }

    /// The passage of `doc` shown to the model for `sample_id`: the text of a window of
    /// `passage_tokens` tokens of the document's encoding (the whole document when shorter;
    /// empty when it has no token), cut at the tokens' byte offsets widened to character
    /// boundaries. Errors: [`EngineError::Tokenizer`].
    fn passage<'d>(&self, sample_id: &str, doc: &'d str) -> Result<&'d str> {
        let enc = self
            .tokenizer
            .encode(doc, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let offsets = enc.get_offsets();
        if offsets.len() <= self.passage_tokens {
            return Ok(if offsets.is_empty() { "" } else { doc });
        }
        let mut rng = rng_for(self.seed, &[STAGE, sample_id]);
        let start = rng.random_range(0..=offsets.len() - self.passage_tokens);
        let mut from = offsets[start].0.min(doc.len());
        while !doc.is_char_boundary(from) {
            from -= 1;
        }
        let mut to = offsets[start + self.passage_tokens - 1]
            .1
            .clamp(from, doc.len());
        while !doc.is_char_boundary(to) {
            to += 1;
        }
        Ok(&doc[from..to])
    }

    /// Fills the question of one raw row: [`RowOutcome::Skip`] when the reply cannot be
    /// parsed, [`RowOutcome::Reject`] for an empty document. Errors: model failures.
    fn ask(
        &self,
        mut row: DocumentRecord,
        ctx: &StageContext,
    ) -> Result<RowOutcome<DocumentRecord>> {
        let context = row.context.clone();
        let passage = self.passage(&row.key.sample_id, &context)?;
        if passage.is_empty() {
            return Ok(RowOutcome::Reject(Reject {
                stage: STAGE.into(),
                file: row.key.source_file.clone(),
                row: row.key.source_row,
                field: Some("context".into()),
                reason: format!("sample {}: empty document", row.key.sample_id),
            }));
        }
        for attempt in 0..=self.max_retries {
            let id = &row.key.sample_id;
            let opts = if attempt == 0 {
                GenerateOptions {
                    seed: derive_seed(self.seed, &[STAGE, id]),
                    ..GenerateOptions::greedy(self.max_new_tokens)
                }
            } else {
                ctx.stats.count(STAGE, "retries", 1);
                GenerateOptions {
                    seed: derive_seed(self.seed, &[STAGE, id, "retry", &attempt.to_string()]),
                    temperature: RETRY_TEMPERATURE,
                    top_p: 0.9,
                    ..GenerateOptions::greedy(self.max_new_tokens)
                }
            };
            if let Some((question, answer)) = self.ask_once(passage, &opts, ctx)? {
                row.key.question = Some(question);
                row.key.answer = Some(answer);
                row.key.question_origin = "generated".into();
                return Ok(RowOutcome::Keep(row));
            }
        }
        Ok(RowOutcome::Skip("unparseable question"))
    }

    /// One attempt: the reply to the question prompt, parsed; when it holds no `Answer:`, its
    /// question line with the model's answer to it. `None` when neither parses.
    fn ask_once(
        &self,
        passage: &str,
        opts: &GenerateOptions,
        ctx: &StageContext,
    ) -> Result<Option<(String, String)>> {
        // First ask: the reply starts with "Question:" and should hold "Answer:" too.
        let reply = self.continue_reply(passage, REPLY_PREFIX, opts, ctx)?;
        if let Some(qa) = parse_question_answer(&reply) {
            return Ok(Some(qa));
        }
        // Second ask: the reply restarted with its question and "Answer:".
        let Some(question) = question_line(&reply) else {
            tracing::debug!("questions: no question in the reply {reply:?}");
            return Ok(None);
        };
        let prefix = format!("{REPLY_PREFIX} {question}\nAnswer:");
        let reply = self.continue_reply(passage, &prefix, opts, ctx)?;
        let answer = parse_answer(&reply);
        if answer.is_none() {
            tracing::debug!("questions: no answer in the reply {reply:?}");
        }
        Ok(answer.map(|a| (question, a)))
    }

    /// The model's continuation of the question prompt over `passage` whose assistant reply
    /// starts with `reply_prefix`. Counts the generated tokens.
    fn continue_reply(
        &self,
        passage: &str,
        reply_prefix: &str,
        opts: &GenerateOptions,
        ctx: &StageContext,
    ) -> Result<String> {
        let prompt = self.template.chat(
            SYSTEM,
            &[BEFORE_PASSAGE, passage, AFTER_PASSAGE],
            reply_prefix,
        )?;
        let g = self.backend.complete(&prompt, opts)?;
        ctx.stats.add_tokens(STAGE, g.token_ids.len() as u64);
        Ok(g.text)
    }
}

/// Parses the model's continuation of `"Question:"`: `" {question}\nAnswer: {answer}"`.
/// The question is the text before the first `Answer:` (case-insensitive), whitespace
/// collapsed; the answer is [`parse_answer`] of the text after it. Returns `None` unless both
/// are non-empty and the question holds a letter.
pub fn parse_question_answer(reply: &str) -> Option<(String, String)> {
    let at = reply.to_ascii_lowercase().find("answer:")?;
    let question = collapse(reply[..at].trim().trim_start_matches(':'));
    let answer = parse_answer(&reply[at + "answer:".len()..])?;
    question
        .chars()
        .any(char::is_alphabetic)
        .then_some((question, answer))
}

/// The answer in the model's continuation of `"Answer:"`: the text up to a blank line or a
/// further `Question:` (case-insensitive), whitespace collapsed; `None` when empty.
pub fn parse_answer(reply: &str) -> Option<String> {
    let lower = reply.to_ascii_lowercase();
    let end = [lower.find("\n\n"), lower.find("question:")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(reply.len());
    let answer = collapse(&reply[..end]);
    (!answer.is_empty()).then_some(answer)
}

/// The question of a reply that has no `Answer:`: its first non-blank line up to and
/// including the first `?`, whitespace collapsed, a leading `Question:` removed; `None` when
/// that line has no `?` or fewer than 3 words.
pub fn question_line(reply: &str) -> Option<String> {
    let line = reply.lines().find(|l| !l.trim().is_empty())?;
    let line = line.trim().trim_start_matches(':').trim();
    let line = match line.get(..9) {
        Some(p) if p.eq_ignore_ascii_case("question:") => &line[9..],
        _ => line,
    };
    let end = line.find('?')?;
    let question = collapse(&line[..=end]);
    let words = question
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphabetic));
    (words.count() >= 3).then_some(question)
}

/// Trims and collapses runs of whitespace to one space.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Stage for QuestionsStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn input_schema(&self) -> SchemaRef {
        logo_schemas::documents_schema()
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Passes rows with a question (or all rows when disabled) through untouched; asks the
    /// model for the others, in order. Errors: schema mismatch, model failures, rejects I/O.
    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        if !self.enabled {
            return Ok(vec![batch]);
        }
        let rows = DocumentRecord::from_batch(&batch)?;
        if rows.iter().all(|r| r.key.question.is_some()) {
            return Ok(vec![batch]);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if row.key.question.is_some() {
                out.push(row);
                continue;
            }
            out.extend(self.ask(row, ctx)?.settle(STAGE, ctx)?);
        }
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logo_policy::fixtures::{in_process, shared_policy, shared_policy_and_tokenizer};
    use logo_schemas::SampleKey;
    use std::sync::PoisonError;

    fn chatml(tok: &Tokenizer) -> PromptTemplate {
        PromptTemplate::chatml(tok).unwrap()
    }
    use crate::stage::RunStats;
    use logo_formats::rejects::Rejects;

    fn config(enabled: bool) -> PipelineConfig {
        PipelineConfig::from_yaml_str(
            &format!(
                "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
                 questions: {{enabled: {enabled}, passage_tokens: 48, max_new_tokens: 40}}\n"
            ),
            std::path::Path::new("/"),
        )
        .unwrap()
    }

    fn doc(id: &str, question: Option<&str>) -> DocumentRecord {
        DocumentRecord {
            key: SampleKey {
                sample_id: format!("{id}#q0"),
                document_id: id.into(),
                question_index: 0,
                source_file: "docs.jsonl".into(),
                source_row: 1,
                question: question.map(Into::into),
                answer: None,
                question_origin: "source".into(),
            },
            context: "The Great Wall of China is a series of fortifications built across the \
                      historical northern borders of ancient Chinese states. Its best-known \
                      parts were built by the Ming dynasty between 1368 and 1644. The wall is \
                      more than 21,000 kilometres long."
                .into(),
        }
    }

    #[test]
    fn parses_the_fixed_format() {
        assert_eq!(
            parse_question_answer(" Who built it?\nAnswer: The Ming dynasty.\n\nMore text"),
            Some(("Who built it?".into(), "The Ming dynasty.".into()))
        );
        assert_eq!(
            parse_question_answer(" How long\n is it? ANSWER: 21,000 km Question: again?"),
            Some(("How long is it?".into(), "21,000 km".into()))
        );
        assert_eq!(parse_question_answer(" Who built it?"), None);
        assert_eq!(parse_question_answer(" Who built it?\nAnswer:   \n"), None);
        assert_eq!(parse_question_answer(" ??\nAnswer: yes"), None);
        assert_eq!(
            parse_answer(" 1368.\nMore.\n\nQuestion: x"),
            Some("1368. More.".into())
        );
        assert_eq!(parse_answer("\n\n"), None);
        // A reply without "Answer:" (seen from SmolLM2-135M): its first line is the question.
        let reply = " What is the Great Wall?\n\nThe answer is: a wall.";
        assert_eq!(parse_question_answer(reply), None);
        assert_eq!(question_line(reply), Some("What is the Great Wall?".into()));
        assert_eq!(question_line(" The wall is long."), None);
        // A question followed by more text on its line, or repeating the prefix.
        assert_eq!(
            question_line(" When was it built? It was built by the Ming. Who"),
            Some("When was it built?".into())
        );
        assert_eq!(
            question_line("\n Question:  How long is  the wall?"),
            Some("How long is the wall?".into())
        );
        assert_eq!(question_line(" Why?"), None, "fewer than 3 words");
    }

    /// A policy that never writes a parseable reply is asked 1 + max_retries times, each
    /// retry counted, then the row is skipped; with max_retries 0 it is asked once.
    #[test]
    fn an_unparseable_reply_is_retried_then_skipped() {
        #[derive(Debug)]
        struct Rambles(std::sync::atomic::AtomicUsize);
        impl GenerationBackend for Rambles {
            fn complete(
                &self,
                _prompt: &[u32],
                opts: &GenerateOptions,
            ) -> logo_policy::Result<logo_policy::backend::Completion> {
                let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(opts.temperature > 0.0, n > 0, "the first ask is greedy");
                Ok(logo_policy::backend::Completion {
                    token_ids: vec![5],
                    text: " The wall is long.".into(),
                    finish_reason: logo_policy::backend::FinishReason::Stop,
                    stop_token_id: Some(2),
                    model: "stub".into(),
                    retries: 0,
                })
            }
            fn name(&self) -> &str {
                "stub"
            }
            fn max_positions(&self) -> usize {
                8192
            }
            fn max_in_flight(&self) -> usize {
                1
            }
            fn describe(&self) -> serde_json::Value {
                serde_json::json!({"backend": "stub"})
            }
        }
        let Some((_, tok)) = shared_policy_and_tokenizer("an_unparseable_reply_is_retried") else {
            return;
        };
        for (retries, asks) in [(3usize, 4usize), (0, 1)] {
            let backend = Arc::new(Rambles(Default::default()));
            let cfg = PipelineConfig::from_yaml_str(
                &format!(
                    "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
                     questions: {{enabled: true, passage_tokens: 48, max_retries: {retries}}}\n"
                ),
                std::path::Path::new("/"),
            )
            .unwrap();
            let mut stage =
                QuestionsStage::try_new(&cfg, backend.clone(), tok.clone(), chatml(&tok)).unwrap();
            let input = DocumentRecord::to_batch(&[doc("a:2", None)]).unwrap();
            let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
            let ctx = StageContext {
                rejects: &rejects,
                stats: &stats,
            };
            let out = stage.process(input, &ctx).unwrap();
            assert!(out.iter().all(|b| b.num_rows() == 0));
            assert_eq!(backend.0.load(std::sync::atomic::Ordering::SeqCst), asks);
            let snap = stats.snapshot();
            assert_eq!(
                snap.skipped.get("questions: unparseable question"),
                Some(&1)
            );
            let counted = snap.events.get("questions: retries").copied().unwrap_or(0);
            assert_eq!(counted, retries as u64);
        }
    }

    #[test]
    fn passes_questions_through_and_asks_for_raw_documents() {
        let Some(policy) = shared_policy("passes_questions_through_and_asks_for_raw_documents")
        else {
            return;
        };
        let tok = policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tokenizer()
            .clone();
        let mut stage = QuestionsStage::try_new(
            &config(true),
            in_process(&policy),
            tok.clone(),
            chatml(&tok),
        )
        .unwrap();
        let given = doc("a:1", Some("Given?"));
        let input = DocumentRecord::to_batch(&[given.clone(), doc("a:2", None)]).unwrap();
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let out = stage.process(input.clone(), &ctx).unwrap();
        let rows = DocumentRecord::from_batch(&out[0]).unwrap();
        assert_eq!(rows[0], given);
        // SmolLM2-135M (q8_0, greedy) writes a question about the passage; observed:
        // "What was the Ming dynasty's most famous fortification?" / "The Ming dynasty's most
        // famous fortification was the Great Wall of China."
        assert_eq!(rows.len(), 2, "skipped: {:?}", stats.snapshot().skipped);
        let r = &rows[1];
        assert_eq!(r.key.question_origin, "generated");
        assert!(r.key.question.as_deref().unwrap().ends_with('?'), "{r:?}");
        assert!(!r.key.answer.as_deref().unwrap().is_empty());
        assert_eq!(r.context, given.context);
        assert!(stats.snapshot().skipped.is_empty());
        assert!(stats.snapshot().tokens["questions"] > 0);
        // Greedy and seeded: the same question again.
        let again = stage.process(input, &ctx).unwrap();
        assert_eq!(DocumentRecord::from_batch(&again[0]).unwrap(), rows);
    }

    #[test]
    fn disabled_passes_everything_and_passage_is_seeded() {
        let Some((policy, tok)) =
            shared_policy_and_tokenizer("disabled_passes_everything_and_passage_is_seeded")
        else {
            return;
        };
        let mut stage = QuestionsStage::try_new(
            &config(false),
            in_process(&policy),
            tok.clone(),
            chatml(&tok),
        )
        .unwrap();
        let input = DocumentRecord::to_batch(&[doc("a:2", None)]).unwrap();
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let out = stage.process(input.clone(), &ctx).unwrap();
        assert_eq!(out, vec![input]);
        // The text of a 48-token window of the document, the same for the same sample id: it
        // is a slice of the document whose own encoding is those 48 tokens.
        let text = doc("a:2", None).context;
        let all = logo_policy::tokenizer::encode_text(&tok, &text).unwrap();
        assert!(all.len() > 48);
        let p = stage.passage("a:2#q0", &text).unwrap();
        assert!(text.contains(p) && p.len() < text.len(), "{p:?}");
        assert_eq!(p, stage.passage("a:2#q0", &text).unwrap());
        let ids = logo_policy::tokenizer::encode_text(&tok, p).unwrap();
        assert!(all.windows(48).any(|w| w == ids.as_slice()), "{ids:?}");
        // Too long a passage for the model's window is a config error.
        let mut raw = config(true).into_raw();
        raw.questions.passage_tokens = 8100; // + 40 answer + 128 > 8192 (dense f32 backend)
        let cfg = PipelineConfig::try_from(raw).unwrap();
        let e = QuestionsStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config key questions.passage_tokens"),
            "{e}"
        );
    }
}
