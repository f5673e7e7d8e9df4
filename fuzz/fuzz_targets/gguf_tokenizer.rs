//! The GGUF metadata reader and the tokenizer rebuilt from it: any bytes as a `.gguf` file
//! give a tokenizer or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logo_policy::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, data).unwrap();
    let cfg = ModelConfig {
        path,
        ..logo_policy::model::default_model_config()
    };
    if let Ok(tok) = logo_policy::tokenizer::load_tokenizer(&cfg) {
        let _ = tok.encode("Hello 123 <|im_end|>", false);
    }
    #[cfg(feature = "trainer")]
    let _ = logo_trainer::model::gguf::read_config(&cfg.path);
});
