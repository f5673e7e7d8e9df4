//! Parquet sink: the engine's output, one row per training sample
//! ([`logo_schemas::training_schema`]), zstd-compressed, with the schema version in the
//! Parquet key-value metadata (Parquet format spec, `FileMetaData.key_value_metadata`).
//!
//! An output folder holds one run, identified by its fingerprint ([`Fingerprint`]: SHA-256 of
//! the configuration, the inputs' bytes and the model's). Work is split into units
//! ([`crate::source::Unit`]); each unit's samples are one part, `part-{fp}-{unit}.parquet`,
//! written under a temporary name, `fsync`ed and renamed, then recorded in
//! `units/{fp}/{unit}.json` (also atomically) with its rows, bytes, SHA-256, rejects and
//! counters. A reader never sees a half-written part under its final name, and a rerun skips
//! the units recorded. `manifest.json` and `rejects.jsonl` are rebuilt from the unit records
//! at the end of every run (the union of every shard's units); timings go to `runs.jsonl`.
//!
//! Layout of `OUT/`:
//!
//! ```text
//! fingerprint.json             the run's identity and unit plan
//! part-{fp}-{unit:06}.parquet  one per unit with samples
//! units/{fp}/{unit:06}.json    one per finished unit; {unit:06}.failed for a failed one
//! manifest.json, rejects.jsonl rebuilt from the unit records (unit order)
//! runs.jsonl                   one line per process start and end: shard, timings, replays
//! cache/                       the replay cache (crate::pipeline::replay)
//! ```
//!
//! Parts are byte-identical for the same inputs, configuration and seed: rows in (unit, row,
//! question) order, row groups of `sink.row_group_size`, no timestamp inside.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use logo_schemas::training_schema;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{PipelineConfig, RawPipelineConfig};
use crate::error::{EngineError, Result};
use crate::source::Unit;
use crate::stage::StatsSnapshot;
use logo_formats::rejects::Reject;

mod fingerprint;
mod read;

pub use fingerprint::Fingerprint;
use fingerprint::FP_CHARS;
pub use read::{read_failed, read_fingerprint, read_training_samples, read_units};

/// Name of the manifest in the output folder.
pub const MANIFEST: &str = "manifest.json";
/// Name of the run's identity in the output folder.
pub const FINGERPRINT: &str = "fingerprint.json";
/// Name of the rejects file in the output folder.
pub const REJECTS: &str = "rejects.jsonl";
/// Name of the run log (timings, replays) in the output folder.
pub const RUN_LOG: &str = "runs.jsonl";
/// Folder of the unit records.
pub const UNITS_DIR: &str = "units";

/// One output file in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name, relative to the output folder.
    pub path: String,
    /// Rows (training samples).
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, 64 lowercase hex digits.
    #[serde(default)]
    pub sha256: String,
}

/// `units/{fp}/{unit}.json`: one finished unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit.
    pub unit: Unit,
    /// Its part, absent when the unit produced no sample.
    pub part: Option<ManifestFile>,
    /// Documents (records) read, rejected ones included.
    pub documents: u64,
    /// Its bad input rows.
    pub rejects: Vec<Reject>,
    /// Its counters (no timings).
    pub stats: StatsSnapshot,
    /// The shard that did it (`I/N`).
    pub shard: String,
}

/// `manifest.json`: what the output holds, rebuilt from the unit records. No timestamp and
/// no timing: for the same fingerprint the same units give the same manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`logo_schemas::SCHEMA_VERSION`].
    pub schema_version: String,
    /// logo-engine version.
    pub engine_version: String,
    /// [`Fingerprint::id`].
    #[serde(default)]
    pub fingerprint: String,
    /// Units of the plan.
    #[serde(default)]
    pub units_total: u64,
    /// Units finished.
    #[serde(default)]
    pub units_done: u64,
    /// The data files, in unit order.
    pub files: Vec<ManifestFile>,
    /// The configuration of the run.
    pub config: RawPipelineConfig,
    /// Documents read.
    pub documents: u64,
    /// Rows rejected as bad input, per stage.
    pub rejects: BTreeMap<String, u64>,
    /// Counters of the run (sums over the units; no timings).
    pub stats: StatsSnapshot,
}

