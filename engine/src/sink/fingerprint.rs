//! `fingerprint.json`: the identity of a run (configuration, inputs, model), so that a rerun
//! on the same output folder resumes it and a different run refuses to mix with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PipelineConfig;
use crate::source::{InputFile, UnitPlan};

/// Hex digits of the fingerprint in file names.
pub(crate) const FP_CHARS: usize = 12;

/// `fingerprint.json`: what identifies a run, so that a rerun on the same folder resumes it
/// and a different run refuses to mix with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 over `config`, `inputs` and `model` below (hex).
    pub id: String,
    /// SHA-256 of [`Fingerprint::config_json`] (hex).
    pub config: String,
    /// SHA-256 over the inputs' paths, hashes and record counts (hex).
    pub inputs: String,
    /// SHA-256 of the model files (GGUF, tokenizer, adapter; hex), as
    /// [`crate::pipeline::model_identity`].
    pub model: String,
    /// The configuration that changes the output, as JSON: the run's configuration less
    /// `sink.output`, `source.batch_size`, `model.threads`, `runtime` (which do not change a
    /// byte of the parts), plus the engine and schema versions.
    pub config_json: serde_json::Value,
    /// The unit plan (inputs with their hashes, units).
    pub plan: UnitPlan,
}

impl Fingerprint {
    /// Fingerprint of a run of `cfg` over `plan` with the model identified by `model`
    /// (64 hex digits).
    pub fn new(cfg: &PipelineConfig, plan: &UnitPlan, model: &str) -> Self {
        let mut c = cfg.raw().clone();
        c.sink.output = PathBuf::new();
        c.source.batch_size = 0;
        c.model.threads = 0;
        c.runtime = Default::default();
        let config_json = serde_json::json!({
            "config": c,
            "engine_version": env!("CARGO_PKG_VERSION"),
            "schema_version": logo_schemas::SCHEMA_VERSION,
            "unit_rows": plan.unit_rows,
            "limit": plan.limit,
        });
        let sha = |b: &[u8]| format!("{:x}", Sha256::digest(b));
        let config = sha(config_json.to_string().as_bytes());
        let inputs = sha(serde_json::to_string(&plan.files)
            .expect("serialises")
            .as_bytes());
        let id = sha(format!("{config}\n{inputs}\n{model}").as_bytes());
        Self {
            id,
            config,
            inputs,
            model: model.to_string(),
            config_json,
            plan: plan.clone(),
        }
    }

    /// The first hex digits of the id, used in file names.
    pub fn short(&self) -> &str {
        &self.id[..FP_CHARS]
    }

    /// Why `self` (a new run) differs from `old`: the configuration keys, inputs and model
    /// that changed, in words.
    pub fn differences(&self, old: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.config != old.config {
            let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
            flatten("", &old.config_json, &mut a);
            flatten("", &self.config_json, &mut b);
            let keys: Vec<String> = a
                .keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|k| {
                    format!(
                        "{k} ({} → {})",
                        a.get(&k).map_or("absent".into(), |v| v.to_string()),
                        b.get(&k).map_or("absent".into(), |v| v.to_string())
                    )
                })
                .collect();
            out.push(format!("configuration differs: {}", keys.join(", ")));
        }
        if self.inputs != old.inputs {
            let mut files = Vec::new();
            let olds: BTreeMap<&Path, &InputFile> = old
                .plan
                .files
                .iter()
                .map(|f| (f.path.as_path(), f))
                .collect();
            for f in &self.plan.files {
                match olds.get(f.path.as_path()) {
                    None => files.push(format!("{} is new", f.path.display())),
                    Some(o) if o.sha256 != f.sha256 => {
                        files.push(format!("{} changed", f.path.display()))
                    }
                    _ => {}
                }
            }
            for f in &old.plan.files {
                if !self.plan.files.iter().any(|n| n.path == f.path) {
                    files.push(format!("{} is gone", f.path.display()));
                }
            }
            out.push(format!("inputs differ: {}", files.join(", ")));
        }
        if self.model != old.model {
            out.push(format!(
                "model differs (sha256 {} → {})",
                &old.model[..FP_CHARS.min(old.model.len())],
                &self.model[..FP_CHARS.min(self.model.len())]
            ));
        }
        out
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}
