//! The error of this crate: a file of one of the formats is unreadable, malformed or of an
//! unsupported kind. Each crate converts it into its own error type (the policy's
//! `PolicyError::Model`, the engine's `EngineError::Format`, the evaluator's
//! `EvalError::Format`, the trainer's `TrainerError::Model`).

use std::fmt;
use std::path::{Path, PathBuf};

/// A file that could not be read, written or understood. Displays as `{path}: {message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The file (or folder) concerned.
    pub path: PathBuf,
    /// What is wrong, naming the key or tensor where it applies.
    pub message: String,
}

impl FormatError {
    /// An error about `path`.
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        FormatError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for FormatError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_path_then_message() {
        let e = FormatError::new(Path::new("a/adapter_config.json"), "bias: expected none");
        assert_eq!(e.to_string(), "a/adapter_config.json: bias: expected none");
    }
}