/// Writes `bytes` to `path` via a temporary file in the same folder, `fsync` and a rename,
/// then `fsync`s the folder: after a crash `path` holds the old or the new bytes, whole.
/// Errors: [`EngineError::Io`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    let mut f = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| EngineError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))?;
    sync_dir(path)
}

/// `path` + `.{pid}.tmp`: distinct per process, so shards never share a temporary file.
fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io(dir, e))
}

/// Writer properties of every part: zstd 3, row groups of `row_group_size`, the schema version.
fn part_properties(row_group_size: usize) -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(row_group_size))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            logo_schemas::SCHEMA_VERSION_KEY.to_string(),
            logo_schemas::SCHEMA_VERSION.to_string(),
        )]))
        .build())
}

/// Writes `batches` ([`training_schema`]) as one Parquet file at `path`, atomically (temporary
/// name, `fsync`, rename, folder `fsync`), rows sorted by (`source_row`, `question_index`)
/// and written in one piece so that the bytes depend on the rows only. Returns the entry
/// for the manifest (`path` relative to its folder). Errors: [`EngineError::Io`],
/// [`EngineError::Parquet`], [`EngineError::Arrow`].
pub fn write_part(
    path: &Path,
    batches: &[RecordBatch],
    row_group_size: usize,
) -> Result<ManifestFile> {
    let schema = training_schema();
    let all = arrow::compute::concat_batches(&schema, batches)?;
    let keys = [
        arrow::compute::SortColumn {
            values: all
                .column_by_name("source_row")
                .ok_or_else(|| EngineError::Internal("no source_row column".into()))?
                .clone(),
            options: None,
        },
        arrow::compute::SortColumn {
            values: all
                .column_by_name("question_index")
                .ok_or_else(|| EngineError::Internal("no question_index column".into()))?
                .clone(),
            options: None,
        },
    ];
    // (source_row, question_index) is unique within a unit: one sample per question.
    let indices = arrow::compute::lexsort_to_indices(&keys, None)?;
    let sorted = arrow::compute::take_record_batch(&all, &indices)?;
    let tmp = tmp_name(path);
    let file = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(part_properties(row_group_size)?))?;
    writer.write(&sorted)?;
    let file = writer.into_inner()?;
    file.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
    drop(file);
    let bytes = std::fs::read(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))?;
    sync_dir(path)?;
    Ok(ManifestFile {
        path: path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        rows: sorted.num_rows() as u64,
        bytes: bytes.len() as u64,
        sha256: format!("{:x}", Sha256::digest(&bytes)),
    })
}

/// An output folder opened for a run (see the module doc).
#[derive(Debug)]
pub struct Output {
    dir: PathBuf,
    fp: Fingerprint,
    /// Set while an earlier, different run's data is still there (`--overwrite`): it is
    /// removed once this run's first unit is committed.
    replacing: bool,
    done: BTreeMap<u64, UnitRecord>,
}

