//! Every input the fuzzers committed under `tests/fuzz/parquet_source/` (crashes, time-outs,
//! out-of-memory inputs), read through the engine's source as a run would, with the live heap
//! capped at 1 GiB: each ends in rejects naming the file, never a panic or an abort, and needs
//! under 64 MiB of heap (the out-of-memory input once made the `parquet` crate ask for 5.7 GB:
//! a dictionary page declaring 1.4 billion values, see `logo_formats::parquet_pages`). New
//! findings in that folder are covered by dropping them in.

use logo_engine::source::{plan_units, Source};
use logo_engine::stage::RunStats;
use logo_formats::rejects::Rejects;

#[global_allocator]
static HEAP: logo_env::heap::Capped = logo_env::heap::Capped::new(1 << 30);

/// (documents read, rejects) of one input as a `.parquet` source file; [`HEAP`]'s peak starts
/// anew.
fn read(bytes: &[u8]) -> (usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.parquet");
    std::fs::write(&path, bytes).unwrap();
    HEAP.reset_peak();
    let plan = plan_units(std::slice::from_ref(&path), 4, None).unwrap();
    let mut src = Source::for_units(&plan, plan.units.clone(), 3, true);
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    while let Some(b) = src.next_batch(&rejects, &stats) {
        b.unwrap();
    }
    (src.documents(), rejects.total())
}

#[test]
fn every_committed_fuzz_finding_is_rejected_within_a_small_heap() {
    // The panics the reader catches would print (and, under RUST_BACKTRACE, symbolise a
    // backtrace: hundreds of MB of debug info on this heap): keep them quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let files = logo_env::paths::fuzz_findings("parquet_source");
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let (documents, rejects) = read(&bytes);
        let peak = HEAP.peak();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        eprintln!("{name}: {documents} documents, {rejects} rejects, heap peak {peak} bytes");
        assert!(rejects >= 1, "{name}: no reject");
        if name.starts_with("oom-") {
            assert_eq!(documents, 0, "{name}: refused before any decoding");
        }
        assert!(peak < 64 << 20, "{name}: heap peak {peak} bytes");
    }
}
