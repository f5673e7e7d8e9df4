//! Arrow schemas of every table that crosses a logo stage or program boundary.
//!
//! The LOGO data construction (Tang et al., "LOGO — Long cOntext aliGnment via efficient
//! preference Optimization", section 3.2.2, Fig. 2, Appendix D) is a chain of tables:
//!
//! | table | produced by | one row per |
//! |---|---|---|
//! | [`documents_schema`] ([`DocumentRecord`]) | source, question generation | (document, question) |
//! | [`chunks_schema`] ([`ChunkedRecord`]) | chunker | (document, question) |
//! | [`scored_schema`] ([`ScoredRecord`]) | entity scorer | (document, question) |
//! | [`sampled_schema`] ([`SampledRecord`]) | sampler | kept sample |
//! | [`generations_schema`] ([`GeneratedRecord`]) | generator | kept sample |
//! | [`training_schema`] ([`TrainingSample`]) | index synthesizer → Parquet sink → trainer | training sample |
//!
//! Every column name is a `pub const` in [`col`]; no other crate spells one. Each table has a
//! typed record with conversion to and from [`arrow::array::RecordBatch`] ([`Record::to_batch`],
//! [`Record::from_batch`]); the eight columns every table shares are one [`SampleKey`]. Parquet files carry [`SCHEMA_VERSION`] under the key-value metadata
//! key [`SCHEMA_VERSION_KEY`]; readers call [`check_schema_version`].
//!
//! ```
//! use logo_schemas::{DocumentRecord, Record, SampleKey};
//! let doc = DocumentRecord {
//!     key: SampleKey {
//!         sample_id: "essay:1#q0".into(),
//!         document_id: "essay:1".into(),
//!         question_index: 0,
//!         source_file: "essay.jsonl".into(),
//!         source_row: 1,
//!         question: Some("What is it?".into()),
//!         answer: None,
//!         question_origin: "source".into(),
//!     },
//!     context: "A long document.".into(),
//! };
//! let batch = DocumentRecord::to_batch(&[doc.clone()]).unwrap();
//! assert_eq!(batch.num_rows(), 1);
//! assert_eq!(DocumentRecord::from_batch(&batch).unwrap(), vec![doc]);
//! ```
#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Version of the tables below, written into Arrow schema metadata and Parquet key-value
/// metadata under [`SCHEMA_VERSION_KEY`]. Bump it whenever a column changes meaning or type.
pub const SCHEMA_VERSION: &str = "1";

/// Metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "logo.schema_version";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A batch could not be converted to or from typed records (wrong column type, missing
    /// column, null in a non-nullable column).
    #[error("converting {table} records: {source}")]
    Convert {
        /// Table name, e.g. `training`.
        table: &'static str,
        /// The conversion error.
        #[source]
        source: serde_arrow::Error,
    },
    /// Arrow refused a batch (schema and columns disagree).
    #[error("{table} batch: {source}")]
    Arrow {
        /// Table name.
        table: &'static str,
        /// The Arrow error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The metadata has no schema version, or a different one.
    #[error("schema version: expected {expected}, got {got}")]
    Version {
        /// [`SCHEMA_VERSION`].
        expected: &'static str,
        /// What the file says, or `none`.
        got: String,
    },
    /// A required column is absent.
    #[error("missing column {column} (table {table})")]
    MissingColumn {
        /// Table name.
        table: &'static str,
        /// Column name.
        column: String,
    },
    /// A column has another type than the schema requires.
    #[error("column {column}: expected {expected}, got {got}")]
    ColumnType {
        /// Column name.
        column: String,
        /// Required type.
        expected: DataType,
        /// Type found.
        got: DataType,
    },
}

