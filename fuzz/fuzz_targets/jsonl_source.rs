//! JSON Lines source: any bytes as a `.jsonl` input. Every record (non-blank line) is read
//! exactly once: it becomes rows or one reject; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logo_engine::source::{plan_units, Source};
use logo_formats::rejects::Rejects;
use logo_engine::stage::RunStats;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, data).unwrap();
    let plan = plan_units(&[path.clone()], 2, None).unwrap();
    let records = plan.files[0].records;
    let mut src = Source::for_units(&plan, plan.units.clone(), 3, true);
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    while let Some(b) = src.next_batch(&rejects, &stats) {
        b.unwrap();
    }
    // Every record is read: the plan's count equals the reader's.
    assert_eq!(src.documents() as u64, records);
    let rows_in = stats.snapshot().rows_in.get("source").copied().unwrap_or(0);
    assert_eq!(rows_in, records);
});
