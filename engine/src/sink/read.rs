//! Reading an output folder back: its fingerprint, unit records, failed units and (for tests
//! and small outputs) every training sample, each Parquet part checked for the schema version
//! in its key-value metadata and for the training columns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use logo_formats::parquet_pages::key_value_metadata;
use logo_schemas::{check_columns, check_schema_version, training_schema, Record, TrainingSample};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Fingerprint, Manifest, UnitRecord, FINGERPRINT, MANIFEST, UNITS_DIR};
use crate::error::{EngineError, Result};

/// `fingerprint.json` of `dir`, if any. Errors: [`EngineError::Input`] when it does not parse.
pub fn read_fingerprint(dir: &Path) -> Result<Option<Fingerprint>> {
    let path = dir.join(FINGERPRINT);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::Input {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(&path, e)),
    }
}

/// The unit records `units/{short}/*.json` of `dir`, by unit index.
/// Errors: [`EngineError::Io`], [`EngineError::Input`] naming a record that does not parse.
pub fn read_units(dir: &Path, short: &str) -> Result<BTreeMap<u64, UnitRecord>> {
    let units = dir.join(UNITS_DIR).join(short);
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&units) else {
        return Ok(out);
    };
    for e in entries {
        let p = e.map_err(|e| EngineError::io(&units, e))?.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| EngineError::io(&p, e))?;
        let r: UnitRecord = serde_json::from_str(&text).map_err(|e| EngineError::Input {
            path: p.clone(),
            message: e.to_string(),
        })?;
        out.insert(r.unit.index, r);
    }
    Ok(out)
}

/// Units marked failed (`units/{short}/*.failed`) with their message.
pub fn read_failed(dir: &Path, short: &str) -> BTreeMap<u64, String> {
    let units = dir.join(UNITS_DIR).join(short);
    let Ok(entries) = std::fs::read_dir(&units) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "failed"))
        .filter_map(|p| {
            let index = p.file_stem()?.to_str()?.parse().ok()?;
            Some((index, std::fs::read_to_string(&p).unwrap_or_default()))
        })
        .collect()
}

/// Reads every training sample of an output folder (the files of its manifest, or every
/// `*.parquet` when there is none), checking each file's schema version and columns.
/// For tests and small outputs: it holds everything in memory.
/// Errors: [`EngineError::Input`] naming the file (wrong version, missing column, unreadable).
pub fn read_training_samples(dir: &Path) -> Result<Vec<TrainingSample>> {
    let mut files: Vec<PathBuf> = match std::fs::read_to_string(dir.join(MANIFEST)) {
        Ok(text) => {
            let m: Manifest = serde_json::from_str(&text).map_err(|e| EngineError::Input {
                path: dir.join(MANIFEST),
                message: e.to_string(),
            })?;
            m.files.iter().map(|f| dir.join(&f.path)).collect()
        }
        Err(_) => std::fs::read_dir(dir)
            .map_err(|e| EngineError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect(),
    };
    files.sort();
    let mut out = Vec::new();
    for path in files {
        out.extend(read_file(&path).map_err(|e| EngineError::Input {
            path: path.clone(),
            message: e.to_string(),
        })?);
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<TrainingSample>> {
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    check_schema_version(&key_value_metadata(builder.metadata()))?;
    check_columns(TrainingSample::TABLE, &training_schema(), builder.schema())?;
    let mut out = Vec::new();
    for batch in builder.build()? {
        out.extend(TrainingSample::from_batch(&batch?)?);
    }
    Ok(out)
}
