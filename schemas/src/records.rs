//! The typed rows of the tables in the crate doc: one record per table, convertible to and
//! from [`RecordBatch`] through `serde_arrow` with the table's schema; the eight identity
//! columns every table shares are one [`SampleKey`], flattened.

use arrow::array::RecordBatch;
use arrow::datatypes::{FieldRef, SchemaRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::col;
use crate::{
    check_columns, chunks_schema, documents_schema, generations_schema, sampled_schema,
    scored_schema, training_schema, SchemaError,
};

/// A typed row of one table, convertible to and from [`RecordBatch`] (via `serde_arrow`).
pub trait Record: Serialize + DeserializeOwned + Sized {
    /// Table name used in errors and `logo-engine schema`.
    const TABLE: &'static str;
    /// The table's schema.
    fn schema() -> SchemaRef;

    /// Builds a batch with [`Self::schema`] (metadata included).
    /// Errors: [`SchemaError::Convert`] when a value does not fit its column.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, SchemaError> {
        let schema = Self::schema();
        let fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
        let batch = serde_arrow::to_record_batch(&fields, &rows).map_err(|source| {
            SchemaError::Convert {
                table: Self::TABLE,
                source,
            }
        })?;
        batch
            .with_schema(schema)
            .map_err(|source| SchemaError::Arrow {
                table: Self::TABLE,
                source,
            })
    }

    /// Reads rows from a batch that has at least the table's columns.
    /// Errors: [`SchemaError::MissingColumn`], [`SchemaError::ColumnType`],
    /// [`SchemaError::Convert`] (e.g. a null in a non-nullable column).
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, SchemaError> {
        let schema = Self::schema();
        check_columns(Self::TABLE, &schema, &batch.schema())?;
        let indices: Vec<usize> = schema
            .fields()
            .iter()
            .map(|f| batch.schema().index_of(f.name()).expect("checked above"))
            .collect();
        let projected = batch
            .project(&indices)
            .map_err(|source| SchemaError::Arrow {
                table: Self::TABLE,
                source,
            })?;
        serde_arrow::from_record_batch(&projected).map_err(|source| SchemaError::Convert {
            table: Self::TABLE,
            source,
        })
    }
}

/// The eight columns that identify a sample and carry its question, the same in every table
/// from the source to the training samples ([`col::SAMPLE_ID`] … [`col::QUESTION_ORIGIN`]):
/// each record holds one, flattened into its columns (`#[serde(flatten)]`), so a stage passes
/// it on whole instead of copying the columns one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleKey {
    /// See [`col::SAMPLE_ID`].
    pub sample_id: String,
    /// See [`col::DOCUMENT_ID`].
    pub document_id: String,
    /// See [`col::QUESTION_INDEX`].
    pub question_index: u32,
    /// See [`col::SOURCE_FILE`].
    pub source_file: String,
    /// See [`col::SOURCE_ROW`].
    pub source_row: u64,
    /// See [`col::QUESTION`].
    pub question: Option<String>,
    /// See [`col::ANSWER`].
    pub answer: Option<String>,
    /// See [`col::QUESTION_ORIGIN`].
    pub question_origin: String,
}

/// One row of [`documents_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// The sample's identity and question (eight columns, flattened).
    #[serde(flatten)]
    pub key: SampleKey,
    /// See [`col::CONTEXT`].
    pub context: String,
}

impl Record for DocumentRecord {
    const TABLE: &'static str = "documents";
    fn schema() -> SchemaRef {
        documents_schema()
    }
}

/// One row of [`chunks_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkedRecord {
    /// The sample's identity and question (eight columns, flattened).
    #[serde(flatten)]
    pub key: SampleKey,
    /// See [`col::CHUNK_INPUT_IDS`]: `[n_chunks][<= chunk_size]` token ids.
    pub chunk_input_ids: Vec<Vec<u32>>,
    /// See [`col::CHUNK_TEXT`]: `[n_chunks]`.
    pub chunk_text: Vec<String>,
}

