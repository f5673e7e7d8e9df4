//! The building blocks of the Llama decoder (HF `modeling_llama.py`): frozen linear and
//! embedding layers with optional LoRA adapters, RMSNorm, rotary embeddings over arbitrary
//! position ids, attention (SDPA, optionally over a shared prompt's keys and values), the MLP
//! and the decoder layer. [`super::Llama`] wires them together.

use tch::{nn, Device, Kind, Tensor};

use crate::error::Result;
use crate::lora::{LoraEmbedding, LoraLinear};

use logo_formats::hf_config::{AttentionBias, LlamaConfig, RopeScaling};

/// Registers a frozen (non-trainable) zero tensor of the store's kind under `p.name`.
pub(super) fn frozen(p: &nn::Path, name: &str, dims: &[i64]) -> Result<Tensor> {
    let t = Tensor::f_zeros(dims, (p.kind(), p.device()))?;
    Ok(p.add(name, t, false))
}

/// `torch.nn.Linear` with frozen weight `[out,in]` (and bias `[out]`) plus an optional LoRA
/// adapter (PEFT `lora.Linear`): `y = x Wᵀ + b + (dropout(x) Aᵀ Bᵀ)·scaling`.
#[derive(Debug)]
pub(crate) struct Linear {
    /// `[out,in]`, model dtype, frozen.
    pub(crate) weight: Tensor,
    /// `[out]`, model dtype, frozen.
    pub(crate) bias: Option<Tensor>,
    /// The adapter, if this module is a LoRA target.
    pub(crate) lora: Option<LoraLinear>,
}

impl Linear {
    pub(super) fn new(
        p: nn::Path,
        in_features: i64,
        out_features: i64,
        bias: bool,
    ) -> Result<Self> {
        let weight = frozen(&p, "weight", &[out_features, in_features])?;
        let bias = if bias {
            Some(frozen(&p, "bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
        })
    }

    /// `x` `[..,in]` model dtype → `[..,out]` model dtype.
    pub(super) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.f_linear(&self.weight, self.bias.as_ref())?;
        match &self.lora {
            None => Ok(y),
            Some(lora) => Ok(y.f_add(&lora.delta(x, train)?)?),
        }
    }
}

/// `torch.nn.Embedding` with frozen weight `[V,H]` plus an optional LoRA adapter (PEFT
/// `lora.Embedding`, no dropout).
#[derive(Debug)]
pub(crate) struct Embedding {
    /// `[V,H]`, model dtype, frozen.
    pub(crate) weight: Tensor,
    /// The adapter, if `embed_tokens` is a LoRA target.
    pub(crate) lora: Option<LoraEmbedding>,
}

impl Embedding {
    /// `ids` `[B,T]` i64 → `[B,T,H]` model dtype.
    pub(super) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let y = Tensor::f_embedding(&self.weight, ids, -1, false, false)?;
        match &self.lora {
            None => Ok(y),
            Some(lora) => Ok(y.f_add(&lora.delta(ids, self.weight.kind())?)?),
        }
    }
}

/// HF `LlamaRMSNorm`: `w · (x_f32 · rsqrt(mean(x_f32²) + eps)).to(dtype)`.
#[derive(Debug)]
pub(super) struct RmsNorm {
    /// `[H]`, model dtype.
    pub(super) weight: Tensor,
    pub(super) eps: f64,
}

impl RmsNorm {
    pub(super) fn new(p: nn::Path, size: i64, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: frozen(&p, "weight", &[size])?,
            eps,
        })
    }

    /// `[..,H]` → `[..,H]`, same dtype.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf.f_square()?.f_mean_dim(-1, true, None::<Kind>)?;
        let normed = xf.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(self.weight.f_mul(&normed.f_to_kind(kind)?)?)
    }
}

/// HF `LlamaRotaryEmbedding`: inverse frequencies `[hd/2]` f32, cos/sin from explicit
/// positions.
#[derive(Debug)]
pub(super) struct Rotary {
    /// `[hd/2]` f32.
    pub(super) inv_freq: Tensor,
}

