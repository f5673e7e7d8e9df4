//! `pipeline.yaml` parsing and validation: any text is a config or a config error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logo_engine::config::PipelineConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = PipelineConfig::from_yaml_str(text, std::path::Path::new("/base")) {
            // A valid config validates again and survives a JSON round trip.
            cfg.validate().unwrap();
            let json = serde_json::to_string(&cfg).unwrap();
            let back: PipelineConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, cfg);
        }
    }
});
