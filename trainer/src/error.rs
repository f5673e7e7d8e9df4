//! The trainer's error type. Bad input is not a bug: only [`TrainerError::Internal`] says
//! "bug in logo".

use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = TrainerError> = std::result::Result<T, E>;

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A config value is unknown, mistyped or out of range; raised before any work.
    #[error("config key {key}: {message}")]
    Config {
        /// The dotted config key (`loss.beta`, `lora.r`; the binary adds its flag) or the
        /// environment variable (`WORLD_SIZE`).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An input file is unusable: wrong schema version, missing column, bad value.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the column or row).
        message: String,
    },
    /// A model folder or GGUF could not be loaded (missing tensor, wrong shape, bad config).
    #[error("model {}: {message}", path.display())]
    Model {
        /// The model folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// libtorch failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Arrow error.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet error.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A batch did not match its table.
    #[error(transparent)]
    Schema(#[from] logo_schemas::SchemaError),
    /// A collective operation between ranks failed: a rank exited, did not answer in time,
    /// could not connect, or the NCCL library is missing. The message names the rank.
    #[error("distributed: {0}")]
    Dist(String),
    /// Training produced a non-finite loss or gradient norm; the step was not applied.
    #[error("step {step}: training diverged: {message}")]
    Diverged {
        /// The optimizer step (1-based).
        step: usize,
        /// The values seen and what to do.
        message: String,
    },
    /// An invariant of logo itself was broken.
    #[error("bug in logo: {0}")]
    Internal(String),
}

impl TrainerError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainerError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A model loading error for `path`.
    pub fn model(path: &Path, message: impl Into<String>) -> Self {
        TrainerError::Model {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// A PEFT adapter or GGUF naming error ([`logo_formats`]) is a model error naming the file.
impl From<logo_formats::FormatError> for TrainerError {
    fn from(e: logo_formats::FormatError) -> Self {
        TrainerError::Model {
            path: e.path,
            message: e.message,
        }
    }
}
