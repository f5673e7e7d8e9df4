//! The two input formats, row by row: JSON Lines (one object per line, control characters
//! inside strings escaped) and Parquet (through the `parquet` crate, its panics on corrupt
//! files caught by [`logo_env::guard`], its declared sizes checked against the file first).
//! Each row is parsed into a [`RawDocument`] or a reject reason naming the field.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use logo_formats::parquet_pages::check_declared_sizes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::error::{EngineError, Result};

const CONTEXT_KEYS: [&str; 2] = ["context", "input"];
const QUESTION_KEYS: [&str; 3] = ["question", "questions", "instructions"];
const ANSWER_KEYS: [&str; 3] = ["answer", "answers", "outputs"];

/// An input file's format, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    JsonLines,
    Parquet,
}

impl Format {
    pub(super) fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" | "ndjson" => Some(Format::JsonLines),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// One input record before it is split per question, whatever the file format.
#[derive(Debug, Default)]
pub(super) struct RawDocument {
    pub(super) context: Option<String>,
    pub(super) questions: Option<Vec<Option<String>>>,
    pub(super) answers: Option<Vec<Option<String>>>,
}

/// Why a row is rejected: (field, reason).
pub(super) type RowError = (Option<String>, String);

/// (row number, parsed document or reject reason with field).
pub(super) type RowResult = (u64, std::result::Result<RawDocument, RowError>);

/// Zero, one or several strings of a field (`None`: the field is absent or null).
pub(super) type Strings = std::result::Result<Option<Vec<Option<String>>>, RowError>;

pub(super) fn open(path: &Path) -> Result<Box<dyn Iterator<Item = RowResult> + Send>> {
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

pub(super) fn parse_json_line(text: &str) -> std::result::Result<RawDocument, RowError> {
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
pub(super) fn escape_control_chars(text: &str) -> String {
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
    // The parquet crate panics on some corrupt footers and pages (see logo_env::guard), and
    // allocates the sizes page headers declare: those are checked first (logo_formats).
    let mut reader = logo_env::guard::catch_panic(|| {
        let clone = f.try_clone().map_err(|e| EngineError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(clone)
            .map_err(|e| input_err(format!("not a readable Parquet file: {e}")))?;
        let len = f.metadata().map_err(|e| EngineError::io(path, e))?.len();
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
