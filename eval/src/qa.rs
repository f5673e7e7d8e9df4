//! Long-context question answering: generate an answer for each question of a JSON Lines file
//! of documents with questions and references (the L-Eval layout of `../shared/data/leval`, or
//! any layout the engine's source reads), and score it with token F1, ROUGE-L and exact match
//! ([`crate::metrics`]), per file and averaged over files.
//!
//! Documents are read by the reader the engine's source uses ([`logo_formats::documents`]):
//! one reader for training data and evaluation, with its bad-row handling (a malformed row is
//! written to `rejects.jsonl` with file, row and field, and the run goes on).
//!
//! Over-long inputs are truncated in the middle, as LongBench does (`pred.py`: keep the first
//! and the last half of the allowed tokens): the document keeps its first `⌊b/2⌋` and last
//! `⌈b/2⌉` tokens, `b` being what the prompt template, the question and the answer budget
//! leave of `max_length`. The report counts the truncated questions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use logo_formats::documents::{self, questions_of};
use logo_formats::rejects::{Reject, Rejects};
use logo_policy::tokenizer::{encode_text, ChatTemplate};
use logo_schemas::DocumentRecord;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};
use crate::generate::Generator;
use crate::metrics::QaScores;
use crate::progress::bar;

/// The system prompt of QA generation.
pub const SYSTEM_PROMPT: &str =
    "You are a helpful assistant. Answer the question using only the document. Answer briefly.";

/// Settings of a QA run.
#[derive(Debug, Clone, PartialEq)]
pub struct QaConfig {
    /// JSON Lines (or Parquet) files of documents with questions and references.
    pub files: Vec<PathBuf>,
    /// Most questions scored per file.
    pub questions_per_file: usize,
    /// Most questions taken from one document (spreads a slice over several documents).
    pub questions_per_document: usize,
    /// Longest prompt + answer, tokens (at most the policy's limit); longer inputs are cut in
    /// the middle.
    pub max_length: usize,
    /// Most answer tokens.
    pub max_new_tokens: usize,
    /// Greedy or sampled decoding.
    pub decoding: crate::Decoding,
}

impl QaConfig {
    /// Errors: [`EvalError::Config`] for no file, a missing file, zero limits, or a
    /// `max_length` over `max_positions` or too short for an answer.
    pub fn validate(&self, max_positions: usize) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(EvalError::Config {
                key: key.into(),
                message,
            })
        };
        if self.files.is_empty() {
            return bad("qa", "name at least one file".into());
        }
        if let Some(f) = self.files.iter().find(|f| !f.exists()) {
            return bad("qa", format!("{}: no such file", f.display()));
        }
        if self.questions_per_file == 0 || self.questions_per_document == 0 {
            return bad("qa_questions/qa_per_document", "must be >= 1".into());
        }
        if self.max_length > max_positions {
            return bad(
                "max_length",
                format!(
                    "{} exceeds the model's {max_positions} positions",
                    self.max_length
                ),
            );
        }
        if self.max_new_tokens == 0 || self.max_new_tokens * 2 > self.max_length {
            return bad(
                "max_new_tokens",
                format!(
                    "must be in 1..={} (half of --max-length), got {}",
                    self.max_length / 2,
                    self.max_new_tokens
                ),
            );
        }
        Ok(())
    }
}

/// One scored question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaItem {
    /// Source file.
    pub file: String,
    /// Row of the document in the file (1-based, as in rejects).
    pub source_row: u64,
    /// Index of the question within its document.
    pub question_index: u32,
    /// The question.
    pub question: String,
    /// Reference answers.
    pub references: Vec<String>,
    /// The model's answer.
    pub prediction: String,
    /// Prompt length after truncation, tokens.
    pub prompt_tokens: usize,
    /// Whether the document was cut in the middle.
    pub truncated: bool,
    /// The scores (best over references).
    pub scores: QaScores,
}

/// Means of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaFileReport {
    /// File name (without folder).
    pub file: String,
    /// Questions scored.
    pub questions: usize,
    /// Of which truncated in the middle.
    pub truncated: usize,
    /// Mean scores.
    pub mean: QaScores,
}

/// A QA run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaReport {
    /// Per-file means, in the order of the files.
    pub files: Vec<QaFileReport>,
    /// Mean of the per-file means (LongBench averages tasks the same way).
    pub mean: QaScores,
    /// Longest prompt + answer, tokens.
    pub max_length: usize,
    /// How inputs over `max_length` were handled.
    pub truncation: String,
    /// Rows skipped as malformed (see `rejects.jsonl`).
    pub rejected_rows: u64,
    /// Every scored question.
    pub items: Vec<QaItem>,
    /// `engine`, `torch` or `server` ([`crate::generate`]); empty in reports written before
    /// the option.
    #[serde(default)]
    pub generator: String,
    /// Wall seconds of the run (prompts, generation, scoring).
    #[serde(default)]
    pub seconds: f64,
}

