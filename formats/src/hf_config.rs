//! Hugging Face `config.json` of a Llama-family decoder (Llama, Mistral, Qwen2; the v4 form
//! `rope_theta` + `rope_scaling` and the v5 form `rope_parameters`), parsed and validated once
//! for every crate: the trainer builds its libtorch model from [`LlamaConfig`], the policy's
//! dense candle backend (`logo-policy`, run by the engine and `logo-eval`) builds candle's
//! `llama::Config` from it (refusing what candle's Llama lacks). The trainer also fills it
//! from GGUF metadata.
//!
//! Why here: the file is an external format read by two crates with different tensor
//! libraries; only serde and arithmetic are needed.
//!
//! Sources: HF `models/llama/configuration_llama.py`, `models/mistral/configuration_mistral.py`,
//! `models/qwen2/configuration_qwen2.py`, `modeling_rope_utils.py`.

use std::path::Path;

use serde::Deserialize;

use crate::FormatError;

/// Rotary-embedding scaling of the inverse frequencies (HF `rope_scaling` / `rope_parameters`,
/// `modeling_rope_utils.py`). Types HF computes at load time only; "dynamic" and "yarn" are not
/// supported and fail in [`LlamaConfig`] parsing.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: `inv_freq / factor` (HF `_compute_linear_scaling_rope_parameters`).
    Linear {
        /// Interpolation factor (> 0).
        factor: f64,
    },
    /// Llama 3.1 frequency-dependent scaling (HF `_compute_llama3_parameters`): wavelengths
    /// above `original_max_position_embeddings / low_freq_factor` are divided by `factor`,
    /// below `original_max_position_embeddings / high_freq_factor` kept, smoothed between.
    Llama3 {
        /// Scaling of the low frequencies, 8 in Llama 3.1.
        factor: f64,
        /// 1 in Llama 3.1.
        low_freq_factor: f64,
        /// 4 in Llama 3.1.
        high_freq_factor: f64,
        /// Pre-training context length, 8192 in Llama 3.1.
        original_max_position_embeddings: usize,
    },
}

/// Which attention projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBias {
    /// No bias (Llama, Mistral, SmolLM2).
    None,
    /// q, k, v and o biases (Llama `attention_bias: true`).
    QkvO,
    /// q, k, v biases only (Qwen2).
    Qkv,
}

/// Hyper-parameters of a Llama-family decoder, parsed from HF `config.json` (both the v4 form
/// `rope_theta` + `rope_scaling` and the v5 form `rope_parameters`) or from GGUF metadata
/// (the trainer's `model::gguf`). Parsing validates: heads divide, head_dim even, act "silu".
///
/// Which crate refuses what: parsing refuses what no crate runs (dynamic/yarn rope, an
/// activation other than SiLU, heads that do not divide); the trainer also refuses a
/// [`sliding_window`](Self::sliding_window), the policy's candle backend attention biases,
/// linear rope scaling and a `head_dim` other than H / nh.
///
/// Source: HF `models/llama/configuration_llama.py` (defaults in parentheses).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawLlamaConfig")]
pub struct LlamaConfig {
    /// HF `model_type`: "llama", "mistral" or "qwen2" ("llama" if absent).
    pub model_type: String,
    /// V, the vocabulary size.
    pub vocab_size: usize,
    /// H, the residual width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// nh, number of query heads.
    pub num_attention_heads: usize,
    /// nkv, number of key/value heads (grouped-query attention); default nh.
    pub num_key_value_heads: usize,
    /// hd, width of one head; default H / nh.
    pub head_dim: usize,
    /// RMSNorm epsilon (1e-6).
    pub rms_norm_eps: f64,
    /// RoPE base θ (10000).
    pub rope_theta: f64,
    /// RoPE scaling (none).
    pub rope_scaling: Option<RopeScaling>,
    /// Whether `lm_head` shares `model.embed_tokens.weight` (false).
    pub tie_word_embeddings: bool,
    /// Biases of the attention projections (Llama `attention_bias`, Qwen2: q/k/v).
    pub attention_bias: AttentionBias,
    /// Biases of gate/up/down projections (Llama `mlp_bias`, false).
    pub mlp_bias: bool,
    /// Context length the model was trained for (2048); informational, positions beyond it
    /// are computed all the same.
    pub max_position_embeddings: usize,
    /// Padding token id (none); only masks the gradient of the embedding LoRA row, like HF's
    /// `nn.Embedding(padding_idx)` under PEFT.
    pub pad_token_id: Option<i64>,
    /// Sliding-window attention span, tokens (Mistral `sliding_window`; Qwen2's only when
    /// `use_sliding_window`); none for Llama and when null.
    pub sliding_window: Option<usize>,
}

