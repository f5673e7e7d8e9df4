//! Tests of the schemas and typed records: round trips, version checks, named errors.

use super::*;

fn sample() -> TrainingSample {
    TrainingSample {
        key: SampleKey {
            sample_id: "d:1#q0".into(),
            document_id: "d:1".into(),
            question_index: 0,
            source_file: "d.jsonl".into(),
            source_row: 1,
            question: Some("q".into()),
            answer: None,
            question_origin: "source".into(),
        },
        context_chunk_ids: vec![0, 2],
        context_chunk_scores: vec![7, 1],
        prompt_input_ids: vec![1, 2, 3, 4],
        prompt_segments: vec![1, 1, 1, 1],
        chosen: "yes".into(),
        chosen_input_ids: vec![9, 2],
        chosen_origin: "generated".into(),
        rejected: vec!["no".into(), "maybe".into()],
        rejected_input_ids: vec![vec![8, 2], vec![7, 6, 2]],
        rejected_strategy: vec!["irrelevant".into(), "partial".into()],
        generator: "m".into(),
        generator_settings: "{}".into(),
        chosen_chunk_ids: vec![0],
        rejected_chunk_ids: vec![vec![1]],
        chosen_finish_reason: "stop".into(),
        rejected_finish_reason: vec!["stop".into()],
        chosen_seed: Some(7),
        rejected_seed: vec![8],
        generator_model: "m".into(),
        prompt_position_ids: vec![0, 5, 6, 90],
        position_strategy: "continuous".into(),
        target_length: 100,
    }
}

#[test]
fn training_round_trip_keeps_values_and_version() {
    let rows = vec![sample(), sample()];
    let batch = TrainingSample::to_batch(&rows).unwrap();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.schema().as_ref(), training_schema().as_ref());
    check_schema_version(batch.schema().metadata()).unwrap();
    assert_eq!(TrainingSample::from_batch(&batch).unwrap(), rows);
}

#[test]
fn every_record_matches_its_schema() {
    // Each typed record must serialise into exactly its table's schema.
    let t = sample();
    let g = GeneratedRecord {
        key: SampleKey {
            sample_id: t.key.sample_id.clone(),
            document_id: t.key.document_id.clone(),
            question_index: 0,
            source_file: t.key.source_file.clone(),
            source_row: 1,
            question: None,
            answer: None,
            question_origin: "generated".into(),
        },
        context_chunk_ids: vec![],
        context_chunk_scores: vec![],
        prompt_input_ids: vec![],
        prompt_segments: vec![],
        chosen: String::new(),
        chosen_input_ids: vec![],
        chosen_origin: "reference".into(),
        rejected: vec![],
        rejected_input_ids: vec![],
        rejected_strategy: vec![],
        generator: String::new(),
        generator_settings: String::new(),
        chosen_chunk_ids: vec![0],
        rejected_chunk_ids: vec![vec![1]],
        chosen_finish_reason: "stop".into(),
        rejected_finish_reason: vec!["stop".into()],
        chosen_seed: Some(7),
        rejected_seed: vec![8],
        generator_model: "m".into(),
    };
    let b = GeneratedRecord::to_batch(std::slice::from_ref(&g)).unwrap();
    assert_eq!(GeneratedRecord::from_batch(&b).unwrap(), vec![g]);
    let s = SampledRecord {
        key: SampleKey {
            sample_id: "a".into(),
            document_id: "b".into(),
            question_index: 3,
            source_file: "f".into(),
            source_row: 9,
            question: Some("q".into()),
            answer: Some("a".into()),
            question_origin: "source".into(),
        },
        chunk_input_ids: vec![vec![1, 2], vec![3]],
        chunk_text: vec!["x".into(), "y".into()],
        chunk_scores: vec![0, 7],
        context_chunk_ids: vec![0, 1],
        chosen_chunk_ids: vec![1],
        rejected_chunk_ids: vec![vec![0], vec![0, 1]],
        rejected_strategy: vec!["irrelevant".into(), "partial".into()],
    };
    let b = SampledRecord::to_batch(std::slice::from_ref(&s)).unwrap();
    assert_eq!(SampledRecord::from_batch(&b).unwrap(), vec![s]);
}

#[test]
fn version_check_names_expected_and_found() {
    let mut md = HashMap::new();
    let err = check_schema_version(&md).unwrap_err().to_string();
    assert_eq!(err, "schema version: expected 1, got none");
    md.insert(SCHEMA_VERSION_KEY.to_string(), "0".to_string());
    let err = check_schema_version(&md).unwrap_err().to_string();
    assert_eq!(err, "schema version: expected 1, got 0");
}

#[test]
fn missing_and_mistyped_columns_are_named() {
    let full = training_schema();
    let without: Vec<Field> = full
        .fields()
        .iter()
        .filter(|f| f.name() != col::CHOSEN_INPUT_IDS)
        .map(|f| f.as_ref().clone())
        .collect();
    let err = check_columns("training", &full, &Schema::new(without))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "missing column chosen_input_ids (table training)");
    let retyped: Vec<Field> = full
        .fields()
        .iter()
        .map(|f| {
            if f.name() == col::TARGET_LENGTH {
                Field::new(col::TARGET_LENGTH, DataType::Int64, false)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let err = check_columns("training", &full, &Schema::new(retyped))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "column target_length: expected UInt32, got Int64");
}