impl Output {
    /// Opens `dir` (created) for a run with fingerprint `fp`.
    ///
    /// * Same fingerprint: resumes (with or without `overwrite`); the units recorded are done.
    ///   The files of a run this one replaced are removed (left when a kill came between its
    ///   switch and the removal).
    /// * A different fingerprint, or data of an unknown run (a `manifest.json`, a `*.parquet`
    ///   without `fingerprint.json`): [`EngineError::Output`] naming what differs, and nothing
    ///   is touched, unless `overwrite`; then the earlier data stays until this run's first
    ///   unit is committed ([`Output::commit`]).
    /// * Nothing there: writes `fingerprint.json`.
    ///
    /// Errors: [`EngineError::Output`], [`EngineError::Io`].
    pub fn open(dir: &Path, fp: Fingerprint, overwrite: bool) -> Result<Self> {
        let mut out = Self {
            dir: dir.to_path_buf(),
            fp,
            replacing: false,
            done: BTreeMap::new(),
        };
        let refuse = |why: String| EngineError::Output {
            path: dir.to_path_buf(),
            message: format!(
                "{why}; nothing was changed: rerun with --overwrite to replace it (its data \
                 stays until the new run's first unit is written) or choose another --output"
            ),
        };
        match read_fingerprint(dir)? {
            Some(old) if old.id == out.fp.id => {
                out.done = read_units(dir, out.fp.short())?;
                out.remove_other_runs()?;
            }
            Some(old) => {
                if !overwrite {
                    return Err(refuse(format!(
                        "it holds another run (fingerprint {} here, {} now): {}",
                        &old.id[..FP_CHARS],
                        out.fp.short(),
                        out.fp.differences(&old).join("; ")
                    )));
                }
                out.replacing = true;
            }
            None if has_data(dir) => {
                if !overwrite {
                    return Err(refuse(
                        "it holds data of a run without fingerprint.json (an older engine's, \
                         or not logo-engine's)"
                            .into(),
                    ));
                }
                out.replacing = true;
            }
            None => {
                std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
                out.write_fingerprint()?;
            }
        }
        std::fs::create_dir_all(out.units_dir()).map_err(|e| EngineError::io(dir, e))?;
        Ok(out)
    }

    /// The run's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fp
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when unit `index` is recorded as finished.
    pub fn is_done(&self, index: u64) -> bool {
        self.done.contains_key(&index)
    }

    fn units_dir(&self) -> PathBuf {
        self.dir.join(UNITS_DIR).join(self.fp.short())
    }

