//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) on libtorch, driven by
//! explicit `position_ids`.
//!
//! Sources: HF transformers `models/llama/modeling_llama.py` (v5: `LlamaRMSNorm`,
//! `LlamaRotaryEmbedding`, `rotate_half`, `apply_rotary_pos_emb`, `LlamaMLP`, `LlamaAttention`
//! with the SDPA interface, `LlamaDecoderLayer`, `LlamaModel`, `LlamaForCausalLM`) and
//! `modeling_rope_utils.py` (`_compute_linear_scaling_rope_parameters`,
//! `_compute_llama3_parameters`); layout after tch-rs `examples/llama/main.rs` and candle
//! `candle-transformers/src/models/llama.rs`.
//!
//! LOGO (Tang et al., section 3.2.2 and Appendix D) trains on positional indices synthesised
//! up to the target length K (64K and more): every token carries its own position id, which may
//! start anywhere and jump, so the rotary embedding is computed from `position_ids` `[B,T]` i64
//! and never from the token's place in the sequence. Attention stays causal over the sequence
//! order. Batches must be right-padded: a padding token never precedes a real token, so causal
//! attention already keeps real tokens from seeing padding and no attention mask is needed.
//! (HF transformers v5 differs when called with jumping `position_ids` and no
//! `attention_mask`: `masking_utils.find_packed_sequence_indices` takes every jump for the start
//! of a new packed sequence and attends block-diagonally. To compare with HF, pass an all-ones
//! `attention_mask`, as `tests/py/hf_reference.py` does.)
//!
//! The base weights live in their own frozen [`nn::VarStore`] (`requires_grad` false) whose
//! variable names repeat HF's (`model.layers.{i}.self_attn.q_proj.weight`), so safetensors load
//! by name; the LoRA adapters (see [`crate::lora`]) live in a second, trainable store with
//! PEFT's names. Numerics follow HF: RMSNorm in f32, cos/sin of the rotary embedding computed in
//! f32 then cast to the model dtype, attention through `scaled_dot_product_attention`.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;

mod adapters;
mod checkpoint;
pub mod gguf;
mod hf_folder;
mod kv;
mod layers;

use hf_folder::load_hf_folder;
pub use kv::KvCache;
use layers::{frozen, DecoderLayer, Prefix, RmsNorm, Rotary};
pub(crate) use layers::{Embedding, Linear};
use logo_formats::hf_config::LlamaConfig;

/// Follows a dotted HF module path (`model.layers.0.self_attn`) from `root`.
pub(crate) fn sub_path<'a>(root: nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    dotted
        .split('.')
        .filter(|s| !s.is_empty())
        .fold(root, |p, s| p.sub(s))
}

/// What runs through the decoder together: one batch of sequences (one stream), or a prompt
/// `[1,P]` and the packed continuations `[1,N]` that attend to it (two streams, see
/// [`PrefixInput`]). Ids and rotary tables are on the model's device.
struct Streams {
    /// `[B,T]` i64 per stream.
    ids: Vec<Tensor>,
    /// (cos, sin) `[B,1,T,hd]` per stream.
    rope: Vec<(Tensor, Tensor)>,
    /// `[N,P+N]` bool for the second stream.
    mask: Option<Tensor>,
}

/// Continuations that share one prompt, for [`Llama::prefix_hidden_states`] and
/// [`Llama::backward_checkpointed_prefix`]: the prompt runs once and, in every layer, the
/// continuation tokens attend to the prompt's keys and values as `attention_mask` says. With the
/// M + 1 responses of a LOGO sample packed one after the other and a mask that lets each
/// response see the whole prompt and its own earlier tokens, every response gets exactly the
/// hidden states it would get as `prompt ⧺ response` alone.
#[derive(Debug, Clone, Copy)]
pub struct PrefixInput<'a> {
    /// `[1,P]` i64 prompt ids.
    pub prefix_ids: &'a Tensor,
    /// `[1,P]` i64 prompt position ids.
    pub prefix_position_ids: &'a Tensor,
    /// `[1,N]` i64 continuation ids (the responses, packed).
    pub input_ids: &'a Tensor,
    /// `[1,N]` i64 continuation position ids.
    pub position_ids: &'a Tensor,
    /// `[N,P+N]` bool: may continuation token i attend to key j (the P prompt keys first)?
    pub attention_mask: &'a Tensor,
}

