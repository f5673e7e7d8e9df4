//! LoRA adapters (Hu et al. 2021) in PEFT's layout: the configuration and the adapted layers.
//! Their files (`adapter_config.json`, `adapter_model.safetensors`) are [`crate::peft`]'s. A
//! leaf module: the model's layers hold these, and nothing here knows the model.
//!
//! LOGO (Tang et al., section 4.1) freezes the backbone and trains LoRA on the attention and
//! token-embedding modules, hence the default targets `q_proj k_proj v_proj o_proj
//! embed_tokens`.
//!
//! Source: PEFT `tuners/lora/config.py` (`LoraConfig`: `r`, `lora_alpha`, `lora_dropout`,
//! `target_modules`) and `tuners/lora/layer.py` (`Linear`: `lora_A` `[r,in]` kaiming-uniform
//! a=√5, `lora_B` `[out,r]` zero, `y += lora_B(lora_A(dropout(x)))·scaling`; `Embedding`:
//! `lora_embedding_A` `[r,V]` zero, `lora_embedding_B` `[H,r]` normal, `y += (A^T[ids] Bᵀ)·scaling`,
//! no dropout; `get_delta_weight`), `scaling = lora_alpha / r`. Files: `adapter_config.json`
//! and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` and
//! `base_model.model.model.embed_tokens.lora_embedding_A`, loadable by
//! `PeftModel.from_pretrained(base, dir)`.
//!
//! Adapter parameters are f32. In the forward pass they are cast to the dtype of the
//! activations (bf16 when the base is bf16), as under HF/PEFT autocast mixed precision; the
//! gradient reaches the f32 parameters through the cast.

use logo_formats::peft::{LORA_A, LORA_B, LORA_EMBEDDING_A, LORA_EMBEDDING_B};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::{Result, TrainerError};

/// LoRA hyper-parameters with PEFT's names (PEFT `LoraConfig`): the `lora` section of
/// `train.yaml` (every key optional, defaults below; unknown keys refused). A PEFT
/// `adapter_config.json` is read by [`crate::peft::read_adapter_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update `B·A`, default 8.
    pub r: i64,
    /// α; the update is scaled by `lora_alpha / r`. Default 16.
    pub lora_alpha: f64,
    /// Dropout probability on the input of `lora_A` while training (linear targets only, as
    /// in PEFT). Default 0.05.
    pub lora_dropout: f64,
    /// Module names to adapt, matched like PEFT (full name equal or ending in `.name`).
    /// Default `["q_proj", "k_proj", "v_proj", "o_proj", "embed_tokens"]`: attention and token
    /// embedding (LOGO section 4.1).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "embed_tokens"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl LoraConfig {
    /// `lora_alpha / r` (PEFT `scaling`, without rsLoRA).
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Sets `r` (default 8).
    pub fn with_r(mut self, r: i64) -> Self {
        self.r = r;
        self
    }

    /// Sets `lora_alpha` (default 16).
    pub fn with_alpha(mut self, lora_alpha: f64) -> Self {
        self.lora_alpha = lora_alpha;
        self
    }

    /// Sets `lora_dropout` (default 0.05).
    pub fn with_dropout(mut self, lora_dropout: f64) -> Self {
        self.lora_dropout = lora_dropout;
        self
    }

    /// Sets `target_modules` (default attention + `embed_tokens`).
    pub fn with_target_modules<S: Into<String>>(
        mut self,
        targets: impl IntoIterator<Item = S>,
    ) -> Self {
        self.target_modules = targets.into_iter().map(Into::into).collect();
        self
    }

    /// Checks `r ≥ 1`, finite `lora_alpha > 0`, `0 ≤ lora_dropout < 1`, a non-empty target list.
    /// Errors: [`TrainerError::Config`] naming the key (`lora.r`, …).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(TrainerError::Config {
                key: format!("lora.{key}"),
                message,
            })
        };
        if self.r < 1 {
            return bad("r", format!("expected ≥ 1, got {}", self.r));
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return bad(
                "lora_alpha",
                format!("expected finite and > 0, got {}", self.lora_alpha),
            );
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(
                "lora_dropout",
                format!("expected in [0, 1), got {}", self.lora_dropout),
            );
        }
        if self.target_modules.is_empty() {
            return bad("target_modules", "expected at least one module".to_string());
        }
        Ok(())
    }
}