impl Record for ChunkedRecord {
    const TABLE: &'static str = "chunks";
    fn schema() -> SchemaRef {
        chunks_schema()
    }
}

/// One row of [`scored_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRecord {
    /// The sample's identity and question (eight columns, flattened).
    #[serde(flatten)]
    pub key: SampleKey,
    /// See [`col::CHUNK_INPUT_IDS`].
    pub chunk_input_ids: Vec<Vec<u32>>,
    /// See [`col::CHUNK_TEXT`].
    pub chunk_text: Vec<String>,
    /// See [`col::CHUNK_SCORES`]: `[n_chunks]`.
    pub chunk_scores: Vec<i32>,
}

impl Record for ScoredRecord {
    const TABLE: &'static str = "scored";
    fn schema() -> SchemaRef {
        scored_schema()
    }
}

/// One row of [`sampled_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampledRecord {
    /// The sample's identity and question (eight columns, flattened).
    #[serde(flatten)]
    pub key: SampleKey,
    /// See [`col::CHUNK_INPUT_IDS`].
    pub chunk_input_ids: Vec<Vec<u32>>,
    /// See [`col::CHUNK_TEXT`].
    pub chunk_text: Vec<String>,
    /// See [`col::CHUNK_SCORES`].
    pub chunk_scores: Vec<i32>,
    /// See [`col::CONTEXT_CHUNK_IDS`]: `[N]`.
    pub context_chunk_ids: Vec<u32>,
    /// See [`col::CHOSEN_CHUNK_IDS`].
    pub chosen_chunk_ids: Vec<u32>,
    /// See [`col::REJECTED_CHUNK_IDS`]: `[M][..]`.
    pub rejected_chunk_ids: Vec<Vec<u32>>,
    /// See [`col::REJECTED_STRATEGY`]: `[M]`.
    pub rejected_strategy: Vec<String>,
}

impl Record for SampledRecord {
    const TABLE: &'static str = "sampled";
    fn schema() -> SchemaRef {
        sampled_schema()
    }
}

/// One row of [`generations_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedRecord {
    /// The sample's identity and question (eight columns, flattened).
    #[serde(flatten)]
    pub key: SampleKey,
    /// See [`col::CONTEXT_CHUNK_IDS`].
    pub context_chunk_ids: Vec<u32>,
    /// See [`col::CONTEXT_CHUNK_SCORES`].
    pub context_chunk_scores: Vec<i32>,
    /// See [`col::PROMPT_INPUT_IDS`]: `[T_prompt]`.
    pub prompt_input_ids: Vec<u32>,
    /// See [`col::PROMPT_SEGMENTS`]: `[N + 2]`, sums to `T_prompt`.
    pub prompt_segments: Vec<u32>,
    /// See [`col::CHOSEN`].
    pub chosen: String,
    /// See [`col::CHOSEN_INPUT_IDS`].
    pub chosen_input_ids: Vec<u32>,
    /// See [`col::CHOSEN_ORIGIN`].
    pub chosen_origin: String,
    /// See [`col::REJECTED`]: `[M]`.
    pub rejected: Vec<String>,
    /// See [`col::REJECTED_INPUT_IDS`]: `[M][..]`.
    pub rejected_input_ids: Vec<Vec<u32>>,
    /// See [`col::REJECTED_STRATEGY`]: `[M]`.
    pub rejected_strategy: Vec<String>,
    /// See [`col::GENERATOR`].
    pub generator: String,
    /// See [`col::GENERATOR_SETTINGS`].
    pub generator_settings: String,
    /// See [`col::CHOSEN_CHUNK_IDS`].
    pub chosen_chunk_ids: Vec<u32>,
    /// See [`col::REJECTED_CHUNK_IDS`]: `[M][..]`.
    pub rejected_chunk_ids: Vec<Vec<u32>>,
    /// See [`col::CHOSEN_FINISH_REASON`].
    pub chosen_finish_reason: String,
    /// See [`col::REJECTED_FINISH_REASON`]: `[M]`.
    pub rejected_finish_reason: Vec<String>,
    /// See [`col::CHOSEN_STOP_TOKEN_ID`].
    pub chosen_stop_token_id: Option<u32>,
    /// See [`col::REJECTED_STOP_TOKEN_ID`]: `[M]`.
    pub rejected_stop_token_id: Vec<Option<u32>>,
    /// See [`col::CHOSEN_SEED`].
    pub chosen_seed: Option<u64>,
    /// See [`col::REJECTED_SEED`]: `[M]`.
    pub rejected_seed: Vec<u64>,
    /// See [`col::GENERATOR_MODEL`].
    pub generator_model: String,
}

