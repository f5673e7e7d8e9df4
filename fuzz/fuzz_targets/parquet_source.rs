//! Parquet source: any bytes as a `.parquet` input. Unreadable files and rows become
//! rejects; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logo_engine::source::{plan_units, Source};
use logo_formats::rejects::Rejects;
use logo_engine::stage::RunStats;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, also on one the reader catches
    // (logo_env::guard): restore the default hook; an uncaught panic still aborts when it
    // reaches fuzz_target!'s own catch_unwind.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.parquet");
    std::fs::write(&path, data).unwrap();
    let plan = plan_units(&[path.clone()], 4, None).unwrap();
    let mut src = Source::for_units(&plan, plan.units.clone(), 3, true);
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    while let Some(b) = src.next_batch(&rejects, &stats) {
        b.unwrap();
    }
    assert!(src.documents() as u64 <= plan.files[0].records);
});
