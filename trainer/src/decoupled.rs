//! The LOGO gradient with memory independent of M.
//!
//! The loss of Eq. 2/3 depends on each response y only through its scalar ℓ(y), so by the chain
//! rule ∂L/∂θ = Σ_s (∂L/∂ℓ_s)·(∂ℓ_s/∂θ). We therefore
//! 1. run every sequence (prompt ⧺ response) forward without autograd and collect ℓ_s;
//! 2. form g_s = ∂L/∂ℓ_s from those scalars ([`crate::loss::loss_grad_wrt_logps`]);
//! 3. for each sequence in turn, run the forward again with autograd and back-propagate
//!    `g_s · ℓ_s`, accumulating the LoRA gradients.
//!
//! Only one sequence's graph is alive at any time, so activation memory is that of a single
//! prompt + response whatever M is, for ~1.5× the compute of the joint backward (one extra
//! forward per sequence). Dropout masks are made identical in both passes by re-seeding the
//! generator per sequence (per layer with checkpointing). The result equals the joint backward
//! (tested to 1e-5). With `checkpointing`, each sequence's backward is also checkpointed per
//! layer ([`Llama::backward_checkpointed`]).

use tch::{Device, Kind, Tensor};

use crate::data::{collate, Batch, Example};
use crate::error::Result;
use crate::loss::{logo_loss, loss_grad_wrt_logps, sequence_logps, LossConfig, LossOutput};
use crate::model::Llama;

/// The one-sequence batch `prompt ⧺ response` of `example` (response 0 = chosen, j + 1 =
/// rejected j).
fn single_batch(example: &Example, response: usize, device: Device) -> Result<Batch> {
    let resp = if response == 0 {
        example.chosen_ids.clone()
    } else {
        example.rejected_ids[response - 1].clone()
    };
    // A batch of one sample with only this response as its "chosen": collate lays it out.
    let single = Example {
        sample_id: example.sample_id.clone(),
        prompt_ids: example.prompt_ids.clone(),
        prompt_positions: example.prompt_positions.clone(),
        chosen_ids: resp,
        rejected_ids: vec![],
    };
    collate(std::slice::from_ref(&single), device)
}

/// ℓ of a one-sequence batch from its final hidden states `[1,T,H]`: a scalar f32 tensor.
fn ell_from_hidden(model: &Llama, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
    let rows = hidden
        .flatten(0, 1)
        .f_index_select(0, &batch.gather_index)?; // [R, H]
    let logits = model.lm_logits(&rows)?; // [R, V] f32
    let ell = sequence_logps(&logits, &batch.labels, &batch.sequence, 1)?; // [1]
    Ok(ell.squeeze())
}

/// Accumulates into the LoRA gradients ∂(scale · L)/∂θ for the batch `examples`, one sequence
/// graph at a time, and returns the (detached) loss outputs. `seed`: dropout seed of this
/// micro-batch. Errors: torch.
pub fn backward_decoupled(
    model: &Llama,
    examples: &[Example],
    cfg: &LossConfig,
    device: Device,
    checkpointing: bool,
    seed: i64,
    scale: f64,
) -> Result<LossOutput> {
    let train = true;
    let m = examples.first().map_or(0, |e| e.rejected_ids.len());
    let per_sample = m + 1;
    let seq_seed = |b: usize, r: usize| seed.wrapping_add((b * per_sample + r) as i64) & i64::MAX;
    // Pass 1: every ℓ without a graph.
    let mut ells = Vec::with_capacity(examples.len() * per_sample);
    {
        let _guard = tch::no_grad_guard();
        for (b, e) in examples.iter().enumerate() {
            for r in 0..per_sample {
                let batch = single_batch(e, r, device)?;
                let (ids, pos) = (&batch.input_ids, &batch.position_ids);
                let hidden = if checkpointing {
                    model.hidden_states_seeded(ids, pos, train, seq_seed(b, r))?
                } else {
                    tch::manual_seed(seq_seed(b, r));
                    model.hidden_states(ids, pos, train)?
                };
                ells.push(ell_from_hidden(model, &batch, &hidden)?.f_double_value(&[])?);
            }
        }
    }
    let grid = Tensor::from_slice(&ells.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .reshape([examples.len() as i64, per_sample as i64])
        .to_device(device);
    let chosen = grid.select(1, 0);
    let rejected = grid.narrow(1, 1, m as i64);
    let (g_chosen, g_rejected) = loss_grad_wrt_logps(&chosen, &rejected, cfg)?;
    // [B, M+1]
    let g = Tensor::cat(&[g_chosen.unsqueeze(1), g_rejected], 1).to_kind(Kind::Float);
    // Pass 2: one graph at a time, weighted by ∂L/∂ℓ.
    for (b, e) in examples.iter().enumerate() {
        for r in 0..per_sample {
            let weight = g.double_value(&[b as i64, r as i64]) * scale;
            if weight == 0.0 {
                // A response the objective ignores (sft: every rejected one; simpo: all but
                // the first): its backward would add zeros.
                continue;
            }
            let batch = single_batch(e, r, device)?;
            if checkpointing {
                let s = seq_seed(b, r);
                model.backward_checkpointed(
                    &batch.input_ids,
                    &batch.position_ids,
                    train,
                    s,
                    &mut |h| Ok(ell_from_hidden(model, &batch, h)? * weight),
                )?;
            } else {
                tch::manual_seed(seq_seed(b, r));
                let hidden = model.hidden_states(&batch.input_ids, &batch.position_ids, train)?;
                (ell_from_hidden(model, &batch, &hidden)? * weight).f_backward()?;
            }
        }
    }
    logo_loss(&chosen, &rejected, cfg)
}