/// Fills a base variable: `(HF name, expected shape)` → the tensor, `Ok(None)` when absent.
pub(crate) type FetchWeight<'a> = dyn FnMut(&str, &[i64]) -> Result<Option<Tensor>> + 'a;

/// A module that LoRA can adapt, as [`crate::lora`] sees it.
pub(crate) enum AdapterSlot<'a> {
    /// A linear projection (`q_proj`, …, `down_proj`).
    Linear(&'a mut Linear),
    /// The token embedding (`embed_tokens`).
    Embedding(&'a mut Embedding),
}

/// A Llama-family causal LM (HF `LlamaForCausalLM`) with frozen base weights and optional
/// LoRA adapters.
///
/// Built by [`Llama::load`] from a HF folder or a GGUF file. All tensors live on
/// [`Llama::device`]; base weights have [`Llama::kind`] (f32 or bf16), adapters are f32.
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    device: Device,
    kind: Kind,
    base: nn::VarStore,
    lora_vs: Option<nn::VarStore>,
    lora_cfg: Option<LoraConfig>,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `[V,H]`; the embedding's tensor itself when tied.
    lm_head: Tensor,
    rotary: Rotary,
}

impl Llama {
    /// Loads a model: `path` is a HF model folder (`config.json` plus `model.safetensors`, or
    /// shards listed in `model.safetensors.index.json`) or a `.gguf` file (see
    /// [`crate::model::gguf`]). Base weights are cast to `kind` (f32, bf16 or f16) on `device` and
    /// frozen; when `lora` is given, fresh adapters are attached ([`Llama::attach_lora`]).
    ///
    /// Errors: [`TrainerError::Io`] for unreadable files, [`TrainerError::Model`] for a bad
    /// config, a missing tensor or a shape mismatch (naming the tensor, expected and got),
    /// [`TrainerError::Config`] for a bad [`LoraConfig`].
    pub fn load(
        path: &Path,
        lora: Option<&LoraConfig>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        if path.is_dir() {
            load_hf_folder(path, lora, device, kind)
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            crate::model::gguf::load(path, lora, device, kind)
        } else if !path.exists() {
            Err(TrainerError::model(path, "no such file or folder"))
        } else {
            Err(TrainerError::model(
                path,
                "expected a HF model folder (config.json + *.safetensors) or a .gguf file",
            ))
        }
    }

    /// A model of shape `cfg` with random weights (for benchmarks): every matrix N(0, 0.02²)
    /// as in HF `initializer_range`, every RMSNorm weight 1, drawn from libtorch's generator
    /// seeded with `seed`, directly on `device` in `kind`; fresh adapters when `lora` is given.
    ///
    /// Errors: [`TrainerError::Model`] for an inconsistent `cfg`; as [`Llama::load`].
    pub fn random(
        cfg: LlamaConfig,
        lora: Option<&LoraConfig>,
        device: Device,
        kind: Kind,
        seed: i64,
    ) -> Result<Self> {
        tch::manual_seed(seed);
        let mut fetch = |name: &str, shape: &[i64]| -> Result<Option<Tensor>> {
            Ok(Some(if name.ends_with("norm.weight") {
                Tensor::f_ones(shape, (kind, device))?
            } else {
                Tensor::f_randn(shape, (kind, device))?.f_mul_scalar(0.02)?
            }))
        };
        Self::from_weights(
            cfg,
            lora,
            device,
            kind,
            Path::new("<random>"),
            None,
            &mut fetch,
        )
    }

    /// Reads only the configuration of the model at `path` (HF folder's `config.json`, or the
    /// GGUF metadata), without loading weights. Errors: as [`Llama::load`].
    pub fn config_of(path: &Path) -> Result<LlamaConfig> {
        if path.is_dir() {
            hf_folder::read_config(path)
        } else {
            crate::model::gguf::read_config(path)
        }
    }

