//! The engine's error type. Bad input is not a bug: only [`EngineError::Internal`] says
//! "bug in logo". Row-level problems never surface here; they go to `rejects.jsonl`
//! (see [`logo_formats::rejects::Rejects`]).

use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A configuration key is unknown, mistyped or out of range; raised before any work.
    #[error("config key {key}: {message}")]
    Config {
        /// Dotted key (`sampler.threshold`).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The pipeline YAML does not parse or does not fit the config's shape (unknown key,
    /// wrong type); the message names the key path, line and column. Raised before any work.
    #[error("config: {0}")]
    ConfigSyntax(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A whole input file is unusable (not Parquet, unreadable schema); rows of other files
    /// go on.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The output folder holds another run (a different fingerprint) or data of an unknown
    /// one; raised before any work, nothing is changed.
    #[error("output {}: {message}", path.display())]
    Output {
        /// The output folder.
        path: PathBuf,
        /// What differs and what to do.
        message: String,
    },
    /// Arrow error.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet error.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A batch did not match its table.
    #[error(transparent)]
    Schema(#[from] logo_schemas::SchemaError),
    /// A file of an external format ([`logo_formats`]: `rejects.jsonl`, input documents) could
    /// not be read or written; displays as `{path}: {message}`.
    #[error(transparent)]
    Format(#[from] logo_formats::FormatError),
    /// The model could not be loaded or run.
    #[error("model: {0}")]
    Model(String),
    /// The tokenizer could not be loaded or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An invariant of logo itself was broken.
    #[error("bug in logo: {0}")]
    Internal(String),
}

impl EngineError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The policy's errors keep their kind: a bad `generator.openai` key stays a config error, a
/// model that does not load a model error.
impl From<logo_policy::PolicyError> for EngineError {
    fn from(e: logo_policy::PolicyError) -> Self {
        use logo_policy::PolicyError as P;
        match e {
            P::Config { key, message } => EngineError::Config { key, message },
            P::Io { path, source } => EngineError::Io { path, source },
            P::Model(m) => EngineError::Model(m),
            P::Tokenizer(m) => EngineError::Tokenizer(m),
            P::Internal(m) => EngineError::Internal(m),
        }
    }
}
