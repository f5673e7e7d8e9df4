//! The LOGO objective (Tang et al., section 3.2.1, Eq. 2 and 3).
//!
//! For a sample x with preferred response y_w and dis-preferred responses y_l^(1..M), with the
//! length-normalised log-likelihood ℓ(y) = (1/|y|) Σ_t log π_θ(y_t | x, y_<t) over the
//! response tokens only:
//!
//! ```text
//! L = −log σ(β·ℓ(y_w) − (β/M)·Σ_j ℓ(y_l^(j)) − γ)  +  λ·(−ℓ(y_w))
//!     └──────────────── Eq. 2 (preference) ───────┘    └─ SFT regulariser ─┘
//! ```
//!
//! Eq. 3 of the paper prints the regulariser as `+λ·log π_θ(y_w|x)`, which would *reward*
//! lowering the likelihood of the preferred answer; the text describes an SFT term that keeps
//! the policy close to its SFT behaviour, i.e. the negative log-likelihood. We implement the
//! NLL, length-normalised like the preference term. With M = 1 the preference term is exactly
//! SimPO (Meng et al., 2024, Eq. 6). Defaults (paper 4.1, Llama-3): β = 10, γ = 3, λ = 0.1.
//!
//! [`Objective`] picks what is optimised on the same data (key `loss.objective`, `--objective`):
//! `logo` (the above), `sft` (−ℓ(y_w) alone: the paper's instruction-tuning baseline, Table 1)
//! and `simpo` (the above with M = 1: only the first rejected response y_l^(1)).
//!
//! Everything here is f32; callers compute log-probabilities only at response positions.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Result, TrainerError};

/// What the trainer minimises; all three read the same samples (prompt, chosen, M rejected).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Eq. 2 over all M rejected responses + λ·(−ℓ(y_w)) (Eq. 3 with the NLL regulariser).
    #[default]
    Logo,
    /// −ℓ(y_w): the mean negative log-likelihood of the chosen response's tokens (nats per
    /// token, averaged over the batch); β, γ, λ and the rejected responses do not enter the
    /// loss (the preference terms are still computed, detached, for the logs).
    Sft,
    /// Eq. 2 with M = 1 (only y_l^(1), the first rejected response) + λ·(−ℓ(y_w)); with
    /// `sft_weight` 0 it is SimPO's loss (Meng et al., 2024, Eq. 6).
    Simpo,
}

impl Objective {
    /// The name used by `loss.objective` (`--objective`) and in `trainer_state.json` /
    /// `summary.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Logo => "logo",
            Objective::Sft => "sft",
            Objective::Simpo => "simpo",
        }
    }
}

/// Hyper-parameters of Eq. 2 and 3, and the objective: the `loss` section of `train.yaml`
/// (every key optional, defaults below; unknown keys refused).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// β: reward scale; default 10 (paper 4.1 for Llama-3-8B; 2.5 Mistral, 3 Llama-2).
    pub beta: f64,
    /// γ: target reward margin; default 3 (0.25 Mistral, 0.6 Llama-2).
    pub gamma: f64,
    /// λ (`sft_weight`): weight of the SFT regulariser; default 0.1.
    pub sft_weight: f64,
    /// What is minimised ([`Objective`]): `logo` (default; also when absent from checkpoints
    /// written before the key), `sft` or `simpo`.
    pub objective: Objective,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            beta: 10.0,
            gamma: 3.0,
            sft_weight: 0.1,
            objective: Objective::Logo,
        }
    }
}

/// The loss and what is logged per step.
#[derive(Debug)]
pub struct LossOutput {
    /// Scalar f32: mean over the batch of the total loss (Eq. 3 with the NLL regulariser).
    pub loss: Tensor,
    /// Scalar f32: mean preference loss (Eq. 2).
    pub preference_loss: Tensor,
    /// Scalar f32: mean SFT loss −ℓ(y_w) (nats per token).
    pub sft_loss: Tensor,
    /// [B] f32: β·ℓ(y_w).
    pub reward_chosen: Tensor,
    /// [B, M] f32: β·ℓ(y_l^(j)) (`simpo`: [B, 1], the first rejected response only).
    pub reward_rejected: Tensor,
}

/// Scalar summaries of a [`LossOutput`] for logging.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossMetrics {
    /// Total loss.
    pub loss: f64,
    /// Preference loss (Eq. 2).
    pub preference_loss: f64,
    /// SFT loss −ℓ(y_w).
    pub sft_loss: f64,
    /// Mean β·ℓ(y_w).
    pub reward_chosen: f64,
    /// Mean over samples and negatives of β·ℓ(y_l).
    pub reward_rejected: f64,
    /// Mean of β·ℓ(y_w) − mean_j β·ℓ(y_l^(j)).
    pub margin: f64,
    /// Fraction of samples whose chosen reward is above every rejected reward.
    pub accuracy: f64,
}

