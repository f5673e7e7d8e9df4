//! Loading a policy's weights: the GGUF (dequantised into the dense backend, re-quantised to
//! `q8_0`, or as stored) with its LoRA deltas folded in, and the context lengths a model
//! declares (GGUF `llama.context_length`, HF `config.json`). The GGUF's hyper-parameters are
//! [`logo_formats::gguf_config`]'s, as the trainer reads them.

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use logo_formats::gguf::{hf_name, permuted_heads, HeadCounts, OUTPUT, TOKEN_EMBD};
use logo_formats::gguf_config;

use crate::adapter::{permute_rows, LoraDeltas};
use crate::config::{ModelConfig, WeightFormat};
use crate::dense::{self, DenseLlama, HfModelConfig};
use crate::error::Result;
use crate::gguf::read_gguf;

use super::{model_err, Backend, MAX_POSITIONS};

/// The GGUF half of [`Policy::load`](super::Policy::load): the backend `cfg.weights` asks
/// for, the vocabulary size and the GGUF's `general.name`. Errors: as
/// [`Policy::load`](super::Policy::load).
pub(super) fn load_gguf(
    cfg: &ModelConfig,
    adapter: Option<&LoraDeltas>,
    pool: &rayon::ThreadPool,
) -> Result<(Backend, usize, Option<String>)> {
    let path = &cfg.path;
    let (content, mut reader) = read_gguf(path)?;
    let config = gguf_config::llama_config(&content).map_err(|m| model_err(path, m))?;
    let gguf_name = content
        .metadata
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let vocab_size = config.vocab_size;
    let heads = config.head_counts();
    let backend = pool.install(|| -> Result<Backend> {
        let target = match cfg.weights {
            WeightFormat::F32 if dense::supported(&content) => {
                return Ok(Backend::Dense(Box::new(DenseLlama::load(
                    &content,
                    &mut reader,
                    config,
                    adapter,
                    path,
                )?)));
            }
            WeightFormat::F32 => Some(GgmlDType::F32),
            WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
            WeightFormat::Native => None,
        };
        let model = match (target, adapter) {
            (None, None) => ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)
                .map_err(|e| model_err(path, e))?,
            (target, adapter) => {
                convert_weights(content, &mut reader, target, adapter, heads, path)?
            }
        };
        Ok(Backend::Quantized {
            pristine: Box::new(model.clone()),
            model: Box::new(model),
        })
    })?;
    Ok((backend, vocab_size, gguf_name))
}

/// The longest `prompt + max_new_tokens` a [`Policy`](super::Policy) loaded from `cfg` will
/// accept ([`Policy::max_positions`](super::Policy::max_positions)), read from the GGUF header
/// without loading weights, so that callers can validate lengths before any work. Errors: as
/// [`read_gguf`].
pub fn max_positions_of(cfg: &ModelConfig) -> Result<usize> {
    if cfg.path.is_dir() {
        return Ok(HfModelConfig::read(&cfg.path)?.max_positions);
    }
    let (content, _) = read_gguf(&cfg.path)?;
    let context = gguf_config::context_length(&content);
    Ok(match (cfg.weights, context) {
        (WeightFormat::F32, Some(n)) if dense::supported(&content) => n,
        _ => MAX_POSITIONS,
    })
}

/// The trained context of the GGUF at `path` (`{general.architecture}.context_length`,
/// tokens), read from the header without loading weights; the default context of a model
/// served elsewhere (`generator.backend: openai`).
/// Errors: as [`read_gguf`]; [`PolicyError::Model`](crate::PolicyError::Model) when the key
/// is missing.
pub fn context_length_of(path: &Path) -> Result<usize> {
    if path.is_dir() {
        return Ok(HfModelConfig::read(path)?.max_positions);
    }
    let (content, _) = read_gguf(path)?;
    gguf_config::context_length(&content).ok_or_else(|| {
        let arch = gguf_config::architecture(&content);
        model_err(path, format!("missing {arch}.context_length"))
    })
}

