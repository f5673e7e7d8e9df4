//! A reader library's panic on malformed input, turned into an error.
//!
//! Some readers assert instead of returning an error on corrupt input: `parquet` 59 panics
//! with "column start and length should not be negative" on a footer whose column chunk
//! offsets are negative (`ColumnChunkMetaData::byte_range`; found by the `parquet_source`
//! fuzz target, input under `tests/fuzz/parquet_source/`; `logo_formats::parquet_pages` now
//! refuses that file before decoding, and the guard stays for the panics not foreseen). A bad
//! input file must become a reject or an error naming the file, never a crash that loses the
//! run, so every call into such a reader goes through [`catch_panic`].

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; a panic inside it becomes `Err(message)` (the panic's text, or `"panic"` when it
/// carries none). The panic hook still runs (it prints the panic to stderr).
///
/// Only for calls whose state is dropped after a panic: the caller must not reuse what `f`
/// borrowed mutably (a reader that panicked is abandoned).
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(
            catch_panic(|| -> u8 { panic!("column start {} negative", -1) }),
            Err("column start -1 negative".to_string())
        );
        assert_eq!(
            catch_panic(|| -> u8 { panic!("plain") }),
            Err("plain".to_string())
        );
    }
}
