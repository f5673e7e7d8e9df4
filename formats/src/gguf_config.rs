//! A Llama's hyper-parameters from a GGUF file's metadata, as the [`LlamaConfig`] a Hugging
//! Face `config.json` gives ([`crate::hf_config`]): one map from llama.cpp's keys to HF's
//! fields for the policy's dense backend and the trainer's GGUF loader, so that both read a
//! GGUF the same way and refuse the same things.
//!
//! Source: llama.cpp `gguf-py/gguf/constants.py` (`Keys.General.ARCHITECTURE`, `Keys.LLM.*`,
//! `Keys.Attention.*`, `Keys.Rope.*`) and `convert_hf_to_gguf.py` (`LlamaModel.set_gguf_parameters`:
//! which `config.json` field becomes which key), `docs/gguf.md` of the GGUF spec:
//!
//! | GGUF key (`{arch}.` = `llama.`)          | [`LlamaConfig`] field            | when absent   |
//! |------------------------------------------|----------------------------------|---------------|
//! | `embedding_length`                       | `hidden_size`                    | error         |
//! | `feed_forward_length`                    | `intermediate_size`              | error         |
//! | `block_count`                            | `num_hidden_layers`              | error         |
//! | `attention.head_count`                   | `num_attention_heads`            | error         |
//! | `attention.head_count_kv`                | `num_key_value_heads`            | head_count    |
//! | `attention.key_length`                   | `head_dim`                       | H / nh        |
//! | `attention.layer_norm_rms_epsilon`       | `rms_norm_eps`                   | 1e-5          |
//! | `rope.freq_base`                         | `rope_theta`                     | 10000         |
//! | `rope.scaling.type` + `.factor`          | `rope_scaling` (linear only)     | none          |
//! | `context_length`                         | `max_position_embeddings`        | 2048          |
//! | `tokenizer.ggml.padding_token_id`        | `pad_token_id`                   | none          |
//!
//! V is the rows of `token_embd.weight`; the embeddings are tied when there is no
//! `output.weight`. Mistral GGUFs declare `general.architecture` "llama" too.
//!
//! The metadata comes through [`GgufHeader`], so this module holds no reader: with the
//! `candle` feature it is implemented for candle's `gguf_file::Content`, the reader both the
//! policy and the trainer use (candle-core is needed only for that impl; nothing here touches
//! a tensor).

use crate::gguf::{HeadCounts, OUTPUT, TOKEN_EMBD};
use crate::hf_config::{AttentionBias, LlamaConfig, RopeScaling};

/// One GGUF metadata value, as far as the hyper-parameters need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetaValue<'a> {
    /// Any unsigned integer type (`UINT8` … `UINT64`).
    UInt(u64),
    /// Any signed integer type (`INT8` … `INT64`).
    Int(i64),
    /// `FLOAT32` or `FLOAT64`.
    Float(f64),
    /// `STRING`.
    Str(&'a str),
    /// `BOOL`, `ARRAY`: never a hyper-parameter.
    Other,
}

impl MetaValue<'_> {
    /// An integer ≥ 0 of any width.
    pub fn as_usize(&self) -> Option<usize> {
        match *self {
            MetaValue::UInt(x) => usize::try_from(x).ok(),
            MetaValue::Int(x) => usize::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Float(x) => Some(x),
            MetaValue::UInt(x) => Some(x as f64),
            MetaValue::Int(x) => Some(x as f64),
            _ => None,
        }
    }
}

/// Read access to a GGUF file's header: its metadata and its tensor table.
pub trait GgufHeader {
    /// The value of metadata `key`, if present.
    fn metadata(&self, key: &str) -> Option<MetaValue<'_>>;
    /// The dimensions of tensor `name` in row-major order (`token_embd.weight`: `[V, H]`), if
    /// the file has it.
    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>>;
}

/// `general.architecture`, "llama" when absent.
pub fn architecture(h: &impl GgufHeader) -> String {
    match h.metadata("general.architecture") {
        Some(MetaValue::Str(s)) => s.to_string(),
        _ => "llama".to_string(),
    }
}

/// The trained context, tokens: `{general.architecture}.context_length` (of any architecture:
/// a model served elsewhere need not be a Llama).
pub fn context_length(h: &impl GgufHeader) -> Option<usize> {
    let key = format!("{}.context_length", architecture(h));
    h.metadata(&key).and_then(|v| v.as_usize())
}

/// Integer key `{arch}.{key}`: `Ok(None)` when absent, an error when not an integer.
fn int(h: &impl GgufHeader, key: &str) -> Result<Option<usize>, String> {
    let key = format!("llama.{key}");
    match h.metadata(&key) {
        None => Ok(None),
        Some(v) => v
            .as_usize()
            .map(Some)
            .ok_or_else(|| format!("{key}: expected an integer ≥ 0, got {v:?}")),
    }
}

