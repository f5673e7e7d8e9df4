//! PEFT adapter folders: `adapter_config.json` and `adapter_model.safetensors` written from,
//! read into and merged into a [`Llama`]'s LoRA adapters ([`crate::lora`]).
//!
//! The format itself (file names, the keys of `adapter_config.json` and its plain-LoRA check,
//! the tensor keys `base_model.model.{name}`) is [`logo_formats::peft`]'s, shared with the
//! engine that folds these adapters into its weights; this module moves the tensors.
//! Source: PEFT `tuners/lora/config.py` and `utils/save_and_load.py`;
//! `PeftModel.from_pretrained(base, dir)` loads what [`save_adapter`] writes; [`merge_lora`]
//! folds an adapter into the base weights and [`export_hf`] writes the merged model as a
//! Hugging Face folder (`logo-trainer export-hf`).

use std::path::Path;

use logo_formats::peft::{
    peft_key, strip_peft_prefix, AdapterConfig, TargetModules, ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Result, TrainerError};
use crate::lora::LoraConfig;
use crate::model::{AdapterSlot, Llama};

/// Reads `dir/adapter_config.json` ([`AdapterConfig::read`]) into a [`LoraConfig`]. Errors:
/// [`TrainerError::Model`] for an unreadable file or unless it is a plain LoRA (`peft_type`
/// "LORA", `bias` "none", no rsLoRA/DoRA, `fan_in_fan_out` false, no `modules_to_save`, no
/// rank or alpha patterns) with a list of targets; [`TrainerError::Config`] for values
/// [`LoraConfig::validate`] refuses.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let file = AdapterConfig::read(dir)?;
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let target_modules = match file.target_modules {
        Some(TargetModules::List(list)) => list,
        Some(TargetModules::Regex(re)) => {
            return Err(TrainerError::model(
                &path,
                format!("target_modules: expected a list of module names, got the pattern {re:?}"),
            ))
        }
        None => {
            return Err(TrainerError::model(
                &path,
                "target_modules: expected a list of module names, got none",
            ))
        }
    };
    let r = i64::try_from(file.r)
        .map_err(|_| TrainerError::model(&path, format!("r: too large, got {}", file.r)))?;
    let cfg = LoraConfig {
        r,
        lora_alpha: file.lora_alpha,
        lora_dropout: file.lora_dropout,
        target_modules,
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
/// [`TrainerError::Io`] (the folder), [`TrainerError::Model`] (the config file),
/// [`TrainerError::Torch`].
pub fn save_adapter(model: &Llama, dir: &Path, base_name: &str) -> Result<()> {
    let (vs, cfg) = adapters(model)?;
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let r = usize::try_from(cfg.r).map_err(|_| TrainerError::Config {
        key: "lora.r".to_string(),
        message: format!("expected ≥ 1, got {}", cfg.r),
    })?;
    AdapterConfig {
        task_type: Some("CAUSAL_LM".to_string()),
        r,
        lora_alpha: cfg.lora_alpha,
        lora_dropout: cfg.lora_dropout,
        target_modules: Some(TargetModules::List(cfg.target_modules.clone())),
        base_model_name_or_path: Some(base_name.to_string()),
        inference_mode: true,
        ..AdapterConfig::default()
    }
    .write(dir)?;
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let t = t
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(tch::Device::Cpu)?
                .f_contiguous()?;
            Ok((peft_key(&name), t))
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
        .map(|(k, t)| (strip_peft_prefix(&k).to_string(), t))
        .collect();
    let _guard = tch::no_grad_guard();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        let src = loaded.remove(&name).ok_or_else(|| {
            TrainerError::model(&weights, format!("missing tensor {}", peft_key(&name)))
        })?;
        if src.size() != var.size() {
            return Err(TrainerError::model(
                &weights,
                format!(
                    "tensor {}: expected shape {:?}, got {:?}",
                    peft_key(&name),
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
            format!(
                "unexpected tensor {} (no such adapter in the model)",
                peft_key(extra)
            ),
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

/// Writes `model` (HF folder or GGUF) as a Hugging Face Llama folder: `config.json` and
/// `model.safetensors` (f32, HF tensor names). With `adapter` (a PEFT LoRA folder, ours or any
/// on the same base), the adapter is merged into the base weights first (W + B·A·scaling).
/// Tokenizer files are not written. Errors: [`TrainerError::Io`], model or adapter loading.
pub fn export_hf(model_path: &Path, adapter: Option<&Path>, out: &Path) -> Result<()> {
    let model = match adapter {
        None => Llama::load(model_path, None, Device::Cpu, Kind::Float)?,
        Some(dir) => {
            let lora = read_adapter_config(dir)?;
            let mut model = Llama::load(model_path, Some(&lora), Device::Cpu, Kind::Float)?;
            load_adapter(&model, dir)?;
            merge_lora(&mut model)?;
            model
        }
    };
    let c = model.config();
    std::fs::create_dir_all(out).map_err(|e| TrainerError::io(out, e))?;
    let mut config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    if c.rope_scaling.is_some() {
        return Err(TrainerError::Config {
            key: "export-hf".into(),
            message: "models with rope_scaling are not exported yet".into(),
        });
    }
    if let Some(pad) = c.pad_token_id {
        config["pad_token_id"] = pad.into();
    }
    let path = out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json"))
        .map_err(|e| TrainerError::io(&path, e))?;
    let mut named: Vec<(String, Tensor)> = model.base_var_store().variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, out.join("model.safetensors"))?;
    Ok(())
}