    /// Builds the model with zero weights, then fills every base variable from `fetch(name,
    /// shape)` (HF names and the expected shape; `Ok(None)` = absent, an error naming the
    /// tensor). `freq_factors`: GGUF
    /// `rope_freqs.weight` `[hd/2]`, if any. `origin` names the source in errors.
    pub(crate) fn from_weights(
        cfg: LlamaConfig,
        lora: Option<&LoraConfig>,
        device: Device,
        kind: Kind,
        origin: &Path,
        freq_factors: Option<&Tensor>,
        fetch: &mut FetchWeight,
    ) -> Result<Self> {
        check_buildable(&cfg, kind, origin)?;
        let mut base = nn::VarStore::new(device);
        base.set_kind(kind);
        let root = base.root();
        let h = cfg.hidden_size as i64;
        let v = cfg.vocab_size as i64;
        let model = root.sub("model");
        let embed_weight = frozen(&model.sub("embed_tokens"), "weight", &[v, h])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(model.sub("layers").sub(i), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(model.sub("norm"), h, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_weight.shallow_clone()
        } else {
            frozen(&root.sub("lm_head"), "weight", &[v, h])?
        };
        let rotary = Rotary::new(&cfg, freq_factors, device)?;
        fill_vars(&base, fetch, origin)?;
        let mut llama = Llama {
            cfg,
            device,
            kind,
            base,
            lora_vs: None,
            lora_cfg: None,
            embed_tokens: Embedding {
                weight: embed_weight,
                lora: None,
            },
            layers,
            norm,
            lm_head,
            rotary,
        };
        if let Some(lora) = lora {
            llama.attach_lora(lora)?;
        }
        Ok(llama)
    }

    /// Final hidden states: `input_ids` `[B,T]` i64 and `position_ids` `[B,T]` i64 (any values
    /// ≥ 0, e.g. LOGO's synthesised indices, up to K and beyond) → `[B,T,H]` of
    /// [`Llama::kind`], after the final RMSNorm (HF `LlamaModel.forward(...)
    /// .last_hidden_state`). `train` enables LoRA dropout (the base model has none).
    /// Inputs are moved to the model's device. Batches must be right-padded.
    ///
    /// Errors: [`TrainerError::Config`] (key `position_ids` / `input_ids`) if shapes differ
    /// or are not 2-D; [`TrainerError::Torch`] from libtorch (e.g. an id ≥ V, out of memory).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let ids_size = input_ids.size();
        if ids_size.len() != 2 {
            return Err(TrainerError::Config {
                key: "input_ids".to_string(),
                message: format!("expected shape [B,T], got {ids_size:?}"),
            });
        }
        if position_ids.size() != ids_size {
            return Err(TrainerError::Config {
                key: "position_ids".to_string(),
                message: format!(
                    "expected shape {ids_size:?} (that of input_ids), got {:?}",
                    position_ids.size()
                ),
            });
        }
        let s = self.streams(&[(input_ids, position_ids)], None)?;
        Ok(self.run_layers(&s, train, None)?.remove(0))
    }

    /// Moves ids and positions to the device and computes the rotary tables of each stream.
    fn streams(&self, inputs: &[(&Tensor, &Tensor)], mask: Option<&Tensor>) -> Result<Streams> {
        let mut ids = Vec::with_capacity(inputs.len());
        let mut rope = Vec::with_capacity(inputs.len());
        for (i, p) in inputs {
            ids.push(i.f_to_device(self.device)?.f_to_kind(Kind::Int64)?);
            let pos = p.f_to_device(self.device)?;
            rope.push(self.rotary.cos_sin(&pos, self.kind)?);
        }
        let mask = mask
            .map(|m| m.f_to_device(self.device)?.f_to_kind(Kind::Bool))
            .transpose()?;
        Ok(Streams { ids, rope, mask })
    }

