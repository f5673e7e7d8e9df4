//! LoRA adapters on the decoder: attaching PEFT-initialised `lora_A`/`lora_B` to the modules
//! `target_modules` names (PEFT's suffix matching), walking the adaptable modules in model
//! order, detaching them after a merge, and the trainable store the optimizer reads. The
//! layers themselves are [`crate::lora`]; their PEFT files are [`crate::peft`].

use tch::{nn, Tensor};

use super::{sub_path, AdapterSlot, Llama};
use crate::error::{Result, TrainerError};
use crate::lora::{LoraConfig, LoraEmbedding, LoraLinear};

impl Llama {
    /// Attaches fresh LoRA adapters (PEFT initialisation: `lora_A` kaiming-uniform(a=√5),
    /// `lora_B` zero; `lora_embedding_A` zero, `lora_embedding_B` normal) to every module named
    /// in `cfg.target_modules`, in a new trainable f32 [`nn::VarStore`] on the model's device.
    /// The model's output is unchanged until the adapters are trained.
    ///
    /// Errors: [`TrainerError::Config`] if adapters are already attached, `r` is 0, or a
    /// target matches no module (supported: `q_proj k_proj v_proj o_proj gate_proj up_proj
    /// down_proj embed_tokens`).
    pub fn attach_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        if self.lora_vs.is_some() {
            return Err(TrainerError::Config {
                key: "lora".to_string(),
                message: "adapters are already attached".to_string(),
            });
        }
        cfg.validate()?;
        let vs = nn::VarStore::new(self.device);
        let mut matched = vec![false; cfg.target_modules.len()];
        let pad = self.cfg.pad_token_id;
        for (module, slot) in self.adapter_slots() {
            let Some(t) = cfg
                .target_modules
                .iter()
                .position(|t| module_matches(&module, t))
            else {
                continue;
            };
            matched[t] = true;
            let p = sub_path(vs.root(), &module);
            match slot {
                AdapterSlot::Linear(lin) => {
                    let (out_f, in_f) = lin.weight.size2()?;
                    lin.lora = Some(LoraLinear::new(p, in_f, out_f, cfg)?);
                }
                AdapterSlot::Embedding(emb) => {
                    let (v, h) = emb.weight.size2()?;
                    emb.lora = Some(LoraEmbedding::new(p, v, h, pad, cfg)?);
                }
            }
        }
        if let Some(missing) = cfg
            .target_modules
            .iter()
            .zip(&matched)
            .find(|(_, m)| !**m)
            .map(|(t, _)| t)
        {
            self.clear_adapters();
            return Err(TrainerError::Config {
                key: "lora.target_modules".to_string(),
                message: format!(
                    "{missing} matches no module; expected names among q_proj, k_proj, v_proj, \
                     o_proj, gate_proj, up_proj, down_proj, embed_tokens"
                ),
            });
        }
        self.lora_vs = Some(vs);
        self.lora_cfg = Some(cfg.clone());
        Ok(())
    }

    /// Every adaptable module with its HF path (`model.layers.0.self_attn.q_proj`,
    /// `model.embed_tokens`), in model order.
    pub(crate) fn adapter_slots(&mut self) -> Vec<(String, AdapterSlot<'_>)> {
        let mut slots = vec![(
            "model.embed_tokens".to_string(),
            AdapterSlot::Embedding(&mut self.embed_tokens),
        )];
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let attn = format!("model.layers.{i}.self_attn");
            let mlp = format!("model.layers.{i}.mlp");
            slots.push((format!("{attn}.q_proj"), AdapterSlot::Linear(&mut a.q_proj)));
            slots.push((format!("{attn}.k_proj"), AdapterSlot::Linear(&mut a.k_proj)));
            slots.push((format!("{attn}.v_proj"), AdapterSlot::Linear(&mut a.v_proj)));
            slots.push((format!("{attn}.o_proj"), AdapterSlot::Linear(&mut a.o_proj)));
            slots.push((
                format!("{mlp}.gate_proj"),
                AdapterSlot::Linear(&mut m.gate_proj),
            ));
            slots.push((
                format!("{mlp}.up_proj"),
                AdapterSlot::Linear(&mut m.up_proj),
            ));
            slots.push((
                format!("{mlp}.down_proj"),
                AdapterSlot::Linear(&mut m.down_proj),
            ));
        }
        slots
    }

    /// Drops the adapters (after [`crate::peft::merge_lora`] folded them in).
    pub(crate) fn detach_lora(&mut self) {
        self.clear_adapters();
        self.lora_vs = None;
        self.lora_cfg = None;
    }

    /// Gives `lm_head` its own copy of the embedding, registered as `lm_head.weight` in the
    /// base store, so that changing the embedding no longer changes the head. No-op when
    /// already untied.
    pub(crate) fn untie_lm_head(&mut self) -> Result<()> {
        if !self.cfg.tie_word_embeddings {
            return Ok(());
        }
        let copy = tch::no_grad(|| self.embed_tokens.weight.f_detach_copy())?;
        self.lm_head = self.base.root().sub("lm_head").add("weight", copy, false);
        self.cfg.tie_word_embeddings = false;
        Ok(())
    }

    /// Removes the adapter of every module (the stores stay as they are).
    fn clear_adapters(&mut self) {
        for (_, slot) in self.adapter_slots() {
            match slot {
                AdapterSlot::Linear(l) => l.lora = None,
                AdapterSlot::Embedding(e) => e.lora = None,
            }
        }
    }

    /// The trainable LoRA parameters (f32, PEFT names without the `base_model.model.`
    /// prefix), or `None` without adapters. Hand `trainable_variables()` to the optimizer.
    pub fn lora_var_store(&self) -> Option<&nn::VarStore> {
        self.lora_vs.as_ref()
    }

    /// The LoRA parameters sorted by name (PEFT names without the `base_model.model.` prefix;
    /// f32; `lora_A` `[r, in]`, `lora_B` `[out, r]`, `lora_embedding_A` `[r, vocab]`,
    /// `lora_embedding_B` `[hidden, r]`), empty without adapters. The store itself is a hash
    /// map that iterates in a different order in every process; anything that must agree
    /// across processes or runs (collectives, seeded initialisation, checkpoints) walks this.
    pub fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .lora_vs
            .as_ref()
            .map(|vs| vs.variables().into_iter().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The adapter configuration, or `None` without adapters.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora_cfg.as_ref()
    }
}

/// PEFT's list matching (`check_target_module_exists`): the module's full name equals the
/// target or ends with `.target`.
pub(crate) fn module_matches(module: &str, target: &str) -> bool {
    module == target
        || module
            .strip_suffix(target)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_matching_is_by_suffix() {
        assert!(module_matches("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(module_matches("model.embed_tokens", "embed_tokens"));
        assert!(!module_matches(
            "model.layers.0.self_attn.xq_proj",
            "q_proj"
        ));
    }
}
