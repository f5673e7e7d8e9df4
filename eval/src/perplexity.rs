//! Sliding-window perplexity (Press et al. 2021; LOGO Fig. 4 on PG-19) at several context
//! lengths, with the trainer's libtorch Llama (the model LOGO trains, optionally with a PEFT
//! adapter), so that windows can run past the model's trained length with positions
//! `0..L` (how far the rotary embedding extends is what the curve shows).
//!
//! For each context length `L` the text's tokens are covered by [`plan_windows`] with stride
//! `L·stride_fraction`; each window is one forward pass with `position_ids = 0..len`, and the
//! negative log-likelihood of each scored token is `−log softmax(logits[t−1])[x_t]` in f32.
//! Perplexity is `exp(Σ NLL / scored tokens)`; every token but the first is scored exactly
//! once per length.

use logo_trainer::model::Llama;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{EvalError, Result};
use crate::progress::bar;
use crate::window::plan_windows;

/// Rows of the LM head evaluated at once (bounds the `[rows, V]` f32 logits to ~200 MB for
/// V = 49152).
const LOGIT_ROWS: usize = 1024;

/// Settings of a perplexity run.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityConfig {
    /// Window lengths `L`, tokens.
    pub context_lengths: Vec<usize>,
    /// Stride as a fraction of `L`, in `(0, 1)`; 0.5 scores each token with at least `L/2`
    /// tokens of context (except at the start of the text).
    pub stride_fraction: f64,
    /// Tokens of text read (from the start); at least the longest `L`.
    pub max_tokens: usize,
    /// Windows of equal length run together, as one `[batch, L]` forward (`--ppl-batch`);
    /// 1 = one at a time. The NLL is the same either way (f32 summation order aside).
    pub batch: usize,
}

impl PerplexityConfig {
    /// Errors: [`EvalError::Config`] for an empty or too short length list, a stride fraction
    /// outside `(0, 1)`, or `max_tokens` below the longest length.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(EvalError::Config {
                key: key.into(),
                message,
            })
        };
        if self.context_lengths.is_empty() || self.context_lengths.iter().any(|&l| l < 4) {
            return bad("ppl_lengths", "give one or more lengths >= 4".into());
        }
        if !(self.stride_fraction > 0.0 && self.stride_fraction < 1.0) {
            return bad(
                "ppl_stride",
                format!("must be in (0, 1), got {}", self.stride_fraction),
            );
        }
        if !(1..=64).contains(&self.batch) {
            return bad(
                "ppl_batch",
                format!("must be in 1..=64, got {}", self.batch),
            );
        }
        let longest = self.context_lengths.iter().max().copied().unwrap_or(0);
        if self.max_tokens < longest {
            return bad(
                "ppl_tokens",
                format!("{} is below the longest length {longest}", self.max_tokens),
            );
        }
        Ok(())
    }
}

/// Perplexity at one context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityPoint {
    /// Window length `L`, tokens.
    pub context_length: usize,
    /// Stride, tokens.
    pub stride: usize,
    /// Forward passes.
    pub windows: usize,
    /// Tokens scored (text tokens − 1).
    pub scored_tokens: usize,
    /// Σ NLL, nats.
    pub nll_sum: f64,
    /// `exp(nll_sum / scored_tokens)`.
    pub perplexity: f64,
    /// True when `L` exceeds the model's `max_position_embeddings`.
    pub beyond_model_limit: bool,
}

/// A perplexity run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    /// Text tokens read.
    pub text_tokens: usize,
    /// The model's `max_position_embeddings`.
    pub model_limit: usize,
    /// One point per length, ascending.
    pub points: Vec<PerplexityPoint>,
}

/// Sum of the NLL (nats, f64) of `tokens[score_from..]` given everything before them in
/// `tokens` (one forward with positions `0..len`). Errors: [`EvalError::Trainer`],
/// [`EvalError::Torch`].
pub fn window_nll(model: &Llama, tokens: &[u32], score_from: usize) -> Result<f64> {
    Ok(windows_nll(model, &[(tokens, score_from)])?[0])
}

