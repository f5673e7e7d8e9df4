//! logo-env: what logo's three programs and their tests share about the machine they run on,
//! kept out of `logo-schemas` (which holds only the Arrow schemas) and out of the format
//! crate: [`paths`] (the cache folder `scripts/just setup` fills, the embedded default model,
//! the torch venv, and the CI policy for a test whose fixture is missing), [`cli`] (one way to
//! print an error chain, the usual end when stdout's reader goes away), [`guard`] (a reader
//! library's panic on malformed input turned into an error), [`heap`] (a heap cap for the tests
//! that read hostile inputs), [`slurm`] (a one-node Slurm cluster for the launcher tests). A
//! leaf crate: it depends on nothing of logo, so the engine (which never links libtorch), the
//! trainer and the evaluator all use it.
#![deny(missing_docs)]

pub mod cli;
pub mod guard;
pub mod heap;
pub mod paths;
pub mod slurm;
