//! PEFT LoRA adapter folders: `adapter_config.json` ([`AdapterConfig`]) and
//! `adapter_model.safetensors` (tensor keys: [`peft_key`], [`split_key`]).
//!
//! Sources: PEFT `src/peft/tuners/lora/config.py` (`LoraConfig`: the keys of
//! `adapter_config.json` and their defaults) and `src/peft/utils/save_and_load.py`
//! (`get_peft_model_state_dict`: tensor keys `base_model.model.{module}.lora_A.weight`,
//! `….lora_B.weight`, `….lora_embedding_A`, `….lora_embedding_B`, the adapter name
//! `default` dropped on save). A folder written with [`AdapterConfig::write`] and those keys
//! loads with `PeftModel.from_pretrained(base, dir)`.
//!
//! Only plain LoRA is supported, checked once by [`AdapterConfig::read`]: `peft_type` LORA,
//! `bias` none, no rsLoRA, DoRA or `fan_in_fan_out`, no `modules_to_save`, no rank or alpha
//! patterns, `r` ≥ 1. The update of a target is then `B·A·scaling` with
//! [`AdapterConfig::scaling`] = `lora_alpha / r`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::FormatError;

/// Adapter config file of a PEFT folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// Adapter weights file of a PEFT folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before the base model's own parameter names in the weights file.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Sub-module of a linear target holding `A` `[r,in]` (key `{module}.lora_A.weight`).
pub const LORA_A: &str = "lora_A";
/// Sub-module of a linear target holding `B` `[out,r]` (key `{module}.lora_B.weight`).
pub const LORA_B: &str = "lora_B";
/// Parameter of an embedding target holding `A` `[r,V]` (key `{module}.lora_embedding_A`).
pub const LORA_EMBEDDING_A: &str = "lora_embedding_A";
/// Parameter of an embedding target holding `B` `[H,r]` (key `{module}.lora_embedding_B`).
pub const LORA_EMBEDDING_B: &str = "lora_embedding_B";

/// `target_modules` of `adapter_config.json`: PEFT accepts a list of module names (matched
/// as the full name or its last components) or one regular expression over full names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names (`["q_proj", "v_proj"]`); PEFT writes its set of targets as a list.
    List(Vec<String>),
    /// A regular expression matched against full module names.
    Regex(String),
}

/// `adapter_config.json` of a LoRA adapter: the keys logo reads or writes (PEFT
/// `LoraConfig`); other keys of PEFT's files are ignored on reading. Every key but `r` and
/// `lora_alpha` has PEFT's default, so both PEFT's own files and ours parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// PEFT method; only `LORA` is supported.
    #[serde(default = "lora")]
    pub peft_type: String,
    /// PEFT task (`CAUSAL_LM` for ours), if any.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Rank r of the update `B·A`.
    pub r: usize,
    /// α; the update is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout on the input of `lora_A` while training (no effect on the merged weights).
    #[serde(default)]
    pub lora_dropout: f64,
    /// The modules adapted; `None` when the file has none (the weights file then says).
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Which biases are trained; only `none` is supported.
    #[serde(default = "none")]
    pub bias: String,
    /// The base model the adapter was trained on, as given to PEFT.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Weights stored `[in,out]` (GPT-2's `Conv1D`); must be false.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Whether PEFT loads the adapter frozen (true for ours).
    #[serde(default)]
    pub inference_mode: bool,
    /// rsLoRA scaling `lora_alpha / √r`; must be false.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (weight-decomposed LoRA); must be false.
    #[serde(default)]
    pub use_dora: bool,
    /// Modules trained in full and saved beside the adapter; must be none.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module ranks; must be empty. Not written when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module alphas; must be empty. Not written when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
}

fn lora() -> String {
    "LORA".into()
}

fn none() -> String {
    "none".into()
}