/// Cuts `ids` to `budget` tokens by removing the middle (LongBench): the first `⌊budget/2⌋`
/// and last `⌈budget/2⌉` tokens. Returns the ids and whether anything was removed.
pub fn middle_truncate(ids: &[u32], budget: usize) -> (Vec<u32>, bool) {
    if ids.len() <= budget {
        return (ids.to_vec(), false);
    }
    let head = budget / 2;
    let tail = budget - head;
    let mut out = Vec::with_capacity(budget);
    out.extend_from_slice(&ids[..head]);
    out.extend_from_slice(&ids[ids.len() - tail..]);
    (out, true)
}

/// Reads up to `cfg.questions_per_file` questions with references from `file`, at most
/// `cfg.questions_per_document` per document, in file order. Bad rows go to `rejects` as the
/// engine's source records them (stage `source`; a file that cannot be read at all is one
/// reject with row 0). Errors: [`EvalError::Format`] for a rejects file that cannot be
/// written.
fn read_questions(file: &Path, cfg: &QaConfig, rejects: &Rejects) -> Result<Vec<DocumentRecord>> {
    let name = file.display().to_string();
    let reject = |row, field, reason| Reject {
        stage: "source".into(),
        file: name.clone(),
        row,
        field,
        reason,
    };
    let rows = match documents::open(file) {
        Ok(rows) => rows,
        Err(e) => {
            rejects.push(reject(0, None, e.to_string()))?;
            return Ok(vec![]);
        }
    };
    let mut out = Vec::new();
    let mut per_doc: HashMap<String, usize> = HashMap::new();
    for (row, parsed) in rows {
        let records = match parsed.and_then(|raw| questions_of(&name, file, row, raw, false)) {
            Ok(records) => records,
            Err((field, reason)) => {
                rejects.push(reject(row, field, reason))?;
                continue;
            }
        };
        for record in records {
            if out.len() >= cfg.questions_per_file {
                return Ok(out);
            }
            let (Some(_), Some(answer)) = (&record.key.question, &record.key.answer) else {
                continue;
            };
            if answer.trim().is_empty() {
                continue;
            }
            let n = per_doc.entry(record.key.document_id.clone()).or_default();
            if *n < cfg.questions_per_document {
                *n += 1;
                out.push(record);
            }
        }
    }
    Ok(out)
}

/// A question, its prompt (ids) and whether its document was cut to fit.
type Prompt = (DocumentRecord, Vec<u32>, bool);

/// The prompts of `file`'s questions, in file order: each document tokenised once and cut in
/// the middle to fit `max_length` with the question and the answer.
/// Errors: [`EvalError::Config`] when a question alone exceeds `max_length`; tokenizer errors.
fn prompts(
    file: &Path,
    questions: Vec<DocumentRecord>,
    cfg: &QaConfig,
    tok: &Tokenizer,
    template: &ChatTemplate,
) -> Result<Vec<Prompt>> {
    let mut doc_ids: HashMap<String, Vec<u32>> = HashMap::new();
    let mut prompts = Vec::with_capacity(questions.len());
    for row in questions {
        let question = row.key.question.clone().unwrap_or_default();
        let (empty, _) = template.prompt(tok, SYSTEM_PROMPT, &[], &question)?;
        let budget = cfg
            .max_length
            .saturating_sub(cfg.max_new_tokens + empty.len());
        if budget == 0 {
            return Err(EvalError::Config {
                key: "max_length".into(),
                message: format!(
                    "{}: row {}: the question alone takes {} tokens",
                    file.display(),
                    row.key.source_row,
                    empty.len()
                ),
            });
        }
        let ids = match doc_ids.get(&row.key.document_id) {
            Some(ids) => ids.clone(),
            None => {
                let ids = encode_text(tok, &row.context)?;
                doc_ids.insert(row.key.document_id.clone(), ids.clone());
                ids
            }
        };
        let (context, truncated) = middle_truncate(&ids, budget);
        let (prompt, _) = template.prompt(tok, SYSTEM_PROMPT, &[&context], &question)?;
        prompts.push((row, prompt, truncated));
    }
    Ok(prompts)
}