impl Record for GeneratedRecord {
    const TABLE: &'static str = "generations";
    fn schema() -> SchemaRef {
        generations_schema()
    }
}

/// One row of [`training_schema`]: one LOGO training sample
/// `({Q, C', y_w}, {Q, C', y_l^(j)}_{j=1..M})` (paper 3.2.2, Eq. 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSample {
    /// The sample's identity and question (eight columns, flattened).
    #[serde(flatten)]
    pub key: SampleKey,
    /// See [`col::CONTEXT_CHUNK_IDS`].
    pub context_chunk_ids: Vec<u32>,
    /// See [`col::CONTEXT_CHUNK_SCORES`].
    pub context_chunk_scores: Vec<i32>,
    /// See [`col::PROMPT_INPUT_IDS`].
    pub prompt_input_ids: Vec<u32>,
    /// See [`col::PROMPT_SEGMENTS`].
    pub prompt_segments: Vec<u32>,
    /// See [`col::CHOSEN`].
    pub chosen: String,
    /// See [`col::CHOSEN_INPUT_IDS`].
    pub chosen_input_ids: Vec<u32>,
    /// See [`col::CHOSEN_ORIGIN`].
    pub chosen_origin: String,
    /// See [`col::REJECTED`].
    pub rejected: Vec<String>,
    /// See [`col::REJECTED_INPUT_IDS`].
    pub rejected_input_ids: Vec<Vec<u32>>,
    /// See [`col::REJECTED_STRATEGY`].
    pub rejected_strategy: Vec<String>,
    /// See [`col::GENERATOR`].
    pub generator: String,
    /// See [`col::GENERATOR_SETTINGS`].
    pub generator_settings: String,
    /// See [`col::CHOSEN_CHUNK_IDS`].
    pub chosen_chunk_ids: Vec<u32>,
    /// See [`col::REJECTED_CHUNK_IDS`]: `[M][..]`.
    pub rejected_chunk_ids: Vec<Vec<u32>>,
    /// See [`col::CHOSEN_FINISH_REASON`].
    pub chosen_finish_reason: String,
    /// See [`col::REJECTED_FINISH_REASON`]: `[M]`.
    pub rejected_finish_reason: Vec<String>,
    /// See [`col::CHOSEN_STOP_TOKEN_ID`].
    pub chosen_stop_token_id: Option<u32>,
    /// See [`col::REJECTED_STOP_TOKEN_ID`]: `[M]`.
    pub rejected_stop_token_id: Vec<Option<u32>>,
    /// See [`col::CHOSEN_SEED`].
    pub chosen_seed: Option<u64>,
    /// See [`col::REJECTED_SEED`]: `[M]`.
    pub rejected_seed: Vec<u64>,
    /// See [`col::GENERATOR_MODEL`].
    pub generator_model: String,
    /// See [`col::PROMPT_POSITION_IDS`]: `[T_prompt]`, strictly increasing, first 0, < K.
    pub prompt_position_ids: Vec<u32>,
    /// See [`col::POSITION_STRATEGY`].
    pub position_strategy: String,
    /// See [`col::TARGET_LENGTH`] (K, tokens).
    pub target_length: u32,
}

impl Record for TrainingSample {
    const TABLE: &'static str = "training";
    fn schema() -> SchemaRef {
        training_schema()
    }
}