/// `rope_scaling` / `rope_parameters` as written by HF (v4 uses `type` or `rope_type`).
#[derive(Debug, Clone, Default, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

/// The `config.json` keys we read, as HF writes them.
#[derive(Debug, Clone, Deserialize)]
struct RawLlamaConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: bool,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    pad_token_id: Option<i64>,
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: bool,
}

impl TryFrom<RawLlamaConfig> for LlamaConfig {
    type Error = String;

    fn try_from(raw: RawLlamaConfig) -> Result<Self, String> {
        let model_type = raw.model_type.unwrap_or_else(|| "llama".to_string());
        let attention_bias = match model_type.as_str() {
            "llama" | "mistral" => {
                if raw.attention_bias.unwrap_or(false) {
                    AttentionBias::QkvO
                } else {
                    AttentionBias::None
                }
            }
            "qwen2" => AttentionBias::Qkv,
            other => {
                return Err(format!(
                    "model_type: expected llama, mistral or qwen2, got {other}"
                ))
            }
        };
        let sliding_window = match model_type.as_str() {
            "mistral" => raw.sliding_window,
            "qwen2" if raw.use_sliding_window => raw.sliding_window,
            _ => None,
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(format!("hidden_act: expected silu, got {act}"));
            }
        }
        // v5 keeps θ inside `rope_parameters`; v4 has `rope_theta` and `rope_scaling`.
        let rope = raw.rope_parameters.or(raw.rope_scaling).unwrap_or_default();
        let rope_theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(10000.0);
        let rope_type = rope
            .rope_type
            .clone()
            .or(rope.legacy_type.clone())
            .unwrap_or_else(|| "default".to_string());
        let need = |v: Option<f64>, key: &str| {
            v.ok_or_else(|| format!("rope scaling {rope_type}: missing key {key}"))
        };
        let rope_scaling = match rope_type.as_str() {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: need(rope.factor, "factor")?,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: need(rope.factor, "factor")?,
                low_freq_factor: need(rope.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(rope.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: rope
                    .original_max_position_embeddings
                    .ok_or("rope scaling llama3: missing key original_max_position_embeddings")?,
            }),
            other => {
                return Err(format!(
                    "rope type: expected default, linear or llama3, got {other}"
                ))
            }
        };
        let heads = raw.num_attention_heads;
        let cfg = LlamaConfig {
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias,
            mlp_bias: raw.mlp_bias,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            pad_token_id: raw.pad_token_id,
            sliding_window,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

impl LlamaConfig {
    /// The query and key/value head counts, as the GGUF q/k row permutation needs them
    /// ([`crate::gguf::permuted_heads`]).
    pub fn head_counts(&self) -> crate::gguf::HeadCounts {
        crate::gguf::HeadCounts {
            n_head: self.num_attention_heads,
            n_kv_head: self.num_key_value_heads,
        }
    }

    /// SmolLM2-135M(-Instruct): 30 layers, H 576, 9 heads, 3 kv heads, hd 64, MLP 1536,
    /// V 49152, θ 100000, tied embeddings, eps 1e-5, 8192 context (HF
    /// `HuggingFaceTB/SmolLM2-135M-Instruct/config.json`).
    pub fn smollm2_135m() -> Self {
        LlamaConfig {
            model_type: "llama".to_string(),
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: AttentionBias::None,
            mlp_bias: false,
            max_position_embeddings: 8192,
            pad_token_id: None,
            sliding_window: None,
        }
    }

    /// Reads and validates a HF `config.json` at `path`. Errors: a [`FormatError`] naming the
    /// file: unreadable, not JSON, or the key whose value is missing or unsupported.
    pub fn from_json_file(path: &Path) -> Result<Self, FormatError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FormatError::new(path, format!("reading: {e}")))?;
        serde_json::from_str(&text).map_err(|e| FormatError::new(path, e.to_string()))
    }

