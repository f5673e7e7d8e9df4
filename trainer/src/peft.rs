//! PEFT adapter folders: `adapter_config.json` and `adapter_model.safetensors` written from,
//! read into and merged into a [`Llama`]'s LoRA adapters ([`crate::lora`]).
//!
//! Source: PEFT `tuners/lora/config.py` (`LoraConfig` keys) and `utils/save_and_load.py`
//! (`get_peft_model_state_dict`: keys `base_model.model.{name}.lora_A.weight`, the adapter
//! name dropped); `PeftModel.from_pretrained(base, dir)` loads what [`save_adapter`] writes.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::model::{AdapterSlot, Llama};

/// Prefix PEFT puts before the base model's own parameter names.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// PEFT adapter config file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT adapter weights file name.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// `adapter_config.json` as PEFT writes it (the keys PEFT needs to rebuild the adapter).
#[derive(Debug, Serialize, Deserialize)]
struct AdapterConfigFile {
    peft_type: String,
    task_type: Option<String>,
    r: i64,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: Vec<String>,
    bias: String,
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
}

/// Reads `dir/adapter_config.json` into a [`LoraConfig`]. Errors: [`TrainerError::Io`];
/// [`TrainerError::Model`] unless it is a plain LoRA (`peft_type` "LORA", `bias` "none", no
/// rsLoRA/DoRA, `fan_in_fan_out` false, no `modules_to_save`, a list of targets).
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainerError::io(&path, e))?;
    // The adapter kind first: a prefix-tuning or IA3 config lacks LoRA's fields.
    let kind: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainerError::model(&path, e.to_string()))?;
    if let Some(other) = kind["peft_type"].as_str().filter(|t| *t != "LORA") {
        return Err(TrainerError::model(
            &path,
            format!("peft_type: expected LORA (only LoRA adapters are supported), got {other}"),
        ));
    }
    let file: AdapterConfigFile =
        serde_json::from_value(kind).map_err(|e| TrainerError::model(&path, e.to_string()))?;
    let unsupported = if file.peft_type != "LORA" {
        Some(format!("peft_type: expected LORA, got {}", file.peft_type))
    } else if file.bias != "none" {
        Some(format!("bias: expected none, got {}", file.bias))
    } else if file.use_rslora || file.use_dora || file.fan_in_fan_out {
        Some("expected use_rslora, use_dora and fan_in_fan_out false".to_string())
    } else if file.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        Some("modules_to_save: expected none".to_string())
    } else {
        None
    };
    if let Some(message) = unsupported {
        return Err(TrainerError::model(&path, message));
    }
    let cfg = LoraConfig {
        r: file.r,
        lora_alpha: file.lora_alpha,
        lora_dropout: file.lora_dropout,
        target_modules: file.target_modules,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The model's adapters, or a [`TrainerError::Config`] saying there are none.
fn adapters(model: &Llama) -> Result<(&nn::VarStore, &LoraConfig)> {
    match (model.lora_var_store(), model.lora_config()) {
        (Some(vs), Some(cfg)) => Ok((vs, cfg)),
        _ => Err(TrainerError::Config {
            key: "lora".to_string(),
            message: "the model has no LoRA adapters".to_string(),
        }),
    }
}

/// Saves the adapters in PEFT format: `dir/adapter_config.json` (`peft_type` "LORA",
/// `task_type` "CAUSAL_LM", `base_model_name_or_path` = `base_name`, `inference_mode` true)
/// and `dir/adapter_model.safetensors` (f32, keys `base_model.model.` + the adapter store's
/// names). Creates `dir`. Errors: [`TrainerError::Config`] without adapters,
/// [`TrainerError::Io`], [`TrainerError::Torch`].
pub fn save_adapter(model: &Llama, dir: &Path, base_name: &str) -> Result<()> {
    let (vs, cfg) = adapters(model)?;
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let file = AdapterConfigFile {
        peft_type: "LORA".to_string(),
        task_type: Some("CAUSAL_LM".to_string()),
        r: cfg.r,
        lora_alpha: cfg.lora_alpha,
        lora_dropout: cfg.lora_dropout,
        target_modules: cfg.target_modules.clone(),
        bias: "none".to_string(),
        base_model_name_or_path: Some(base_name.to_string()),
        fan_in_fan_out: false,
        inference_mode: true,
        use_rslora: false,
        use_dora: false,
        modules_to_save: None,
    };
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let json = serde_json::to_string_pretty(&file)
        .map_err(|e| TrainerError::Internal(format!("adapter config to JSON: {e}")))?;
    std::fs::write(&cfg_path, json).map_err(|e| TrainerError::io(&cfg_path, e))?;
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let t = t
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(tch::Device::Cpu)?
                .f_contiguous()?;
            Ok((format!("{PEFT_PREFIX}{name}"), t))
        })
        .collect::<Result<_>>()?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    Tensor::write_safetensors(&named, &weights)?;
    Ok(())
}

