//! Loads a llama.cpp GGUF file (e.g. the embedded SmolLM2-135M-Instruct, Q4_1) into the same
//! [`Llama`] as a HF folder: metadata → [`LlamaConfig`] ([`logo_formats::gguf_config`], the
//! engine's map too), every tensor dequantised to f32 with
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

use candle_core::quantized::gguf_file::Content;
use logo_formats::gguf::{gguf_name, permuted_heads, unpermuted_rows, ROPE_FREQS};
use tch::{Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use logo_formats::hf_config::LlamaConfig;

use crate::model::Llama;

/// Reads `path`'s header (metadata and tensor table, not the weights).
fn read_content(path: &Path) -> Result<(File, Content)> {
    let mut file = File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let content = Content::read(&mut file)
        .map_err(|e| TrainerError::model(path, format!("reading GGUF header: {e}")))?;
    Ok((file, content))
}

/// [`LlamaConfig`] from GGUF metadata and the tensor table: the map of
/// [`logo_formats::gguf_config::llama_config`] (shared with the engine; `general.architecture`
/// must be "llama", which Mistral GGUFs use too; linear rope scaling read, Llama 3's comes as
/// `rope_freqs.weight`). Errors: [`TrainerError::Model`] naming the missing or unsupported key.
pub fn config_from_content(path: &Path, content: &Content) -> Result<LlamaConfig> {
    logo_formats::gguf_config::llama_config(content).map_err(|m| TrainerError::model(path, m))
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
    let heads = cfg.head_counts();
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
