//! Scorer: the importance score s_i of every chunk C_i (paper 3.2.2, "Importance Scoring with
//! Automatic Evaluator"; section 4.1 uses spaCy NER as the evaluator Eval(·)).
//!
//! `s_i = |E(C_i) ∩ (E(Q) ∪ E(A))|`: the number of distinct entities chunk `i` shares with the
//! question Q, where E is the configured [`EntityExtractor`] (`scorer.backend`, see
//! [`crate::stages::entities`] for how each backend relates to the paper's spaCy evaluator) and A is
//! the reference answer, counted only when `scorer.use_answer` is true and the row has one.
//! The sampler then calls a chunk relevant when `s_i > δ`.
//!
//! Input [`logo_schemas::chunks_schema`], output [`logo_schemas::scored_schema`]: every input
//! column unchanged plus `chunk_scores` (`[n_chunks]` Int32, ≥ 0). A row whose question is
//! null or blank goes to the rejects with field `question` (the chunker rejects such rows, so
//! one here is a bug upstream). Work is parallel (rayon) over the distinct chunk texts of the
//! batch, each extracted once (rows of one document with several questions share their
//! chunks), then over rows.

use std::collections::{HashMap, HashSet};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{scored_schema, ChunkedRecord, Record, ScoredRecord};
use rayon::prelude::*;

use crate::config::ScorerConfig;
use crate::error::Result;
use crate::stage::{emit, map_rows, RowOutcome, Stage, StageContext};
use crate::stages::entities::{self, overlap, EntityExtractor};
use logo_formats::rejects::Reject;

/// The scorer stage: adds `chunk_scores` (s_i, paper 3.2.2) to chunked rows.
pub struct ScorerStage {
    extractor: Box<dyn EntityExtractor>,
    use_answer: bool,
}

impl ScorerStage {
    /// Loads the `cfg.backend` extractor.
    ///
    /// Errors: [`crate::EngineError::Config`] naming `scorer.backend` when the backend cannot
    /// be loaded.
    pub fn try_new(cfg: &ScorerConfig) -> Result<Self> {
        Ok(Self::with_extractor(
            entities::extractor(cfg.backend)?,
            cfg.use_answer,
        ))
    }

    /// A scorer over any extractor; `use_answer` as `scorer.use_answer` (default true).
    pub fn with_extractor(extractor: Box<dyn EntityExtractor>, use_answer: bool) -> Self {
        Self {
            extractor,
            use_answer,
        }
    }

    /// The extractor in use.
    pub fn extractor(&self) -> &dyn EntityExtractor {
        self.extractor.as_ref()
    }

    /// E(Q) ∪ E(A): the entities of `question`, plus those of `answer` when `use_answer` and
    /// the answer is present.
    pub fn query_entities(&self, question: &str, answer: Option<&str>) -> HashSet<String> {
        let mut keys = self.extractor.entities(question);
        if self.use_answer {
            if let Some(a) = answer {
                keys.extend(self.extractor.entities(a));
            }
        }
        keys
    }

    /// `[n_chunks]` scores s_i = |E(chunk_i) ∩ E(query)| of `chunks` against `query` (from
    /// [`Self::query_entities`]); counts saturate at `i32::MAX`.
    pub fn score(&self, query: &HashSet<String>, chunks: &[String]) -> Vec<i32> {
        chunks
            .par_iter()
            .map(|c| to_score(overlap(&self.extractor.entities(c), query)))
            .collect()
    }
}

fn to_score(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Why `row` cannot be scored, if it cannot.
fn question_problem(row: &ChunkedRecord) -> Option<&'static str> {
    match row.key.question.as_deref() {
        None => Some("missing (null): the chunker should have rejected this row; bug upstream"),
        Some(q) if q.trim().is_empty() => {
            Some("blank: the chunker should have rejected this row; bug upstream")
        }
        Some(_) => None,
    }
}

