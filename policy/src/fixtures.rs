//! Fixtures of the tests that load the embedded model (this crate's and, through the
//! `fixtures` feature, the engine's): one policy per test binary, because loading takes
//! seconds. A missing model is a recorded skip, a failure under `CI=true`
//! ([`logo_env::paths::fixture_missing`]).

use std::sync::{Arc, Mutex, OnceLock};

use tokenizers::Tokenizer;

use crate::backend::{GenerationBackend, InProcess};
use crate::config::ModelConfig;
use crate::model::{default_model_config, Policy};

/// The embedded model's config, or `None` (a recorded skip; a failure under `CI=true`,
/// [`logo_env::paths::fixture_missing`]) when the file is absent.
pub fn embedded_config(test: &str) -> Option<ModelConfig> {
    let cfg = default_model_config();
    if cfg.path.exists() {
        Some(cfg)
    } else {
        logo_env::paths::fixture_missing(&format!(
            "{test}: the embedded model {} (scripts/just setup, or set LOGO_CACHE)",
            cfg.path.display()
        ));
        None
    }
}

/// One q8_0 policy shared by every test of the crate (loading takes seconds).
pub fn shared_policy(test: &str) -> Option<Arc<Mutex<Policy>>> {
    static POLICY: OnceLock<Arc<Mutex<Policy>>> = OnceLock::new();
    let cfg = embedded_config(test)?;
    Some(
        POLICY
            .get_or_init(|| Arc::new(Mutex::new(Policy::load(&cfg).expect("load policy"))))
            .clone(),
    )
}

/// The shared policy as an in-process [`GenerationBackend`].
pub fn in_process(policy: &Arc<Mutex<Policy>>) -> Arc<dyn GenerationBackend> {
    Arc::new(InProcess::new(policy.clone()))
}

/// [`shared_policy`] and a copy of its tokenizer.
pub fn shared_policy_and_tokenizer(test: &str) -> Option<(Arc<Mutex<Policy>>, Tokenizer)> {
    let policy = shared_policy(test)?;
    let tok = policy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .tokenizer()
        .clone();
    Some((policy, tok))
}
