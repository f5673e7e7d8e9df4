//! Source: JSON Lines or Parquet documents → [`logo_schemas::documents_schema`] batches.
//!
//! Accepted layouts (one record per document): the document under `context` or `input`; the
//! questions under `question`, `questions` or `instructions` (a string or a list of strings);
//! reference answers under `answer`, `answers` or `outputs` (a string or a list of the same
//! length). Each question becomes one row (the L-Eval layout of `../shared/data/leval` is one
//! such). LongBench rows (`context` document, `input` question, `answers` references) are
//! recognised too, keeping the first reference. A document without questions is accepted when question generation is on.
//!
//! Bad rows go to `rejects.jsonl` with file, row and field; the run goes on: a malformed JSON
//! line, invalid UTF-8, a missing or empty document, a missing, empty or non-string question,
//! answers that do not pair with the questions. Raw control characters inside JSON strings
//! (present in some L-Eval lines) are accepted deliberately: they are escaped and the line is
//! parsed again.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use logo_schemas::{DocumentRecord, Record};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::config::PipelineConfig;
use crate::error::{EngineError, Result};
use crate::stage::{Reject, Rejects, RunStats};

const STAGE: &str = "source";
const CONTEXT_KEYS: [&str; 2] = ["context", "input"];
const QUESTION_KEYS: [&str; 3] = ["question", "questions", "instructions"];
const ANSWER_KEYS: [&str; 3] = ["answer", "answers", "outputs"];

/// Expands the configured paths and globs into files, in the order given (each glob sorted).
/// Errors: [`EngineError::Config`] (`source.paths`) when a pattern is invalid, matches nothing,
/// or names a file of unknown format.
pub fn resolve_paths(patterns: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let text = pattern.to_string_lossy();
        let mut matched: Vec<PathBuf> = glob::glob(&text)
            .map_err(|e| EngineError::Config {
                key: "source.paths".into(),
                message: format!("{text}: bad glob pattern: {e}"),
            })?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            return Err(EngineError::Config {
                key: "source.paths".into(),
                message: format!("{text}: no such file"),
            });
        }
        matched.sort();
        for f in &matched {
            if Format::of(f).is_none() {
                return Err(EngineError::Config {
                    key: "source.paths".into(),
                    message: format!(
                        "{}: unknown format (allowed: .jsonl, .json, .parquet)",
                        f.display()
                    ),
                });
            }
        }
        files.extend(matched);
    }
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonLines,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" | "ndjson" => Some(Format::JsonLines),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// One input record before it is split per question, whatever the file format.
#[derive(Debug, Default)]
struct RawDocument {
    context: Option<String>,
    questions: Option<Vec<Option<String>>>,
    answers: Option<Vec<Option<String>>>,
}

/// Reads documents file by file and emits batches of up to `batch_size` documents (one row per
/// question). Documents are counted in [`RunStats`] under stage `source`.
pub struct Source {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, Box<dyn Iterator<Item = RowResult> + Send>)>,
    batch_size: usize,
    limit: Option<usize>,
    documents: usize,
    questions_enabled: bool,
}

/// Why a row is rejected: (field, reason).
type RowError = (Option<String>, String);

/// (row number, parsed document or reject reason with field).
type RowResult = (u64, std::result::Result<RawDocument, RowError>);

/// Zero, one or several strings of a field (`None`: the field is absent or null).
type Strings = std::result::Result<Option<Vec<Option<String>>>, RowError>;

impl Source {
    /// Opens nothing yet; checks the paths. `limit` caps the number of documents read.
    /// Errors: as [`resolve_paths`].
    pub fn try_new(cfg: &PipelineConfig, limit: Option<usize>) -> Result<Self> {
        Self::open(
            &cfg.source.paths,
            cfg.source.batch_size,
            cfg.questions.enabled,
            limit,
        )
    }