    /// The token embedding of every stream: `[B,T,H]` each.
    fn embed(&self, s: &Streams) -> Result<Vec<Tensor>> {
        s.ids
            .iter()
            .map(|ids| self.embed_tokens.forward(ids))
            .collect()
    }

    /// One decoder layer on every stream: the first plainly causal, the second (if any)
    /// attending to the first's keys and values through the mask.
    fn layer_step(
        &self,
        layer: &DecoderLayer,
        s: &Streams,
        xs: &[Tensor],
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let (cos, sin) = &s.rope[0];
        let (y, k, v) = layer.forward(&xs[0], cos, sin, train, None)?;
        let mut out = vec![y];
        if let (Some(x), Some(mask)) = (xs.get(1), s.mask.as_ref()) {
            let (cos, sin) = &s.rope[1];
            let prefix = Prefix { k: &k, v: &v, mask };
            out.push(layer.forward(x, cos, sin, train, Some(prefix))?.0);
        }
        Ok(out)
    }

    /// Embedding, decoder layers (re-seeding the generator per layer when `seed` is given) and
    /// final norm of every stream: `[B,T,H]` each.
    fn run_layers(&self, s: &Streams, train: bool, seed: Option<i64>) -> Result<Vec<Tensor>> {
        let mut h = self.embed(s)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(seed) = seed {
                tch::manual_seed(checkpoint::layer_seed(seed, i));
            }
            h = self.layer_step(layer, s, &h, train)?;
        }
        h.iter().map(|x| self.norm.forward(x)).collect()
    }

    /// [`Llama::hidden_states`] with libtorch's generator re-seeded before each layer exactly
    /// as [`Llama::backward_checkpointed`] does, so that both see the same dropout masks.
    pub fn hidden_states_seeded(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        train: bool,
        seed: i64,
    ) -> Result<Tensor> {
        let s = self.streams(&[(input_ids, position_ids)], None)?;
        Ok(self.run_layers(&s, train, Some(seed))?.remove(0))
    }

    /// Checks the shapes of a [`PrefixInput`]. Errors: [`TrainerError::Config`] naming the
    /// field.
    fn prefix_streams(&self, input: &PrefixInput) -> Result<Streams> {
        let bad = |key: &str, message: String| TrainerError::Config {
            key: key.into(),
            message,
        };
        let p = input.prefix_ids.size();
        let n = input.input_ids.size();
        if p.len() != 2 || p[0] != 1 || input.prefix_position_ids.size() != p {
            return Err(bad(
                "prefix_ids",
                format!(
                    "expected prompt ids and positions of shape [1,P], got {p:?} and {:?}",
                    input.prefix_position_ids.size()
                ),
            ));
        }
        if n.len() != 2 || n[0] != 1 || input.position_ids.size() != n {
            return Err(bad(
                "input_ids",
                format!(
                    "expected continuation ids and positions of shape [1,N], got {n:?} and {:?}",
                    input.position_ids.size()
                ),
            ));
        }
        let want = vec![n[1], p[1] + n[1]];
        if input.attention_mask.size() != want {
            return Err(bad(
                "attention_mask",
                format!(
                    "expected shape {want:?} ([N,P+N]), got {:?}",
                    input.attention_mask.size()
                ),
            ));
        }
        self.streams(
            &[
                (input.prefix_ids, input.prefix_position_ids),
                (input.input_ids, input.position_ids),
            ],
            Some(input.attention_mask),
        )
    }

    /// Final hidden states of a prompt and of the continuations that share it (see
    /// [`PrefixInput`]): (`[1,P,H]`, `[1,N,H]`) of [`Llama::kind`], after the final norm. The
    /// prompt's layers run once whatever the number of continuations. `seed`: re-seed the
    /// generator per layer as [`Llama::backward_checkpointed_prefix`] does.
    ///
    /// Errors: [`TrainerError::Config`] for inconsistent shapes; [`TrainerError::Torch`].
    pub fn prefix_hidden_states(
        &self,
        input: &PrefixInput,
        train: bool,
        seed: Option<i64>,
    ) -> Result<(Tensor, Tensor)> {
        let s = self.prefix_streams(input)?;
        let mut h = self.run_layers(&s, train, seed)?;
        let cont = h.pop().expect("two streams");
        Ok((h.pop().expect("two streams"), cont))
    }

    /// The LM head on selected rows: `hidden` `[N,H]` (or any `[..,H]`) of [`Llama::kind`] →
    /// `[N,V]` f32 logits. The matmul runs in the model dtype and is then cast to f32, as HF
    /// does (`logits.float()` in its loss). Apply it only to the rows whose next token is
    /// scored, so a `[B,T,V]` tensor over the whole prompt is never built.
    ///
    /// Errors: [`TrainerError::Torch`] if the last dim is not H.
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = hidden.f_to_device(self.device)?.f_to_kind(self.kind)?;
        Ok(hidden
            .f_linear(&self.lm_head, None::<Tensor>)?
            .f_to_kind(Kind::Float)?)
    }

    /// Full logits for evaluation and tests: `input_ids` `[B,T]` i64, `position_ids` `[B,T]` i64 →
    /// `[B,T,V]` f32 (HF `LlamaForCausalLM.forward(input_ids, position_ids=...).logits`).
    /// No dropout. Run it under `tch::no_grad_guard()` unless gradients are wanted.
    ///
    /// Errors: as [`Llama::hidden_states`].
    pub fn forward(&self, input_ids: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, position_ids, false)?;
        self.lm_logits(&h)
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The frozen base weights, named as in HF safetensors.
    pub fn base_var_store(&self) -> &nn::VarStore {
        &self.base
    }

    /// Where all tensors live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype of the base weights and of the hidden states.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// What [`Llama::from_weights`] can build: a consistent config ([`LlamaConfig::check`]), no