/// LoRA on a linear layer (PEFT `lora.Linear`).
#[derive(Debug)]
pub struct LoraLinear {
    /// `lora_A.weight` `[r,in]` f32, trainable; kaiming-uniform(a=√5) = U(±1/√in).
    pub a: Tensor,
    /// `lora_B.weight` `[out,r]` f32, trainable; zero.
    pub b: Tensor,
    scaling: f64,
    dropout: f64,
}

impl LoraLinear {
    /// Registers `lora_A.weight` and `lora_B.weight` under `p` (the module's path in the
    /// adapter store). Errors: [`TrainerError::Torch`].
    pub fn new(p: nn::Path, in_features: i64, out_features: i64, cfg: &LoraConfig) -> Result<Self> {
        // kaiming_uniform_(a=√5): gain = √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in.
        let bound = 1.0 / (in_features as f64).sqrt();
        let a = p.sub(LORA_A).f_var(
            "weight",
            &[cfg.r, in_features],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = p.sub(LORA_B).f_zeros("weight", &[out_features, cfg.r])?;
        Ok(LoraLinear {
            a,
            b,
            scaling: cfg.scaling(),
            dropout: cfg.lora_dropout,
        })
    }

    /// The update `(dropout(x) Aᵀ Bᵀ)·scaling`: `x` `[..,in]` → `[..,out]` in `x`'s dtype;
    /// dropout only when `train`.
    pub fn delta(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let kind = x.kind();
        let x = if train && self.dropout > 0.0 {
            x.f_dropout(self.dropout, true)?
        } else {
            x.shallow_clone()
        };
        let a = self.a.f_to_kind(kind)?;
        let b = self.b.f_to_kind(kind)?;
        Ok(x.f_linear(&a, None::<Tensor>)?
            .f_linear(&b, None::<Tensor>)?
            .f_mul_scalar(self.scaling)?)
    }

    /// `B·A·scaling` `[out,in]` f32 (PEFT `get_delta_weight`).
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok(self.b.f_matmul(&self.a)?.f_mul_scalar(self.scaling)?)
    }
}

/// LoRA on the token embedding (PEFT `lora.Embedding`).
#[derive(Debug)]
pub struct LoraEmbedding {
    /// `lora_embedding_A` `[r,V]` f32, trainable; zero.
    pub a: Tensor,
    /// `lora_embedding_B` `[H,r]` f32, trainable; standard normal.
    pub b: Tensor,
    scaling: f64,
    padding_idx: i64,
}

impl LoraEmbedding {
    /// Registers `lora_embedding_A` and `lora_embedding_B` under `p`. `padding_idx` (the
    /// base embedding's, HF `pad_token_id`) only masks that row's gradient, as in PEFT.
    /// Errors: [`TrainerError::Torch`].
    pub fn new(
        p: nn::Path,
        vocab: i64,
        hidden: i64,
        padding_idx: Option<i64>,
        cfg: &LoraConfig,
    ) -> Result<Self> {
        let a = p.f_zeros(LORA_EMBEDDING_A, &[cfg.r, vocab])?;
        let b = p.f_randn_standard(LORA_EMBEDDING_B, &[hidden, cfg.r])?;
        Ok(LoraEmbedding {
            a,
            b,
            scaling: cfg.scaling(),
            padding_idx: padding_idx.unwrap_or(-1),
        })
    }

    /// The update `(Aᵀ[ids] Bᵀ)·scaling`: `ids` `[B,T]` i64 → `[B,T,H]` computed in `kind` (the
    /// base embedding's dtype; A and B are cast).
    pub fn delta(&self, ids: &Tensor, kind: Kind) -> Result<Tensor> {
        let a_t = self.a.f_to_kind(kind)?.f_transpose(0, 1)?; // (V, r)
        let after_a = Tensor::f_embedding(&a_t, ids, self.padding_idx, false, false)?; // (B, T, r)
        Ok(after_a
            .f_linear(&self.b.f_to_kind(kind)?, None::<Tensor>)?
            .f_mul_scalar(self.scaling)?)
    }

    /// `(B·A)ᵀ·scaling` `[V,H]` f32 (PEFT `get_delta_weight` for embeddings).
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok(self
            .b
            .f_matmul(&self.a)?
            .f_transpose(0, 1)?
            .f_mul_scalar(self.scaling)?)
    }
}
