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
//! Deltas are kept in the Hugging Face layout under HF tensor names ([`hf_name`] maps GGUF
//! names to them). GGUF layout (llama.cpp `convert_hf_to_gguf.py`, `LlamaModel.permute`): the
//! rows of `attn_q` and `attn_k` are stored permuted for the interleaved rotary embedding,
//! `W_gguf = W_hf.reshape(n_head, 2, out/n_head/2, in).swapaxes(1, 2).reshape(out, in)` with
//! `n_head` = `llama.attention.head_count` (q) or `head_count_kv` (k) ([`permute_rows`];
//! [`unpermute_rows`] is its inverse); a delta for a permuted tensor is permuted the same way
//! before it is added to GGUF weights.
//!
//! PEFT's embedding adapter changes only the input embedding; with tied embeddings (no
//! `output.weight` in the GGUF) the LM head keeps the unadapted copy, as in the trainer's
//! `merge_lora`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// Adapter config file of a PEFT folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// Adapter weights file of a PEFT folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// GGUF name of the token embedding.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// GGUF name of the untied LM head.
pub const OUTPUT: &str = "output.weight";
/// HF name of the token embedding.
pub const HF_EMBED: &str = "model.embed_tokens.weight";
/// HF name of the untied LM head.
pub const HF_LM_HEAD: &str = "lm_head.weight";

/// The Hugging Face name of a Llama GGUF tensor (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), or `None` for tensors HF does not have
/// (`rope_freqs.weight`). Source: llama.cpp `gguf-py/gguf/tensor_mapping.py`.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        TOKEN_EMBD => return Some(HF_EMBED.into()),
        OUTPUT => return Some(HF_LM_HEAD.into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match name {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// Heads whose rows GGUF stores permuted for a tensor with this HF name: `n_head` for
/// `q_proj`, `n_kv_head` for `k_proj`, `None` for every other tensor.
pub fn permuted_heads(hf: &str, heads: HeadCounts) -> Option<usize> {
    if hf.ends_with("self_attn.q_proj.weight") {
        Some(heads.n_head)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        Some(heads.n_kv_head)
    } else {
        None
    }
}

/// The fields of PEFT's `adapter_config.json` this module reads; others are ignored.
#[derive(Debug, Deserialize)]
struct AdapterConfigFile {
    #[serde(default = "lora")]
    peft_type: String,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default = "none")]
    bias: String,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

fn lora() -> String {
    "LORA".into()
}
fn none() -> String {
    "none".into()
}

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

fn adapter_err(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("{}: {what}", path.display()))
}

/// The HF weight a PEFT module name (prefix `base_model.model.` removed) adapts, and whether
/// it is an embedding; `None` for modules a Llama does not have.
fn hf_target(module: &str) -> Option<(String, bool)> {
    match module {
        "model.embed_tokens" => return Some((HF_EMBED.into(), true)),
        "lm_head" => return Some((HF_LM_HEAD.into(), false)),
        _ => {}
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, proj) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let known = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    known
        .contains(&proj)
        .then(|| (format!("{module}.weight"), false))
}

/// Splits a PEFT tensor key into (module, which factor): `…q_proj.lora_A.weight` →
/// (`…q_proj`, "A"); `…embed_tokens.lora_embedding_B` → (`…embed_tokens`, "B"). An adapter
/// name between factor and `.weight` (`lora_A.default.weight`) is accepted.
fn split_key(key: &str) -> Option<(&str, &'static str)> {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (marker, which) in [
        (".lora_A", "A"),
        (".lora_B", "B"),
        (".lora_embedding_A", "A"),
        (".lora_embedding_B", "B"),
    ] {
        if let Some(i) = key.find(marker) {
            let tail = &key[i + marker.len()..];
            if tail.is_empty() || tail == ".weight" || tail.ends_with(".weight") {
                return Some((&key[..i], which));
            }
        }
    }
    None
}

