//! PEFT LoRA adapters folded into GGUF weights, so that the policy generates with an adapted
//! model (the trainer's output, or any plain PEFT LoRA on the same base).
//!
//! Merge rule (PEFT `tuners/lora/layer.py`, `get_delta_weight`, `merge_and_unload`):
//! - linear target (`q_proj` … `o_proj`, `gate_proj`, `up_proj`, `down_proj`, `lm_head`):
//!   `W [out,in] += lora_B [out,r] · lora_A [r,in] · scaling`;
//! - embedding target (`embed_tokens`): `E [V,H] += (lora_embedding_B [H,r] ·
//!   lora_embedding_A [r,V])ᵀ · scaling`;
//! - `scaling = lora_alpha / r` (PEFT `LoraConfig`, without rsLoRA).
//!
//! The folder's format (file names, `adapter_config.json` and its plain-LoRA check, tensor
//! keys) is [`logo_formats::peft`]'s, shared with the trainer that writes it.
//!
//! Deltas are kept in the Hugging Face layout under HF tensor names
//! ([`logo_formats::gguf::hf_name`] maps GGUF names to them). GGUF layout (llama.cpp
//! `convert_hf_to_gguf.py`, `LlamaModel.permute`): the rows of `attn_q` and `attn_k` are stored
//! permuted for the interleaved rotary embedding,
//! `W_gguf = W_hf.reshape(n_head, 2, out/n_head/2, in).swapaxes(1, 2).reshape(out, in)` with
//! `n_head` = `llama.attention.head_count` (q) or `head_count_kv` (k) ([`permute_rows`], an
//! `index_select` of [`logo_formats::gguf::permuted_rows`]; [`unpermute_rows`] is its
//! inverse); a delta for a permuted tensor is permuted the same way before it is added to GGUF
//! weights.
//!
//! PEFT's embedding adapter changes only the input embedding; with tied embeddings (no
//! `output.weight` in the GGUF) the LM head keeps the unadapted copy, as in the trainer's
//! `merge_lora`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use logo_formats::gguf::{gguf_name, permuted_rows, unpermuted_rows, HF_EMBED, HF_LM_HEAD};
use logo_formats::peft::{split_key, AdapterConfig, LoraFactor, ADAPTER_WEIGHTS_FILE};

use crate::error::{PolicyError, Result};

/// A PEFT LoRA adapter turned into dense weight deltas in GGUF layout.
#[derive(Debug)]
pub struct LoraDeltas {
    /// The adapter folder.
    pub dir: PathBuf,
    /// HF tensor name (`model.layers.{i}.self_attn.q_proj.weight`, `model.embed_tokens.weight`,
    /// …) → `ΔW` f32 with the shape of that tensor (`[out,in]`; embedding `[V,H]`), scaled,
    /// in the HF layout.
    pub deltas: HashMap<String, Tensor>,
}

fn adapter_err(path: &Path, what: impl std::fmt::Display) -> PolicyError {
    PolicyError::Model(format!("{}: {what}", path.display()))
}

/// The HF weight a PEFT module name (prefix `base_model.model.` removed) adapts, and whether
/// it is an embedding; `None` for modules a Llama does not have and for its norms (no LoRA
/// target).
fn hf_target(module: &str) -> Option<(String, bool)> {
    let weight = format!("{module}.weight");
    let gguf = gguf_name(&weight)?;
    if gguf.ends_with("_norm.weight") {
        return None;
    }
    let embedding = weight == HF_EMBED;
    Some((weight, embedding))
}

/// Reorders the rows of `w` `[rows,in]`: row `i` of the result is row `rows[i]` of `w`.
fn select_rows(w: &Tensor, rows: Option<Vec<usize>>, n_head: usize) -> Result<Tensor> {
    let (out, _) = w.dims2()?;
    let rows = rows.ok_or_else(|| {
        PolicyError::Model(format!(
            "{out} rows are not {n_head} heads of an even size (q/k row permutation)"
        ))
    })?;
    let index: Vec<u32> = rows.into_iter().map(|r| r as u32).collect();
    let index = Tensor::from_vec(index, out, w.device())?;
    Ok(w.index_select(&index, 0)?)
}

/// Applies llama.cpp's q/k row permutation (HF → GGUF, [`logo_formats::gguf::permuted_rows`])
/// to `w` `[out,in]` for `n_head` heads. Errors ([`PolicyError::Model`]): `out` is not a
/// multiple of `2·n_head`.
pub fn permute_rows(w: &Tensor, n_head: usize) -> Result<Tensor> {
    select_rows(w, permuted_rows(w.dims2()?.0, n_head), n_head)
}