impl Default for AdapterConfig {
    /// PEFT `LoraConfig()`'s values: a plain LoRA with r 8, α 8, no dropout, no targets.
    fn default() -> Self {
        AdapterConfig {
            peft_type: lora(),
            task_type: None,
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: None,
            bias: none(),
            base_model_name_or_path: None,
            fan_in_fan_out: false,
            inference_mode: false,
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }
}

impl AdapterConfig {
    /// Reads and checks `dir/adapter_config.json` ([`AdapterConfig::from_json`]). Errors
    /// ([`FormatError`] naming the file): unreadable, as [`AdapterConfig::from_json`].
    pub fn read(dir: &Path) -> Result<AdapterConfig, FormatError> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| FormatError::new(&path, e.to_string()))?;
        AdapterConfig::from_json(&text, &path)
    }

    /// Parses the text of an `adapter_config.json` (`path` names it in errors) and checks that
    /// it is a plain LoRA. Errors ([`FormatError`]): not JSON; another PEFT method (`peft_type:
    /// expected LORA (only LoRA adapters are supported), got …`, before any missing LoRA key is
    /// reported); a missing `r` or `lora_alpha` or a key of the wrong type; DoRA, rsLoRA or
    /// `fan_in_fan_out`; `bias` other than none; `modules_to_save`; rank or alpha patterns;
    /// `r` 0.
    pub fn from_json(text: &str, path: &Path) -> Result<AdapterConfig, FormatError> {
        // The adapter kind first: a prefix-tuning or IA3 config lacks LoRA's fields, and "only
        // LoRA" is the useful message, not "missing field r".
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| FormatError::new(path, e.to_string()))?;
        if let Some(other) = value
            .get("peft_type")
            .and_then(|t| t.as_str())
            .filter(|t| *t != "LORA")
        {
            return Err(FormatError::new(
                path,
                format!("peft_type: expected LORA (only LoRA adapters are supported), got {other}"),
            ));
        }
        let cfg: AdapterConfig =
            serde_json::from_value(value).map_err(|e| FormatError::new(path, e.to_string()))?;
        match cfg.unsupported() {
            Some(message) => Err(FormatError::new(path, message)),
            None => Ok(cfg),
        }
    }

    /// Why this is not a plain LoRA, or `None` when it is.
    fn unsupported(&self) -> Option<String> {
        if self.peft_type != "LORA" {
            Some(format!(
                "peft_type: expected LORA (only LoRA adapters are supported), got {}",
                self.peft_type
            ))
        } else if self.use_dora || self.use_rslora || self.fan_in_fan_out {
            Some("expected use_dora, use_rslora and fan_in_fan_out false".to_string())
        } else if self.bias != "none" {
            Some(format!("bias: expected none, got {}", self.bias))
        } else if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            Some("modules_to_save: expected none".to_string())
        } else if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            Some("rank_pattern / alpha_pattern: expected none".to_string())
        } else if self.r == 0 {
            Some("r: must be >= 1".to_string())
        } else {
            None
        }
    }

    /// Writes `dir/adapter_config.json` (pretty-printed JSON with the keys of this struct, in
    /// its order; empty patterns left out), which `PeftModel.from_pretrained` reads. `dir`
    /// must exist. Errors ([`FormatError`] naming the file): not a plain LoRA (as
    /// [`AdapterConfig::read`] would refuse it), unwritable.
    pub fn write(&self, dir: &Path) -> Result<(), FormatError> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        if let Some(message) = self.unsupported() {
            return Err(FormatError::new(&path, message));
        }
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| FormatError::new(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| FormatError::new(&path, e.to_string()))
    }

    /// `lora_alpha / r`, the factor of every update `B·A` (PEFT `scaling`, without rsLoRA).
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

/// Which factor of a LoRA update a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFactor {
    /// `lora_A` / `lora_embedding_A`: `[r,in]` (linear) or `[r,V]` (embedding).
    A,
    /// `lora_B` / `lora_embedding_B`: `[out,r]` (linear) or `[H,r]` (embedding).
    B,
}

/// The key of a parameter of the adapted model in `adapter_model.safetensors`:
/// [`PEFT_PREFIX`] + `name` (`model.layers.0.self_attn.q_proj.lora_A.weight` →
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
pub fn peft_key(name: &str) -> String {
    format!("{PEFT_PREFIX}{name}")
}

/// The parameter name behind a weights-file key: `key` without [`PEFT_PREFIX`] (unchanged if
/// it has none); the inverse of [`peft_key`].
pub fn strip_peft_prefix(key: &str) -> &str {
    key.strip_prefix(PEFT_PREFIX).unwrap_or(key)
}

