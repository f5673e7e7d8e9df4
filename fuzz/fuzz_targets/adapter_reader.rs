//! The PEFT adapter reader: input = u16 LE length n, n bytes of `adapter_config.json`, the
//! rest `adapter_model.safetensors`. Either loads or errs; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logo_policy::adapter::LoraDeltas;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (config, weights) = data[2..].split_at(n);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), weights).unwrap();
    let _ = LoraDeltas::load(dir.path());
    #[cfg(feature = "trainer")]
    let _ = logo_trainer::peft::read_adapter_config(dir.path());
});