/// The inverse of [`permute_rows`] (GGUF → HF rotate-half layout,
/// [`logo_formats::gguf::unpermuted_rows`]).
pub fn unpermute_rows(w: &Tensor, n_head: usize) -> Result<Tensor> {
    select_rows(w, unpermuted_rows(w.dims2()?.0, n_head), n_head)
}

impl LoraDeltas {
    /// Reads `dir/adapter_config.json` ([`AdapterConfig::read`]) and
    /// `dir/adapter_model.safetensors` and computes every delta (see the module doc) on the
    /// CPU in f32, in the HF layout.
    ///
    /// Errors ([`PolicyError::Model`] naming the file and, where it applies, the tensor):
    /// unreadable or malformed files; not a plain LoRA (`peft_type` other than LORA, DoRA,
    /// rsLoRA, `fan_in_fan_out`, `bias` other than none, `modules_to_save`, rank or alpha
    /// patterns); a module a Llama GGUF does not have; a factor missing or of a shape that
    /// does not chain (`B [out,r]`, `A [r,in]`, r as configured).
    pub fn load(dir: &Path) -> Result<LoraDeltas> {
        let cfg = AdapterConfig::read(dir)?;
        let scaling = cfg.scaling();

        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        if !weights.exists() {
            return Err(adapter_err(&weights, "no such file"));
        }
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| adapter_err(&weights, e))?;
        let mut factors: HashMap<&str, [Option<&Tensor>; 2]> = HashMap::new();
        let mut keys: Vec<&String> = tensors.keys().collect();
        keys.sort();
        for key in keys {
            let (module, factor) = split_key(key)
                .ok_or_else(|| adapter_err(&weights, format!("unexpected tensor {key}")))?;
            let slot = factors.entry(module).or_default();
            slot[usize::from(factor == LoraFactor::B)] = Some(&tensors[key]);
        }
        let mut deltas = HashMap::new();
        for (module, [a, b]) in factors {
            let (target, embedding) = hf_target(module).ok_or_else(|| {
                adapter_err(
                    &weights,
                    format!("module {module}: not a Llama module this engine can merge"),
                )
            })?;
            let missing = |f: &str| adapter_err(&weights, format!("module {module}: no lora_{f}"));
            let a = a.ok_or_else(|| missing("A"))?;
            let b = b.ok_or_else(|| missing("B"))?;
            let (a_rows, _) = a.dims2().map_err(|e| adapter_err(&weights, e))?;
            let (_, b_cols) = b.dims2().map_err(|e| adapter_err(&weights, e))?;
            if a_rows != cfg.r || b_cols != cfg.r {
                return Err(adapter_err(
                    &weights,
                    format!(
                        "module {module}: expected lora_A [r={r}, in] and lora_B [out, r={r}], \
                         got {:?} and {:?}",
                        a.dims(),
                        b.dims(),
                        r = cfg.r
                    ),
                ));
            }
            let f32 = candle_core::DType::F32;
            let ba = b.to_dtype(f32)?.matmul(&a.to_dtype(f32)?)?; // [out,in] or [H,V]
            let ba = if embedding { ba.t()?.contiguous()? } else { ba };
            deltas.insert(target, (ba * scaling)?);
        }
        Ok(LoraDeltas {
            dir: dir.to_path_buf(),
            deltas,
        })
    }

    /// The delta `[out,in]` f32 (HF layout) for the HF tensor `name`, if the adapter targets it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.deltas.get(name)
    }

    /// True when the adapter changes the token embedding or the LM head (a model with tied
    /// embeddings then needs its own LM head).
    pub fn adapts_embedding_or_head(&self) -> bool {
        self.deltas.contains_key(HF_EMBED) || self.deltas.contains_key(HF_LM_HEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logo_formats::peft::ADAPTER_CONFIG_FILE;

    #[test]
    fn peft_modules_map_to_hf_weights() {
        assert_eq!(
            hf_target("model.layers.3.self_attn.o_proj"),
            Some(("model.layers.3.self_attn.o_proj.weight".to_string(), false))
        );
        assert_eq!(
            hf_target("model.layers.0.mlp.down_proj"),
            Some(("model.layers.0.mlp.down_proj.weight".to_string(), false))
        );
        assert_eq!(
            hf_target("model.embed_tokens"),
            Some((HF_EMBED.to_string(), true))
        );
        assert_eq!(hf_target("lm_head"), Some((HF_LM_HEAD.to_string(), false)));
        assert_eq!(hf_target("model.layers.x.self_attn.q_proj"), None);
        assert_eq!(hf_target("model.layers.1.self_attn.rotary"), None);
        assert_eq!(hf_target("model.layers.1.input_layernorm"), None);
        assert_eq!(hf_target("model.norm"), None);
    }

    #[test]
    fn permutation_matches_llama_cpp() {
        // 2 heads of dim 4, one input column: rows [h0: 0 1 2 3 | h1: 4 5 6 7].
        // reshape(2, 2, 2, 1).swapaxes(1, 2): each head's first half and second half
        // interleave → [0 2 1 3 | 4 6 5 7].
        let w = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p = permute_rows(&w, 2).unwrap();
        assert_eq!(
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
        // unpermute_rows inverts it, also with several columns and heads.
        assert_eq!(
            unpermute_rows(&p, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            (0..8).map(|x| x as f32).collect::<Vec<_>>()
        );
        let w = Tensor::arange(0f32, 96., &Device::Cpu)
            .unwrap()
            .reshape((24, 4))
            .unwrap();
        let permuted = permute_rows(&w, 3).unwrap();
        // The index map equals llama.cpp's reshape and transposition done by candle.
        let reshaped = w
            .reshape((3, 2, 4, 4))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((24, 4))
            .unwrap();
        assert_eq!(
            permuted.to_vec2::<f32>().unwrap(),
            reshaped.to_vec2::<f32>().unwrap()
        );
        let back = unpermute_rows(&permuted, 3).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Rows that are not whole heads are an error, not a panic.
        assert!(permute_rows(&w, 5).is_err());
    }

    fn write_adapter(dir: &Path, config: &str, tensors: &[(&str, Tensor)]) {
        std::fs::write(dir.join(ADAPTER_CONFIG_FILE), config).unwrap();
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    }

    #[test]
    fn deltas_are_scaled_products_in_gguf_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = Device::Cpu;
        // r = 1, alpha = 2 → scaling 2. v_proj: B [2,1] = [1, 2], A [1,3] = [1, 0, -1].
        let a = Tensor::new(&[[1f32, 0., -1.]], &cpu).unwrap();
        let b = Tensor::new(&[[1f32], [2.]], &cpu).unwrap();
        // Embedding, V = 2, H = 3: A [1,2] = [1, 3], B [3,1] = [1, 0, 2].
        let ea = Tensor::new(&[[1f32, 3.]], &cpu).unwrap();
        let eb = Tensor::new(&[[1f32], [0.], [2.]], &cpu).unwrap();
        write_adapter(
            dir.path(),
            r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["v_proj"]}"#,
            &[
                (
                    "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                    a,
                ),
                (
                    "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
                    b,
                ),
                ("base_model.model.model.embed_tokens.lora_embedding_A", ea),
                ("base_model.model.model.embed_tokens.lora_embedding_B", eb),
            ],
        );
        let d = LoraDeltas::load(dir.path()).unwrap();
        assert!(d.adapts_embedding_or_head());
        let v = d.get("model.layers.0.self_attn.v_proj.weight").unwrap();
        assert_eq!(
            v.to_vec2::<f32>().unwrap(),
            vec![vec![2., 0., -2.], vec![4., 0., -4.]]
        );
        // (B·A)ᵀ·2 = [[1,3],[0,0],[2,6]]ᵀ·2 = [[2,0,4],[6,0,12]].
        let e = d.get(HF_EMBED).unwrap();
        assert_eq!(
            e.to_vec2::<f32>().unwrap(),
            vec![vec![2., 0., 4.], vec![6., 0., 12.]]
        );
    }

    #[test]
    fn unsupported_adapters_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = Device::Cpu;
        let a = Tensor::zeros((1, 3), candle_core::DType::F32, &cpu).unwrap();
        let b = Tensor::zeros((2, 1), candle_core::DType::F32, &cpu).unwrap();
        write_adapter(
            dir.path(),
            r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "use_dora": true}"#,
            &[],
        );
        let e = LoraDeltas::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("adapter_config.json") && e.contains("use_dora"),
            "{e}"
        );
        // Another PEFT method: named as such, not as a missing LoRA field.
        write_adapter(
            dir.path(),
            r#"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20}"#,
            &[],
        );
        let e = LoraDeltas::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(
                "peft_type: expected LORA (only LoRA adapters are supported), got PREFIX_TUNING"
            ),
            "{e}"
        );
        write_adapter(
            dir.path(),
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2}"#,
            &[
                (
                    "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                    a.clone(),
                ),
                (
                    "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
                    b.clone(),
                ),
            ],
        );
        let e = LoraDeltas::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("v_proj: expected lora_A [r=2"), "{e}");
        write_adapter(
            dir.path(),
            r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2}"#,
            &[(
                "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                a.clone(),
            )],
        );
        let e = LoraDeltas::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("v_proj: no lora_B"), "{e}");
        write_adapter(
            dir.path(),
            r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2}"#,
            &[
                (
                    "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight",
                    a,
                ),
                (
                    "base_model.model.model.layers.0.self_attn.rotary.lora_B.weight",
                    b,
                ),
            ],
        );
        let e = LoraDeltas::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a Llama module"), "{e}");
    }
}