impl LossMetrics {
    /// Number of fields, the length of [`LossMetrics::to_vec`].
    pub const LEN: usize = 7;

    /// The fields in declaration order (`loss` … `accuracy`), for a cross-rank reduction.
    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.loss,
            self.preference_loss,
            self.sft_loss,
            self.reward_chosen,
            self.reward_rejected,
            self.margin,
            self.accuracy,
        ]
    }

    /// The inverse of [`LossMetrics::to_vec`]; `None` unless `v` has [`LossMetrics::LEN`]
    /// values.
    pub fn from_vec(v: &[f64]) -> Option<Self> {
        let &[loss, preference_loss, sft_loss, reward_chosen, reward_rejected, margin, accuracy] =
            v
        else {
            return None;
        };
        Some(LossMetrics {
            loss,
            preference_loss,
            sft_loss,
            reward_chosen,
            reward_rejected,
            margin,
            accuracy,
        })
    }

    /// Field-wise mean of `all` (the micro-batches of a step), summed in order; `None` when
    /// empty.
    pub fn mean(all: &[LossMetrics]) -> Option<Self> {
        if all.is_empty() {
            return None;
        }
        let mut sums = [0.0; Self::LEN];
        for m in all {
            for (s, v) in sums.iter_mut().zip(m.to_vec()) {
                *s += v;
            }
        }
        let n = all.len() as f64;
        Self::from_vec(&sums.iter().map(|s| s / n).collect::<Vec<_>>())
    }
}

impl LossOutput {
    /// Reads the scalars (detached). Errors: [`TrainerError::Torch`].
    pub fn metrics(&self) -> Result<LossMetrics> {
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.f_double_value(&[])?) };
        let rc = self.reward_chosen.detach();
        let rr = self.reward_rejected.detach();
        let margin = (&rc - rr.mean_dim(-1, false, Kind::Float)).mean(Kind::Float);
        let wins = rc
            .unsqueeze(-1)
            .gt_tensor(&rr)
            .all_dim(-1, false)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        Ok(LossMetrics {
            loss: scalar(&self.loss.detach())?,
            preference_loss: scalar(&self.preference_loss.detach())?,
            sft_loss: scalar(&self.sft_loss.detach())?,
            reward_chosen: scalar(&rc.mean(Kind::Float))?,
            reward_rejected: scalar(&rr.mean(Kind::Float))?,
            margin: scalar(&margin)?,
            accuracy: scalar(&wins)?,
        })
    }
}

/// The loss of `cfg.objective` from length-normalised log-likelihoods: Eq. 2 + SFT term
/// (`logo`), −ℓ(y_w) (`sft`), or Eq. 2 on the first rejected response + SFT term (`simpo`).
///
/// `chosen_logps`: [B] f32, ℓ(y_w). `rejected_logps`: [B, M] f32, ℓ(y_l^(j)).
/// Errors: [`TrainerError::Internal`] when the shapes disagree (B differs, or not 1-D/2-D).
pub fn logo_loss(
    chosen_logps: &Tensor,
    rejected_logps: &Tensor,
    cfg: &LossConfig,
) -> Result<LossOutput> {
    let (b, m) = match (
        chosen_logps.size().as_slice(),
        rejected_logps.size().as_slice(),
    ) {
        (&[b], &[b2, m]) if b == b2 && m >= 1 => (b, m),
        (c, r) => {
            return Err(TrainerError::Internal(format!(
                "logo_loss: expected chosen [B] and rejected [B, M≥1], got {c:?} and {r:?}"
            )))
        }
    };
    let _ = (b, m);
    let rejected_logps = match cfg.objective {
        Objective::Simpo => rejected_logps.narrow(1, 0, 1),
        Objective::Logo => rejected_logps.shallow_clone(),
        // Logged only: SFT's gradient must not reach the rejected responses.
        Objective::Sft => rejected_logps.detach(),
    };
    let reward_chosen = chosen_logps * cfg.beta;
    let reward_rejected = &rejected_logps * cfg.beta;
    // β·ℓ_w − (β/M)·Σ_j ℓ_l^(j) − γ  ==  r_w − mean_j r_l^(j) − γ
    let z = &reward_chosen - reward_rejected.mean_dim(-1, false, Kind::Float) - cfg.gamma;
    // −log σ(z) = softplus(−z), computed stably.
    let preference = (-z).softplus();
    let sft = -chosen_logps;
    let total = match cfg.objective {
        Objective::Sft => sft.shallow_clone(),
        Objective::Logo | Objective::Simpo => &preference + &sft * cfg.sft_weight,
    };
    let (preference, reward_chosen) = match cfg.objective {
        Objective::Sft => (preference.detach(), reward_chosen.detach()),
        _ => (preference, reward_chosen),
    };
    Ok(LossOutput {
        loss: total.mean(Kind::Float),
        preference_loss: preference.mean(Kind::Float),
        sft_loss: sft.mean(Kind::Float),
        reward_chosen,
        reward_rejected,
    })
}

