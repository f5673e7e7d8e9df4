//! The trainer's Parquet reader: any bytes as the one file of a data folder. Opening checks
//! the schema; every row group reads to examples or errs; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logo_trainer::data::{read_row_group, TrainingData};

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, also on one the reader catches
    // (logo_env::guard): restore the default hook; an uncaught panic still aborts when it
    // reaches fuzz_target!'s own catch_unwind.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.parquet"), data).unwrap();
    if let Ok(d) = TrainingData::open(dir.path()) {
        for rg in d.row_groups() {
            if let Ok(examples) = read_row_group(rg) {
                for e in examples {
                    let _ = e.tokens();
                }
            }
        }
    }
});