/// Column names. One constant per column; the doc gives type and meaning.
pub mod col {
    /// Utf8: `"{document_id}#q{question_index}"`, unique per run.
    pub const SAMPLE_ID: &str = "sample_id";
    /// Utf8: `"{file stem}:{row}"` of the source document.
    pub const DOCUMENT_ID: &str = "document_id";
    /// UInt32: index of the question in the document's question list (0 for a generated one).
    pub const QUESTION_INDEX: &str = "question_index";
    /// Utf8: path of the input file.
    pub const SOURCE_FILE: &str = "source_file";
    /// UInt64: 1-based line (JSON Lines) or row (Parquet) number in `source_file`.
    pub const SOURCE_ROW: &str = "source_row";
    /// Utf8: the long document (reference context 𝒞).
    pub const CONTEXT: &str = "context";
    /// Utf8, nullable: the question Q (null for a raw document before question generation).
    pub const QUESTION: &str = "question";
    /// Utf8, nullable: reference answer.
    pub const ANSWER: &str = "answer";
    /// Utf8: `source` or `generated` (paper 4.1, second corpus).
    pub const QUESTION_ORIGIN: &str = "question_origin";
    /// List<List<UInt32>>: token ids of each chunk C_i, in document order.
    pub const CHUNK_INPUT_IDS: &str = "chunk_input_ids";
    /// List<Utf8>: text of each chunk (the slice of the document its tokens cover).
    pub const CHUNK_TEXT: &str = "chunk_text";
    /// List<Int32>: importance score s_i of each chunk (shared entities, paper 3.2.2).
    pub const CHUNK_SCORES: &str = "chunk_scores";
    /// List<UInt32>: chunk indices of the shared training context C', ascending.
    pub const CONTEXT_CHUNK_IDS: &str = "context_chunk_ids";
    /// List<Int32>: s_i of each chunk of C', same order.
    pub const CONTEXT_CHUNK_SCORES: &str = "context_chunk_scores";
    /// List<UInt32>: chunk indices the preferred response is generated from (C_>δ), ascending.
    pub const CHOSEN_CHUNK_IDS: &str = "chosen_chunk_ids";
    /// List<List<UInt32>>: per dis-preferred response, the chunk indices it is generated from.
    pub const REJECTED_CHUNK_IDS: &str = "rejected_chunk_ids";
    /// List<Utf8>: per dis-preferred response, `irrelevant` (P') or `partial` (P'').
    pub const REJECTED_STRATEGY: &str = "rejected_strategy";
    /// List<UInt32>: the chat-templated training prompt (system, C', question, assistant header).
    pub const PROMPT_INPUT_IDS: &str = "prompt_input_ids";
    /// List<UInt32>: lengths of the prompt's segments: template prefix, each chunk of C', then
    /// question and assistant header. Sums to the prompt length.
    pub const PROMPT_SEGMENTS: &str = "prompt_segments";
    /// List<UInt32>: synthetic position ids of the prompt, same length as `prompt_input_ids`.
    pub const PROMPT_POSITION_IDS: &str = "prompt_position_ids";
    /// Utf8: the preferred response y_w.
    pub const CHOSEN: &str = "chosen";
    /// List<UInt32>: token ids of y_w, ending with the stop token the model wrote
    /// ([`CHOSEN_STOP_TOKEN_ID`]; the end of turn for a reference answer).
    pub const CHOSEN_INPUT_IDS: &str = "chosen_input_ids";
    /// Utf8: `generated` or `reference`.
    pub const CHOSEN_ORIGIN: &str = "chosen_origin";
    /// List<Utf8>: the M dis-preferred responses y_l^(1..M).
    pub const REJECTED: &str = "rejected";
    /// List<List<UInt32>>: token ids of each y_l, ending with the stop token the model wrote
    /// when it ended it and the backend knows which ([`REJECTED_STOP_TOKEN_ID`] not null); a
    /// kept cut response (`length`), or one whose stop token the server did not identify,
    /// ends with its last generated token.
    pub const REJECTED_INPUT_IDS: &str = "rejected_input_ids";
    /// Utf8: `continuous` or `sparse` (Appendix D).
    pub const POSITION_STRATEGY: &str = "position_strategy";
    /// UInt32: the virtual context length K (Eq. 4); every position id is below it.
    pub const TARGET_LENGTH: &str = "target_length";
    /// Utf8: name of the generator model.
    pub const GENERATOR: &str = "generator";
    /// Utf8: the generator's settings as JSON (temperature, seed, max_new_tokens, ...).
    pub const GENERATOR_SETTINGS: &str = "generator_settings";
    /// Utf8: why the preferred response ended: `stop` (the model generated an end-of-turn or
    /// end-of-text token), or `reference` (the source's answer, not generated).
    pub const CHOSEN_FINISH_REASON: &str = "chosen_finish_reason";
    /// List<Utf8>: per dis-preferred response, why it ended: `stop` (the model ended it; its
    /// ids end with the end of turn), or `length` (cut at `max_new_tokens` and kept, under the
    /// engine's `generator.on_length.rejected: keep`: its ids are exactly the tokens the model
    /// wrote, with no end of turn appended).
    pub const REJECTED_FINISH_REASON: &str = "rejected_finish_reason";
    /// UInt32, nullable: the id `chosen_input_ids` ends with: the stop token the model wrote
    /// (in process: the id it sampled; on a server: the id the server reports, vLLM
    /// `stop_reason`/`token_ids`, SGLang `matched_stop`, llama-server's token ids), or the
    /// template's end of turn appended to a reference answer. Null when no stop id ends the
    /// response (never written by this version: a chosen response without a known stop id is
    /// regenerated or skipped like a cut one). Absent from files written before it existed
    /// (the trainer does not read it).
    pub const CHOSEN_STOP_TOKEN_ID: &str = "chosen_stop_token_id";
    /// List<UInt32, nullable>: per dis-preferred response, the stop token id its
    /// `rejected_input_ids` end with (as [`CHOSEN_STOP_TOKEN_ID`]); null for a kept cut
    /// response (`length`) and for a `stop` whose token the server did not identify (then no
    /// end id was appended: logo never appends an end the model did not write).
    pub const REJECTED_STOP_TOKEN_ID: &str = "rejected_stop_token_id";
    /// UInt64, nullable: sampling seed of the preferred response (null for a reference).
    pub const CHOSEN_SEED: &str = "chosen_seed";
    /// List<UInt64>: per dis-preferred response, its sampling seed.
    pub const REJECTED_SEED: &str = "rejected_seed";
    /// Utf8: the model name the generation backend reported (an OpenAI-compatible server's
    /// `model` field; the policy's name in process).
    pub const GENERATOR_MODEL: &str = "generator_model";
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

fn list(name: &str, item: DataType) -> Field {
    Field::new(name, list_of(item), false)
}

/// A list whose items may be null (`[M]` values of which some are absent).
fn list_nullable(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        false,
    )
}

