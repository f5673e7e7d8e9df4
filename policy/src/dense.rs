//! The dense f32 backend of the policy: a Llama GGUF dequantised into candle-transformers'
//! `models::llama` (Hugging Face layout, rotate-half rotary embedding), which attends over the
//! model's whole trained context (`llama.context_length`, 8192 for SmolLM2) instead of the
//! 4096 positions of candle's `quantized_llama`.
//!
//! Weights: every GGUF tensor is dequantised to f32, renamed to its HF name
//! ([`logo_formats::gguf::hf_name`]), and the rows of `attn_q`/`attn_k` are un-permuted
//! ([`crate::adapter::unpermute_rows`]; llama.cpp `convert_hf_to_gguf.py` permutes them). A
//! PEFT adapter's deltas (HF layout) are added before the model is built.
//!
//! Config: the GGUF's `llama.*` keys mapped to the [`LlamaConfig`] of a `config.json` by
//! [`logo_formats::gguf_config::llama_config`] (the trainer's map too), then checked and turned
//! into candle's config by [`HfModelConfig`], as for a Hugging Face folder. Models whose GGUF
//! carries `rope_freqs.weight` (Llama 3.1 frequency scaling) are not supported here; the
//! policy uses `quantized_llama` for them.
//!
//! Hugging Face folders ([`DenseLlama::from_hf_folder`]): `config.json` (transformers'
//! `LlamaConfig`/`MistralConfig`, parsed by [`logo_formats::hf_config`] as the trainer parses
//! it, Llama 3 `rope_scaling` included) and `model.safetensors` or the shards of
//! `model.safetensors.index.json`, in the HF layout already; bf16/f16 weights are converted to
//! f32.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;

use logo_formats::gguf::{hf_name, permuted_heads, HF_EMBED, HF_LM_HEAD, ROPE_FREQS, TOKEN_EMBD};
use logo_formats::hf_config::{AttentionBias, LlamaConfig, RopeScaling};

use crate::adapter::{unpermute_rows, LoraDeltas};
use crate::error::{PolicyError, Result};

fn err(path: &Path, what: impl std::fmt::Display) -> PolicyError {
    PolicyError::Model(format!("{}: {what}", path.display()))
}

/// True when the GGUF can run on this backend (no `rope_freqs.weight`).
pub fn supported(content: &gguf_file::Content) -> bool {
    !content.tensor_infos.contains_key(ROPE_FREQS)
}

/// The `config.json` of a Hugging Face model folder, as far as this backend runs it: the
/// shared [`LlamaConfig`] (parsed and validated in [`logo_formats::hf_config`], as the trainer
/// reads it), turned into candle's [`llama::Config`].
#[derive(Debug, Clone)]
pub struct HfModelConfig {
    /// The validated `config.json`.
    pub hf: LlamaConfig,
    /// Positions the model attends over exactly, tokens: `max_position_embeddings`, or
    /// Mistral's `sliding_window` when smaller (this backend attends over the full cache, which
    /// equals the sliding window only within it).
    pub max_positions: usize,
}

impl HfModelConfig {
    /// Reads `dir/config.json`. Errors ([`PolicyError::Io`], [`PolicyError::Model`] naming the
    /// file and field): as [`LlamaConfig::from_json_file`]; then what candle's Llama lacks:
    /// an architecture other than Llama or Mistral (Qwen2's q/k/v biases: serve such a model
    /// with `generator.backend: openai`), attention or MLP biases, a `head_dim` other than
    /// `hidden_size / num_attention_heads`, a rope scaling other than Llama 3's.
    pub fn read(dir: &Path) -> Result<HfModelConfig> {
        let path = dir.join("config.json");
        HfModelConfig::new(LlamaConfig::from_json_file(&path)?, &path)
    }

