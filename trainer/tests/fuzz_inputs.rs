//! Every input the fuzzers committed under `tests/fuzz/parquet_source/`, as the one file of a
//! training data folder, with the live heap capped at 1 GiB: opening it (and reading every row
//! group it lists) ends in an input error naming the file, never a panic or an abort, within
//! 64 MiB of heap. The out-of-memory input once made the `parquet` crate ask for 5.7 GB
//! (a dictionary page declaring 1.4 billion values).

use logo_trainer::data::{read_row_group, TrainingData};

#[global_allocator]
static HEAP: logo_env::heap::Capped = logo_env::heap::Capped::new(1 << 30);

#[test]
fn every_committed_fuzz_finding_is_an_input_error_within_a_small_heap() {
    // Caught panics would print and, under RUST_BACKTRACE, symbolise a backtrace (hundreds of
    // MB of debug info on this heap): keep them quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let files = logo_env::paths::fuzz_findings("parquet_source");
    assert!(files.len() >= 3, "{files:?}");
    let mut oom_seen = false;
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&f, dir.path().join("a.parquet")).unwrap();
        HEAP.reset_peak();
        let err = match TrainingData::open(dir.path()) {
            Err(e) => e.to_string(),
            Ok(d) => d
                .row_groups()
                .iter()
                .find_map(|rg| read_row_group(rg).err())
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        let peak = HEAP.peak();
        eprintln!("{name}: heap peak {peak} bytes: {err}");
        assert!(err.contains("a.parquet"), "{name}: {err:?}");
        assert!(peak < 64 << 20, "{name}: heap peak {peak} bytes");
        if name.starts_with("oom-") {
            assert!(err.contains("declares sizes it cannot hold"), "{err}");
            oom_seen = true;
        }
    }
    assert!(oom_seen);
}
