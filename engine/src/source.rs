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
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use arrow::array::RecordBatch;
use logo_formats::documents::{open, questions_of, Format, RowResult};
use logo_schemas::{DocumentRecord, Record};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PipelineConfig;
use crate::error::{EngineError, Result};
use crate::stage::RunStats;
use logo_formats::rejects::{Reject, Rejects};

const STAGE: &str = "source";

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

/// One input file of a run: where, its SHA-256 and how many records it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The file, as configured (after glob expansion).
    pub path: PathBuf,
    /// SHA-256 of its bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// Records (non-blank JSON Lines lines, or Parquet rows); 0 for an unreadable Parquet file.
    pub records: u64,
}

/// A unit of work: records `[first, first + count)` (0-based, blank lines not counted) of
/// input file `file`. Its samples become one Parquet part; `index` is its place in the run
/// (files in order, then row ranges), which also picks its shard (`index mod N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Position in [`UnitPlan::units`].
    pub index: u64,
    /// Position of the file in [`UnitPlan::files`].
    pub file: usize,
    /// First record of the unit (0-based).
    pub first: u64,
    /// Records in the unit (the last unit of a file may hold fewer than `unit_rows`).
    pub count: u64,
}

/// The deterministic split of a run's input into units of `unit_rows` records (see [`Unit`]).
/// Each file has at least one unit (an empty or unreadable file: one unit of 0 records, where
/// the file's reject is recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPlan {
    /// Records per unit (`sink.unit_rows`).
    pub unit_rows: u64,
    /// At most this many records in all (`--limit`), or every record.
    pub limit: Option<u64>,
    /// The input files in order.
    pub files: Vec<InputFile>,
    /// The units in order.
    pub units: Vec<Unit>,
}

/// A reader that feeds every byte it passes on to a SHA-256.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// True when line `row` (1-based) of a JSON Lines file is a record (not blank; a UTF-8 byte
/// order mark on line 1 is not part of it).
fn is_record(row: u64, line: &[u8]) -> bool {
    let line = if row == 1 {
        line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
    } else {
        line
    };
    !line.iter().all(|b| b.is_ascii_whitespace())
}

/// Reads every input once: its SHA-256 and record count (a JSON Lines file's non-blank lines,
/// a Parquet file's `num_rows` from its footer), and splits the records into units of
/// `unit_rows` (≥ 1) in file order, keeping at most `limit` records in all.
/// Errors: as [`resolve_paths`]; [`EngineError::Io`] when a file cannot be read.
pub fn plan_units(paths: &[PathBuf], unit_rows: u64, limit: Option<u64>) -> Result<UnitPlan> {
    let unit_rows = unit_rows.max(1);
    let mut files = Vec::new();
    let mut units = Vec::new();
    let mut left = limit.unwrap_or(u64::MAX);
    for path in resolve_paths(paths)? {
        if left == 0 {
            break;
        }
        let f = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
        let mut reader = Hashing {
            inner: f,
            hash: Sha256::new(),
        };
        let records = match Format::of(&path) {
            Some(Format::Parquet) => {
                let file = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
                // An unreadable file has 0 records here; reading it gives the error.
                let rows = logo_env::guard::catch_panic(|| {
                    ParquetRecordBatchReaderBuilder::try_new(file)
                        .map(|b| b.metadata().file_metadata().num_rows().max(0) as u64)
                })
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(0);
                std::io::copy(&mut reader, &mut std::io::sink())
                    .map_err(|e| EngineError::io(&path, e))?;
                rows
            }
            _ => {
                let mut n = 0u64;
                let lines = BufReader::new(&mut reader).split(b'\n');
                let mut row = 0u64;
                for line in lines {
                    row += 1;
                    let line = line.map_err(|e| EngineError::io(&path, e))?;
                    if is_record(row, &line) {
                        n += 1;
                    }
                }
                n
            }
        };
        let records_used = records.min(left);
        left -= records_used;
        let file = files.len();
        let mut first = 0;
        loop {
            let count = unit_rows.min(records_used - first);
            units.push(Unit {
                index: units.len() as u64,
                file,
                first,
                count,
            });
            first += count;
            if first >= records_used {
                break;
            }
        }
        files.push(InputFile {
            path,
            sha256: format!("{:x}", reader.hash.finalize()),
            records,
        });
    }
    Ok(UnitPlan {
        unit_rows,
        limit,
        files,
        units,
    })
}