/// Answers and scores `prompts` (of file `name`); consecutive questions of one document are
/// one group, so that they share its prefill.
fn answer(
    generator: &Generator<'_>,
    name: &str,
    prompts: &[Prompt],
    cfg: &QaConfig,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<QaItem>> {
    let mut scored = Vec::new();
    let mut start = 0;
    while start < prompts.len() {
        let doc = &prompts[start].0.key.document_id;
        let end = start
            + prompts[start..]
                .iter()
                .take_while(|(r, _, _)| &r.key.document_id == doc)
                .count();
        let group: Vec<Vec<u32>> = prompts[start..end]
            .iter()
            .map(|(_, p, _)| p.clone())
            .collect();
        let answers = generator.generate_group(&group, cfg.max_new_tokens, &cfg.decoding, false)?;
        for ((row, prompt, truncated), answer) in prompts[start..end].iter().zip(answers) {
            let question = row.key.question.clone().unwrap_or_default();
            let references = vec![row.key.answer.clone().unwrap_or_default()];
            let prediction = answer.text.trim().to_string();
            let scores = QaScores::best_of(&prediction, &references);
            pb.set_message(format!("{name}: F1 {:.2}", scores.f1));
            pb.inc(1);
            scored.push(QaItem {
                file: name.to_string(),
                source_row: row.key.source_row,
                question_index: row.key.question_index,
                question,
                references,
                prediction,
                prompt_tokens: prompt.len(),
                truncated: *truncated,
                scores,
            });
        }
        start = end;
    }
    Ok(scored)
}

/// Answers and scores the questions of every file of `cfg` with `generator`. The questions of
/// one document form one group, so the torch generator prefills the document once for all
/// of them ([`crate::generate`]). Bad rows go to `rejects` and are counted.
///
/// Errors: [`EvalError::Config`] when a question alone exceeds `max_length`; source, model
/// and tokenizer errors.
pub fn run_qa(generator: &Generator<'_>, cfg: &QaConfig, rejects: &Rejects) -> Result<QaReport> {
    let started = std::time::Instant::now();
    let tok = generator.tokenizer.clone();
    let template = generator.template;
    let before = rejects.total();
    let mut rows = Vec::new();
    for file in &cfg.files {
        rows.push((file, read_questions(file, cfg, rejects)?));
    }
    let total: usize = rows.iter().map(|(_, r)| r.len()).sum();
    let pb = bar(total as u64, "long-context QA");
    let mut items = Vec::new();
    let mut files = Vec::new();
    for (file, questions) in rows {
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let prompts = prompts(file, questions, cfg, &tok, &template)?;
        let scored = answer(generator, &name, &prompts, cfg, &pb)?;
        let means: Vec<QaScores> = scored.iter().map(|i| i.scores).collect();
        files.push(QaFileReport {
            file: name,
            questions: scored.len(),
            truncated: scored.iter().filter(|i| i.truncated).count(),
            mean: QaScores::mean(&means),
        });
        items.extend(scored);
    }
    pb.finish_and_clear();
    rejects.flush()?;
    let per_file: Vec<QaScores> = files
        .iter()
        .filter(|f| f.questions > 0)
        .map(|f| f.mean)
        .collect();
    Ok(QaReport {
        mean: QaScores::mean(&per_file),
        files,
        max_length: cfg.max_length,
        truncation: format!(
            "documents longer than the {} tokens allowed (prompt + answer) keep their first and \
             last halves (LongBench middle truncation)",
            cfg.max_length
        ),
        rejected_rows: rejects.total() - before,
        items,
        generator: generator.kind.into(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn middle_truncation_keeps_both_ends() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(middle_truncate(&ids, 10), (ids.clone(), false));
        assert_eq!(middle_truncate(&ids, 4), (vec![0, 1, 8, 9], true));
        // Odd budget: ⌊5/2⌋ = 2 from the start, 3 from the end.
        assert_eq!(middle_truncate(&ids, 5), (vec![0, 1, 7, 8, 9], true));
        assert_eq!(middle_truncate(&ids, 0), (vec![], true));
    }

    #[test]
    fn config_errors_name_the_flag() {
        let cfg = QaConfig {
            files: vec![PathBuf::from("/no/such.jsonl")],
            questions_per_file: 1,
            questions_per_document: 1,
            max_length: 2048,
            max_new_tokens: 64,
            decoding: crate::Decoding::default(),
        };
        let e = cfg.validate(4096).unwrap_err().to_string();
        assert!(e.starts_with("qa: /no/such.jsonl"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.jsonl");
        std::fs::write(&f, "{}\n").unwrap();
        let ok = QaConfig {
            files: vec![f],
            ..cfg
        };
        ok.validate(4096).unwrap();
        let e = QaConfig {
            max_length: 8192,
            ..ok.clone()
        }
        .validate(4096)
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_length: 8192 exceeds"), "{e}");
        let e = QaConfig {
            max_new_tokens: 0,
            ..ok
        }
        .validate(4096)
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_new_tokens"), "{e}");
    }
}
