//! Incremental decoding with a key/value cache, for evaluation (greedy generation past the
//! model's trained length, prompts that share a prefix, attention read-out for the retrieval
//! score of LOGO Appendix B).
//!
//! [`Llama::extend`] reads new tokens after the cached ones: each new token attends to every
//! cached token and causally to the new ones (HF `LlamaForCausalLM` with `past_key_values`),
//! and its rotated keys and values are appended to the cache. Positions are explicit, like
//! everywhere in this model, so the rotary embedding has no table to outgrow: a 16K prompt on
//! an 8K model is computed exactly as HF computes it (what happens to quality past the
//! trained length is what NIAH and perplexity measure). The cache is a growing buffer per
//! layer (`[1, nkv, capacity, hd]`), written in place; [`KvCache::fork`] copies the first
//! tokens into a new cache so several continuations can reuse one prefill.
//!
//! With `argmax`, `extend` also returns, for the last new token's query, the key index each
//! head attends to most (`argmax_j softmax(q·k_j/√d)`: the softmax and scale do not change the
//! argmax), per layer and query head: the read-out Wu et al. (2024) and LOGO Eq. 5 score.

use tch::{Kind, Tensor};

use super::layers::apply_rotary;
use super::Llama;
use crate::error::{Result, TrainerError};

/// Keys and values of the tokens read so far (batch 1), per layer.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: rotated keys and values, `[1, nkv, capacity, hd]` of the model's kind; the
    /// first `len` slots are filled.
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl KvCache {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when no token was read.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A new cache holding copies of the first `len` tokens' keys and values, with room for
    /// `extra` more before it grows. Errors: [`TrainerError::Config`] when `len` exceeds
    /// [`KvCache::len`]; [`TrainerError::Torch`].
    pub fn fork(&self, len: usize, extra: usize) -> Result<KvCache> {
        if len as i64 > self.len {
            return Err(TrainerError::Config {
                key: "len".into(),
                message: format!("fork of {len} tokens from a cache of {}", self.len),
            });
        }
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| -> Result<(Tensor, Tensor)> {
                let copy = |t: &Tensor| -> Result<Tensor> {
                    let mut size = t.size();
                    size[2] = (len + extra).max(1) as i64;
                    let out = Tensor::f_zeros(size.as_slice(), (t.kind(), t.device()))?;
                    out.f_narrow(2, 0, len as i64)?
                        .f_copy_(&t.f_narrow(2, 0, len as i64)?)?;
                    Ok(out)
                };
                Ok((copy(k)?, copy(v)?))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            len: len as i64,
        })
    }

    /// Writes `k`, `v` `[1, nkv, T, hd]` of layer `l` at slots `len..len + T`, growing the
    /// buffer (doubling) when full; returns views of the filled `[1, nkv, len + T, hd]`.
    fn append(&mut self, l: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        let len = self.len;
        let need = len + t;
        let (kb, vb) = &mut self.layers[l];
        let cap = kb.size()[2];
        if need > cap {
            let grow = |b: &Tensor| -> Result<Tensor> {
                let mut size = b.size();
                size[2] = need.max(2 * cap);
                let out = Tensor::f_zeros(size.as_slice(), (b.kind(), b.device()))?;
                out.f_narrow(2, 0, len)?.f_copy_(&b.f_narrow(2, 0, len)?)?;
                Ok(out)
            };
            *kb = grow(kb)?;
            *vb = grow(vb)?;
        }
        kb.f_narrow(2, len, t)?.f_copy_(k)?;
        vb.f_narrow(2, len, t)?.f_copy_(v)?;
        Ok((kb.f_narrow(2, 0, need)?, vb.f_narrow(2, 0, need)?))
    }
}

