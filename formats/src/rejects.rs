//! `rejects.jsonl`: the rows that were bad input, one JSON object per line, with the file, row
//! and field they came from and why ([`Reject`]). The engine's stages and `logo-eval`'s QA
//! reader write it through one [`Rejects`]; the run goes on without the row.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// One line of `rejects.jsonl`: a row that was bad input, with where it came from and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Stage that rejected it.
    pub stage: String,
    /// Input file.
    pub file: String,
    /// 1-based line (JSON Lines) or row (Parquet) in `file`; 0 when the file as a whole.
    pub row: u64,
    /// Field concerned, when one is (`question`, `context`, ...).
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Writer of `rejects.jsonl` (one JSON object per line, see [`Reject`]); shared by all stages.
pub struct Rejects {
    path: PathBuf,
    out: Mutex<Option<BufWriter<File>>>,
    count: Mutex<BTreeMap<String, u64>>,
    kept: Option<Mutex<Vec<Reject>>>,
}

impl Rejects {
    /// Creates (truncates) the file. Errors: [`FormatError`].
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let file =
            File::create(path).map_err(|e| FormatError::new(path, format!("creating: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Mutex::new(Some(BufWriter::new(file))),
            count: Mutex::new(BTreeMap::new()),
            kept: None,
        })
    }

    /// A rejects sink that only counts (for tests and benchmarks).
    pub fn in_memory() -> Self {
        Self {
            path: PathBuf::new(),
            out: Mutex::new(None),
            count: Mutex::new(BTreeMap::new()),
            kept: None,
        }
    }

    /// A rejects sink that keeps the rejects in memory until [`Rejects::take`] (the pipeline
    /// collects each unit's rejects this way and commits them with the unit).
    pub fn collecting() -> Self {
        Self {
            path: PathBuf::new(),
            out: Mutex::new(None),
            count: Mutex::new(BTreeMap::new()),
            kept: Some(Mutex::new(Vec::new())),
        }
    }

    /// The rejects kept since the last call (in push order), clearing them and the counts;
    /// empty unless made by [`Rejects::collecting`].
    pub fn take(&self) -> Vec<Reject> {
        self.count.lock().expect("rejects lock").clear();
        self.kept
            .as_ref()
            .map(|k| std::mem::take(&mut *k.lock().expect("rejects lock")))
            .unwrap_or_default()
    }

    /// Records a bad row and prints `logo: file: row N: field F: reason` to stderr.
    /// Errors: [`FormatError`] when the file cannot be written.
    pub fn push(&self, reject: Reject) -> Result<(), FormatError> {
        match &reject.field {
            Some(f) => tracing::warn!(
                "{}: row {}: field {}: {}",
                reject.file,
                reject.row,
                f,
                reject.reason
            ),
            None => tracing::warn!("{}: row {}: {}", reject.file, reject.row, reject.reason),
        }
        *self
            .count
            .lock()
            .expect("rejects lock")
            .entry(reject.stage.clone())
            .or_default() += 1;
        if let Some(out) = self.out.lock().expect("rejects lock").as_mut() {
            let line = serde_json::to_string(&reject).expect("reject serialises");
            writeln!(out, "{line}")
                .map_err(|e| FormatError::new(&self.path, format!("writing: {e}")))?;
        }
        if let Some(kept) = &self.kept {
            kept.lock().expect("rejects lock").push(reject);
        }
        Ok(())
    }

    /// Rejected rows per stage.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.count.lock().expect("rejects lock").clone()
    }

    /// Total rejected rows.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Flushes the file. Errors: [`FormatError`].
    pub fn flush(&self) -> Result<(), FormatError> {
        if let Some(out) = self.out.lock().expect("rejects lock").as_mut() {
            out.flush()
                .map_err(|e| FormatError::new(&self.path, format!("writing: {e}")))?;
        }
        Ok(())
    }
}