    /// `hf` (read from `path`: a `config.json`, or a GGUF through
    /// [`logo_formats::gguf_config`]) as far as candle's Llama runs it. Errors
    /// ([`PolicyError::Model`] naming `path`): as [`read`](Self::read), after the parse.
    pub fn new(hf: LlamaConfig, path: &Path) -> Result<HfModelConfig> {
        let unsupported = |what: String| {
            Err(err(
                path,
                format!(
                    "{what}, which candle's Llama (the in-process backend) does not run; serve \
                     the model (vLLM, SGLang, llama-server) and use generator.backend: openai"
                ),
            ))
        };
        if !matches!(hf.model_type.as_str(), "llama" | "mistral") {
            return unsupported(format!("model_type {:?}", hf.model_type));
        }
        if hf.attention_bias != AttentionBias::None || hf.mlp_bias {
            return unsupported("attention_bias or mlp_bias true".to_string());
        }
        let implied = hf.hidden_size / hf.num_attention_heads;
        if hf.head_dim != implied {
            return unsupported(format!(
                "head_dim {} differs from hidden_size / num_attention_heads = {implied}",
                hf.head_dim
            ));
        }
        if let Some(RopeScaling::Linear { factor }) = hf.rope_scaling {
            return unsupported(format!("rope_scaling linear (factor {factor})"));
        }
        let max_positions = match hf.sliding_window {
            Some(w) if w < hf.max_position_embeddings => w,
            _ => hf.max_position_embeddings,
        };
        Ok(HfModelConfig { hf, max_positions })
    }

    /// Candle's config for a model of `vocab_size` rows whose LM head is tied when
    /// `tie_word_embeddings`, attending over [`max_positions`](Self::max_positions).
    fn candle_config(&self, vocab_size: usize, tie_word_embeddings: bool) -> llama::Config {
        let hf = &self.hf;
        let rope_scaling = match hf.rope_scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => Some(llama::Llama3RopeConfig {
                factor: factor as f32,
                low_freq_factor: low_freq_factor as f32,
                high_freq_factor: high_freq_factor as f32,
                original_max_position_embeddings,
                rope_type: llama::Llama3RopeType::Llama3,
            }),
            // `read` refuses linear scaling.
            _ => None,
        };
        llama::Config {
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            vocab_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads,
            use_flash_attn: false,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings,
        }
    }
}

/// A JSON file. Errors: [`PolicyError::Io`], [`PolicyError::Model`] naming it (not JSON).
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| err(path, format!("not JSON: {e}")))
}

/// The safetensors files of a Hugging Face folder: those named by
/// `model.safetensors.index.json`'s `weight_map` (sharded checkpoints), else
/// `model.safetensors`. Errors: [`PolicyError::Io`], [`PolicyError::Model`] (neither file).
fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| err(&index, "missing weight_map"))?;
        let mut files: Vec<_> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(err(
        dir,
        "no model.safetensors or model.safetensors.index.json (a Hugging Face model folder)",
    ))
}