impl Rotary {
    /// Inverse frequencies as HF computes them, op for op, in f32 on the CPU:
    /// `1 / θ^(arange(0, hd, 2) / hd)`, then the scaling. `freq_factors` `[hd/2]` (GGUF
    /// `rope_freqs.weight`, llama.cpp's form of Llama 3 scaling) divide them when given.
    pub(super) fn new(
        cfg: &LlamaConfig,
        freq_factors: Option<&Tensor>,
        device: Device,
    ) -> Result<Self> {
        let dim = cfg.head_dim as i64;
        let exponent = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(dim as f64)?;
        // Python `1.0 / t` is `t.reciprocal() * 1.0`.
        let mut inv_freq = Tensor::f_pow_scalar(cfg.rope_theta, &exponent)?.f_reciprocal()?;
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq = inv_freq.f_div_scalar(*factor)?,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                let wavelen = inv_freq
                    .f_reciprocal()?
                    .f_mul_scalar(2.0 * std::f64::consts::PI)?;
                let is_low = wavelen.f_gt(low_freq_wavelen)?;
                let inv_freq_llama = inv_freq
                    .f_div_scalar(*factor)?
                    .f_where_self(&is_low, &inv_freq)?;
                let smooth = wavelen
                    .f_reciprocal()?
                    .f_mul_scalar(old)?
                    .f_sub_scalar(*low_freq_factor)?
                    .f_div_scalar(high_freq_factor - low_freq_factor)?;
                let smoothed = smooth
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_mul(&inv_freq_llama)?
                    .f_div_scalar(*factor)?
                    .f_add(&smooth.f_mul(&inv_freq_llama)?)?;
                let is_medium = wavelen
                    .f_lt(high_freq_wavelen)?
                    .f_logical_not()?
                    .f_logical_and(&is_low.f_logical_not()?)?;
                inv_freq = smoothed.f_where_self(&is_medium, &inv_freq_llama)?;
            }
        }
        if let Some(f) = freq_factors {
            let f = f.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
            inv_freq = inv_freq.f_div(&f)?;
        }
        Ok(Rotary {
            inv_freq: inv_freq.f_to_device(device)?,
        })
    }

    /// `position_ids` `[B,T]` i64 → (cos, sin), each `[B,1,T,hd]` of `kind`: the angles
    /// `pos · inv_freq` in f32, duplicated over both halves, like HF's forward.
    pub(super) fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let freqs = position_ids
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?; // (B, T, hd/2)
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?; // (B, T, hd)
        let cos = emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        Ok((cos, sin))
    }
}

/// HF `apply_rotary_pos_emb` on one of q/k: `x·cos + rotate_half(x)·sin`, with
/// `rotate_half(x) = cat(-x₂, x₁)`. `x` `[B,n,T,hd]`, cos/sin `[B,1,T,hd]`.
pub(super) fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

/// HF `LlamaAttention` (SDPA interface): grouped-query, causal over the sequence order.
#[derive(Debug)]
pub(super) struct Attention {
    pub(super) q_proj: Linear,
    pub(super) k_proj: Linear,
    pub(super) v_proj: Linear,
    pub(super) o_proj: Linear,
    pub(super) num_heads: i64,
    pub(super) num_kv_heads: i64,
    pub(super) head_dim: i64,
}