/// Numeric key `{arch}.{key}`: `Ok(None)` when absent, an error when not a number.
fn float(h: &impl GgufHeader, key: &str) -> Result<Option<f64>, String> {
    let key = format!("llama.{key}");
    match h.metadata(&key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key}: expected a number, got {v:?}")),
    }
}

fn required(h: &impl GgufHeader, key: &str) -> Result<usize, String> {
    int(h, key)?.ok_or_else(|| format!("missing key llama.{key}"))
}

/// The head counts of a Llama GGUF: `llama.attention.head_count` and `head_count_kv` (the
/// latter defaulting to the former), which the q/k row permutation needs
/// ([`crate::gguf::permuted_heads`]). Errors: the missing or non-integer key, in words.
pub fn head_counts(h: &impl GgufHeader) -> Result<HeadCounts, String> {
    let n_head = required(h, "attention.head_count")?;
    let n_kv_head = int(h, "attention.head_count_kv")?.unwrap_or(n_head);
    Ok(HeadCounts { n_head, n_kv_head })
}

/// The [`LlamaConfig`] of a Llama GGUF (see the module doc for the map), validated with
/// [`LlamaConfig::check`]. Errors, in words naming the key or tensor: `general.architecture`
/// absent or other than "llama", a missing required key, a value of the wrong type, a partial rotary
/// (`rope.dimension_count` ≠ `head_dim`), a rope scaling other than linear, no
/// `token_embd.weight`, attention biases (`blk.0.attn_q.bias`), what `check` refuses.
pub fn llama_config(h: &impl GgufHeader) -> Result<LlamaConfig, String> {
    match h.metadata("general.architecture") {
        Some(MetaValue::Str("llama")) => {}
        Some(MetaValue::Str(other)) => {
            return Err(format!("general.architecture: expected llama, got {other}"))
        }
        Some(v) => {
            return Err(format!(
                "general.architecture: expected a string, got {v:?}"
            ))
        }
        None => return Err("missing key general.architecture".to_string()),
    }
    let hidden = required(h, "embedding_length")?;
    let heads = head_counts(h)?;
    let head_dim = int(h, "attention.key_length")?.unwrap_or(hidden / heads.n_head.max(1));
    if let Some(rope_dim) = int(h, "rope.dimension_count")? {
        if rope_dim != head_dim {
            return Err(format!(
                "llama.rope.dimension_count: expected head_dim {head_dim} (partial rotary is \
                 not supported), got {rope_dim}"
            ));
        }
    }
    let scaling_type = match h.metadata("llama.rope.scaling.type") {
        Some(MetaValue::Str(s)) => s.to_string(),
        _ => "none".to_string(),
    };
    let factor = float(h, "rope.scaling.factor")?.or(float(h, "rope.scale_linear")?);
    let rope_scaling = match (scaling_type.as_str(), factor) {
        ("none" | "linear", Some(f)) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
        ("none" | "linear", _) => None,
        (other, _) => {
            return Err(format!(
                "llama.rope.scaling.type: expected none or linear, got {other}"
            ))
        }
    };
    let vocab_size = h
        .tensor_dims(TOKEN_EMBD)
        .and_then(|d| d.first().copied())
        .ok_or_else(|| format!("missing tensor {TOKEN_EMBD}"))?;
    if h.tensor_dims("blk.0.attn_q.bias").is_some() {
        return Err("attention biases (blk.N.attn_q.bias) are not supported in GGUF".to_string());
    }
    let pad_token_id = h
        .metadata("tokenizer.ggml.padding_token_id")
        .and_then(|v| v.as_usize())
        .map(|x| x as i64);
    let cfg = LlamaConfig {
        model_type: "llama".to_string(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: required(h, "feed_forward_length")?,
        num_hidden_layers: required(h, "block_count")?,
        num_attention_heads: heads.n_head,
        num_key_value_heads: heads.n_kv_head,
        head_dim,
        rms_norm_eps: float(h, "attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: float(h, "rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        tie_word_embeddings: h.tensor_dims(OUTPUT).is_none(),
        attention_bias: AttentionBias::None,
        mlp_bias: false,
        max_position_embeddings: int(h, "context_length")?.unwrap_or(2048),
        pad_token_id,
        sliding_window: None,
    };
    cfg.check()?;
    Ok(cfg)
}

#[cfg(feature = "candle")]
mod candle_impl {
    use candle_core::quantized::gguf_file::{Content, Value};

    use super::{GgufHeader, MetaValue};

    impl GgufHeader for Content {
        fn metadata(&self, key: &str) -> Option<MetaValue<'_>> {
            Some(match self.metadata.get(key)? {
                Value::U8(x) => MetaValue::UInt(u64::from(*x)),
                Value::U16(x) => MetaValue::UInt(u64::from(*x)),
                Value::U32(x) => MetaValue::UInt(u64::from(*x)),
                Value::U64(x) => MetaValue::UInt(*x),
                Value::I8(x) => MetaValue::Int(i64::from(*x)),
                Value::I16(x) => MetaValue::Int(i64::from(*x)),
                Value::I32(x) => MetaValue::Int(i64::from(*x)),
                Value::I64(x) => MetaValue::Int(*x),
                Value::F32(x) => MetaValue::Float(f64::from(*x)),
                Value::F64(x) => MetaValue::Float(*x),
                Value::String(s) => MetaValue::Str(s),
                Value::Bool(_) | Value::Array(_) => MetaValue::Other,
            })
        }

        fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
            self.tensor_infos.get(name).map(|t| t.shape.dims().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A header as a map, standing in for a reader.
    #[derive(Default)]
    struct Map {
        md: HashMap<String, MetaValue<'static>>,
        tensors: HashMap<String, Vec<usize>>,
    }

    impl GgufHeader for Map {
        fn metadata(&self, key: &str) -> Option<MetaValue<'_>> {
            self.md.get(key).copied()
        }
        fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
            self.tensors.get(name).cloned()
        }
    }

    /// SmolLM2-135M's header (values as its GGUF declares them).
    fn smollm2() -> Map {
        let mut m = Map::default();
        for (k, v) in [
            ("general.architecture", MetaValue::Str("llama")),
            ("llama.embedding_length", MetaValue::UInt(576)),
            ("llama.feed_forward_length", MetaValue::UInt(1536)),
            ("llama.block_count", MetaValue::UInt(30)),
            ("llama.attention.head_count", MetaValue::UInt(9)),
            ("llama.attention.head_count_kv", MetaValue::UInt(3)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::Float(1e-5),
            ),
            ("llama.rope.freq_base", MetaValue::Float(100000.0)),
            ("llama.rope.dimension_count", MetaValue::UInt(64)),
            ("llama.context_length", MetaValue::UInt(8192)),
            ("tokenizer.ggml.padding_token_id", MetaValue::UInt(2)),
        ] {
            m.md.insert(k.to_string(), v);
        }
        m.tensors.insert(TOKEN_EMBD.to_string(), vec![49152, 576]);
        m
    }

    #[test]
    fn smollm2_header_gives_its_config() {
        let c = llama_config(&smollm2()).unwrap();
        assert_eq!(
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers
            ),
            (49152, 576, 1536, 30)
        );
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (9, 3, 64)
        );
        assert_eq!((c.rope_theta, c.max_position_embeddings), (100000.0, 8192));
        assert!(c.tie_word_embeddings, "no output.weight: tied");
        assert_eq!((c.pad_token_id, c.rope_scaling), (Some(2), None));
        assert_eq!(context_length(&smollm2()), Some(8192));
        let heads = head_counts(&smollm2()).unwrap();
        assert_eq!((heads.n_head, heads.n_kv_head), (9, 3));
    }

    #[test]
    fn defaults_and_linear_scaling() {
        let mut m = smollm2();
        for k in [
            "attention.head_count_kv",
            "rope.freq_base",
            "context_length",
            "rope.dimension_count",
        ] {
            m.md.remove(&format!("llama.{k}"));
        }
        m.md.insert("llama.rope.scaling.type".into(), MetaValue::Str("linear"));
        m.md.insert("llama.rope.scaling.factor".into(), MetaValue::Float(4.0));
        m.tensors.insert(OUTPUT.to_string(), vec![49152, 576]);
        let c = llama_config(&m).unwrap();
        assert_eq!(
            c.num_key_value_heads, 9,
            "head_count_kv defaults to head_count"
        );
        assert_eq!((c.rope_theta, c.max_position_embeddings), (10000.0, 2048));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn refusals_name_the_key() {
        type Spoil = fn(&mut Map);
        let cases: [(&str, Spoil); 5] = [
            ("general.architecture: expected llama, got qwen2", |m| {
                m.md.insert("general.architecture".into(), MetaValue::Str("qwen2"));
            }),
            ("missing key llama.block_count", |m| {
                m.md.remove("llama.block_count");
            }),
            ("llama.embedding_length: expected an integer", |m| {
                m.md.insert("llama.embedding_length".into(), MetaValue::Str("576"));
            }),
            ("partial rotary", |m| {
                m.md.insert("llama.rope.dimension_count".into(), MetaValue::UInt(32));
            }),
            ("attention biases", |m| {
                m.tensors.insert("blk.0.attn_q.bias".into(), vec![576]);
            }),
        ];
        for (want, spoil) in cases {
            let mut m = smollm2();
            spoil(&mut m);
            let e = llama_config(&m).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
        let mut m = smollm2();
        m.md.insert("llama.rope.scaling.type".into(), MetaValue::Str("yarn"));
        assert!(llama_config(&m)
            .unwrap_err()
            .contains("expected none or linear, got yarn"));
    }
}
