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
    let on_disk = hex(&Sha256::digest(
        std::fs::read(dir.path().join("a.parquet")).unwrap(),
    ));
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
                    "{rel} {}",
                    hex(&Sha256::digest(std::fs::read(&p).unwrap()))
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
    let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let e = read_training_samples(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("old.parquet") && e.contains("schema version: expected 1, got 0"),
        "{e}"
    );
}