    fn write_fingerprint(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.fp).expect("fingerprint serialises");
        write_atomically(&self.dir.join(FINGERPRINT), text.as_bytes())
    }

    /// Commits one finished unit: its part (when `batches` hold rows) then its record, each
    /// atomically. The first commit of a run that replaces another switches
    /// `fingerprint.json` and removes the other run's files.
    /// Errors: [`EngineError::Io`], [`EngineError::Parquet`].
    pub fn commit(
        &mut self,
        mut record: UnitRecord,
        batches: &[RecordBatch],
        row_group_size: usize,
    ) -> Result<UnitRecord> {
        let index = record.unit.index;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        record.part = if rows > 0 {
            let name = format!("part-{}-{index:06}.parquet", self.fp.short());
            Some(write_part(&self.dir.join(name), batches, row_group_size)?)
        } else {
            None
        };
        record.stats.seconds.clear();
        let text = serde_json::to_string_pretty(&record).expect("unit record serialises");
        write_atomically(
            &self.units_dir().join(format!("{index:06}.json")),
            text.as_bytes(),
        )?;
        let failed = self.units_dir().join(format!("{index:06}.failed"));
        if failed.exists() {
            std::fs::remove_file(&failed).map_err(|e| EngineError::io(&failed, e))?;
        }
        if self.replacing {
            self.write_fingerprint()?;
            self.remove_other_runs()?;
            self.replacing = false;
        }
        self.done.insert(index, record.clone());
        Ok(record)
    }

    /// Records that unit `index` failed with `message` (`units/{fp}/{unit}.failed`); a rerun
    /// does it again. Errors: [`EngineError::Io`].
    pub fn mark_failed(&self, index: u64, message: &str) -> Result<()> {
        write_atomically(
            &self.units_dir().join(format!("{index:06}.failed")),
            message.as_bytes(),
        )
    }

    /// Removes what is not this run's: parts and unit records of other fingerprints, an older
    /// engine's `samples-*.parquet`, and (when replacing) the old `manifest.json` and
    /// `rejects.jsonl`. Temporary files (`*.{pid}.tmp`) are left alone: another shard may be
    /// writing its own right now; readers never look at them.
    fn remove_other_runs(&self) -> Result<()> {
        let ours = format!("part-{}-", self.fp.short());
        let remove = |p: &Path| -> Result<()> {
            if p.is_dir() {
                std::fs::remove_dir_all(p).map_err(|e| EngineError::io(p, e))
            } else {
                std::fs::remove_file(p).map_err(|e| EngineError::io(p, e))
            }
        };
        for entry in std::fs::read_dir(&self.dir).map_err(|e| EngineError::io(&self.dir, e))? {
            let p = entry.map_err(|e| EngineError::io(&self.dir, e))?.path();
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let stale_part = (name.starts_with("part-") || name.starts_with("samples-"))
                && name.ends_with(".parquet")
                && !name.starts_with(&ours);
            let old_summary = self.replacing && (name == MANIFEST || name == REJECTS);
            if stale_part || old_summary {
                remove(&p)?;
            }
        }
        let units = self.dir.join(UNITS_DIR);
        if units.is_dir() {
            for entry in std::fs::read_dir(&units).map_err(|e| EngineError::io(&units, e))? {
                let p = entry.map_err(|e| EngineError::io(&units, e))?.path();
                if p.file_name().is_some_and(|n| n != self.fp.short()) {
                    remove(&p)?;
                }
            }
        }
        Ok(())
    }

    /// Rebuilds `manifest.json` and `rejects.jsonl` from every unit record of this run in the
    /// folder (all shards'), in unit order, and returns the manifest. `cfg`: the configuration
    /// written into it. Errors: [`EngineError::Io`], [`EngineError::Input`] (a unit record
    /// that does not parse).
    pub fn finish(&mut self, cfg: &PipelineConfig) -> Result<Manifest> {
        if self.replacing {
            // Nothing was committed (no unit to do): this run still replaces the other.
            self.write_fingerprint()?;
            self.remove_other_runs()?;
            self.replacing = false;
        }
        let units = read_units(&self.dir, self.fp.short())?;
        let mut stats = StatsSnapshot::default();
        let mut rejects_text = String::new();
        let mut rejects = BTreeMap::new();
        let mut documents = 0;
        let mut files = Vec::new();
        for r in units.values() {
            stats.add(&r.stats);
            documents += r.documents;
            for j in &r.rejects {
                *rejects.entry(j.stage.clone()).or_default() += 1;
                rejects_text.push_str(&serde_json::to_string(j).expect("reject serialises"));
                rejects_text.push('\n');
            }
            files.extend(r.part.clone());
        }
        stats.seconds.clear();
        let manifest = Manifest {
            schema_version: logo_schemas::SCHEMA_VERSION.into(),
            engine_version: env!("CARGO_PKG_VERSION").into(),
            fingerprint: self.fp.id.clone(),
            units_total: self.fp.plan.units.len() as u64,
            units_done: units.len() as u64,
            files,
            config: cfg.raw().clone(),
            documents,
            rejects,
            stats,
        };
        write_atomically(&self.dir.join(REJECTS), rejects_text.as_bytes())?;
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        write_atomically(&self.dir.join(MANIFEST), text.as_bytes())?;
        self.done = units;
        Ok(manifest)
    }

    /// Appends one line of JSON to `runs.jsonl` (and `fsync`s it). Errors: [`EngineError::Io`].
    pub fn log(&self, line: &serde_json::Value) -> Result<()> {
        append_line(&self.dir.join(RUN_LOG), line)
    }
}

fn append_line(path: &Path, line: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| EngineError::io(path, e))?;
    let mut text = line.to_string();
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| EngineError::io(path, e))
}

