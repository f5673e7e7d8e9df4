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
//! `w.reshape(n_head, 2, hd/2, dim).swapaxes(1, 2)`. We undo it ([`unpermute_rows`], an
//! `index_select` of [`logo_formats::gguf::unpermuted_rows`]; `n_kv_head` for k), so the model
//! runs HF's rotary embedding unchanged. The tensor names on both sides and which tensors are
//! permuted are [`logo_formats::gguf`]'s, shared with the engine.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use logo_formats::gguf::{
    gguf_name, permuted_heads, unpermuted_rows, HeadCounts, OUTPUT, ROPE_FREQS, TOKEN_EMBD,
};
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
        .get(TOKEN_EMBD)
        .ok_or_else(|| TrainerError::model(path, format!("missing tensor {TOKEN_EMBD}")))?;
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
        tie_word_embeddings: !content.tensor_infos.contains_key(OUTPUT),
        attention_bias: AttentionBias::None,
        mlp_bias: false,
        max_position_embeddings: int("context_length")?.unwrap_or(2048),
        pad_token_id,
        sliding_window: None,
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

/// Undoes llama.cpp's q/k row permutation: `w` `[n_head·hd, dim]` →
/// `w.reshape(n_head, hd/2, 2, dim).transpose(1, 2).reshape(n_head·hd, dim)`, as the rows
/// [`unpermuted_rows`] selects. Errors: [`TrainerError::Model`] for `path` unless the rows
/// are `n_head` heads of an even size; [`TrainerError::Torch`].
pub fn unpermute_rows(w: &Tensor, n_head: i64, path: &Path) -> Result<Tensor> {
    let (rows, _) = w.size2()?;
    let index = usize::try_from(rows)
        .ok()
        .zip(usize::try_from(n_head).ok())
        .and_then(|(rows, n_head)| unpermuted_rows(rows, n_head))
        .ok_or_else(|| {
            TrainerError::model(
                path,
                format!("{rows} rows of a q/k tensor are not {n_head} heads of an even size"),
            )
        })?;
    let index: Vec<i64> = index.into_iter().map(|r| r as i64).collect();
    let index = Tensor::f_from_slice(&index)?.f_to_device(w.device())?;
    Ok(w.f_index_select(0, &index)?)
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
    let freq_factors = if content.tensor_infos.contains_key(ROPE_FREQS) {
        Some(dequantize(path, &mut file, &content, ROPE_FREQS)?)
    } else {
        None
    };
    let heads = HeadCounts {
        n_head: cfg.num_attention_heads,
        n_kv_head: cfg.num_key_value_heads,
    };
    let mut fetch = |hf: &str, _shape: &[i64]| -> Result<Option<Tensor>> {
        let Some(name) = gguf_name(hf) else {
            return Ok(None);
        };
        if !content.tensor_infos.contains_key(&name) {
            return Ok(None);
        }
        let t = dequantize(path, &mut file, &content, &name)?;
        match permuted_heads(hf, heads) {
            Some(n) => Ok(Some(unpermute_rows(&t, n as i64, path)?)),
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
        let back = unpermute_rows(&permuted, n_head, Path::new("m.gguf")).unwrap();
        assert_eq!(back, w);
        // Row order of one head after permute: 0, 2, 1, 3 (pairs interleaved).
        let rows: Vec<f32> = Vec::try_from(permuted.narrow(0, 0, 4).select(1, 0)).unwrap();
        assert_eq!(rows, vec![0.0, 4.0, 2.0, 6.0]);
    }

    #[test]
    fn rows_that_are_not_whole_heads_are_an_error() {
        let w = Tensor::zeros([10, 2], (Kind::Float, tch::Device::Cpu));
        let e = unpermute_rows(&w, 2, Path::new("m.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.gguf: 10 rows of a q/k tensor are not 2 heads"),
            "{e}"
        );
    }
}
