//! The evaluator's error type: every message names the file, row or option at fault.

use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Errors that stop an evaluation. A bad QA row is not one of them: it is skipped, recorded
/// in `rejects.jsonl` and counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An option is missing, out of range or inconsistent; raised before any work.
    #[error("{key}: {message}")]
    Config {
        /// The option (`niah_lengths`, or `a/b` for two); the binary prints it as its flag
        /// (`--niah-lengths`).
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
    /// A whole input file is unusable.
    #[error("{}: {message}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The policy (generation, tokenizer, chat template) failed.
    #[error(transparent)]
    Policy(#[from] logo_policy::PolicyError),
    /// `rejects.jsonl` could not be written, or a QA file of documents could not be opened.
    #[error(transparent)]
    Format(#[from] logo_formats::FormatError),
    /// The trainer's model (perplexity) failed.
    #[error(transparent)]
    Trainer(#[from] logo_trainer::TrainerError),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A plot could not be drawn.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The PNG.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl EvalError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An unusable input file.
    pub fn input(path: &Path, message: impl Into<String>) -> Self {
        EvalError::Input {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