/// sliding window, a float `kind`. Errors: [`TrainerError::Model`] naming `origin`;
/// [`TrainerError::Config`] (`dtype`).
fn check_buildable(cfg: &LlamaConfig, kind: Kind, origin: &Path) -> Result<()> {
    cfg.check().map_err(|m| TrainerError::model(origin, m))?;
    if let Some(window) = cfg.sliding_window {
        return Err(TrainerError::model(
            origin,
            format!("sliding_window {window}: sliding-window attention is not supported"),
        ));
    }
    if !matches!(
        kind,
        Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
    ) {
        return Err(TrainerError::Config {
            key: "dtype".to_string(),
            message: format!("expected a float kind (f32, bf16, f16, f64), got {kind:?}"),
        });
    }
    Ok(())
}

/// Copies every variable of `base` from `fetch(name, shape)`, in name order, without
/// gradients. Errors: [`TrainerError::Model`] naming `origin` and the tensor (missing, or
/// another shape); `fetch`'s own errors.
fn fill_vars(base: &nn::VarStore, fetch: &mut FetchWeight, origin: &Path) -> Result<()> {
    let mut names: Vec<(String, Tensor)> = base.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let _guard = tch::no_grad_guard();
    for (name, mut var) in names {
        let src = fetch(&name, &var.size())?
            .ok_or_else(|| TrainerError::model(origin, format!("missing tensor {name}")))?;
        if src.size() != var.size() {
            return Err(TrainerError::model(
                origin,
                format!(
                    "tensor {name}: expected shape {:?}, got {:?}",
                    var.size(),
                    src.size()
                ),
            ));
        }
        var.f_copy_(&src)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_inv_freq_matches_formula() {
        // θ = 10000, hd = 4: inv_freq = [1, 10000^-0.5] = [1, 0.01].
        let mut cfg = LlamaConfig::smollm2_135m();
        cfg.head_dim = 4;
        cfg.rope_theta = 10000.0;
        let r = Rotary::new(&cfg, None, Device::Cpu).unwrap();
        let v: Vec<f32> = Vec::try_from(&r.inv_freq).unwrap();
        assert_eq!(v.len(), 2);
        assert!(
            (v[0] - 1.0).abs() < 1e-7 && (v[1] - 0.01).abs() < 1e-8,
            "{v:?}"
        );
    }
}