    /// The same without a pipeline: `paths` (files or globs), `batch_size` documents per
    /// batch (≥ 1), and whether documents without questions are accepted
    /// (`questions_enabled`; otherwise they are rejected). Errors: as [`resolve_paths`].
    pub fn open(
        paths: &[PathBuf],
        batch_size: usize,
        questions_enabled: bool,
        limit: Option<usize>,
    ) -> Result<Self> {
        let files = resolve_paths(paths)?;
        Ok(Self {
            files: files.into_iter(),
            current: None,
            batch_size: batch_size.max(1),
            limit,
            documents: 0,
            questions_enabled,
        })
    }

    /// Documents read so far.
    pub fn documents(&self) -> usize {
        self.documents
    }

    /// The next batch, `None` at the end. Bad rows go to `rejects`. Errors: an output error of
    /// the rejects file, or a Parquet file that cannot be opened at all (its rows are lost, the
    /// error says which file; other files are read on a later call).
    pub fn next_batch(
        &mut self,
        rejects: &Rejects,
        stats: &RunStats,
    ) -> Option<Result<RecordBatch>> {
        let start = std::time::Instant::now();
        let mut rows: Vec<DocumentRecord> = Vec::new();
        let mut docs_in_batch = 0;
        while docs_in_batch < self.batch_size {
            if self.limit.is_some_and(|l| self.documents >= l) {
                break;
            }
            if self.current.is_none() {
                // At the end of the last file, emit what the batch holds.
                let Some(path) = self.files.next() else {
                    break;
                };
                match open(&path) {
                    Ok(it) => self.current = Some((path, it)),
                    Err(e) => {
                        if let Err(e) = rejects.push(Reject {
                            stage: STAGE.into(),
                            file: path.display().to_string(),
                            row: 0,
                            field: None,
                            reason: e.to_string(),
                        }) {
                            return Some(Err(e));
                        }
                        continue;
                    }
                }
            }
            let (path, it) = self.current.as_mut().expect("set above");
            let Some((row, parsed)) = it.next() else {
                self.current = None;
                continue;
            };
            let path = path.clone();
            self.documents += 1;
            docs_in_batch += 1;
            let file = path.display().to_string();
            let result = parsed.and_then(|raw| self.explode(&file, &path, row, raw));
            match result {
                Ok(mut docs) => rows.append(&mut docs),
                Err((field, reason)) => {
                    if let Err(e) = rejects.push(Reject {
                        stage: STAGE.into(),
                        file,
                        row,
                        field,
                        reason,
                    }) {
                        return Some(Err(e));
                    }
                }
            }
        }
        if docs_in_batch == 0 {
            return None;
        }
        stats.record(
            STAGE,
            docs_in_batch as u64,
            rows.len() as u64,
            start.elapsed(),
        );
        Some(DocumentRecord::to_batch(&rows).map_err(EngineError::from))
    }