fn list_list(name: &str, item: DataType) -> Field {
    Field::new(name, list_of(list_of(item)), false)
}

fn id_fields() -> Vec<Field> {
    vec![
        utf8(col::SAMPLE_ID, false),
        utf8(col::DOCUMENT_ID, false),
        Field::new(col::QUESTION_INDEX, DataType::UInt32, false),
        utf8(col::SOURCE_FILE, false),
        Field::new(col::SOURCE_ROW, DataType::UInt64, false),
    ]
}

fn qa_fields() -> Vec<Field> {
    vec![
        utf8(col::QUESTION, true),
        utf8(col::ANSWER, true),
        utf8(col::QUESTION_ORIGIN, false),
    ]
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    let metadata = HashMap::from([(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())]);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Documents: one row per (document, question). Produced by the source stage; question
/// generation fills `question`/`answer` of raw documents.
pub fn documents_schema() -> SchemaRef {
    let mut f = id_fields();
    f.push(utf8(col::CONTEXT, false));
    f.extend(qa_fields());
    schema(f)
}

fn chunk_fields() -> Vec<Field> {
    let mut f = id_fields();
    f.extend(qa_fields());
    f.push(list_list(col::CHUNK_INPUT_IDS, DataType::UInt32));
    f.push(list(col::CHUNK_TEXT, DataType::Utf8));
    f
}

/// Chunks: the document cut into equal token chunks (paper 3.2.2); the context text is
/// dropped, its chunks carry it.
pub fn chunks_schema() -> SchemaRef {
    schema(chunk_fields())
}

/// Scored chunks: [`chunks_schema`] plus `chunk_scores`.
pub fn scored_schema() -> SchemaRef {
    let mut f = chunk_fields();
    f.push(list(col::CHUNK_SCORES, DataType::Int32));
    schema(f)
}

fn sampled_fields() -> Vec<Field> {
    let mut f = chunk_fields();
    f.push(list(col::CHUNK_SCORES, DataType::Int32));
    f.push(list(col::CONTEXT_CHUNK_IDS, DataType::UInt32));
    f.push(list(col::CHOSEN_CHUNK_IDS, DataType::UInt32));
    f.push(list_list(col::REJECTED_CHUNK_IDS, DataType::UInt32));
    f.push(list(col::REJECTED_STRATEGY, DataType::Utf8));
    f
}

/// Sampled: [`scored_schema`] plus the chunk selections of the preference context, the M
/// dis-preference contexts and the shared training context C'.
pub fn sampled_schema() -> SchemaRef {
    schema(sampled_fields())
}

fn response_fields() -> Vec<Field> {
    vec![
        list(col::PROMPT_INPUT_IDS, DataType::UInt32),
        list(col::PROMPT_SEGMENTS, DataType::UInt32),
        utf8(col::CHOSEN, false),
        list(col::CHOSEN_INPUT_IDS, DataType::UInt32),
        utf8(col::CHOSEN_ORIGIN, false),
        list(col::REJECTED, DataType::Utf8),
        list_list(col::REJECTED_INPUT_IDS, DataType::UInt32),
        list(col::REJECTED_STRATEGY, DataType::Utf8),
        utf8(col::GENERATOR, false),
        utf8(col::GENERATOR_SETTINGS, false),
        list(col::CHOSEN_CHUNK_IDS, DataType::UInt32),
        list_list(col::REJECTED_CHUNK_IDS, DataType::UInt32),
        utf8(col::CHOSEN_FINISH_REASON, false),
        list(col::REJECTED_FINISH_REASON, DataType::Utf8),
        Field::new(col::CHOSEN_STOP_TOKEN_ID, DataType::UInt32, true),
        list_nullable(col::REJECTED_STOP_TOKEN_ID, DataType::UInt32),
        Field::new(col::CHOSEN_SEED, DataType::UInt64, true),
        list(col::REJECTED_SEED, DataType::UInt64),
        utf8(col::GENERATOR_MODEL, false),
    ]
}

/// Generations: ids, question, the training prompt with its segment lengths, the chosen
/// response and the M rejected ones, and lineage: C', the chunks each response was generated
/// from, and per response its finish reason, stop token id, seed and the model that wrote it.
pub fn generations_schema() -> SchemaRef {
    let mut f = id_fields();
    f.extend(qa_fields());
    f.push(list(col::CONTEXT_CHUNK_IDS, DataType::UInt32));
    f.push(list(col::CONTEXT_CHUNK_SCORES, DataType::Int32));
    f.extend(response_fields());
    schema(f)
}

/// Training samples, the engine's output and the trainer's input: [`generations_schema`] plus
/// `prompt_position_ids`, `position_strategy` and `target_length`.
pub fn training_schema() -> SchemaRef {
    let mut f = id_fields();
    f.extend(qa_fields());
    f.push(list(col::CONTEXT_CHUNK_IDS, DataType::UInt32));
    f.push(list(col::CONTEXT_CHUNK_SCORES, DataType::Int32));
    f.extend(response_fields());
    f.push(list(col::PROMPT_POSITION_IDS, DataType::UInt32));
    f.push(utf8(col::POSITION_STRATEGY, false));
    f.push(Field::new(col::TARGET_LENGTH, DataType::UInt32, false));
    schema(f)
}

/// Every boundary schema with its table name, in pipeline order (for `logo-engine schema`).
pub fn all_schemas() -> Vec<(&'static str, SchemaRef)> {
    vec![
        (DocumentRecord::TABLE, documents_schema()),
        (ChunkedRecord::TABLE, chunks_schema()),
        (ScoredRecord::TABLE, scored_schema()),
        (SampledRecord::TABLE, sampled_schema()),
        (GeneratedRecord::TABLE, generations_schema()),
        (TrainingSample::TABLE, training_schema()),
    ]
}

/// Checks that `metadata` (Arrow schema or Parquet key-value metadata) carries
/// [`SCHEMA_VERSION`]. Errors: [`SchemaError::Version`].
pub fn check_schema_version(metadata: &HashMap<String, String>) -> Result<(), SchemaError> {
    match metadata.get(SCHEMA_VERSION_KEY) {
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        other => Err(SchemaError::Version {
            expected: SCHEMA_VERSION,
            got: other.cloned().unwrap_or_else(|| "none".into()),
        }),
    }
}

/// Checks that `found` has every column of `required` with the same data type (extra columns
/// are allowed). Errors: [`SchemaError::MissingColumn`], [`SchemaError::ColumnType`].
pub fn check_columns(
    table: &'static str,
    required: &Schema,
    found: &Schema,
) -> Result<(), SchemaError> {
    for field in required.fields() {
        let got = found
            .field_with_name(field.name())
            .map_err(|_| SchemaError::MissingColumn {
                table,
                column: field.name().clone(),
            })?;
        if !types_match(field.data_type(), got.data_type()) {
            return Err(SchemaError::ColumnType {
                column: field.name().clone(),
                expected: field.data_type().clone(),
                got: got.data_type().clone(),
            });
        }
    }
    Ok(())
}

/// Type equality that ignores list item names and nullability (Parquet round trips may rename
/// `item` to `element`).
fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y))
        | (DataType::LargeList(x), DataType::LargeList(y)) => {
            types_match(x.data_type(), y.data_type())
        }
        _ => a == b,
    }
}

