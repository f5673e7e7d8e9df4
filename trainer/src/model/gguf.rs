//! Loads a llama.cpp GGUF file (e.g. the embedded SmolLM2-135M-Instruct, Q4_1) into the same
//! [`Llama`] as a HF folder: metadata → [`LlamaConfig`], every tensor dequantised to f32 with
//! candle, GGUF names mapped to HF names, and the q/k rows un-permuted.
//!
//! Sources: llama.cpp `convert_hf_to_gguf.py` (`LlamaModel.permute`, the tensor name map in
//! `gguf-py/gguf/tensor_mapping.py`, the `llama.*` metadata keys in `gguf-py/gguf/constants.py`)
//! and candle `candle-core/src/quantized/gguf_file.rs` (reader, dequantisation).
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` from HF's rotate-half layout
//! (pairs `(i, i + hd/2)`) to the interleaved layout its rope uses (pairs `(2i, 2i+1)`):
//! `w.reshape(n_head, 2, hd/2, dim).swapaxes(1, 2)`. We undo it,
//! `w.reshape(n_head, hd/2, 2, dim).transpose(1, 2).reshape(n_head·hd, dim)` (`n_kv_head` for
//! k), so the model runs HF's rotary embedding unchanged.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tch::{Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::model::{AttentionBias, Llama, LlamaConfig, RopeScaling};

/// Reads `path`'s header (metadata and tensor table, not the weights).
fn read_content(path: &Path) -> Result<(File, Content)> {
    let mut file = File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let content = Content::read(&mut file)
        .map_err(|e| TrainerError::model(path, format!("reading GGUF header: {e}")))?;
    Ok((file, content))
}

/// Any integer metadata value as u64.
fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// Any numeric metadata value as f64.
fn as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x as f64),
        Value::F64(x) => Some(x),
        _ => as_u64(v).map(|x| x as f64),
    }
}

/// [`LlamaConfig`] from GGUF metadata (`general.architecture` must be "llama", which Mistral
/// GGUFs use too) and the tensor table: V from `token_embd.weight`, tied embeddings when
/// there is no `output.weight`, hd from `llama.attention.key_length` (else H / nh), eps
/// default 1e-5, θ default 10000, `llama.rope.scaling.type` "linear" → [`RopeScaling::Linear`].
///
/// Errors: [`TrainerError::Model`] naming the missing or unsupported key.
pub fn config_from_content(path: &Path, content: &Content) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(TrainerError::model(
                path,
                "missing key general.architecture",
            ))
        }
    };
    if arch != "llama" {
        return Err(TrainerError::model(
            path,
            format!("general.architecture: expected llama, got {arch}"),
        ));
    }
    let int = |key: &str| -> Result<Option<usize>> {
        match md.get(&format!("{arch}.{key}")) {
            None => Ok(None),
            Some(v) => as_u64(v).map(|x| Some(x as usize)).ok_or_else(|| {
                TrainerError::model(
                    path,
                    format!("{arch}.{key}: expected an integer, got {v:?}"),
                )
            }),
        }
    };
    let float = |key: &str| -> Result<Option<f64>> {
        match md.get(&format!("{arch}.{key}")) {
            None => Ok(None),
            Some(v) => as_f64(v).map(Some).ok_or_else(|| {
                TrainerError::model(path, format!("{arch}.{key}: expected a number, got {v:?}"))
            }),
        }
    };
    let required = |key: &str| -> Result<usize> {
        int(key)?.ok_or_else(|| TrainerError::model(path, format!("missing key {arch}.{key}")))
    };
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = int("attention.key_length")?.unwrap_or(hidden / heads.max(1));
    if let Some(rope_dim) = int("rope.dimension_count")? {
        if rope_dim != head_dim {
            return Err(TrainerError::model(
                path,
                format!(
                    "{arch}.rope.dimension_count: expected head_dim {head_dim} (partial rotary \
                     is not supported), got {rope_dim}"
                ),
            ));
        }
    }
    let scaling_type = match md.get(&format!("{arch}.rope.scaling.type")) {
        Some(Value::String(s)) => s.clone(),
        _ => "none".to_string(),
    };
    let factor = float("rope.scaling.factor")?.or(float("rope.scale_linear")?);
    let rope_scaling = match (scaling_type.as_str(), factor) {
        ("none", None) => None,
        ("none" | "linear", Some(f)) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
        ("none" | "linear", _) => None,
        (other, _) => {
            return Err(TrainerError::model(
                path,
                format!("{arch}.rope.scaling.type: expected none or linear, got {other}"),
            ))
        }
    };
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| TrainerError::model(path, "missing tensor token_embd.weight"))?;
    let vocab_size = embd.shape.dims()[0];
    if content.tensor_infos.contains_key("blk.0.attn_q.bias") {
        return Err(TrainerError::model(
            path,
            "attention biases (blk.N.attn_q.bias) are not supported in GGUF",
        ));
    }
    let pad_token_id = md
        .get("tokenizer.ggml.padding_token_id")
        .and_then(as_u64)
        .map(|x| x as i64);
    let cfg = LlamaConfig {
        model_type: "llama".to_string(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: required("feed_forward_length")?,
        num_hidden_layers: required("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: float("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: AttentionBias::None,
        mlp_bias: false,
        max_position_embeddings: int("context_length")?.unwrap_or(2048),
        pad_token_id,
    };
    cfg.check().map_err(|m| TrainerError::model(path, m))?;
    Ok(cfg)
}

/// Reads only the [`LlamaConfig`] of a GGUF file. Errors: as [`config_from_content`], plus
/// [`TrainerError::Io`].
pub fn read_config(path: &Path) -> Result<LlamaConfig> {
    let (_, content) = read_content(path)?;
    config_from_content(path, &content)
}

/// How a HF tensor is found in the GGUF: its GGUF name and, for q/k, the head count to
/// un-permute with.
struct GgufSource {
    name: String,
    unpermute_heads: Option<i64>,
}

/// The GGUF source of a HF parameter name (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`, un-permuted over nh), or `None` for a name GGUF does not have.
fn gguf_source(hf: &str, cfg: &LlamaConfig) -> Option<GgufSource> {
    let plain = |name: &str| {
        Some(GgufSource {
            name: name.to_string(),
            unpermute_heads: None,
        })
    };
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight"),
        "model.norm.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (gguf, heads) = match module {
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(cfg.num_attention_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(cfg.num_key_value_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        _ => return None,
    };
    Some(GgufSource {
        name: format!("blk.{layer}.{gguf}"),
        unpermute_heads: heads.map(|h| h as i64),
    })
}

/// Undoes llama.cpp's q/k row permutation: `w` `[n_head·hd, dim]` →
/// `w.reshape(n_head, hd/2, 2, dim).transpose(1, 2).reshape(n_head·hd, dim)`.
pub fn unpermute_rows(w: &Tensor, n_head: i64) -> Result<Tensor> {
    let (rows, dim) = w.size2()?;
    let hd = rows / n_head;
    Ok(w.f_reshape([n_head, hd / 2, 2, dim])?
        .f_transpose(1, 2)?
        .f_reshape([rows, dim])?)
}

/// Dequantises one GGUF tensor to a CPU f32 tch tensor with candle's shape (HF order:
/// `[out,in]` for matrices).
fn dequantize(path: &Path, file: &mut File, content: &Content, name: &str) -> Result<Tensor> {
    let cpu = candle_core::Device::Cpu;
    let err = |e: candle_core::Error| TrainerError::model(path, format!("tensor {name}: {e}"));
    let q = content.tensor(file, name, &cpu).map_err(err)?;
    let t = q.dequantize(&cpu).map_err(err)?;
    let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
    let data: Vec<f32> = t.flatten_all().and_then(|t| t.to_vec1()).map_err(err)?;
    Ok(Tensor::f_from_slice(&data)?.f_reshape(dims)?)
}

/// Loads the GGUF at `path` as a [`Llama`] (see the module doc); weights are dequantised to
/// f32 one tensor at a time, then cast to `kind` on `device`. A `rope_freqs.weight` tensor
/// (llama.cpp's Llama 3 rope scaling) divides the inverse frequencies.
///
/// Errors: [`TrainerError::Io`]; [`TrainerError::Model`] for an unsupported architecture or
/// key, a missing tensor or a shape mismatch; [`TrainerError::Config`] for a bad `lora`.
pub fn load(
    path: &Path,
    lora: Option<&LoraConfig>,
    device: tch::Device,
    kind: Kind,
) -> Result<Llama> {
    let (mut file, content) = read_content(path)?;
    let cfg = config_from_content(path, &content)?;
    let freq_factors = if content.tensor_infos.contains_key("rope_freqs.weight") {
        Some(dequantize(path, &mut file, &content, "rope_freqs.weight")?)
    } else {
        None
    };
    let fetch_cfg = cfg.clone();
    let mut fetch = |hf: &str, _shape: &[i64]| -> Result<Option<Tensor>> {
        let Some(src) = gguf_source(hf, &fetch_cfg) else {
            return Ok(None);
        };
        if !content.tensor_infos.contains_key(&src.name) {
            return Ok(None);
        }
        let t = dequantize(path, &mut file, &content, &src.name)?;
        match src.unpermute_heads {
            Some(n) => Ok(Some(unpermute_rows(&t, n)?)),
            None => Ok(Some(t)),
        }
    };
    Llama::from_weights(
        cfg,
        lora,
        device,
        kind,
        path,
        freq_factors.as_ref(),
        &mut fetch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, dim).swapaxes(1, 2).reshape(w.shape).
        let (n_head, hd, dim) = (3i64, 4i64, 2i64);
        let w = Tensor::arange(n_head * hd * dim, (Kind::Float, tch::Device::Cpu))
            .reshape([n_head * hd, dim]);
        let permuted = w
            .reshape([n_head, 2, hd / 2, dim])
            .transpose(1, 2)
            .reshape([n_head * hd, dim]);
        let back = unpermute_rows(&permuted, n_head).unwrap();
        assert_eq!(back, w);
        // Row order of one head after permute: 0, 2, 1, 3 (pairs interleaved).
        let rows: Vec<f32> = Vec::try_from(permuted.narrow(0, 0, 4).select(1, 0)).unwrap();
        assert_eq!(rows, vec![0.0, 4.0, 2.0, 6.0]);
    }

    #[test]
    fn maps_hf_names_to_gguf() {
        let cfg = LlamaConfig::smollm2_135m();
        let q = gguf_source("model.layers.7.self_attn.q_proj.weight", &cfg).unwrap();
        assert_eq!(
            (q.name.as_str(), q.unpermute_heads),
            ("blk.7.attn_q.weight", Some(9))
        );
        let k = gguf_source("model.layers.0.self_attn.k_proj.weight", &cfg).unwrap();
        assert_eq!(
            (k.name.as_str(), k.unpermute_heads),
            ("blk.0.attn_k.weight", Some(3))
        );
        let n = gguf_source("model.layers.2.post_attention_layernorm.weight", &cfg).unwrap();
        assert_eq!(n.name, "blk.2.ffn_norm.weight");
        assert!(gguf_source("model.layers.2.self_attn.q_proj.bias", &cfg).is_none());
    }
}