/// Adds each delta of `adapter` (HF layout) to its tensor of `tensors`. A tied LM head gets
/// its own copy of the embedding first when the adapter changes either (PEFT leaves a tied
/// head as it was). Errors ([`PolicyError::Model`]): a delta for a tensor the model lacks or
/// of another shape (an adapter for another base).
fn fold_adapter(
    tensors: &mut HashMap<String, Tensor>,
    adapter: Option<&LoraDeltas>,
    path: &Path,
) -> Result<()> {
    let Some(adapter) = adapter else {
        return Ok(());
    };
    if !tensors.contains_key(HF_LM_HEAD) && adapter.adapts_embedding_or_head() {
        let head = tensors
            .get(HF_EMBED)
            .ok_or_else(|| err(path, format!("missing tensor {HF_EMBED}")))?
            .copy()?;
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
    Ok(())
}

/// Builds candle's Llama from f32 `tensors` (HF names). Errors: [`PolicyError::Model`].
fn build(
    tensors: HashMap<String, Tensor>,
    config: llama::Config,
    path: &Path,
) -> Result<DenseLlama> {
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = llama::Llama::load(vb, &config).map_err(|e| err(path, e))?;
    Ok(DenseLlama { model, config })
}

/// A dense Llama and its config.
pub struct DenseLlama {
    model: llama::Llama,
    config: llama::Config,
}

impl DenseLlama {
    /// Builds the model from the GGUF `content` (tensors read through `reader`) whose
    /// hyper-parameters are `config` ([`logo_formats::gguf_config::llama_config`]), with the
    /// `adapter` folded in. Errors ([`PolicyError::Model`] naming the file): what
    /// [`HfModelConfig::new`] refuses, a missing tensor, a delta whose shape differs from its
    /// tensor, candle errors.
    pub fn load(
        content: &gguf_file::Content,
        reader: &mut BufReader<File>,
        config: LlamaConfig,
        adapter: Option<&LoraDeltas>,
        path: &Path,
    ) -> Result<DenseLlama> {
        let device = Device::Cpu;
        let heads = config.head_counts();
        let config = HfModelConfig::new(config, path)?;
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
            .ok_or_else(|| err(path, format!("missing tensor {TOKEN_EMBD}")))?;
        fold_adapter(&mut tensors, adapter, path)?;
        // The LM head is tied when the file has none (and no adapter gave it one).
        let config = config.candle_config(vocab_size, !tensors.contains_key(HF_LM_HEAD));
        build(tensors, config, path)
    }

    /// Builds the model from a Hugging Face folder `dir` ([`HfModelConfig::read`], the
    /// safetensors of [`safetensors_files`], any dtype, converted to f32), with the `adapter`
    /// folded in; the vocabulary is the embedding's rows. The HF layout needs no q/k
    /// permutation. Errors ([`PolicyError::Model`] naming the folder): as
    /// [`HfModelConfig::read`], unreadable safetensors, a missing tensor, candle errors.
    pub fn from_hf_folder(dir: &Path, adapter: Option<&LoraDeltas>) -> Result<DenseLlama> {
        let hf = HfModelConfig::read(dir)?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for file in safetensors_files(dir)? {
            let loaded = candle_core::safetensors::load(&file, &Device::Cpu)
                .map_err(|e| err(&file, format!("reading safetensors: {e}")))?;
            for (name, t) in loaded {
                tensors.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        if !tensors.contains_key(HF_EMBED) {
            return Err(err(dir, format!("missing tensor {HF_EMBED}")));
        }
        fold_adapter(&mut tensors, adapter, dir)?;
        // The LM head is tied when the folder has none (and no adapter gave it one).
        let config = hf.candle_config(
            tensors[HF_EMBED].dims()[0],
            !tensors.contains_key(HF_LM_HEAD),
        );
        build(tensors, config, dir)
    }

    /// Rows of the embedding (the vocabulary), ids.
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;

    fn read(extra: &str) -> Result<HfModelConfig> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), format!("{{{BASE}{extra}}}")).unwrap();
        HfModelConfig::read(dir.path())
    }

    #[test]
    fn candle_config_carries_every_field() {
        let c = read(
            r#", "rms_norm_eps": 1e-5, "max_position_embeddings": 512,
            "rope_scaling": {"rope_type": "llama3", "rope_theta": 50.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}"#,
        )
        .unwrap();
        let k = c.candle_config(100, true);
        assert_eq!(
            (
                k.hidden_size,
                k.intermediate_size,
                k.vocab_size,
                k.num_hidden_layers
            ),
            (64, 128, 100, 2)
        );
        assert_eq!((k.num_attention_heads, k.num_key_value_heads), (4, 2));
        assert_eq!((k.rms_norm_eps, k.rope_theta), (1e-5, 50.0));
        assert_eq!(
            (k.max_position_embeddings, k.tie_word_embeddings),
            (512, true)
        );
        let r = k.rope_scaling.unwrap();
        assert_eq!(
            (r.factor, r.low_freq_factor, r.high_freq_factor),
            (8.0, 1.0, 4.0)
        );
        assert_eq!(r.original_max_position_embeddings, 64);
    }

    #[test]
    fn mistral_window_bounds_positions() {
        let c = read(
            r#", "model_type": "mistral", "sliding_window": 256,
            "max_position_embeddings": 1024"#,
        )
        .unwrap();
        assert_eq!(c.max_positions, 256);
        let c = read(r#", "model_type": "mistral", "max_position_embeddings": 1024"#).unwrap();
        assert_eq!(c.max_positions, 1024);
    }

    #[test]
    fn refuses_what_candle_lacks_naming_it() {
        for (extra, what) in [
            (r#", "model_type": "qwen2""#, "model_type \"qwen2\""),
            (r#", "attention_bias": true"#, "attention_bias"),
            (r#", "head_dim": 32"#, "head_dim 32"),
            (
                r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#,
                "rope_scaling linear",
            ),
            (r#", "num_key_value_heads": 3"#, "num_key_value_heads"),
        ] {
            let e = read(extra).err().unwrap().to_string();
            assert!(
                e.contains("config.json") && e.contains(what),
                "{extra}: {e}"
            );
        }
    }
}
