//! Retrieval score (LOGO Appendix B, Eq. 5, after Wu et al. 2024, "Retrieval head
//! mechanistically explains long-context factuality").
//!
//! While the model generates its answer to a needle-in-a-haystack prompt, a head *copies* a
//! needle token when, for the generated token x, the key it attends to most
//! (`j = argmax(a)`) lies inside a needle and holds the same token (`c_j = x`). With `g_h` the
//! set of needle positions head h copied and `k` the needle tokens,
//! `score_h = |g_h ∩ k| / |k|` (Eq. 5), summed over the cases of a grid (Σ|g_h| / Σ|k|).
//! Heads with a score ≥ 0.1 are retrieval heads; the reported retrieval score is the mean of
//! the top 10 of them (0 when there is none; the mean over all of them when fewer than 10).
//!
//! Here the needle tokens `k` are the tokens of the needle *values* (the answer the question
//! asks for, e.g. "Figs" in "Figs are one of the secret ingredients…", Fig. 8's bold part):
//! the tokens of a needle sentence whose characters overlap a value, at their positions in
//! the prompt ([`value_positions`]).

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::Result;

/// Heads at or above this score are retrieval heads (Appendix B).
pub const RETRIEVAL_THRESHOLD: f64 = 0.1;
/// The score reported is the mean of this many best retrieval heads (Appendix B).
pub const TOP_HEADS: usize = 10;

/// What one generation leaves for scoring.
#[derive(Debug, Clone, Copy)]
pub struct CopyTrace<'a> {
    /// The prompt ids `[P]` (the keys' tokens).
    pub prompt: &'a [u32],
    /// Positions (into `prompt`) of the needle tokens k, ascending.
    pub needle_positions: &'a [usize],
    /// The generated ids `[G]`.
    pub answer: &'a [u32],
    /// `[G][layers × heads]`: per generated token, the key index each head attends to most
    /// ([`crate::generate::Answer::argmax`]).
    pub argmax: &'a [Vec<i64>],
}

/// Retrieval scores of every head and the summary of Appendix B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalScore {
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads per layer.
    pub num_heads: usize,
    /// Eq. 5 per head, layer-major (`layer × num_heads + head`), in `[0, 1]`.
    pub per_head: Vec<f64>,
    /// Needle tokens Σ|k| over the cases.
    pub needle_tokens: usize,
    /// Heads with a score ≥ [`RETRIEVAL_THRESHOLD`].
    pub retrieval_heads: usize,
    /// Mean score of the best [`TOP_HEADS`] retrieval heads (the paper's retrieval score).
    pub top_mean: f64,
    /// The best heads as (layer, head, score), best first (up to [`TOP_HEADS`]).
    pub top_heads: Vec<(usize, usize, f64)>,
}

/// Eq. 5 over `traces` for a model of `num_layers × num_heads` query heads. A trace whose
/// argmax rows are not `num_layers × num_heads` long contributes only its needle tokens.
pub fn retrieval_score(
    traces: &[CopyTrace<'_>],
    num_layers: usize,
    num_heads: usize,
) -> RetrievalScore {
    let n = num_layers * num_heads;
    let mut copied = vec![0usize; n];
    let mut needle_tokens = 0;
    for t in traces {
        needle_tokens += t.needle_positions.len();
        // g_h for this case: the needle positions head h copied (each counted once).
        let mut g: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); n];
        for (x, row) in t.answer.iter().zip(t.argmax) {
            if row.len() != n {
                continue;
            }
            for (h, &j) in row.iter().enumerate() {
                let Ok(j) = usize::try_from(j) else { continue };
                if j < t.prompt.len()
                    && t.prompt[j] == *x
                    && t.needle_positions.binary_search(&j).is_ok()
                {
                    g[h].insert(j);
                }
            }
        }
        for (c, set) in copied.iter_mut().zip(&g) {
            *c += set.len();
        }
    }
    let per_head: Vec<f64> = copied
        .iter()
        .map(|&c| {
            if needle_tokens == 0 {
                0.0
            } else {
                c as f64 / needle_tokens as f64
            }
        })
        .collect();
    let mut ranked: Vec<(usize, f64)> = per_head
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| *s >= RETRIEVAL_THRESHOLD)
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let retrieval_heads = ranked.len();
    ranked.truncate(TOP_HEADS);
    let top_mean = if ranked.is_empty() {
        0.0
    } else {
        ranked.iter().map(|(_, s)| s).sum::<f64>() / ranked.len() as f64
    };
    RetrievalScore {
        num_layers,
        num_heads,
        per_head,
        needle_tokens,
        retrieval_heads,
        top_mean,
        top_heads: ranked
            .iter()
            .map(|&(i, s)| (i / num_heads.max(1), i % num_heads.max(1), s))
            .collect(),
    }
}