impl Attention {
    pub(super) fn new(p: nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size as i64;
        let nh = cfg.num_attention_heads as i64;
        let nkv = cfg.num_key_value_heads as i64;
        let hd = cfg.head_dim as i64;
        let qkv_bias = cfg.attention_bias != AttentionBias::None;
        let o_bias = cfg.attention_bias == AttentionBias::QkvO;
        Ok(Attention {
            q_proj: Linear::new(p.sub("q_proj"), h, nh * hd, qkv_bias)?,
            k_proj: Linear::new(p.sub("k_proj"), h, nkv * hd, qkv_bias)?,
            v_proj: Linear::new(p.sub("v_proj"), h, nkv * hd, qkv_bias)?,
            o_proj: Linear::new(p.sub("o_proj"), nh * hd, h, o_bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// `x` `[B,T,H]`, cos/sin `[B,1,T,hd]` → (`[B,T,H]`, rotated keys `[B,nkv,T,hd]`, values
    /// `[B,nkv,T,hd]`). Without `prefix`, attention is causal over the T tokens. With `prefix`
    /// (keys and values `[B,nkv,P,hd]` of tokens that come before, and a boolean mask `[T,P+T]`,
    /// true = attend), the T queries attend to the prefix's and their own keys as the mask says.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        train: bool,
        prefix: Option<Prefix>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.size3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x, train)?
            .f_view([b, t, nh, hd])?
            .f_transpose(1, 2)?; // (B, nh, T, hd)
        let k = self
            .k_proj
            .forward(x, train)?
            .f_view([b, t, nkv, hd])?
            .f_transpose(1, 2)?; // (B, nkv, T, hd)
        let v = self
            .v_proj
            .forward(x, train)?
            .f_view([b, t, nkv, hd])?
            .f_transpose(1, 2)?; // (B, nkv, T, hd)
        let q = apply_rotary(&q, cos, sin)?;
        let k = apply_rotary(&k, cos, sin)?;
        let (k_all, v_all, mask) = match prefix {
            None => (k.shallow_clone(), v.shallow_clone(), None),
            Some(p) => (
                Tensor::f_cat(&[p.k, &k], 2)?, // (B, nkv, P + T, hd)
                Tensor::f_cat(&[p.v, &v], 2)?,
                Some(p.mask),
            ),
        };
        // Like HF `use_gqa_in_sdpa`: let SDPA broadcast the kv heads (no mask, hd ≤ 256
        // keeps the flash kernel); otherwise repeat them (HF `repeat_kv`), which also keeps
        // CUDA's memory-efficient kernel usable with a mask.
        let gqa = nh != nkv;
        let (k_all, v_all, enable_gqa) = if gqa && (hd > 256 || mask.is_some()) {
            let rep = nh / nkv;
            let repeat = |t: &Tensor| -> Result<Tensor> {
                Ok(t.f_unsqueeze(2)?
                    .f_expand([b, nkv, rep, t.size()[2], hd], false)?
                    .f_reshape([b, nh, -1, hd])?)
            };
            (repeat(&k_all)?, repeat(&v_all)?, false)
        } else {
            (k_all, v_all, gqa)
        };
        let y = Tensor::f_scaled_dot_product_attention(
            &q,
            &k_all,
            &v_all,
            mask,
            0.0,
            mask.is_none(),
            None,
            enable_gqa,
        )?; // (B, nh, T, hd)
        let y = y.f_transpose(1, 2)?.f_reshape([b, t, nh * hd])?;
        Ok((self.o_proj.forward(&y, train)?, k, v))
    }
}

/// Keys and values of earlier tokens (a shared prompt) for [`Attention::forward`].
#[derive(Clone, Copy)]
pub(super) struct Prefix<'a> {
    /// `[B,nkv,P,hd]`, rotated.
    pub(super) k: &'a Tensor,
    /// `[B,nkv,P,hd]`.
    pub(super) v: &'a Tensor,
    /// `[T,P+T]` bool, true = attend.
    pub(super) mask: &'a Tensor,
}

/// HF `LlamaMLP`: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
pub(super) struct Mlp {
    pub(super) gate_proj: Linear,
    pub(super) up_proj: Linear,
    pub(super) down_proj: Linear,
}

impl Mlp {
    pub(super) fn new(p: nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size as i64;
        let i = cfg.intermediate_size as i64;
        Ok(Mlp {
            gate_proj: Linear::new(p.sub("gate_proj"), h, i, cfg.mlp_bias)?,
            up_proj: Linear::new(p.sub("up_proj"), h, i, cfg.mlp_bias)?,
            down_proj: Linear::new(p.sub("down_proj"), i, h, cfg.mlp_bias)?,
        })
    }

    /// `[B,T,H]` → `[B,T,H]`.
    pub(super) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x, train)?.f_silu()?;
        let up = self.up_proj.forward(x, train)?;
        self.down_proj.forward(&gate.f_mul(&up)?, train)
    }
}

/// HF `LlamaDecoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Debug)]
pub(super) struct DecoderLayer {
    pub(super) self_attn: Attention,
    pub(super) mlp: Mlp,
    pub(super) input_layernorm: RmsNorm,
    pub(super) post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    pub(super) fn new(p: nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size as i64;
        Ok(DecoderLayer {
            self_attn: Attention::new(p.sub("self_attn"), cfg)?,
            mlp: Mlp::new(p.sub("mlp"), cfg)?,
            input_layernorm: RmsNorm::new(p.sub("input_layernorm"), h, cfg.rms_norm_eps)?,
            post_attention_layernorm: RmsNorm::new(
                p.sub("post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            )?,
        })
    }

    /// `[B,T,H]` → (`[B,T,H]`, this layer's keys and values `[B,nkv,T,hd]`); `prefix` as in
    /// [`Attention::forward`].
    pub(super) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        train: bool,
        prefix: Option<Prefix>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h = self.input_layernorm.forward(x)?;
        let (a, k, v) = self.self_attn.forward(&h, cos, sin, train, prefix)?;
        let x = x.f_add(&a)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        Ok((x.f_add(&self.mlp.forward(&h, train)?)?, k, v))
    }
}
