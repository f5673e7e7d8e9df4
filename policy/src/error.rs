//! The policy's error type. Bad input (a model file that does not parse, a server that does
//! not serve the model, a setting out of range) is not a bug: only [`PolicyError::Internal`]
//! says "bug in logo". The engine and the evaluator wrap it in their own error types.

use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

/// Errors of loading or running the policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A setting is out of range or inconsistent; the key is the pipeline's dotted key
    /// (`generator.openai.max_in_flight`). Raised before any generation.
    #[error("config key {key}: {message}")]
    Config {
        /// Dotted key.
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
    /// The model could not be loaded or run (GGUF, safetensors, adapter, server).
    #[error("model: {0}")]
    Model(String),
    /// The tokenizer or chat template could not be loaded or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An invariant of logo itself was broken.
    #[error("bug in logo: {0}")]
    Internal(String),
}

impl PolicyError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<candle_core::Error> for PolicyError {
    fn from(e: candle_core::Error) -> Self {
        PolicyError::Model(e.to_string())
    }
}

/// A PEFT adapter or GGUF naming error ([`logo_formats`]) is a model error: `{path}: {message}`.
impl From<logo_formats::FormatError> for PolicyError {
    fn from(e: logo_formats::FormatError) -> Self {
        PolicyError::Model(e.to_string())
    }
}