    /// One document → one row per question, or the reason it is rejected.
    fn explode(
        &self,
        file: &str,
        path: &Path,
        row: u64,
        raw: RawDocument,
    ) -> std::result::Result<Vec<DocumentRecord>, RowError> {
        let field = |f: &str, m: &str| (Some(f.to_string()), m.to_string());
        let context = raw
            .context
            .ok_or_else(|| field("context", "missing field (expected `context` or `input`)"))?;
        if context.trim().is_empty() {
            return Err(field("context", "empty document"));
        }
        let questions = raw.questions.unwrap_or_default();
        let answers = raw.answers;
        if let Some(a) = &answers {
            if !questions.is_empty() && a.len() != questions.len() {
                return Err(field(
                    "answers",
                    &format!(
                        "{} answers for {} questions (must pair one to one)",
                        a.len(),
                        questions.len()
                    ),
                ));
            }
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let document_id = format!("{stem}:{row}");
        let make = |index: u32, question: Option<String>, answer: Option<String>, origin: &str| {
            DocumentRecord {
                sample_id: format!("{document_id}#q{index}"),
                document_id: document_id.clone(),
                question_index: index,
                source_file: file.to_string(),
                source_row: row,
                context: context.clone(),
                question,
                answer,
                question_origin: origin.to_string(),
            }
        };
        if questions.is_empty() {
            if !self.questions_enabled {
                return Err(field(
                    "question",
                    "missing field (expected `question` or `instructions`) and question generation is off",
                ));
            }
            let answer = answers.and_then(|a| a.into_iter().next().flatten());
            return Ok(vec![make(0, None, answer, "generated")]);
        }
        let mut out = Vec::with_capacity(questions.len());
        for (i, q) in questions.into_iter().enumerate() {
            let q = match q {
                Some(q) if !q.trim().is_empty() => q,
                Some(_) => return Err(field("question", &format!("question {i} is empty"))),
                None => return Err(field("question", &format!("question {i} is not a string"))),
            };
            let answer = answers.as_ref().and_then(|a| a[i].clone());
            out.push(make(i as u32, Some(q), answer, "source"));
        }
        Ok(out)
    }
}

fn open(path: &Path) -> Result<Box<dyn Iterator<Item = RowResult> + Send>> {
    match Format::of(path) {
        Some(Format::JsonLines) => {
            let f = File::open(path).map_err(|e| EngineError::io(path, e))?;
            Ok(Box::new(JsonLines {
                lines: BufReader::new(f).split(b'\n'),
                row: 0,
            }))
        }
        Some(Format::Parquet) => parquet_rows(path),
        None => Err(EngineError::Input {
            path: path.to_path_buf(),
            message: "unknown format".into(),
        }),
    }
}

struct JsonLines {
    lines: std::io::Split<BufReader<File>>,
    row: u64,
}

impl Iterator for JsonLines {
    type Item = RowResult;
    fn next(&mut self) -> Option<RowResult> {
        loop {
            let line = self.lines.next()?;
            self.row += 1;
            let mut bytes = match line {
                Ok(b) => b,
                Err(e) => return Some((self.row, Err((None, format!("read error: {e}"))))),
            };
            // A UTF-8 byte order mark (Windows editors write one) is not part of the record.
            if self.row == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
                bytes.drain(..3);
            }
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                continue; // blank lines are not records
            }
            let parsed = String::from_utf8(bytes)
                .map_err(|e| {
                    (
                        None,
                        format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
                    )
                })
                .and_then(|text| parse_json_line(&text));
            return Some((self.row, parsed));
        }
    }
}

fn parse_json_line(text: &str) -> std::result::Result<RawDocument, RowError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("control character") => {
            serde_json::from_str(&escape_control_chars(text))
                .map_err(|e| (None, format!("malformed JSON: {e}")))?
        }
        Err(e) => return Err((None, format!("malformed JSON: {e}"))),
    };
    let Value::Object(map) = value else {
        return Err((None, "malformed JSON: a line must hold an object".into()));
    };
    let pick = |keys: &[&'static str]| keys.iter().find_map(|k| map.get(*k).map(|v| (*k, v)));
    let context = match pick(&CONTEXT_KEYS) {
        None | Some((_, Value::Null)) => None,
        Some((_, Value::String(s))) => Some(s.clone()),
        Some((k, _)) => return Err((Some(k.into()), "expected a string".into())),
    };
    let strings = |key_set: &[&'static str]| -> Strings {
        match pick(key_set) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(vec![Some(s.clone())])),
            Some((_, Value::Array(items))) => Ok(Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect(),
            )),
            Some((k, _)) => Err((
                Some(k.into()),
                "expected a string or a list of strings".into(),
            )),
        }
    };
    // LongBench layout: the document in `context`, the question in `input`, a list of
    // reference answers in `answers`; the first reference is kept.
    if pick(&QUESTION_KEYS).is_none() && map.get("context").is_some_and(Value::is_string) {
        if let Some(Value::String(q)) = map.get("input") {
            let answers = strings(&ANSWER_KEYS)?
                .map(|a| a.into_iter().take(1).collect::<Vec<_>>())
                .filter(|a| !a.is_empty());
            return Ok(RawDocument {
                context,
                questions: Some(vec![Some(q.clone())]),
                answers,
            });
        }
    }
    Ok(RawDocument {
        context,
        questions: strings(&QUESTION_KEYS)?,
        answers: strings(&ANSWER_KEYS)?,
    })
}

