//! Parquet sink: the engine's output, one row per training sample
//! ([`logo_schemas::training_schema`]), zstd-compressed, with the schema version in the
//! Parquet key-value metadata (Parquet format spec, `FileMetaData.key_value_metadata`).
//!
//! Files are written under a temporary name and renamed when complete, then `manifest.json`
//! (also written atomically) lists them with their row counts, the configuration and the run
//! summary. A reader never sees a half-written file under its final name.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use logo_schemas::{check_columns, check_schema_version, training_schema, Record, TrainingSample};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::error::{EngineError, Result};
use crate::stage::StatsSnapshot;

/// Name of the manifest in the output folder.
pub const MANIFEST: &str = "manifest.json";
/// Name of the data file in the output folder.
pub const DATA_FILE: &str = "samples-00000.parquet";

/// One output file in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name, relative to the output folder.
    pub path: String,
    /// Rows (training samples).
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// `manifest.json`: what a run wrote and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`logo_schemas::SCHEMA_VERSION`].
    pub schema_version: String,
    /// logo-engine version.
    pub engine_version: String,
    /// Seconds since the Unix epoch when the run finished.
    pub created_unix: u64,
    /// The data files.
    pub files: Vec<ManifestFile>,
    /// The configuration of the run.
    pub config: PipelineConfig,
    /// Documents read.
    pub documents: u64,
    /// Rows rejected as bad input, per stage.
    pub rejects: std::collections::BTreeMap<String, u64>,
    /// Counters of the run.
    pub stats: StatsSnapshot,
}

/// Writes training samples to `DIR/samples-00000.parquet` through a temporary file.
pub struct ParquetSink {
    dir: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl ParquetSink {
    /// Creates the folder, removes the files of an earlier run listed in its manifest, and
    /// opens the temporary file. `row_group_size`: rows per row group.
    /// Errors: [`EngineError::Io`], [`EngineError::Parquet`].
    pub fn create(dir: &Path, row_group_size: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        remove_previous_run(dir)?;
        let tmp = dir.join(format!("{DATA_FILE}.tmp"));
        let file = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(row_group_size))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                logo_schemas::SCHEMA_VERSION_KEY.to_string(),
                logo_schemas::SCHEMA_VERSION.to_string(),
            )]))
            .build();
        let writer = ArrowWriter::try_new(file, training_schema(), Some(props))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            writer,
            rows: 0,
        })
    }

    /// Appends a batch of [`training_schema`] rows. Errors: [`EngineError::Parquet`].
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the file, renames it to its final name and writes `manifest.json` (whose `files`
    /// this fills). Errors: [`EngineError::Io`], [`EngineError::Parquet`].
    pub fn finish(self, mut manifest: Manifest) -> Result<Manifest> {
        self.writer.close()?;
        let path = self.dir.join(DATA_FILE);
        std::fs::rename(&self.tmp, &path).map_err(|e| EngineError::io(&path, e))?;
        let bytes = std::fs::metadata(&path)
            .map_err(|e| EngineError::io(&path, e))?
            .len();
        manifest.files = vec![ManifestFile {
            path: DATA_FILE.into(),
            rows: self.rows,
            bytes,
        }];
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        write_atomically(&self.dir.join(MANIFEST), text.as_bytes())?;
        Ok(manifest)
    }
}

fn remove_previous_run(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    if let Ok(old) = serde_json::from_str::<Manifest>(&text) {
        for f in old.files {
            let p = dir.join(&f.path);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| EngineError::io(&p, e))?;
            }
        }
    }
    std::fs::remove_file(&path).map_err(|e| EngineError::io(&path, e))
}

/// Writes `bytes` to `path` via `path.tmp` and a rename. Errors: [`EngineError::Io`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| EngineError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
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
    let kv: std::collections::HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    check_schema_version(&kv)?;
    check_columns(TrainingSample::TABLE, &training_schema(), builder.schema())?;
    let mut out = Vec::new();
    for batch in builder.build()? {
        out.extend(TrainingSample::from_batch(&batch?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::StatsSnapshot;

    fn sample(i: u32) -> TrainingSample {
        TrainingSample {
            sample_id: format!("d:{i}#q0"),
            document_id: format!("d:{i}"),
            question_index: 0,
            source_file: "d.jsonl".into(),
            source_row: i as u64,
            question: Some("q?".into()),
            answer: i.is_multiple_of(2).then(|| "a".into()),
            question_origin: "source".into(),
            context_chunk_ids: vec![0, 3],
            context_chunk_scores: vec![7, 0],
            prompt_input_ids: vec![1, 5, 6, 7],
            prompt_segments: vec![1, 1, 1, 1],
            chosen: "yes".into(),
            chosen_input_ids: vec![9, 2],
            chosen_origin: "generated".into(),
            rejected: vec!["no".into()],
            rejected_input_ids: vec![vec![8, 2]],
            rejected_strategy: vec!["irrelevant".into()],
            generator: "m".into(),
            generator_settings: "{}".into(),
            chosen_chunk_ids: vec![0],
            rejected_chunk_ids: vec![vec![1]],
            chosen_finish_reason: "stop".into(),
            rejected_finish_reason: vec!["stop".into()],
            chosen_seed: Some(7),
            rejected_seed: vec![8],
            generator_model: "m".into(),
            prompt_position_ids: vec![0, 10, 11, 40],
            position_strategy: "continuous".into(),
            target_length: 64,
        }
    }

    fn manifest() -> Manifest {
        let cfg = PipelineConfig::from_yaml_str(
            "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n",
            Path::new("/"),
        )
        .unwrap();
        Manifest {
            schema_version: logo_schemas::SCHEMA_VERSION.into(),
            engine_version: "test".into(),
            created_unix: 0,
            files: vec![],
            config: cfg,
            documents: 3,
            rejects: Default::default(),
            stats: StatsSnapshot::default(),
        }
    }

    #[test]
    fn parquet_round_trip_with_version_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<TrainingSample> = (0..5).map(sample).collect();
        let mut sink = ParquetSink::create(dir.path(), 2).unwrap();
        sink.write(&TrainingSample::to_batch(&rows[..3]).unwrap())
            .unwrap();
        sink.write(&TrainingSample::to_batch(&rows[3..]).unwrap())
            .unwrap();
        // Nothing under the final name until finish.
        assert!(!dir.path().join(DATA_FILE).exists());
        let m = sink.finish(manifest()).unwrap();
        assert_eq!(
            m.files,
            vec![ManifestFile {
                path: DATA_FILE.into(),
                rows: 5,
                bytes: m.files[0].bytes
            }]
        );
        assert_eq!(read_training_samples(dir.path()).unwrap(), rows);
        // Row groups of 2 rows: 3 groups.
        let f = File::open(dir.path().join(DATA_FILE)).unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .metadata()
            .clone();
        assert_eq!(meta.num_row_groups(), 3);
        // A second run replaces the files the first manifest lists.
        let sink = ParquetSink::create(dir.path(), 2).unwrap();
        assert!(!dir.path().join(MANIFEST).exists());
        sink.finish(manifest()).unwrap();
        assert!(read_training_samples(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn wrong_version_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let batch = TrainingSample::to_batch(&[sample(1)]).unwrap();
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(
            batch.schema().fields().clone(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(
                logo_schemas::SCHEMA_VERSION_KEY.to_string(),
                "0".to_string(),
            )]))
            .build();
        let path = dir.path().join("old.parquet");
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let e = read_training_samples(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("old.parquet") && e.contains("schema version: expected 1, got 0"),
            "{e}"
        );
    }
}