/// Length-normalised log-likelihood per sequence from logits at response positions only.
///
/// `logits`: [N, V] (any float kind; computed in f32) — one row per response token, the row
/// predicting that token. `labels`: [N] i64 token ids. `sequence`: [N] i64, the sequence each
/// row belongs to, in `0..num_sequences`. Returns [num_sequences] f32: the mean of
/// log softmax(logits)[label] over each sequence's rows. Every sequence must own at least one
/// row. Errors: [`TrainerError::Torch`].
pub fn sequence_logps(
    logits: &Tensor,
    labels: &Tensor,
    sequence: &Tensor,
    num_sequences: i64,
) -> Result<Tensor> {
    let logp = logits
        .f_to_kind(Kind::Float)?
        .f_log_softmax(-1, Kind::Float)?
        .f_gather(1, &labels.unsqueeze(1), false)?
        .squeeze_dim(1);
    let zeros = Tensor::zeros([num_sequences], (Kind::Float, logits.device()));
    let sums = zeros.f_index_add(0, sequence, &logp)?;
    let counts = Tensor::zeros([num_sequences], (Kind::Float, logits.device())).f_index_add(
        0,
        sequence,
        &Tensor::ones_like(&logp),
    )?;
    Ok(sums / counts)
}

/// dL/dℓ for every response of the batch, for computing the LOGO gradient one response at a
/// time (each response's graph is then back-propagated with `ℓ · dL/dℓ`).
///
/// Returns `([B] dL/dℓ_w, [B, M] dL/dℓ_l)` f32 of the batch-mean loss; responses the
/// objective ignores (`sft`: all rejected; `simpo`: all but the first) get 0.
/// Errors: as [`logo_loss`].
pub fn loss_grad_wrt_logps(
    chosen_logps: &Tensor,
    rejected_logps: &Tensor,
    cfg: &LossConfig,
) -> Result<(Tensor, Tensor)> {
    let c = chosen_logps.detach().set_requires_grad(true);
    let r = rejected_logps.detach().set_requires_grad(true);
    let out = logo_loss(&c, &r, cfg)?;
    if cfg.objective == Objective::Sft {
        // The loss does not reach `r` (autograd would refuse an unused input).
        let grads = Tensor::f_run_backward(&[&out.loss], &[&c], false, false)?;
        return Ok((grads[0].shallow_clone(), r.detach().zeros_like()));
    }
    let grads = Tensor::f_run_backward(&[&out.loss], &[&c, &r], false, false)?;
    Ok((grads[0].shallow_clone(), grads[1].shallow_clone()))
}

/// One line of `metrics.jsonl` (written by [`crate::train_loop`], drawn by [`crate::plot`]):
/// a step's [`LossMetrics`] reduced over micro-batches and ranks, with its schedule and timing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step, 1-based.
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Total loss (mean over the step's micro-batches).
    pub loss: f64,
    /// Eq. 2.
    pub preference_loss: f64,
    /// −ℓ(y_w).
    pub sft_loss: f64,
    /// Mean β·ℓ(y_w).
    pub reward_chosen: f64,
    /// Mean β·ℓ(y_l).
    pub reward_rejected: f64,
    /// Mean reward margin.
    pub margin: f64,
    /// Fraction of samples with the chosen reward above every rejected one.
    pub accuracy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens processed in the step.
    pub tokens: usize,
    /// Wall seconds of the step.
    pub seconds: f64,
}

