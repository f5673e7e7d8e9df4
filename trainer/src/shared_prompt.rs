//! The LOGO gradient with the prompt computed once per sample.
//!
//! The M + 1 sequences of a sample (Eq. 2) are `x ⧺ y_w` and `x ⧺ y_l^(j)`: they share the
//! prompt x, which is almost all of their tokens (thousands of prompt tokens, tens of response
//! tokens), and under causal attention the prompt's hidden states do not depend on the
//! response. So the prompt runs through the decoder once; the M + 1 responses are packed into
//! one continuation whose tokens attend, in every layer, to the prompt's keys and values and to
//! the earlier tokens of their own response ([`crate::data::collate_shared_prompt`],
//! [`Llama::prefix_hidden_states`]), like a prefix KV cache shared by several decodes (vLLM's
//! prefix caching; Hydragen, Juravsky et al. 2024), but kept in the autograd graph. One
//! backward then sends each response's gradient into the prompt's keys and values, where
//! autograd sums them, and through the prompt once.
//!
//! Cost per sample: one prompt forward and backward instead of M + 1 (joint) or 2(M + 1)
//! forwards and M + 1 backwards (decoupled, [`crate::decoupled`]), so the step costs about as
//! much at M = 8 as at M = 1. Activation memory: one prompt plus the responses, also almost
//! flat in M; with `checkpointing`, per-layer checkpointing of both
//! ([`Llama::backward_checkpointed_prefix`]). The gradient equals the joint backward (tested
//! to 1e-5). Samples of a micro-batch run one after the other (the prompt lengths differ).
//! With LoRA dropout, the prompt's tokens draw one dropout mask for all M + 1 responses (they
//! are computed once), where separate sequences would draw M + 1 masks; without dropout the
//! two are the same computation.

use tch::{Device, Kind, Tensor};

use crate::data::{collate_shared_prompt, Example, SharedPromptBatch};
use crate::error::{Result, TrainerError};
use crate::loss::{logo_loss, sequence_logps, LossConfig, LossOutput};
use crate::model::{Llama, PrefixInput};

fn prefix_input(b: &SharedPromptBatch) -> PrefixInput<'_> {
    PrefixInput {
        prefix_ids: &b.prompt_ids,
        prefix_position_ids: &b.prompt_position_ids,
        input_ids: &b.input_ids,
        position_ids: &b.position_ids,
        attention_mask: &b.attention_mask,
    }
}

/// ℓ of the M + 1 responses `[M+1]` f32 from the final hidden states of the prompt `[1,P,H]`
/// and of the packed responses `[1,N,H]`: logits only at the N rows that predict a response
/// token.
fn ells(
    model: &Llama,
    batch: &SharedPromptBatch,
    prompt: &Tensor,
    responses: &Tensor,
) -> Result<Tensor> {
    let p = prompt.size()[1];
    let last = prompt.f_select(0, 0)?.f_narrow(0, p - 1, 1)?; // [1, H]
    let rows = Tensor::f_cat(&[&last, &responses.f_select(0, 0)?], 0)?; // [1 + N, H]
    let rows = rows.f_index_select(0, &batch.gather_index)?; // [N, H]
    let logits = model.lm_logits(&rows)?; // [N, V] f32
    sequence_logps(
        &logits,
        &batch.labels,
        &batch.sequence,
        batch.num_negatives as i64 + 1,
    )
}

/// Accumulates into the LoRA gradients ∂(scale · L)/∂θ for the batch `examples` (L: the mean
/// over the batch of Eq. 3), one sample at a time with its prompt computed once, and returns
/// the (detached) loss outputs. `seed`: dropout seed of this micro-batch (per sample and layer
/// with `checkpointing`). Errors: [`TrainerError::Internal`] for an empty batch or mixed M;
/// torch.
pub fn backward_shared_prompt(
    model: &Llama,
    examples: &[Example],
    cfg: &LossConfig,
    device: Device,
    checkpointing: bool,
    seed: i64,
    scale: f64,
) -> Result<LossOutput> {
    let m = examples
        .first()
        .map(|e| e.rejected_ids.len())
        .ok_or_else(|| TrainerError::Internal("shared prompt: empty batch".into()))?;
    if examples.iter().any(|e| e.rejected_ids.len() != m) {
        return Err(TrainerError::Internal(
            "shared prompt: samples with different M".into(),
        ));
    }
    let weight = scale / examples.len() as f64;
    let mut all = Vec::with_capacity(examples.len());
    for (b, e) in examples.iter().enumerate() {
        let batch = collate_shared_prompt(e, device)?;
        let input = prefix_input(&batch);
        // L_b of this sample alone; the batch loss is their mean.
        let sample_loss = |ell: &Tensor| -> Result<Tensor> {
            let chosen = ell.f_narrow(0, 0, 1)?;
            let rejected = ell.f_narrow(0, 1, m as i64)?.f_unsqueeze(0)?;
            Ok(logo_loss(&chosen, &rejected, cfg)?
                .loss
                .f_mul_scalar(weight)?)
        };
        let sample_seed = seed.wrapping_add(b as i64) & i64::MAX;
        let ell = if checkpointing {
            let mut stash = None;
            model.backward_checkpointed_prefix(&input, true, sample_seed, &mut |p, r| {
                let ell = ells(model, &batch, p, r)?;
                let loss = sample_loss(&ell)?;
                stash = Some(ell.f_detach()?);
                Ok(loss)
            })?;
            stash.ok_or_else(|| TrainerError::Internal("checkpointed head did not run".into()))?
        } else {
            let (p, r) = model.prefix_hidden_states(&input, true, None)?;
            let ell = ells(model, &batch, &p, &r)?;
            sample_loss(&ell)?.f_backward()?;
            ell.f_detach()?
        };
        all.push(ell.f_to_kind(Kind::Float)?);
    }
    let grid = Tensor::f_stack(&all, 0)?; // [B, M+1]
    let chosen = grid.f_select(1, 0)?;
    let rejected = grid.f_narrow(1, 1, m as i64)?;
    logo_loss(&chosen, &rejected, cfg)
}
