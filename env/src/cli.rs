//! What the three binaries (`logo-engine`, `logo-trainer`, `logo-eval`) share in their
//! `main`: one way to log and to print an error, and the usual end when the reader of stdout
//! goes away.

use std::error::Error;

/// Restores the default action of SIGPIPE (Rust ignores it, so a `println!` into a closed
/// pipe panics): `logo-engine sql "…" | head -1` then ends quietly, as `cat` and `grep` do,
/// with the signal's status. Call first thing in `main`. Unix only; a no-op elsewhere.
pub fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal disposition to SIG_DFL before any thread starts has no
    // memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Sends `tracing` events to stderr, filtered by `LOGO_LOG` (an `EnvFilter` directive such as
/// `info` or `logo_engine=debug`; default `warn`), one line each without time or module path.
/// Call once, first thing in `main`, after [`reset_sigpipe`]; a second call panics (the
/// global subscriber is already set).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LOGO_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

/// The error and its causes on one line, `outer: inner: innermost`, for the final message of
/// a binary. A cause whose text its parent already shows (error types that print their source
/// in their own message) is skipped, and libtorch's C++ backtrace (everything from
/// `Exception raised from`) is cut, so the line says each thing once.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        let text = match text.find("Exception raised from") {
            Some(i) => text[..i].trim_end().to_string(),
            None => text,
        };
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<dyn Error + 'static>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn each_cause_once_and_no_torch_backtrace() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        // The middle error prints its source itself, as `#[error("{path}: {source}")]` does.
        let e = Wrap(
            "training",
            Some(Box::new(Wrap("/x: No such file", Some(Box::new(io))))),
        );
        assert_eq!(error_chain(&e), "training: /x: No such file");
        let t = Wrap(
            "torch: index out of range in self\nException raised from operator() at x.cpp:1\nframe #0",
            None,
        );
        assert_eq!(error_chain(&t), "torch: index out of range in self");
    }
}