/// What [`Source::next_item`] yields: a batch of one unit's documents, or the end of a unit
/// (all its batches were yielded before).
#[derive(Debug)]
pub enum SourceItem {
    /// Up to `batch_size` documents of unit `unit` ([`logo_schemas::documents_schema`]).
    Batch {
        /// [`Unit::index`].
        unit: u64,
        /// The rows (one per question); may be empty when every document was rejected.
        batch: RecordBatch,
    },
    /// Every record of the unit was read.
    UnitEnd {
        /// The unit.
        unit: Unit,
        /// Records (documents) read in it, rejected ones included.
        documents: u64,
    },
}

/// An open input file: its position in the plan, the next record's 0-based index, and rows.
struct OpenFile {
    file: usize,
    next_record: u64,
    rows: Box<dyn Iterator<Item = RowResult> + Send>,
}

/// Reads documents unit by unit and emits batches of up to `batch_size` documents (one row per
/// question), never mixing two units in a batch. Documents are counted in [`RunStats`] under
/// stage `source`.
pub struct Source {
    files: Vec<PathBuf>,
    todo: std::vec::IntoIter<Unit>,
    unit: Option<(Unit, u64)>,
    current: Option<OpenFile>,
    batch_size: usize,
    limit: Option<usize>,
    documents: usize,
    questions_enabled: bool,
}

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
    /// (`questions_enabled`; otherwise they are rejected). Each file is one unit.
    /// Errors: as [`resolve_paths`].
    pub fn open(
        paths: &[PathBuf],
        batch_size: usize,
        questions_enabled: bool,
        limit: Option<usize>,
    ) -> Result<Self> {
        let files = resolve_paths(paths)?;
        let units = (0..files.len())
            .map(|i| Unit {
                index: i as u64,
                file: i,
                first: 0,
                count: u64::MAX,
            })
            .collect::<Vec<_>>();
        Ok(Self {
            files,
            todo: units.into_iter(),
            unit: None,
            current: None,
            batch_size: batch_size.max(1),
            limit,
            documents: 0,
            questions_enabled,
        })
    }

    /// Reads the units `todo` (increasing [`Unit::index`], a subset of `plan.units`) of a
    /// plan: `batch_size` documents per batch (≥ 1); `questions_enabled` as in
    /// [`Source::open`]. Opens nothing yet.
    pub fn for_units(
        plan: &UnitPlan,
        todo: Vec<Unit>,
        batch_size: usize,
        questions_enabled: bool,
    ) -> Self {
        Self {
            files: plan.files.iter().map(|f| f.path.clone()).collect(),
            todo: todo.into_iter(),
            unit: None,
            current: None,
            batch_size: batch_size.max(1),
            limit: None,
            documents: 0,
            questions_enabled,
        }
    }

    /// Documents read so far.
    pub fn documents(&self) -> usize {
        self.documents
    }

    /// The next batch, `None` at the end (unit boundaries are not reported). Bad rows go to
    /// `rejects`. Errors: as [`Source::next_item`].
    pub fn next_batch(
        &mut self,
        rejects: &Rejects,
        stats: &RunStats,
    ) -> Option<Result<RecordBatch>> {
        loop {
            match self.next_item(rejects, stats)? {
                Ok(SourceItem::Batch { batch, .. }) => return Some(Ok(batch)),
                Ok(SourceItem::UnitEnd { .. }) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next batch of the current unit or the end of that unit; `None` after the last
    /// unit. Bad rows go to `rejects` (a file that cannot be opened at all: one reject with
    /// row 0, its unit ends empty). Errors: an output error of the rejects file.
    pub fn next_item(&mut self, rejects: &Rejects, stats: &RunStats) -> Option<Result<SourceItem>> {
        let start = std::time::Instant::now();
        if self.unit.is_none() {
            let unit = self.todo.next()?;
            self.unit = Some((unit, 0));
            if let Err(e) = self.seek(unit, rejects) {
                return Some(Err(e));
            }
        }
        let (unit, read) = self.unit.expect("set above");
        let mut rows: Vec<DocumentRecord> = Vec::new();
        let mut docs_in_batch = 0u64;
        while docs_in_batch < self.batch_size as u64 && read + docs_in_batch < unit.count {
            if self.limit.is_some_and(|l| self.documents >= l) {
                break;
            }
            let Some(open) = self.current.as_mut().filter(|o| o.file == unit.file) else {
                break;
            };
            let Some((row, parsed)) = open.rows.next() else {
                self.current = None;
                break;
            };
            open.next_record += 1;
            let path = self.files[unit.file].clone();
            self.documents += 1;
            docs_in_batch += 1;
            let file = path.display().to_string();
            let result =
                parsed.and_then(|raw| questions_of(&file, &path, row, raw, self.questions_enabled));
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
                        return Some(Err(e.into()));
                    }
                }
            }
        }
        if docs_in_batch == 0 {
            self.unit = None;
            return Some(Ok(SourceItem::UnitEnd {
                unit,
                documents: read,
            }));
        }
        self.unit = Some((unit, read + docs_in_batch));
        stats.record(STAGE, docs_in_batch, rows.len() as u64, start.elapsed());
        Some(
            DocumentRecord::to_batch(&rows)
                .map(|batch| SourceItem::Batch {
                    unit: unit.index,
                    batch,
                })
                .map_err(EngineError::from),
        )
    }

    /// Opens the unit's file when it is not the open one and skips to its first record.
    fn seek(&mut self, unit: Unit, rejects: &Rejects) -> Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|o| o.file != unit.file || o.next_record > unit.first)
        {
            self.current = None;
        }
        if self.current.is_none() {
            let path = &self.files[unit.file];
            match open(path) {
                Ok(rows) => {
                    self.current = Some(OpenFile {
                        file: unit.file,
                        next_record: 0,
                        rows,
                    })
                }
                Err(e) => {
                    // Recorded once, in the file's first unit.
                    if unit.first == 0 {
                        rejects.push(Reject {
                            stage: STAGE.into(),
                            file: path.display().to_string(),
                            row: 0,
                            field: None,
                            reason: e.to_string(),
                        })?;
                    }
                    return Ok(());
                }
            }
        }
        let open = self.current.as_mut().expect("opened above");
        while open.next_record < unit.first {
            if open.rows.next().is_none() {
                self.current = None;
                return Ok(());
            }
            open.next_record += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Tests of [`super`] (`source.rs`).

    use super::*;
    use logo_formats::documents::{escape_control_chars, parse_json_line};

    /// The `parquet_source` fuzz target's crash (a column chunk at a negative offset, on which the
    /// parquet crate asserts while reading its pages): refused before any decoding by the page
    /// header check, one reject for the file, no crash.
    #[test]
    fn a_parquet_file_the_reader_panics_on_is_a_reject() {
        let bytes = include_bytes!(
            "../../tests/fuzz/parquet_source/crash-45f57ec5dcdb2a5992227f84dd158a0a8cd64fbf"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        std::fs::write(&path, bytes).unwrap();
        let plan = plan_units(std::slice::from_ref(&path), 4, None).unwrap();
        let mut src = Source::for_units(&plan, plan.units.clone(), 3, true);
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        while let Some(b) = src.next_batch(&rejects, &stats) {
            b.unwrap();
        }
        assert_eq!(src.documents(), 0);
        assert_eq!(rejects.total(), 1);
    }

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
            let yaml = format!(
            "source: {{paths: ['*.jsonl'], batch_size: {batch_size}}}\nmodel: {{path: m.gguf}}\n"
        );
            let cfg = PipelineConfig::from_yaml_str(&yaml, dir.path()).unwrap();
            let mut src = Source::try_new(&cfg, limit).unwrap();
            let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
            let mut ids = Vec::new();
            while let Some(b) = src.next_batch(&rejects, &stats) {
                ids.extend(
                    DocumentRecord::from_batch(&b.unwrap())
                        .unwrap()
                        .into_iter()
                        .map(|d| d.key.sample_id),
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