    /// Checks the invariants every model relies on (positive sizes, nkv divides nh, hd even,
    /// θ > 0, valid rope scaling); the message names the key. Parsing runs it; call it again
    /// after changing fields by hand.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("{key}: expected > 0, got 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_key_value_heads: expected a divisor of num_attention_heads {}, got {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim: expected even, got {}", self.head_dim));
        }
        // `x > 0.0` is false for NaN too.
        let positive = |x: f64| x > 0.0;
        if !positive(self.rope_theta) {
            return Err(format!("rope_theta: expected > 0, got {}", self.rope_theta));
        }
        let scaling_ok = match &self.rope_scaling {
            None => true,
            Some(RopeScaling::Linear { factor }) => positive(*factor),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive(*factor)
                    && positive(*low_freq_factor)
                    && high_freq_factor > low_freq_factor
                    && *original_max_position_embeddings > 0
            }
        };
        if !scaling_ok {
            return Err(format!(
                "rope_scaling: expected factor > 0 (llama3: also 0 < low_freq_factor < \
                 high_freq_factor, original_max_position_embeddings > 0), got {:?}",
                self.rope_scaling
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4"#;

    fn parse(extra: &str) -> Result<LlamaConfig, String> {
        serde_json::from_str(&format!("{{{BASE}{extra}}}")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_v4_and_v5_rope_configs() {
        let c = parse(
            r#", "num_key_value_heads": 2, "rope_theta": 500000.0,
            "rope_scaling": {"type": "linear", "factor": 2.0}"#,
        )
        .unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads), (16, 2));
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        assert_eq!(
            (c.model_type.as_str(), c.max_position_embeddings),
            ("llama", 2048)
        );
        let c = parse(
            r#", "model_type": "qwen2", "rope_parameters": {"rope_type": "llama3",
            "rope_theta": 10.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#,
        )
        .unwrap();
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.rope_theta, 10.0);
        assert_eq!(c.attention_bias, AttentionBias::Qkv);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64
            })
        );
    }

    #[test]
    fn sliding_window_is_mistrals_and_qwens_when_used() {
        let w = |extra: &str| parse(extra).unwrap().sliding_window;
        assert_eq!(
            w(r#", "model_type": "mistral", "sliding_window": 4096"#),
            Some(4096)
        );
        assert_eq!(
            w(r#", "model_type": "mistral", "sliding_window": null"#),
            None
        );
        assert_eq!(
            w(r#", "model_type": "qwen2", "sliding_window": 4096"#),
            None
        );
        assert_eq!(
            w(r#", "model_type": "qwen2", "sliding_window": 32, "use_sliding_window": true"#),
            Some(32)
        );
        assert_eq!(w(r#", "sliding_window": 4096"#), None);
    }

    #[test]
    fn rejects_bad_configs_naming_the_key() {
        for (extra, key) in [
            (r#", "num_key_value_heads": 3"#, "num_key_value_heads"),
            (
                r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#,
                "yarn",
            ),
            (r#", "hidden_act": "gelu""#, "hidden_act"),
            (r#", "model_type": "gemma""#, "model_type"),
            (r#", "head_dim": 15"#, "head_dim"),
            (r#", "rope_scaling": {"type": "linear"}"#, "factor"),
            (r#", "rope_theta": 0.0"#, "rope_theta"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn smollm2_matches_its_config_json() {
        // HuggingFaceTB/SmolLM2-135M-Instruct/config.json, the keys we read.
        let c: LlamaConfig = serde_json::from_str(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
            "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192,
            "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_scaling": null,
            "rope_theta": 100000, "tie_word_embeddings": true, "vocab_size": 49152}"#,
        )
        .unwrap();
        assert_eq!(c, LlamaConfig::smollm2_135m());
    }

    #[test]
    fn unreadable_file_names_it() {
        let e = LlamaConfig::from_json_file(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/config.json: reading"),
            "{e}"
        );
    }
}
