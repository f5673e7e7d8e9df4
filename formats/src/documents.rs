//! Input documents, the files the engine's source and `logo-eval`'s QA reader read: JSON Lines
//! (one object per line, control characters inside strings escaped) and Parquet (through the
//! `parquet` crate, its panics on corrupt files caught by [`logo_env::guard`], its declared
//! sizes checked against the file first), with the L-Eval / LongBench field names
//! (`context` or `input`; `question`, `questions` or `instructions`; `answer`, `answers` or
//! `outputs`). Each row is parsed into a [`RawDocument`] or a reject reason naming the field
//! ([`open`]), then split into one [`DocumentRecord`] per question ([`questions_of`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use logo_schemas::{DocumentRecord, SampleKey};

use crate::parquet_pages::check_declared_sizes;
use crate::FormatError;

/// Result of opening a file: a whole file that cannot be read is a [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

const CONTEXT_KEYS: [&str; 2] = ["context", "input"];
const QUESTION_KEYS: [&str; 3] = ["question", "questions", "instructions"];
const ANSWER_KEYS: [&str; 3] = ["answer", "answers", "outputs"];

/// An input file's format, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.jsonl`, `.json`, `.ndjson`: one JSON object per line.
    JsonLines,
    /// `.parquet`: one row per document, string (or list of string) columns.
    Parquet,
}

impl Format {
    /// The format of `path` by its extension; `None` for any other extension.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" | "ndjson" => Some(Format::JsonLines),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// One input record before it is split per question, whatever the file format.
#[derive(Debug, Default)]
pub struct RawDocument {
    /// `context` or `input`; `None` when absent.
    pub context: Option<String>,
    /// `question`, `questions` or `instructions` (one string or a list); `None` when absent.
    pub questions: Option<Vec<Option<String>>>,
    /// `answer`, `answers` or `outputs` (one string or a list); `None` when absent.
    pub answers: Option<Vec<Option<String>>>,
}

/// Why a row is rejected: (field, reason).
pub type RowError = (Option<String>, String);

/// (row number, parsed document or reject reason with field).
pub type RowResult = (u64, std::result::Result<RawDocument, RowError>);

/// Zero, one or several strings of a field (`None`: the field is absent or null).
pub type Strings = std::result::Result<Option<Vec<Option<String>>>, RowError>;

/// The rows of `path` in file order, each with its 1-based row (line) number, parsed or with
/// the reason it is rejected. Errors: [`FormatError`] for an unknown extension, a file that
/// cannot be opened, or a Parquet file whose footer or page headers are unreadable.
pub fn open(path: &Path) -> Result<Box<dyn Iterator<Item = RowResult> + Send>> {
    match Format::of(path) {
        Some(Format::JsonLines) => {
            let f = File::open(path).map_err(|e| FormatError::new(path, e.to_string()))?;
            Ok(Box::new(JsonLines {
                lines: BufReader::new(f).split(b'\n'),
                row: 0,
            }))
        }
        Some(Format::Parquet) => parquet_rows(path),
        None => Err(FormatError::new(path, "unknown format")),
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

/// One JSON Lines row (control characters escaped first by the caller where needed) as a
/// [`RawDocument`], or the field and reason it is rejected.
pub fn parse_json_line(text: &str) -> std::result::Result<RawDocument, RowError> {
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
pub fn escape_control_chars(text: &str) -> String {
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
    let f = File::open(path).map_err(|e| FormatError::new(path, e.to_string()))?;
    let input_err = |m: String| FormatError::new(path, m);
    // The parquet crate panics on some corrupt footers and pages (see logo_env::guard), and
    // allocates the sizes page headers declare: those are checked first
    // (`crate::parquet_pages`).
    let mut reader = logo_env::guard::catch_panic(|| {
        let clone = f
            .try_clone()
            .map_err(|e| FormatError::new(path, e.to_string()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(clone)
            .map_err(|e| input_err(format!("not a readable Parquet file: {e}")))?;
        let len = f
            .metadata()
            .map_err(|e| FormatError::new(path, e.to_string()))?
            .len();
        check_declared_sizes(&f, len, builder.metadata())
            .map_err(|m| input_err(format!("declares sizes it cannot hold: {m}")))?;
        builder
            .with_batch_size(64)
            .build()
            .map_err(|e| input_err(e.to_string()))
    })
    .map_err(|p| {
        input_err(format!(
            "not a readable Parquet file (the reader panicked: {p})"
        ))
    })??;
    let mut row = 0u64;
    let mut broken = false;
    let batches = std::iter::from_fn(move || {
        if broken {
            return None;
        }
        match logo_env::guard::catch_panic(|| reader.next()) {
            Ok(next) => next.map(|b| b.map_err(|e| e.to_string())),
            Err(p) => {
                // A reader that panicked is abandoned: the rest of the file is one reject.
                broken = true;
                Some(Err(format!("the reader panicked: {p}")))
            }
        }
    });
    let rows = batches.flat_map(move |batch| {
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

/// One document → one [`DocumentRecord`] per question (`document_id` `{file stem}:{row}`,
/// `sample_id` `{document_id}#q{index}`), or the field and reason it is rejected: no or an
/// empty context, answers not pairing one to one with questions, an empty or non-string
/// question, or no question while `questions_enabled` is false (with it, one record without a
/// question, `question_origin` `generated`). `file` is written to `source_file`.
pub fn questions_of(
    file: &str,
    path: &Path,
    row: u64,
    raw: RawDocument,
    questions_enabled: bool,
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
            key: SampleKey {
                sample_id: format!("{document_id}#q{index}"),
                document_id: document_id.clone(),
                question_index: index,
                source_file: file.to_string(),
                source_row: row,
                question,
                answer,
                question_origin: origin.to_string(),
            },
            context: context.clone(),
        }
    };
    if questions.is_empty() {
        if !questions_enabled {
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