/// Splits a weights-file key into (module, factor), [`PEFT_PREFIX`] removed:
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` →
/// (`model.layers.3.self_attn.q_proj`, A); `….embed_tokens.lora_embedding_B` →
/// (`model.embed_tokens`, B). An adapter name between factor and `.weight`
/// (`lora_A.default.weight`, as unsaved PEFT state dicts spell it) is accepted. `None` for a
/// key that is no LoRA factor.
pub fn split_key(key: &str) -> Option<(&str, LoraFactor)> {
    let key = strip_peft_prefix(key);
    for (marker, factor) in [
        (LORA_A, LoraFactor::A),
        (LORA_B, LoraFactor::B),
        (LORA_EMBEDDING_A, LoraFactor::A),
        (LORA_EMBEDDING_B, LoraFactor::B),
    ] {
        let dotted = format!(".{marker}");
        if let Some(i) = key.find(&dotted) {
            let tail = &key[i + dotted.len()..];
            if tail.is_empty() || tail.ends_with(".weight") {
                return Some((&key[..i], factor));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdapterConfig, String> {
        AdapterConfig::from_json(text, Path::new("a/adapter_config.json"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_split_into_module_and_factor() {
        let k = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight";
        assert_eq!(
            split_key(k),
            Some(("model.layers.3.self_attn.q_proj", LoraFactor::A))
        );
        let k = "base_model.model.model.layers.3.mlp.down_proj.lora_B.default.weight";
        assert_eq!(
            split_key(k),
            Some(("model.layers.3.mlp.down_proj", LoraFactor::B))
        );
        let k = "base_model.model.model.embed_tokens.lora_embedding_B";
        assert_eq!(split_key(k), Some(("model.embed_tokens", LoraFactor::B)));
        assert_eq!(
            split_key("model.embed_tokens.lora_embedding_A"),
            Some(("model.embed_tokens", LoraFactor::A))
        );
        assert_eq!(split_key("model.norm.weight"), None);
        assert_eq!(
            split_key("model.layers.0.self_attn.q_proj.lora_B.bias"),
            None
        );
        let name = "model.layers.0.self_attn.q_proj.lora_A.weight";
        assert_eq!(strip_peft_prefix(&peft_key(name)), name);
        assert_eq!(strip_peft_prefix(name), name);
    }

    #[test]
    fn pefts_file_and_ours_parse() {
        // Abridged from a file PEFT 0.13 writes: unknown keys are ignored.
        let peft = r#"{
            "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "hf",
            "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "init_lora_weights": true, "layers_to_transform": null, "lora_alpha": 16,
            "lora_dropout": 0.05, "modules_to_save": null, "peft_type": "LORA", "r": 4,
            "rank_pattern": {}, "revision": null, "target_modules": ["v_proj", "q_proj"],
            "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": false
        }"#;
        let cfg = parse(peft).unwrap();
        assert_eq!(cfg.r, 4);
        assert_eq!(cfg.scaling(), 4.0);
        assert_eq!(
            cfg.target_modules,
            Some(TargetModules::List(vec!["v_proj".into(), "q_proj".into()]))
        );
        // Only r and lora_alpha are required; a regex target is kept as such.
        let cfg = parse(r#"{"r": 2, "lora_alpha": 1, "target_modules": ".*q_proj"}"#).unwrap();
        assert_eq!(cfg.peft_type, "LORA");
        assert_eq!(cfg.bias, "none");
        assert_eq!(cfg.scaling(), 0.5);
        assert_eq!(
            cfg.target_modules,
            Some(TargetModules::Regex(".*q_proj".into()))
        );
        assert!(parse(r#"{"peft_type": "LORA", "lora_alpha": 1}"#)
            .unwrap_err()
            .contains("missing field `r`"));
    }

    #[test]
    fn write_then_read_round_trips_with_pefts_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AdapterConfig {
            task_type: Some("CAUSAL_LM".into()),
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: Some(TargetModules::List(vec!["q_proj".into()])),
            base_model_name_or_path: Some("base".into()),
            inference_mode: true,
            ..AdapterConfig::default()
        };
        cfg.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap();
        let mut keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        keys.sort();
        let mut expected = vec![
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "bias",
            "base_model_name_or_path",
            "fan_in_fan_out",
            "inference_mode",
            "use_rslora",
            "use_dora",
            "modules_to_save",
        ];
        expected.sort();
        assert_eq!(keys, expected);
        assert!(text.contains("\n  \"peft_type\": \"LORA\",\n"), "{text}");
        assert_eq!(AdapterConfig::read(dir.path()).unwrap(), cfg);
        let dora = AdapterConfig {
            use_dora: true,
            ..cfg
        };
        assert!(dora
            .write(dir.path())
            .unwrap_err()
            .to_string()
            .contains("use_dora"));
    }

    #[test]
    fn only_plain_lora_is_accepted() {
        let cases = [
            (
                r#"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20}"#,
                "peft_type: expected LORA (only LoRA adapters are supported), got PREFIX_TUNING",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "use_dora": true}"#,
                "expected use_dora, use_rslora and fan_in_fan_out false",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "use_rslora": true}"#,
                "use_rslora",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "fan_in_fan_out": true}"#,
                "fan_in_fan_out",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "bias": "all"}"#,
                "bias: expected none, got all",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "modules_to_save": ["lm_head"]}"#,
                "modules_to_save: expected none",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "rank_pattern": {"q_proj": 4}}"#,
                "rank_pattern / alpha_pattern: expected none",
            ),
            (
                r#"{"r": 1, "lora_alpha": 2, "alpha_pattern": {"q_proj": 4}}"#,
                "rank_pattern / alpha_pattern: expected none",
            ),
            (r#"{"r": 0, "lora_alpha": 2}"#, "r: must be >= 1"),
            ("not json", "expected ident"),
        ];
        for (text, message) in cases {
            let e = parse(text).unwrap_err();
            assert!(
                e.starts_with("a/adapter_config.json: ") && e.contains(message),
                "{text}: {e}"
            );
        }
        // An empty modules_to_save is none.
        parse(r#"{"r": 1, "lora_alpha": 2, "modules_to_save": []}"#).unwrap();
        let missing = AdapterConfig::read(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(missing.path, Path::new("/nonexistent/adapter_config.json"));
    }
}