/// Applies llama.cpp's q/k row permutation (HF → GGUF) to `w` `[out,in]` for `n_head` heads.
pub fn permute_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((n_head, 2, out / n_head / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// The inverse of [`permute_rows`] (GGUF → HF rotate-half layout).
pub fn unpermute_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((n_head, out / n_head / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// Head counts needed to permute q and k deltas.
#[derive(Debug, Clone, Copy)]
pub struct HeadCounts {
    /// `llama.attention.head_count`.
    pub n_head: usize,
    /// `llama.attention.head_count_kv`.
    pub n_kv_head: usize,
}

impl LoraDeltas {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors` and computes every
    /// delta (see the module doc) on the CPU in f32, in the HF layout.
    ///
    /// Errors ([`EngineError::Model`] naming the file and, where it applies, the tensor):
    /// unreadable or malformed files; not a plain LoRA (`peft_type` other than LORA, DoRA,
    /// rsLoRA, `fan_in_fan_out`, `bias` other than none, `modules_to_save`, rank or alpha
    /// patterns); a module a Llama GGUF does not have; a factor missing or of a shape that
    /// does not chain (`B [out,r]`, `A [r,in]`, r as configured).
    pub fn load(dir: &Path) -> Result<LoraDeltas> {
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
        // The adapter kind first: a prefix-tuning or IA3 config lacks LoRA's fields, and "only
        // LoRA" is the useful message, not "missing field r".
        let kind: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| adapter_err(&cfg_path, e))?;
        if let Some(other) = kind["peft_type"].as_str().filter(|t| *t != "LORA") {
            return Err(adapter_err(
                &cfg_path,
                format!("peft_type: expected LORA (only LoRA adapters are supported), got {other}"),
            ));
        }
        let cfg: AdapterConfigFile =
            serde_json::from_value(kind).map_err(|e| adapter_err(&cfg_path, e))?;
        let unsupported = if cfg.peft_type != "LORA" {
            Some(format!("peft_type: expected LORA, got {}", cfg.peft_type))
        } else if cfg.use_dora || cfg.use_rslora || cfg.fan_in_fan_out {
            Some("expected use_dora, use_rslora and fan_in_fan_out false".to_string())
        } else if cfg.bias != "none" {
            Some(format!("bias: expected none, got {}", cfg.bias))
        } else if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            Some("modules_to_save: expected none".to_string())
        } else if !cfg.rank_pattern.is_empty() || !cfg.alpha_pattern.is_empty() {
            Some("rank_pattern / alpha_pattern: expected none".to_string())
        } else if cfg.r == 0 {
            Some("r: must be >= 1".to_string())
        } else {
            None
        };
        if let Some(message) = unsupported {
            return Err(adapter_err(&cfg_path, message));
        }
        let scaling = cfg.lora_alpha / cfg.r as f64;

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
            let (module, which) = split_key(key)
                .ok_or_else(|| adapter_err(&weights, format!("unexpected tensor {key}")))?;
            let slot = factors.entry(module).or_default();
            slot[usize::from(which == "B")] = Some(&tensors[key]);
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

    #[test]
    fn keys_map_to_gguf_tensors() {
        let k = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight";
        assert_eq!(split_key(k), Some(("model.layers.3.self_attn.q_proj", "A")));
        let k = "base_model.model.model.layers.3.mlp.down_proj.lora_B.default.weight";
        assert_eq!(split_key(k), Some(("model.layers.3.mlp.down_proj", "B")));
        let k = "base_model.model.model.embed_tokens.lora_embedding_B";
        assert_eq!(split_key(k), Some(("model.embed_tokens", "B")));
        assert_eq!(split_key("model.norm.weight"), None);
        assert_eq!(
            hf_target("model.layers.3.self_attn.o_proj"),
            Some(("model.layers.3.self_attn.o_proj.weight".to_string(), false))
        );
        assert_eq!(
            hf_target("model.embed_tokens"),
            Some((HF_EMBED.to_string(), true))
        );
        assert_eq!(hf_target("model.layers.x.self_attn.q_proj"), None);
        assert_eq!(hf_target("model.layers.1.self_attn.rotary"), None);
        assert_eq!(
            hf_name("blk.3.attn_output.weight").as_deref(),
            Some("model.layers.3.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name(TOKEN_EMBD).as_deref(), Some(HF_EMBED));
        assert_eq!(hf_name("rope_freqs.weight"), None);
        let heads = HeadCounts {
            n_head: 9,
            n_kv_head: 3,
        };
        assert_eq!(
            permuted_heads("model.layers.2.self_attn.k_proj.weight", heads),
            Some(3)
        );
        assert_eq!(
            permuted_heads("model.layers.2.self_attn.v_proj.weight", heads),
            None
        );
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
        let back = unpermute_rows(&permute_rows(&w, 3).unwrap(), 3).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
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