/// Loads `dir/adapter_model.safetensors` into the model's adapters, which must have been
/// attached with the same configuration (build the model with
/// `Llama::load(path, Some(&read_adapter_config(dir)?), ..)` first). Values are copied in
/// place, so optimizer references to the parameters stay valid.
///
/// Errors: [`TrainerError::Config`] without adapters; [`TrainerError::Model`] if `r`,
/// `lora_alpha` or the targets differ from `adapter_config.json`, or a tensor is missing,
/// unexpected or of the wrong shape; [`TrainerError::Io`], [`TrainerError::Torch`].
pub fn load_adapter(model: &Llama, dir: &Path) -> Result<()> {
    let (vs, cfg) = adapters(model)?;
    let file_cfg = read_adapter_config(dir)?;
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let mut ours = cfg.target_modules.clone();
    let mut theirs = file_cfg.target_modules.clone();
    ours.sort();
    theirs.sort();
    if file_cfg.r != cfg.r || file_cfg.lora_alpha != cfg.lora_alpha || ours != theirs {
        return Err(TrainerError::model(
            &cfg_path,
            format!(
                "expected r {}, lora_alpha {}, target_modules {:?} (the model's adapters), \
                 got r {}, lora_alpha {}, target_modules {:?}",
                cfg.r, cfg.lora_alpha, ours, file_cfg.r, file_cfg.lora_alpha, theirs
            ),
        ));
    }
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut loaded: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&weights)?
        .into_iter()
        .map(|(k, t)| (k.strip_prefix(PEFT_PREFIX).unwrap_or(&k).to_string(), t))
        .collect();
    let _guard = tch::no_grad_guard();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        let src = loaded.remove(&name).ok_or_else(|| {
            TrainerError::model(&weights, format!("missing tensor {PEFT_PREFIX}{name}"))
        })?;
        if src.size() != var.size() {
            return Err(TrainerError::model(
                &weights,
                format!(
                    "tensor {PEFT_PREFIX}{name}: expected shape {:?}, got {:?}",
                    var.size(),
                    src.size()
                ),
            ));
        }
        var.f_copy_(&src)?;
    }
    if let Some(extra) = loaded.keys().min() {
        return Err(TrainerError::model(
            &weights,
            format!("unexpected tensor {PEFT_PREFIX}{extra} (no such adapter in the model)"),
        ));
    }
    Ok(())
}

/// Folds every adapter into its base weight, `W += B·A·scaling` (embedding:
/// `W += (B·A)ᵀ·scaling`), cast to the base dtype, then drops the adapters (PEFT
/// `merge_and_unload`). With tied embeddings and an `embed_tokens` adapter the LM head first
/// gets its own copy of the embedding (the config becomes untied), so the merged model gives
/// the same logits as the adapted one: PEFT's adapter changes only the input embedding.
///
/// Errors: [`TrainerError::Config`] without adapters; [`TrainerError::Torch`].
pub fn merge_lora(model: &mut Llama) -> Result<()> {
    adapters(model)?;
    let embed_adapted = model
        .adapter_slots()
        .into_iter()
        .any(|(_, slot)| matches!(slot, AdapterSlot::Embedding(e) if e.lora.is_some()));
    if embed_adapted {
        model.untie_lm_head()?;
    }
    {
        let _guard = tch::no_grad_guard();
        for (_, slot) in model.adapter_slots() {
            match slot {
                AdapterSlot::Linear(lin) => {
                    if let Some(lora) = &lin.lora {
                        let delta = lora.delta_weight()?.f_to_kind(lin.weight.kind())?;
                        let _ = lin.weight.f_add_(&delta)?;
                    }
                }
                AdapterSlot::Embedding(emb) => {
                    if let Some(lora) = &emb.lora {
                        let delta = lora.delta_weight()?.f_to_kind(emb.weight.kind())?;
                        let _ = emb.weight.f_add_(&delta)?;
                    }
                }
            }
        }
    }
    model.detach_lora();
    Ok(())
}