impl Llama {
    /// An empty cache with room for `capacity` tokens (it grows beyond).
    ///
    /// Errors: [`TrainerError::Torch`] (allocation).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let (nkv, hd) = (
            self.cfg.num_key_value_heads as i64,
            self.cfg.head_dim as i64,
        );
        let layers = (0..self.layers.len())
            .map(|_| -> Result<(Tensor, Tensor)> {
                let z = || {
                    Tensor::f_zeros(
                        [1, nkv, capacity.max(1) as i64, hd],
                        (self.kind, self.device),
                    )
                };
                Ok((z()?, z()?))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, len: 0 })
    }

    /// Reads `ids` (`[T]`, T ≥ 1) at position ids `positions` (`[T]`, any values ≥ 0) after
    /// the cached tokens, without gradients or dropout, and appends their keys and values to
    /// `cache`. Returns the final hidden state of the last new token `[1, H]` (after the final
    /// norm; [`Llama::lm_logits`] gives its logits) and, when `argmax` is true, `[layers,
    /// heads]` i64: for each layer and query head, the index (into the cache, `0..len + T`) of
    /// the key that the last new token attends to most.
    ///
    /// Errors: [`TrainerError::Config`] (key `input_ids`) for empty or mismatched inputs;
    /// [`TrainerError::Torch`] (an id ≥ V, out of memory).
    pub fn extend(
        &self,
        cache: &mut KvCache,
        ids: &[i64],
        positions: &[i64],
        argmax: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_extend(cache, ids, positions)?;
        let _guard = tch::no_grad_guard();
        let t = ids.len() as i64;
        let past = cache.len;
        let ids = Tensor::from_slice(ids)
            .f_to_device(self.device)?
            .unsqueeze(0);
        let pos = Tensor::from_slice(positions)
            .f_to_device(self.device)?
            .unsqueeze(0);
        let (cos, sin) = self.rotary.cos_sin(&pos, self.kind)?;
        // [T, past + T]: every cached key, then causal over the new tokens.
        let mask = (t > 1 && past > 0)
            .then(|| -> Result<Tensor> {
                let q = Tensor::f_arange(t, (Kind::Int64, self.device))?.f_unsqueeze(1)?;
                let k = Tensor::f_arange(past + t, (Kind::Int64, self.device))?.f_unsqueeze(0)?;
                Ok(k.f_le_tensor(&q.f_add_scalar(past)?)?)
            })
            .transpose()?;
        let mut x = self.embed_tokens.forward(&ids)?;
        let mut heads = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let a = &layer.self_attn;
            let (nh, nkv, hd) = (a.num_heads, a.num_kv_heads, a.head_dim);
            let h = layer.input_layernorm.forward(&x)?;
            let proj = |lin: &super::Linear, n: i64| -> Result<Tensor> {
                Ok(lin
                    .forward(&h, false)?
                    .f_view([1, t, n, hd])?
                    .f_transpose(1, 2)?)
            };
            let q = apply_rotary(&proj(&a.q_proj, nh)?, &cos, &sin)?;
            let k = apply_rotary(&proj(&a.k_proj, nkv)?, &cos, &sin)?;
            let v = proj(&a.v_proj, nkv)?;
            let (k_all, v_all) = cache.append(l, &k, &v)?;
            let y = cached_attention(&q, &k_all, &v_all, mask.as_ref(), past == 0 && t > 1)?;
            let rep = nh / nkv;
            if argmax {
                // Query head h reads kv head h / (nh / nkv): [1, nkv, rep, hd] · [1, nkv, hd, L].
                let q_last = q.f_narrow(2, t - 1, 1)?.f_reshape([1, nkv, rep, hd])?;
                let scores = q_last.f_matmul(&k_all.f_transpose(2, 3)?)?; // [1, nkv, rep, L]
                heads.push(scores.f_argmax(-1, false)?.f_reshape([nh])?);
            }
            let y = y.f_transpose(1, 2)?.f_reshape([1, t, nh * hd])?;
            let x1 = x.f_add(&a.o_proj.forward(&y, false)?)?;
            let h2 = layer.post_attention_layernorm.forward(&x1)?;
            x = x1.f_add(&layer.mlp.forward(&h2, false)?)?;
        }
        cache.len = past + t;
        let last = self
            .norm
            .forward(&x.f_narrow(1, t - 1, 1)?)?
            .f_squeeze_dim(1)?;
        let heads = argmax.then(|| Tensor::f_stack(&heads, 0)).transpose()?;
        Ok((last, heads))
    }

    /// The input checks of [`Llama::extend`]: as many ids as positions (≥ 1), and a cache of
    /// this model's layer count. Errors: [`TrainerError::Config`] (keys `input_ids`, `cache`).
    fn check_extend(&self, cache: &KvCache, ids: &[i64], positions: &[i64]) -> Result<()> {
        if ids.is_empty() || ids.len() != positions.len() {
            return Err(TrainerError::Config {
                key: "input_ids".into(),
                message: format!(
                    "extend: {} ids and {} positions (need the same number, ≥ 1)",
                    ids.len(),
                    positions.len()
                ),
            });
        }
        if cache.layers.len() != self.layers.len() {
            return Err(TrainerError::Config {
                key: "cache".into(),
                message: format!(
                    "a cache of {} layers for a model of {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            });
        }
        Ok(())
    }
}

/// Attention of new queries `q` (`[1, nh, T, hd]`) over all cached keys and values
/// (`[1, nkv, L, hd]`, the new tokens' last), `[1, nh, T, hd]`. `mask` (`[T, L]` bool, true =
/// attend) when new tokens follow cached ones; `causal` for a first pass without a cache.
/// Without a mask SDPA broadcasts the kv heads itself (no copy of the cache); with one the
/// kv heads are repeated (HF `repeat_kv`), as [`super::layers`] does.
///
/// Errors: [`TrainerError::Torch`].
fn cached_attention(
    q: &Tensor,
    k_all: &Tensor,
    v_all: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (q.size()[1], k_all.size()[1], q.size()[3]);
    Ok(match mask {
        None => Tensor::f_scaled_dot_product_attention(
            q,
            k_all,
            v_all,
            None::<Tensor>,
            0.0,
            causal,
            None,
            nh != nkv,
        )?,
        Some(m) => {
            let repeat = |x: &Tensor| -> Result<Tensor> {
                let n = x.size()[2];
                Ok(x.f_unsqueeze(2)?
                    .f_expand([1, nkv, nh / nkv, n, hd], false)?
                    .f_reshape([1, nh, n, hd])?)
            };
            Tensor::f_scaled_dot_product_attention(
                q,
                &repeat(k_all)?,
                &repeat(v_all)?,
                Some(m),
                0.0,
                false,
                None,
                false,
            )?
        }
    })
}
