//! Per-layer activation checkpointing of [`Llama`] (Chen et al. 2016, "Training Deep Nets with
//! Sublinear Memory Cost"): the forward keeps only each decoder layer's input, and the backward
//! recomputes one layer at a time, for a plain batch or for a prompt and the continuations that
//! share it ([`PrefixInput`]).

use tch::{Kind, Tensor};

use super::{Llama, PrefixInput, Streams};
use crate::error::Result;

/// The dropout seed of layer `i` under a checkpointed pass seeded with `seed`.
pub(super) fn layer_seed(seed: i64, i: usize) -> i64 {
    seed.wrapping_mul(1_000_003).wrapping_add(i as i64) & i64::MAX
}

impl Llama {
    /// Forward and backward with per-layer activation checkpointing: the forward runs without
    /// autograd and keeps only each decoder layer's input `[B,T,H]`; then `head` maps the final
    /// (normed) hidden states `[B,T,H]` to a scalar loss, which is back-propagated through the
    /// layers one at a time in reverse, each recomputed from its stored input (Chen et al.
    /// 2016, "Training Deep Nets with Sublinear Memory Cost"). Gradients accumulate into the
    /// LoRA parameters exactly as a plain `head(hidden_states(..)).backward()` would, while only
    /// one layer's graph (its attention probabilities included) is alive at a time.
    ///
    /// Dropout masks are reproduced by re-seeding libtorch's generator from `seed` before each
    /// layer in both passes. Returns the loss value. Errors: as [`Llama::hidden_states`], and
    /// whatever `head` returns.
    pub fn backward_checkpointed(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        train: bool,
        seed: i64,
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<f64> {
        let s = self.streams(&[(input_ids, position_ids)], None)?;
        self.backward_streams(&s, train, seed, &mut |h| head(&h[0]))
    }

    /// [`Llama::backward_checkpointed`] for a prompt and the continuations that share it
    /// ([`PrefixInput`]): `head` maps the final hidden states (`[1,P,H]`, `[1,N,H]`) to a scalar
    /// loss. Each layer is recomputed once for the prompt and once for the continuations, and
    /// the continuations' gradient reaches the prompt through its keys and values. Returns the
    /// loss value. Errors: as [`Llama::prefix_hidden_states`], and whatever `head` returns.
    pub fn backward_checkpointed_prefix(
        &self,
        input: &PrefixInput,
        train: bool,
        seed: i64,
        head: &mut dyn FnMut(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<f64> {
        let s = self.prefix_streams(input)?;
        self.backward_streams(&s, train, seed, &mut |h| head(&h[0], &h[1]))
    }

    /// The checkpointed forward and backward of [`Llama::backward_checkpointed`] over streams.
    fn backward_streams(
        &self,
        s: &Streams,
        train: bool,
        seed: i64,
        head: &mut dyn FnMut(&[Tensor]) -> Result<Tensor>,
    ) -> Result<f64> {
        let leaves = |xs: &[Tensor]| -> Vec<Tensor> {
            xs.iter()
                .map(|x| x.detach().set_requires_grad(true))
                .collect()
        };
        let grads = |xs: &[Tensor]| -> Result<Vec<Tensor>> {
            xs.iter()
                .map(|x| {
                    let g = x.grad();
                    Ok(if g.defined() { g } else { x.f_zeros_like()? })
                })
                .collect()
        };
        let backward_dot = |ys: &[Tensor], gs: &[Tensor]| -> Result<()> {
            let mut total = ys[0].f_mul(&gs[0])?.f_sum(Kind::Float)?;
            for (y, g) in ys.iter().zip(gs).skip(1) {
                total = total.f_add(&y.f_mul(g)?.f_sum(Kind::Float)?)?;
            }
            Ok(total.f_backward()?)
        };
        // Pass 1: keep the input of every layer, no graph.
        let (inputs, last) = {
            let _guard = tch::no_grad_guard();
            let mut h = self.embed(s)?;
            let mut inputs = Vec::with_capacity(self.layers.len());
            for (i, layer) in self.layers.iter().enumerate() {
                tch::manual_seed(layer_seed(seed, i));
                let next = self.layer_step(layer, s, &h, train)?;
                inputs.push(h);
                h = next;
            }
            (inputs, h)
        };
        // The head on the last layer's output.
        let xs = leaves(&last);
        let normed = xs
            .iter()
            .map(|x| self.norm.forward(x))
            .collect::<Result<Vec<_>>>()?;
        let loss = head(&normed)?;
        let value = loss.f_double_value(&[])?;
        loss.f_backward()?;
        let mut grad = grads(&xs)?;
        // Pass 2: layers in reverse, each recomputed with a graph and fed its output gradient.
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let xs = leaves(&inputs[i]);
            tch::manual_seed(layer_seed(seed, i));
            let ys = self.layer_step(layer, s, &xs, train)?;
            backward_dot(&ys, &grad)?;
            grad = grads(&xs)?;
        }
        // The embedding (its LoRA, when targeted).
        let es = self.embed(s)?;
        if es[0].requires_grad() {
            backward_dot(&es, &grad)?;
        }
        Ok(value)
    }
}