/// Escapes raw control characters (U+0000–U+001F) inside JSON strings as `\u00XX`, leaving
/// the rest of the line as it is.
fn escape_control_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            } else if (c as u32) < 0x20 {
                out.push_str(&format!("\\u{:04x}", c as u32));
                continue;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

fn parquet_rows(path: &Path) -> Result<Box<dyn Iterator<Item = RowResult> + Send>> {
    let f = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let input_err = |m: String| EngineError::Input {
        path: path.to_path_buf(),
        message: m,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| input_err(format!("not a readable Parquet file: {e}")))?
        .with_batch_size(64)
        .build()
        .map_err(|e| input_err(e.to_string()))?;
    let mut row = 0u64;
    let rows = reader.flat_map(move |batch| {
        let out: Vec<RowResult> = match batch {
            Ok(batch) => (0..batch.num_rows())
                .map(|i| {
                    row += 1;
                    (row, parquet_row(&batch, i))
                })
                .collect(),
            Err(e) => {
                row += 1;
                vec![(row, Err((None, format!("Parquet decode error: {e}"))))]
            }
        };
        out
    });
    Ok(Box::new(rows))
}

fn parquet_row(batch: &RecordBatch, i: usize) -> std::result::Result<RawDocument, RowError> {
    let find = |keys: &[&'static str]| {
        keys.iter()
            .find_map(|k| batch.column_by_name(k).map(|c| (*k, c.clone())))
    };
    let strings = |keys: &[&'static str]| -> Strings {
        let Some((k, col)) = find(keys) else {
            return Ok(None);
        };
        if col.is_null(i) {
            return Ok(None);
        }
        match col.data_type() {
            DataType::Utf8 => Ok(Some(vec![Some(
                col.as_string::<i32>().value(i).to_string(),
            )])),
            DataType::LargeUtf8 => Ok(Some(vec![Some(
                col.as_string::<i64>().value(i).to_string(),
            )])),
            DataType::List(f) if matches!(f.data_type(), DataType::Utf8) => {
                let items = col.as_list::<i32>().value(i);
                let s = items.as_string::<i32>();
                Ok(Some(
                    (0..s.len())
                        .map(|j| (!s.is_null(j)).then(|| s.value(j).to_string()))
                        .collect(),
                ))
            }
            DataType::LargeList(f) if matches!(f.data_type(), DataType::Utf8) => {
                let items = col.as_list::<i64>().value(i);
                let s = items.as_string::<i32>();
                Ok(Some(
                    (0..s.len())
                        .map(|j| (!s.is_null(j)).then(|| s.value(j).to_string()))
                        .collect(),
                ))
            }
            other => Err((
                Some(k.into()),
                format!("expected Utf8 or List<Utf8>, got {other}"),
            )),
        }
    };
    let context = match strings(&CONTEXT_KEYS)? {
        Some(mut v) if v.len() == 1 => v.pop().flatten(),
        Some(_) => {
            return Err((
                Some("context".into()),
                "expected one string, got a list".into(),
            ))
        }
        None => None,
    };
    Ok(RawDocument {
        context,
        questions: strings(&QUESTION_KEYS)?,
        answers: strings(&ANSWER_KEYS)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_only_inside_strings() {
        let line = "{\"input\": \"a\tb\u{1}c\", \"q\": \"\\\"x\\\"\"}";
        let fixed = escape_control_chars(line);
        assert_eq!(
            fixed,
            "{\"input\": \"a\\u0009b\\u0001c\", \"q\": \"\\\"x\\\"\"}"
        );
        let raw = parse_json_line(line).unwrap();
        assert_eq!(raw.context.as_deref(), Some("a\tb\u{1}c"));
    }

    /// Regressions: the last, partial batch of the last file was dropped; a byte order mark
    /// made row 1 malformed.
    #[test]
    fn rows_do_not_depend_on_batch_size_or_limit_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..7)
            .map(|i| format!(r#"{{"context": "doc {i}", "instructions": ["q{i}a", "q{i}b"]}}"#))
            .collect();
        // a.jsonl starts with a UTF-8 byte order mark: its first row is still a row.
        std::fs::write(
            dir.path().join("a.jsonl"),
            format!("\u{feff}{}", lines[..4].join("\n")),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.jsonl"), lines[4..].join("\n") + "\n").unwrap();
        let read = |batch_size: usize, limit: Option<usize>| -> Vec<String> {
            let yaml = format!("source: {{paths: ['*.jsonl'], batch_size: {batch_size}}}\nmodel: {{path: m.gguf}}\n");
            let cfg = PipelineConfig::from_yaml_str(&yaml, dir.path()).unwrap();
            let mut src = Source::try_new(&cfg, limit).unwrap();
            let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
            let mut ids = Vec::new();
            while let Some(b) = src.next_batch(&rejects, &stats) {
                ids.extend(
                    DocumentRecord::from_batch(&b.unwrap())
                        .unwrap()
                        .into_iter()
                        .map(|d| d.sample_id),
                );
            }
            ids
        };
        let all = read(1, None);
        assert_eq!(all.len(), 14);
        assert_eq!(all[0], "a:1#q0");
        assert_eq!(all[13], "b:3#q1");
        for bs in [2, 3, 5, 8] {
            assert_eq!(read(bs, None), all, "batch_size {bs}");
        }
        assert_eq!(read(3, Some(5)), all[..10].to_vec());
    }

    #[test]
    fn layouts_are_recognised() {
        let raw = parse_json_line(
            r#"{"input": "doc", "instructions": ["q1", "q2"], "outputs": ["a1", "a2"]}"#,
        )
        .unwrap();
        assert_eq!(raw.context.as_deref(), Some("doc"));
        assert_eq!(
            raw.questions.unwrap(),
            vec![Some("q1".into()), Some("q2".into())]
        );
        assert_eq!(
            raw.answers.unwrap(),
            vec![Some("a1".into()), Some("a2".into())]
        );
        let raw = parse_json_line(r#"{"context": "doc", "question": "q", "answer": "a"}"#).unwrap();
        assert_eq!(raw.questions.unwrap(), vec![Some("q".into())]);
        // LongBench: question in `input`, several references of which the first is kept.
        let raw = parse_json_line(
            r#"{"context": "doc", "input": "q", "answers": ["a", "b"], "dataset": "qasper"}"#,
        )
        .unwrap();
        assert_eq!(raw.context.as_deref(), Some("doc"));
        assert_eq!(raw.questions.unwrap(), vec![Some("q".into())]);
        assert_eq!(raw.answers.unwrap(), vec![Some("a".into())]);
        // A raw document in `input` alone stays a document without question.
        let raw = parse_json_line(r#"{"input": "doc"}"#).unwrap();
        assert_eq!(raw.context.as_deref(), Some("doc"));
        assert_eq!(raw.questions, None);
        let e = parse_json_line(r#"{"context": 3}"#).unwrap_err();
        assert_eq!(e, (Some("context".into()), "expected a string".into()));
        let e = parse_json_line("[1]").unwrap_err();
        assert_eq!(e.1, "malformed JSON: a line must hold an object");
    }
}