/// Positions in `prompt` of the value tokens of every needle: each needle sentence is
/// tokenised as the prompt has it (`" " + sentence`), found in `prompt` (first occurrence
/// after the previous needle), and its tokens whose character span overlaps a value
/// (case-insensitive) are kept. Needles not found (cut by truncation) add nothing.
///
/// Errors: [`crate::EvalError::Policy`] when tokenisation fails.
pub fn value_positions(
    tok: &Tokenizer,
    prompt: &[u32],
    needles: &[String],
    values: &[String],
) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    for needle in needles {
        let text = format!(" {needle}");
        let enc = tok
            .encode(text.as_str(), false)
            .map_err(|e| logo_policy::PolicyError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids();
        if ids.is_empty() || prompt.len() < ids.len() {
            continue;
        }
        let Some(at) =
            (from..=prompt.len() - ids.len()).find(|&i| &prompt[i..i + ids.len()] == ids)
        else {
            continue;
        };
        from = at + ids.len();
        let lower = text.to_lowercase();
        let spans: Vec<(usize, usize)> = values
            .iter()
            .filter_map(|v| {
                let v = v.to_lowercase();
                lower.find(&v).map(|s| (s, s + v.len()))
            })
            .collect();
        for (i, &(a, b)) in enc.get_offsets().iter().enumerate() {
            if spans.iter().any(|&(s, e)| a < e && s < b) {
                out.push(at + i);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built case: a prompt with needle tokens 50, 51, 52, 53 at positions 5..=8, an
    /// answer that repeats them, and 2 layers × 3 heads whose argmax is set by hand:
    /// head (0, 0) always on the right needle position (copies 4/4 = 1.0), head (0, 1) on the
    /// right token only for the first answer token (1/4 = 0.25), head (0, 2) on a position
    /// outside the needle holding the same token (0), head (1, 0) on a needle position with
    /// another token (0), head (1, 1) on the same needle position every time (copies 51 once:
    /// 0.25, counted once), head (1, 2) past the prompt (0).
    #[test]
    fn hand_built_copy_heads() {
        let mut prompt: Vec<u32> = (0..12).collect();
        prompt[5..9].copy_from_slice(&[50, 51, 52, 53]);
        prompt[10] = 52; // the same token outside the needle
        let needle = [5usize, 6, 7, 8];
        let answer = [50u32, 51, 52, 53];
        let argmax: Vec<Vec<i64>> = (0..4)
            .map(|i| {
                vec![
                    5 + i as i64,               // (0,0): copies each
                    if i == 0 { 5 } else { 1 }, // (0,1): first only
                    10,                         // (0,2): 52 outside the needle
                    if i == 0 { 6 } else { 5 }, // (1,0): needle, wrong token
                    6,                          // (1,1): 51 at step 1 only
                    40,                         // (1,2): beyond the prompt
                ]
            })
            .collect();
        let trace = CopyTrace {
            prompt: &prompt,
            needle_positions: &needle,
            answer: &answer,
            argmax: &argmax,
        };
        let s = retrieval_score(&[trace], 2, 3);
        assert_eq!(s.per_head, vec![1.0, 0.25, 0.0, 0.0, 0.25, 0.0]);
        assert_eq!(s.needle_tokens, 4);
        assert_eq!(s.retrieval_heads, 3);
        // (1.0 + 0.25 + 0.25) / 3
        assert!((s.top_mean - 0.5).abs() < 1e-12);
        assert_eq!(s.top_heads[0], (0, 0, 1.0));
        assert_eq!(s.top_heads[1], (0, 1, 0.25));
        assert_eq!(s.top_heads[2], (1, 1, 0.25));
        // Two cases pool their needle tokens: the same trace twice keeps the scores; a second
        // case where nothing is copied halves them.
        let none: Vec<Vec<i64>> = vec![vec![0; 6]; 4];
        let miss = CopyTrace {
            argmax: &none,
            ..trace
        };
        let s2 = retrieval_score(&[trace, miss], 2, 3);
        assert_eq!(s2.per_head, vec![0.5, 0.125, 0.0, 0.0, 0.125, 0.0]);
        // (0, 0) at 0.5 and (0, 1), (1, 1) at 0.125 stay at or above 0.1.
        assert_eq!(s2.retrieval_heads, 3);
        let s3 = retrieval_score(&[miss], 2, 3);
        assert_eq!((s3.retrieval_heads, s3.top_mean), (0, 0.0));
    }

    #[test]
    fn top_ten_of_many_heads() {
        // 12 heads copying 12/12 … 1/12 of 12 needle tokens: 11 reach 0.1 (2/12 = 0.167 is the
        // lowest kept, 1/12 = 0.083 is not); the top 10 are 12/12 … 3/12, mean 7.5/12.
        let prompt: Vec<u32> = (100..112).collect();
        let needle: Vec<usize> = (0..12).collect();
        let answer: Vec<u32> = prompt.clone();
        let argmax: Vec<Vec<i64>> = (0..12)
            .map(|step| {
                (0..12)
                    .map(|h| if step < 12 - h { step as i64 } else { 99 })
                    .collect()
            })
            .collect();
        let s = retrieval_score(
            &[CopyTrace {
                prompt: &prompt,
                needle_positions: &needle,
                answer: &answer,
                argmax: &argmax,
            }],
            1,
            12,
        );
        assert_eq!(s.retrieval_heads, 11);
        assert!((s.top_mean - 7.5 / 12.0).abs() < 1e-12, "{}", s.top_mean);
        assert_eq!(s.top_heads.len(), 10);
    }
}