/// True when `dir` holds output of some run (`manifest.json`, `fingerprint.json`, unit
/// records or any `*.parquet`).
fn has_data(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name == MANIFEST || name == FINGERPRINT || name == UNITS_DIR || name.ends_with(".parquet")
    })
}

#[cfg(test)]
mod tests {
    //! Tests of [`super`] (`sink.rs`).

    use super::*;
    use crate::source::UnitPlan;
    use crate::stage::StatsSnapshot;
    use logo_schemas::SampleKey;
    use logo_schemas::{Record, TrainingSample};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn sample(i: u32) -> TrainingSample {
        TrainingSample {
            key: SampleKey {
                sample_id: format!("d:{i}#q0"),
                document_id: format!("d:{i}"),
                question_index: 0,
                source_file: "d.jsonl".into(),
                source_row: i as u64,
                question: Some("q?".into()),
                answer: i.is_multiple_of(2).then(|| "a".into()),
                question_origin: "source".into(),
            },
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
            chosen_stop_token_id: Some(2),
            rejected_stop_token_id: vec![Some(2)],
            chosen_seed: Some(7),
            rejected_seed: vec![8],
            generator_model: "m".into(),
            prompt_position_ids: vec![0, 10, 11, 40],
            position_strategy: "continuous".into(),
            target_length: 64,
        }
    }

    fn plan_and_config(dir: &Path, chunk_size: usize) -> (PipelineConfig, UnitPlan) {
        let docs = dir.join("d.jsonl");
        std::fs::write(&docs, "{\"context\": \"a\", \"question\": \"q\"}\n\n{\"context\": \"b\", \"question\": \"q\"}\n{\"context\": \"c\", \"question\": \"q\"}\n").unwrap();
        let cfg = PipelineConfig::from_yaml_str(
            &format!(
                "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
             chunker: {{chunk_size: {chunk_size}}}\nsink: {{unit_rows: 2}}\n"
            ),
            dir,
        )
        .unwrap();
        let plan = crate::source::plan_units(&cfg.source.paths, 2, None).unwrap();
        (cfg, plan)
    }

    fn record(unit: Unit) -> UnitRecord {
        UnitRecord {
            unit,
            part: None,
            documents: unit.count,
            rejects: vec![],
            stats: StatsSnapshot::default(),
            shard: "0/1".into(),
        }
    }