impl Stage for ScorerStage {
    fn name(&self) -> &'static str {
        "scorer"
    }

    fn input_schema(&self) -> SchemaRef {
        logo_schemas::chunks_schema()
    }

    fn output_schema(&self) -> SchemaRef {
        scored_schema()
    }

    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let rows = ChunkedRecord::from_batch(&batch)?;
        let this = &*self;

        // E(C_i) once per distinct chunk text of the scorable rows.
        let mut distinct: HashSet<&str> = HashSet::new();
        for row in rows.iter().filter(|r| question_problem(r).is_none()) {
            distinct.extend(row.chunk_text.iter().map(String::as_str));
        }
        let chunk_entities: HashMap<&str, HashSet<String>> = distinct
            .into_par_iter()
            .map(|text| (text, this.extractor.entities(text)))
            .collect();

        // s_i per row; None for rows to reject.
        let scores: Vec<Option<Vec<i32>>> = rows
            .par_iter()
            .map(|row| {
                if question_problem(row).is_some() {
                    return None;
                }
                let question = row.key.question.as_deref()?;
                let query = this.query_entities(question, row.key.answer.as_deref());
                let scores = row
                    .chunk_text
                    .iter()
                    .map(|c| to_score(overlap(&chunk_entities[c.as_str()], &query)))
                    .collect();
                Some(scores)
            })
            .collect();
        drop(chunk_entities);

        let pairs: Vec<(ChunkedRecord, Option<Vec<i32>>)> = rows.into_iter().zip(scores).collect();
        let out = map_rows(pairs, "scorer", ctx, |(row, scores)| {
            let Some(chunk_scores) = scores else {
                return RowOutcome::Reject(Reject {
                    stage: "scorer".into(),
                    file: row.key.source_file.clone(),
                    row: row.key.source_row,
                    field: Some("question".into()),
                    reason: question_problem(&row)
                        .unwrap_or("cannot be scored")
                        .to_string(),
                });
            };
            RowOutcome::Keep(ScoredRecord {
                key: row.key,
                chunk_input_ids: row.chunk_input_ids,
                chunk_text: row.chunk_text,
                chunk_scores,
            })
        })?;
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScorerBackend;
    use crate::stage::RunStats;
    use logo_formats::rejects::Rejects;
    use logo_schemas::SampleKey;

    fn lexical(use_answer: bool) -> ScorerStage {
        ScorerStage::try_new(&ScorerConfig {
            backend: ScorerBackend::Lexical,
            use_answer,
        })
        .unwrap()
    }

    fn row(
        id: &str,
        question: Option<&str>,
        answer: Option<&str>,
        chunks: &[&str],
    ) -> ChunkedRecord {
        ChunkedRecord {
            key: SampleKey {
                sample_id: format!("{id}#q0"),
                document_id: id.into(),
                question_index: 0,
                source_file: "docs.jsonl".into(),
                source_row: 7,
                question: question.map(Into::into),
                answer: answer.map(Into::into),
                question_origin: "source".into(),
            },
            chunk_input_ids: chunks
                .iter()
                .enumerate()
                .map(|(i, _)| vec![i as u32])
                .collect(),
            chunk_text: chunks.iter().map(|c| c.to_string()).collect(),
        }
    }

    const Q: &str = "Who runs the Running Club in Paris?";
    const CHUNKS: [&str; 3] = [
        // {pari, club, member, run, km, 2019} ∩ {run, club, pari} = 3
        "Paris, PARIS and paris! The club's members were running 5 km in 2019.",
        // {weather, cold} ∩ … = 0
        "The weather was cold.",
        // {club, founded→found, 2019} ∩ … = 1 (club); with the answer {jean, dupont, 2019}: 2
        "The club was founded in 2019.",
    ];

    #[test]
    fn lexical_scores_and_use_answer() {
        let answer = Some("Jean Dupont, since 2019.");
        let off = lexical(false);
        let q = off.query_entities(Q, answer);
        let chunks: Vec<String> = CHUNKS.iter().map(|c| c.to_string()).collect();
        assert_eq!(off.score(&q, &chunks), [3, 0, 1]);
        // The answer adds {jean, dupont, 2019}: chunk 0 and 2 mention 2019.
        let on = lexical(true);
        let q = on.query_entities(Q, answer);
        assert_eq!(on.score(&q, &chunks), [4, 0, 2]);
        // use_answer with no answer is the question alone.
        let q = on.query_entities(Q, None);
        assert_eq!(on.score(&q, &chunks), [3, 0, 1]);
    }

    #[test]
    fn ner_scores_and_use_answer() {
        let on = ScorerStage::try_new(&ScorerConfig {
            backend: ScorerBackend::Ner,
            use_answer: true,
        })
        .unwrap();
        assert_eq!(on.extractor().name(), "ner");
        let chunks = vec![
            "Steve Jobs and Steve Wozniak founded Apple Inc. in California in 1976.".to_string(),
            "The weather in Cupertino was mild.".to_string(),
        ];
        let q = on.query_entities("Which company did Steve Jobs found in California?", None);
        // Shared: steve jobs, california.
        assert_eq!(on.score(&q, &chunks), [2, 0]);
        // The answer adds apple inc and the year 1976.
        let q = on.query_entities(
            "Which company did Steve Jobs found in California?",
            Some("Apple Inc., in 1976."),
        );
        assert_eq!(on.score(&q, &chunks), [4, 0]);
    }

    #[test]
    fn stage_scores_a_batch_and_rejects_rows_without_question() {
        let mut stage = lexical(true);
        let input = vec![
            row("d:1", Some(Q), None, &CHUNKS),
            row(
                "d:2",
                Some("How cold was the weather?"),
                Some("Cold."),
                &CHUNKS[..2],
            ),
            row("d:3", None, None, &CHUNKS),
        ];
        let batch = ChunkedRecord::to_batch(&input).unwrap();
        let rejects = Rejects::in_memory();
        let stats = RunStats::default();
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let out = stage.process(batch, &ctx).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].schema(), scored_schema());
        assert_eq!(stage.output_schema(), scored_schema());
        let scored = ScoredRecord::from_batch(&out[0]).unwrap();
        assert_eq!(scored.len(), 2);
        assert_eq!(scored[0].key.sample_id, "d:1#q0");
        assert_eq!(scored[0].chunk_scores, [3, 0, 1]);
        assert_eq!(scored[0].chunk_text, input[0].chunk_text);
        assert_eq!(scored[0].chunk_input_ids, input[0].chunk_input_ids);
        // {cold, weather} (how/was/the are stop words): chunk 1 has both; chunk 0 neither.
        assert_eq!(scored[1].key.sample_id, "d:2#q0");
        assert_eq!(scored[1].chunk_scores, [0, 2]);
        assert_eq!(scored[1].key.answer.as_deref(), Some("Cold."));
        assert_eq!(rejects.counts().get("scorer"), Some(&1));
    }

    #[test]
    fn a_batch_of_only_rejects_yields_no_batch() {
        let mut stage = lexical(true);
        let batch = ChunkedRecord::to_batch(&[row("d:1", Some("  "), None, &CHUNKS)]).unwrap();
        let rejects = Rejects::in_memory();
        let stats = RunStats::default();
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        assert!(stage.process(batch, &ctx).unwrap().is_empty());
        assert_eq!(rejects.total(), 1);
    }
}
