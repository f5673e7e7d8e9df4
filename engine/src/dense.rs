//! The dense f32 backend of the policy: a Llama GGUF dequantised into candle-transformers'
//! `models::llama` (Hugging Face layout, rotate-half rotary embedding), which attends over the
//! model's whole trained context (`llama.context_length`, 8192 for SmolLM2) instead of the
//! 4096 positions of candle's `quantized_llama`.
//!
//! Weights: every GGUF tensor is dequantised to f32, renamed to its HF name
//! ([`crate::adapter::hf_name`]), and the rows of `attn_q`/`attn_k` are un-permuted
//! ([`crate::adapter::unpermute_rows`]; llama.cpp `convert_hf_to_gguf.py` permutes them). A
//! PEFT adapter's deltas (HF layout) are added before the model is built.
//!
//! Config: GGUF `llama.*` keys (docs/gguf.md): `embedding_length`, `feed_forward_length`,
//! `block_count`, `attention.head_count`, `attention.head_count_kv`,
//! `attention.layer_norm_rms_epsilon`, `rope.freq_base` (default 10000), `context_length`.
//! Models whose GGUF carries `rope_freqs.weight` (Llama 3.1 frequency scaling) are not
//! supported here; the policy uses `quantized_llama` for them.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;

use crate::adapter::{
    hf_name, permuted_heads, unpermute_rows, HeadCounts, LoraDeltas, HF_EMBED, HF_LM_HEAD,
};
use crate::error::{EngineError, Result};

fn err(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("{}: {what}", path.display()))
}

/// True when the GGUF can run on this backend (no `rope_freqs.weight`).
pub fn supported(content: &gguf_file::Content) -> bool {
    !content.tensor_infos.contains_key("rope_freqs.weight")
}

/// A dense Llama and its config.
pub struct DenseLlama {
    model: llama::Llama,
    config: llama::Config,
}

impl DenseLlama {
    /// Builds the model from the GGUF `content` (tensors read through `reader`), with the
    /// `adapter` folded in. Errors ([`EngineError::Model`] naming the file): a missing
    /// `llama.*` key or tensor, a delta whose shape differs from its tensor, candle errors.
    pub fn load(
        content: &gguf_file::Content,
        reader: &mut BufReader<File>,
        heads: HeadCounts,
        adapter: Option<&LoraDeltas>,
        path: &Path,
    ) -> Result<DenseLlama> {
        let device = Device::Cpu;
        let md = |key: &str| content.metadata.get(key);
        let int = |key: &str| -> Result<usize> {
            md(key)
                .and_then(|v| {
                    v.to_u32()
                        .ok()
                        .map(|x| x as usize)
                        .or(v.to_u64().ok().map(|x| x as usize))
                })
                .ok_or_else(|| err(path, format!("missing or non-integer GGUF key {key}")))
        };
        let float = |key: &str, default: f64| -> f64 {
            md(key)
                .and_then(|v| v.to_f32().ok().map(f64::from))
                .unwrap_or(default)
        };
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for name in content.tensor_infos.keys() {
            let Some(hf) = hf_name(name) else {
                continue;
            };
            let qt = content
                .tensor(reader, name, &device)
                .map_err(|e| err(path, format!("tensor {name}: {e}")))?;
            let mut w = qt.dequantize(&device)?;
            if let Some(n) = permuted_heads(&hf, heads) {
                w = unpermute_rows(&w, n)?;
            }
            tensors.insert(hf, w);
        }
        let vocab_size = tensors
            .get(HF_EMBED)
            .map(|t| t.dims()[0])
            .ok_or_else(|| err(path, "missing tensor token_embd.weight"))?;
        let tie = !tensors.contains_key(HF_LM_HEAD);
        if let Some(adapter) = adapter {
            if tie && adapter.adapts_embedding_or_head() {
                // PEFT's embedding adapter leaves a tied LM head as it was.
                let head = tensors[HF_EMBED].copy()?;
                tensors.insert(HF_LM_HEAD.to_string(), head);
            }
            for (hf, delta) in &adapter.deltas {
                let w = tensors.get_mut(hf).ok_or_else(|| {
                    err(
                        path,
                        format!(
                            "adapter {}: the model has no tensor {hf}",
                            adapter.dir.display()
                        ),
                    )
                })?;
                if w.dims() != delta.dims() {
                    return Err(err(
                        path,
                        format!(
                            "adapter {}: delta for {hf} has shape {:?}, the model's tensor {:?} \
                             (an adapter for another base model?)",
                            adapter.dir.display(),
                            delta.dims(),
                            w.dims()
                        ),
                    ));
                }
                *w = (&*w + delta)?;
            }
        }
        let tie = !tensors.contains_key(HF_LM_HEAD);
        let hidden = int("llama.embedding_length")?;
        let config = llama::Config {
            hidden_size: hidden,
            intermediate_size: int("llama.feed_forward_length")?,
            vocab_size,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads: heads.n_head,
            num_key_value_heads: heads.n_kv_head,
            use_flash_attn: false,
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("llama.rope.freq_base", 10_000.0) as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: int("llama.context_length")?,
            tie_word_embeddings: tie,
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = llama::Llama::load(vb, &config).map_err(|e| err(path, e))?;
        Ok(DenseLlama { model, config })
    }

    /// The trained context length (`llama.context_length`), tokens.
    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// A fresh KV cache (and rotary tables) for one generation.
    pub fn new_cache(&self) -> Result<llama::Cache> {
        Ok(llama::Cache::new(
            true,
            DType::F32,
            &self.config,
            &Device::Cpu,
        )?)
    }

    /// Reads `input` `[1, t]` u32 at positions `pos..pos + t` into `cache`; returns the logits
    /// `[1, V]` f32 of the last position.
    pub fn forward(&self, input: &Tensor, pos: usize, cache: &mut llama::Cache) -> Result<Tensor> {
        Ok(self.model.forward(input, pos, cache)?)
    }
}