impl StepMetrics {
    /// Step `step` (1-based) at learning rate `lr` with the reduced `loss` metrics, the
    /// gradient norm before clipping, the tokens of the step and its wall seconds.
    pub fn new(
        step: usize,
        lr: f64,
        loss: &LossMetrics,
        grad_norm: f64,
        tokens: usize,
        seconds: f64,
    ) -> Self {
        StepMetrics {
            step,
            lr,
            loss: loss.loss,
            preference_loss: loss.preference_loss,
            sft_loss: loss.sft_loss,
            reward_chosen: loss.reward_chosen,
            reward_rejected: loss.reward_rejected,
            margin: loss.margin,
            accuracy: loss.accuracy,
            grad_norm,
            tokens,
            seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t1(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn t2(v: &[f32], m: i64) -> Tensor {
        Tensor::from_slice(v).reshape([-1, m])
    }

    fn val(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    fn softplus(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    /// A 2-sample toy, computed by hand for M = 1, 2, 3 (β = 2, γ = 0.5, λ = 0.1).
    #[test]
    fn hand_computed_for_m_1_2_3() {
        let cfg = LossConfig {
            beta: 2.0,
            gamma: 0.5,
            sft_weight: 0.1,
            ..LossConfig::default()
        };
        let chosen = t1(&[-0.5, -1.0]);
        let rejected3 = [-1.0f32, -2.0, -3.0, -0.8, -1.2, -1.0];
        for m in 1..=3usize {
            let rej: Vec<f32> = (0..2)
                .flat_map(|b| rejected3[b * 3..b * 3 + m].to_vec())
                .collect();
            let out = logo_loss(&chosen, &t2(&rej, m as i64), &cfg).unwrap();
            // z_b = 2·ℓ_w − (2/M)·Σ ℓ_l − 0.5; L_b = softplus(−z_b) + 0.1·(−ℓ_w)
            let mut expect = 0.0;
            for (b, lw) in [-0.5f64, -1.0].into_iter().enumerate() {
                let sum_l: f64 = rejected3[b * 3..b * 3 + m].iter().map(|&x| x as f64).sum();
                let z = 2.0 * lw - 2.0 / m as f64 * sum_l - 0.5;
                expect += softplus(-z) - 0.1 * lw;
            }
            expect /= 2.0;
            assert!(
                (val(&out.loss) - expect).abs() < 1e-6,
                "M={m}: {} vs {expect}",
                val(&out.loss)
            );
        }
        // The numbers themselves, by hand: M=1 → z = (0.5, −0.9):
        // L = (softplus(−0.5) + 0.05 + softplus(0.9) + 0.1) / 2
        //   = (0.474077 + 0.05 + 1.241154 + 0.1) / 2 = 0.932615.
        let out = logo_loss(&chosen, &t2(&[-1.0, -0.8], 1), &cfg).unwrap();
        assert!(
            (val(&out.loss) - 0.932615).abs() < 1e-5,
            "{}",
            val(&out.loss)
        );
    }

    /// M = 1 is SimPO: −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ) (Meng et al., Eq. 6).
    #[test]
    fn m1_equals_simpo() {
        let cfg = LossConfig {
            beta: 10.0,
            gamma: 3.0,
            sft_weight: 0.0,
            ..LossConfig::default()
        };
        let lw = t1(&[-0.3, -0.9, -1.7]);
        let ll = t1(&[-0.6, -0.4, -2.5]);
        let out = logo_loss(&lw, &ll.unsqueeze(1), &cfg).unwrap();
        let simpo = (-(lw * 10.0 - ll * 10.0 - 3.0).log_sigmoid()).mean(Kind::Float);
        assert!((val(&out.loss) - val(&simpo)).abs() < 1e-6);
    }

    /// `sft`: the loss is mean_b −ℓ(y_w); β, γ, λ and the rejected responses do not enter it
    /// (by hand: ℓ_w = (−0.5, −1.0) → 0.75), and no gradient reaches the rejected ℓ.
    #[test]
    fn sft_objective_is_the_chosen_nll() {
        let cfg = LossConfig {
            beta: 2.0,
            gamma: 0.5,
            sft_weight: 0.1,
            objective: Objective::Sft,
        };
        let chosen = t1(&[-0.5, -1.0]);
        let rejected = t2(&[-1.0, -2.0, -0.8, -1.2], 2);
        let out = logo_loss(&chosen, &rejected, &cfg).unwrap();
        assert!((val(&out.loss) - 0.75).abs() < 1e-7, "{}", val(&out.loss));
        assert!((val(&out.sft_loss) - 0.75).abs() < 1e-7);
        // The preference loss is still logged: that of `logo` at the same β, γ.
        let logo = logo_loss(
            &chosen,
            &rejected,
            &LossConfig {
                objective: Objective::Logo,
                ..cfg
            },
        )
        .unwrap();
        assert!((val(&out.preference_loss) - val(&logo.preference_loss)).abs() < 1e-7);
        let (gc, gr) = loss_grad_wrt_logps(&chosen, &rejected, &cfg).unwrap();
        // d/dℓ_w of −mean(ℓ_w) = −1/B.
        assert_eq!(Vec::<f32>::try_from(&gc).unwrap(), vec![-0.5, -0.5]);
        assert_eq!(
            Vec::<f32>::try_from(&gr.flatten(0, 1)).unwrap(),
            vec![0.0; 4]
        );
    }

    /// `simpo` with M = 3 rejected responses is the SimPO check of [`m1_equals_simpo`] on the
    /// first one; the other two get no gradient.
    #[test]
    fn simpo_objective_uses_the_first_rejected_response() {
        let cfg = LossConfig {
            beta: 10.0,
            gamma: 3.0,
            sft_weight: 0.0,
            objective: Objective::Simpo,
        };
        let lw = t1(&[-0.3, -0.9, -1.7]);
        let ll = t1(&[-0.6, -0.4, -2.5]);
        // Columns 1 and 2 are decoys that would change a mean over M = 3.
        let rej = Tensor::stack(&[ll.shallow_clone(), &ll * 3.0, &ll * 0.1], 1);
        let out = logo_loss(&lw, &rej, &cfg).unwrap();
        let simpo = (-(&lw * 10.0 - &ll * 10.0 - 3.0).log_sigmoid()).mean(Kind::Float);
        assert!((val(&out.loss) - val(&simpo)).abs() < 1e-6);
        assert_eq!(out.reward_rejected.size(), vec![3, 1]);
        let (_, gr) = loss_grad_wrt_logps(&lw, &rej, &cfg).unwrap();
        assert!(gr.select(1, 0).abs().sum(Kind::Float).double_value(&[]) > 0.1);
        assert_eq!(
            gr.narrow(1, 1, 2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn metrics_margin_and_accuracy() {
        let out = logo_loss(
            &t1(&[-0.5, -1.0]),
            &t2(&[-1.0, -0.2, -2.0, -3.0], 2),
            &LossConfig::default(),
        )
        .unwrap();
        let m = out.metrics().unwrap();
        // rewards ×10: chosen (−5, −10); rejected ((−10, −2), (−20, −30))
        assert!((m.reward_chosen - -7.5).abs() < 1e-6);
        assert!((m.reward_rejected - -15.5).abs() < 1e-6);
        // margins: −5 − (−6) = 1; −10 − (−25) = 15 → mean 8
        assert!((m.margin - 8.0).abs() < 1e-6);
        // sample 0 loses to −2, sample 1 wins both → 0.5
        assert_eq!(m.accuracy, 0.5);
    }

    #[test]
    fn sequence_logps_averages_response_rows() {
        // Two sequences: rows 0,1 → seq 0, row 2 → seq 1; vocabulary of 3.
        let logits =
            Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0, 2.0, 3.0, 5.0, 0.0, 0.0]).reshape([3, 3]);
        let labels = Tensor::from_slice(&[0i64, 2, 0]);
        let seq = Tensor::from_slice(&[0i64, 0, 1]);
        let lp = sequence_logps(&logits, &labels, &seq, 2).unwrap();
        // row0: ln(1/3); row1: 3 − ln(e+e²+e³); row2: 5 − ln(e⁵+2)
        let r0 = -(3f64).ln();
        let r1 = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let r2 = 5.0 - (5f64.exp() + 2.0).ln();
        assert!((lp.double_value(&[0]) - (r0 + r1) / 2.0).abs() < 1e-6);
        assert!((lp.double_value(&[1]) - r2).abs() < 1e-6);
    }

    #[test]
    fn grad_wrt_logps_matches_finite_differences() {
        let cfg = LossConfig::default();
        let c = t1(&[-0.4, -0.7]);
        let r = t2(&[-0.9, -0.5, -1.1, -0.6], 2);
        let (gc, gr) = loss_grad_wrt_logps(&c, &r, &cfg).unwrap();
        let f = |c: &Tensor, r: &Tensor| val(&logo_loss(c, r, &cfg).unwrap().loss);
        let h = 1e-3;
        let num = (f(&(&c + Tensor::from_slice(&[h as f32, 0.0])), &r)
            - f(&(&c - Tensor::from_slice(&[h as f32, 0.0])), &r))
            / (2.0 * h);
        assert!(
            (gc.double_value(&[0]) - num).abs() < 1e-3,
            "{} vs {num}",
            gc.double_value(&[0])
        );
        let bump = Tensor::from_slice(&[0.0f32, h as f32, 0.0, 0.0]).reshape([2, 2]);
        let num = (f(&c, &(&r + &bump)) - f(&c, &(&r - &bump))) / (2.0 * h);
        assert!((gr.double_value(&[0, 1]) - num).abs() < 1e-3);
    }
}