/// Rebuilds the model through an in-memory GGUF, so that candle's own
/// `ModelWeights::from_gguf` does the wiring: every quantised tensor is converted to `target`
/// (Q8_0 or F32; `None` keeps the stored type), and every tensor the `adapter` targets is
/// dequantised, gets its LoRA delta added (see [`crate::adapter`]) and is stored as `target`
/// again (f32 when `None`). F32 tensors (norms) and tensors whose rows are not
/// whole blocks of the type stay f32. When the adapter changes the token embedding (or the LM
/// head) of a model with tied embeddings, the unadapted embedding is first copied to
/// `output.weight`, so that the LM head stays as PEFT leaves it.
pub(super) fn convert_weights(
    content: gguf_file::Content,
    reader: &mut BufReader<File>,
    target: Option<GgmlDType>,
    adapter: Option<&LoraDeltas>,
    heads: HeadCounts,
    path: &Path,
) -> Result<ModelWeights> {
    let device = Device::Cpu;
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let untie = adapter.is_some_and(LoraDeltas::adapts_embedding_or_head)
        && !content.tensor_infos.contains_key(OUTPUT);
    if untie {
        names.push(OUTPUT.to_string());
    }
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let source = if untie && name == OUTPUT {
            TOKEN_EMBD
        } else {
            name.as_str()
        };
        let qt = content
            .tensor(reader, source, &device)
            .map_err(|e| model_err(path, format!("tensor {source}: {e}")))?;
        let hf = hf_name(&name).unwrap_or_default();
        let delta = match adapter.and_then(|a| a.get(&hf)) {
            // Deltas are in the HF layout; GGUF stores q/k rows permuted.
            Some(d) => Some(match permuted_heads(&hf, heads) {
                Some(n) => permute_rows(d, n)?,
                None => d.clone(),
            }),
            None => None,
        };
        let qt = convert_tensor(qt, &name, delta, target, adapter, path)?;
        tensors.push((name, qt));
    }
    // The model reads only `general.*` and `llama.*` keys; the tokenizer arrays stay behind.
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer."))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &tensor_refs)
        .map_err(|e| model_err(path, format!("writing the converted GGUF: {e}")))?;
    drop(tensor_refs);
    drop(tensors);
    buf.set_position(0);
    let converted = gguf_file::Content::read(&mut buf)
        .map_err(|e| model_err(path, format!("reading the converted GGUF: {e}")))?;
    ModelWeights::from_gguf(converted, &mut buf, &device).map_err(|e| model_err(path, e))
}

/// One tensor of [`convert_weights`]: `qt` stored as `target` (`None`: its own type, f32 when
/// `delta` is given), its LoRA `delta` (HF layout already permuted to GGUF's) added first; a
/// tensor whose rows are not whole blocks of the type, and every F32 tensor, stays f32.
/// Errors: [`PolicyError::Model`](crate::PolicyError::Model) naming `path` and the tensor: a
/// delta of another shape (an adapter for another base model), or candle failing to
/// (re)quantise.
fn convert_tensor(
    qt: QTensor,
    name: &str,
    delta: Option<Tensor>,
    target: Option<GgmlDType>,
    adapter: Option<&LoraDeltas>,
    path: &Path,
) -> Result<QTensor> {
    let device = Device::Cpu;
    let row = qt.shape().dims().last().copied().unwrap_or(0);
    // Adapted tensors are kept f32 under `native`: requantising to 4 bits would blur the
    // delta.
    let want = match (target, &delta) {
        (Some(t), _) => t,
        (None, Some(_)) => GgmlDType::F32,
        (None, None) => qt.dtype(),
    };
    let want = if row % want.block_size() == 0 {
        want
    } else {
        GgmlDType::F32
    };
    Ok(match delta {
        None if qt.dtype() == want || qt.dtype() == GgmlDType::F32 => qt,
        None => QTensor::quantize(&qt.dequantize(&device)?, want)
            .map_err(|e| model_err(path, format!("requantising {name} to {want:?}: {e}")))?,
        Some(delta) => {
            let dense = qt.dequantize(&device)?;
            if dense.dims() != delta.dims() {
                return Err(model_err(
                    path,
                    format!(
                        "adapter {}: delta for {name} has shape {:?}, the model's tensor {:?} \
                         (an adapter for another base model?)",
                        adapter
                            .map(|a| a.dir.display().to_string())
                            .unwrap_or_default(),
                        delta.dims(),
                        dense.dims()
                    ),
                ));
            }
            QTensor::quantize(&(dense + &delta)?, want)
                .map_err(|e| model_err(path, format!("storing adapted {name} as {want:?}: {e}")))?
        }
    })
}