/// [`window_nll`] of several windows of the same length in one `[B, len]` forward.
/// Errors: [`EvalError::Config`] (`ppl_batch`) when the lengths differ; model errors.
pub fn windows_nll(model: &Llama, windows: &[(&[u32], usize)]) -> Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let Some(len) = windows.first().map(|(t, _)| t.len()) else {
        return Ok(vec![]);
    };
    if windows.iter().any(|(t, _)| t.len() != len) {
        return Err(EvalError::Config {
            key: "ppl_batch".into(),
            message: "windows of one batch must have the same length".into(),
        });
    }
    let b = windows.len() as i64;
    let ids: Vec<i64> = windows
        .iter()
        .flat_map(|(t, _)| t.iter().map(|&x| i64::from(x)))
        .collect();
    let ids = Tensor::from_slice(&ids).view([b, len as i64]);
    let pos = Tensor::arange(len as i64, (Kind::Int64, Device::Cpu))
        .view([1, len as i64])
        .repeat([b, 1]);
    let hidden = model.hidden_states(&ids, &pos, false)?; // [B, len, H]
    windows
        .iter()
        .enumerate()
        .map(|(i, (tokens, score_from))| {
            rows_nll(model, &hidden.get(i as i64), tokens, *score_from)
        })
        .collect()
}

/// Σ NLL of `tokens[score_from..]` from the window's hidden states `[len, H]`.
fn rows_nll(model: &Llama, hidden: &Tensor, tokens: &[u32], score_from: usize) -> Result<f64> {
    let mut nll = 0.0;
    let mut row = score_from - 1; // hidden row predicting token row + 1
    while row + 1 < tokens.len() {
        let n = LOGIT_ROWS.min(tokens.len() - 1 - row);
        let h = hidden.narrow(0, row as i64, n as i64);
        let logits = model.lm_logits(&h)?; // [n, V] f32
        let logp = logits.f_log_softmax(-1, Kind::Float)?;
        let targets: Vec<i64> = ids_slice(tokens, row + 1, n);
        let targets = Tensor::from_slice(&targets)
            .to_device(logp.device())
            .view([n as i64, 1]);
        let picked = logp.f_gather(1, &targets, false)?;
        nll -= picked.f_sum(Kind::Double)?.f_double_value(&[])?;
        row += n;
    }
    Ok(nll)
}

fn ids_slice(tokens: &[u32], from: usize, n: usize) -> Vec<i64> {
    tokens[from..from + n]
        .iter()
        .map(|&t| i64::from(t))
        .collect()
}

/// Runs every length of `cfg` over `tokens` (already cut to `cfg.max_tokens`).
/// Errors: [`EvalError::Config`] (bad windows), model errors.
pub fn run_perplexity(
    model: &Llama,
    tokens: &[u32],
    cfg: &PerplexityConfig,
) -> Result<PerplexityReport> {
    let limit = model.config().max_position_embeddings;
    let mut lengths = cfg.context_lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let plans = lengths
        .iter()
        .map(|&l| {
            let stride = ((l as f64 * cfg.stride_fraction).round() as usize).clamp(1, l - 1);
            plan_windows(tokens.len(), l, stride)
                .map(|w| (l, stride, w))
                .map_err(|message| EvalError::Config {
                    key: "ppl_lengths".into(),
                    message,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let work: usize = plans
        .iter()
        .flat_map(|(_, _, w)| w.iter().map(|x| x.len()))
        .sum();
    let pb = bar(work as u64, "perplexity (tokens read)");
    let mut points = Vec::new();
    for (l, stride, windows) in plans {
        let mut nll_sum = 0.0;
        let mut scored = 0;
        let mut at = 0;
        while at < windows.len() {
            // Up to `batch` consecutive windows of the same length.
            let len = windows[at].len();
            let n = windows[at..]
                .iter()
                .take(cfg.batch.max(1))
                .take_while(|w| w.len() == len)
                .count();
            let group: Vec<(&[u32], usize)> = windows[at..at + n]
                .iter()
                .map(|w| (&tokens[w.begin..w.end], w.score_from - w.begin))
                .collect();
            for (w, nll) in windows[at..at + n].iter().zip(windows_nll(model, &group)?) {
                nll_sum += nll;
                scored += w.scored();
                pb.inc(w.len() as u64);
            }
            pb.set_message(format!(
                "L = {l}: ppl {:.2}",
                (nll_sum / scored.max(1) as f64).exp()
            ));
            at += n;
        }
        points.push(PerplexityPoint {
            context_length: l,
            stride,
            windows: windows.len(),
            scored_tokens: scored,
            nll_sum,
            perplexity: (nll_sum / scored.max(1) as f64).exp(),
            beyond_model_limit: l > limit,
        });
    }
    pb.finish_and_clear();
    Ok(PerplexityReport {
        text_tokens: tokens.len(),
        model_limit: limit,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = PerplexityConfig {
            context_lengths: vec![512, 1024],
            stride_fraction: 0.5,
            max_tokens: 2048,
            batch: 1,
        };
        ok.validate().unwrap();
        let e = PerplexityConfig {
            stride_fraction: 1.0,
            ..ok.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("ppl_stride"), "{e}");
        let e = PerplexityConfig {
            max_tokens: 1000,
            ..ok
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("below the longest length 1024"), "{e}");
    }
}