mod records;

pub use records::{
    ChunkedRecord, DocumentRecord, GeneratedRecord, Record, SampleKey, SampledRecord, ScoredRecord,
    TrainingSample,
};

#[cfg(test)]
mod tests {
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
            chosen_stop_token_id: Some(2),
            rejected_stop_token_id: vec![Some(0)],
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
        // A reference chosen (its end of turn) and a rejected response without a stop id (cut).
        let cut = TrainingSample {
            chosen_finish_reason: "reference".into(),
            chosen_stop_token_id: None,
            rejected_finish_reason: vec!["length".into()],
            rejected_stop_token_id: vec![None],
            ..sample()
        };
        let rows = vec![sample(), cut];
        let batch = TrainingSample::to_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema().as_ref(), training_schema().as_ref());
        check_schema_version(batch.schema().metadata()).unwrap();
        assert_eq!(TrainingSample::from_batch(&batch).unwrap(), rows);
        let s = training_schema();
        let chosen = s.field_with_name(col::CHOSEN_STOP_TOKEN_ID).unwrap();
        assert_eq!(chosen.data_type(), &DataType::UInt32);
        assert!(chosen.is_nullable());
        let DataType::List(item) = s
            .field_with_name(col::REJECTED_STOP_TOKEN_ID)
            .unwrap()
            .data_type()
            .clone()
        else {
            panic!("rejected_stop_token_id is a list");
        };
        assert_eq!(item.data_type(), &DataType::UInt32);
        assert!(item.is_nullable());
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
            chosen_stop_token_id: Some(2),
            rejected_stop_token_id: vec![Some(0)],
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
}