    #[test]
    fn part_bytes_depend_on_the_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<TrainingSample> = (0..5).map(sample).collect();
        // Out of order and split differently: the same sorted rows, the same bytes.
        let a = write_part(
            &dir.path().join("a.parquet"),
            &[
                TrainingSample::to_batch(&rows[3..]).unwrap(),
                TrainingSample::to_batch(&rows[..3]).unwrap(),
            ],
            2,
        )
        .unwrap();
        let b = write_part(
            &dir.path().join("b.parquet"),
            &[
                TrainingSample::to_batch(&rows[..1]).unwrap(),
                TrainingSample::to_batch(&rows[1..]).unwrap(),
            ],
            2,
        )
        .unwrap();
        assert_eq!((a.rows, a.bytes, &a.sha256), (5, b.bytes, &b.sha256));
        assert_eq!(a.sha256.len(), 64);
        let on_disk = format!(
            "{:x}",
            Sha256::digest(std::fs::read(dir.path().join("a.parquet")).unwrap())
        );
        assert_eq!(on_disk, a.sha256);
        // Rows in (row, question) order; row groups of 2 rows: 3 groups; no temporary left.
        std::fs::remove_file(dir.path().join("b.parquet")).unwrap();
        assert_eq!(read_training_samples(dir.path()).unwrap(), rows);
        let f = File::open(dir.path().join("a.parquet")).unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .metadata()
            .clone();
        assert_eq!(meta.num_row_groups(), 3);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.parquet"]);
    }

    #[test]
    fn plan_counts_records_and_splits_units() {
        let dir = tempfile::tempdir().unwrap();
        let (_, plan) = plan_and_config(dir.path(), 512);
        // 3 records (the blank line is none) in units of 2: [0, 2) and [2, 3).
        assert_eq!(plan.files[0].records, 3);
        let ranges: Vec<(u64, u64, u64)> = plan
            .units
            .iter()
            .map(|u| (u.index, u.first, u.count))
            .collect();
        assert_eq!(ranges, vec![(0, 0, 2), (1, 2, 1)]);
        let limited = crate::source::plan_units(&[dir.path().join("d.jsonl")], 2, Some(1)).unwrap();
        let ranges: Vec<(u64, u64)> = limited.units.iter().map(|u| (u.first, u.count)).collect();
        assert_eq!(ranges, vec![(0, 1)]);
    }

    #[test]
    fn another_run_is_refused_untouched_and_replaced_only_after_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("out");
        let (cfg, plan) = plan_and_config(dir.path(), 512);
        let model = "ab".repeat(32);
        let fp = Fingerprint::new(&cfg, &plan, &model);
        let mut out = Output::open(&out_dir, fp.clone(), false).unwrap();
        assert!(out_dir.join(FINGERPRINT).is_file());
        let batch = TrainingSample::to_batch(&[sample(1)]).unwrap();
        let r = out
            .commit(record(plan.units[0]), std::slice::from_ref(&batch), 128)
            .unwrap();
        let part = r.part.clone().unwrap();
        assert_eq!(part.path, format!("part-{}-000000.parquet", fp.short()));
        out.finish(&cfg).unwrap();
        // The same run again: unit 0 is done, unit 1 is not.
        let out = Output::open(&out_dir, fp.clone(), false).unwrap();
        assert!(out.is_done(0) && !out.is_done(1));

        // Another configuration: refused, naming the key, and nothing changes.
        let before = listing(&out_dir);
        let (cfg2, plan2) = plan_and_config(dir.path(), 256);
        let fp2 = Fingerprint::new(&cfg2, &plan2, &model);
        let e = Output::open(&out_dir, fp2.clone(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("configuration differs: config.chunker.chunk_size (512 → 256)")
                && e.contains("--overwrite"),
            "{e}"
        );
        assert_eq!(listing(&out_dir), before);
        // Another model: named too.
        let e = Output::open(
            &out_dir,
            Fingerprint::new(&cfg, &plan, &"cd".repeat(32)),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("model differs (sha256 abababababab → cdcdcdcdcdcd)"),
            "{e}"
        );
        // Changed input bytes: named.
        std::fs::write(
            dir.path().join("d.jsonl"),
            "{\"context\": \"z\", \"question\": \"q\"}\n",
        )
        .unwrap();
        let plan3 = crate::source::plan_units(&cfg.source.paths, 2, None).unwrap();
        let e = Output::open(&out_dir, Fingerprint::new(&cfg, &plan3, &model), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inputs differ:") && e.contains("d.jsonl changed"),
            "{e}"
        );
        assert_eq!(listing(&out_dir), before);

        // --overwrite: the old run's files stay until the new run's first commit.
        let mut out = Output::open(&out_dir, fp2.clone(), true).unwrap();
        assert_eq!(listing(&out_dir), before);
        assert!(!out.is_done(0));
        out.commit(record(plan2.units[0]), &[batch], 128).unwrap();
        let after = listing(&out_dir);
        assert!(!after.iter().any(|n| n.contains(fp.short())), "{after:?}");
        assert!(after.contains(&format!("part-{}-000000.parquet", fp2.short())));
        assert_eq!(read_fingerprint(&out_dir).unwrap().unwrap().id, fp2.id);
    }

    /// Every file under `dir`, relative, sorted, with its bytes' hash.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.push(rel.clone());
                    out.push(format!(
                        "{rel} {:x}",
                        Sha256::digest(std::fs::read(&p).unwrap())
                    ));
                }
            }
        }
        out.sort();
        out
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
