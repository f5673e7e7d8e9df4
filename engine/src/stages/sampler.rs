//! Sampler: preference and dis-preference context selection (paper 3.2.2, "Preference and
//! Dis-preference Data Synthesis").
//!
//! With importance scores s_i and threshold δ, chunks with s_i > δ are relevant (C_>δ), the
//! rest irrelevant (C_<δ). For each sample:
//! - relevant chunks: all of C_>δ, or the N highest-scoring ones when there are more than N
//!   (ties broken by document order);
//! - the **preference context** is the relevant chunks (P_preference = π(Q, C_>δ));
//! - the **shared training context C'** is all relevant chunks plus irrelevant ones drawn
//!   uniformly without replacement until it holds N chunks;
//! - dis-preference context j (j = 0..M−1) alternates between the two error patterns of the
//!   paper: `irrelevant` (even j; P' = π(Q, C_<δ)): N irrelevant chunks (all of them when
//!   fewer); `partial` (odd j; P'' = π(Q, C_<δ, C_>δ)): a random non-empty proper subset of
//!   the relevant chunks filled with irrelevant ones to N. With a single relevant chunk no
//!   proper subset exists, so every negative uses `irrelevant`. Relevant chunks beyond the N
//!   kept are never used as irrelevant fill; when a document has no irrelevant chunk at all,
//!   the `irrelevant` negative is generated without context (the hallucination pattern).
//!
//! Every chunk list is ascending (document order). Random draws depend only on the run seed
//! and the sample id. Samples with no relevant chunk, or fewer than N chunks, are skipped and
//! counted by reason.
//!
//! Input [`logo_schemas::scored_schema`], output [`logo_schemas::sampled_schema`].

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{sampled_schema, Record, SampledRecord, ScoredRecord};
use rand::seq::index;
use rand::Rng;

use crate::config::SamplerConfig;
use crate::error::Result;
use crate::stage::{emit, map_rows, RowOutcome, Stage, StageContext};
use crate::stages::seed::rng_for;

/// Reason counted when no chunk scores above δ.
pub const SKIP_NO_RELEVANT: &str = "no relevant chunk (no s_i > threshold)";
/// Reason counted when the document has fewer than N chunks.
pub const SKIP_TOO_FEW_CHUNKS: &str = "fewer than num_chunks chunks";

/// The sampler stage.
pub struct SamplerStage {
    cfg: SamplerConfig,
    seed: u64,
}

/// The chunk selections of one sample (chunk indices, ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// C': N chunks.
    pub context: Vec<u32>,
    /// C_>δ used for the preferred response.
    pub chosen: Vec<u32>,
    /// `[M]` contexts of the dis-preferred responses.
    pub rejected: Vec<Vec<u32>>,
    /// `[M]` `irrelevant` or `partial`.
    pub strategy: Vec<&'static str>,
}

impl SamplerStage {
    /// Errors: none beyond the config's own validation.
    pub fn try_new(cfg: &SamplerConfig, seed: u64) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            seed,
        })
    }

    /// Selects the contexts of one sample from its scores, or the skip reason.
    pub fn select(
        &self,
        sample_id: &str,
        scores: &[i32],
    ) -> std::result::Result<Selection, &'static str> {
        let n_chunks = self.cfg.num_chunks;
        if scores.len() < n_chunks {
            return Err(SKIP_TOO_FEW_CHUNKS);
        }
        let mut relevant: Vec<u32> = (0..scores.len() as u32)
            .filter(|&i| scores[i as usize] > self.cfg.threshold)
            .collect();
        if relevant.is_empty() {
            return Err(SKIP_NO_RELEVANT);
        }
        if relevant.len() > n_chunks {
            // Stable sort keeps document order among equal scores.
            relevant.sort_by_key(|&i| std::cmp::Reverse(scores[i as usize]));
            relevant.truncate(n_chunks);
            relevant.sort_unstable();
        }
        // Relevant chunks beyond the N kept are not irrelevant: they never fill a context.
        let irrelevant: Vec<u32> = (0..scores.len() as u32)
            .filter(|&i| scores[i as usize] <= self.cfg.threshold)
            .collect();
        let mut rng = rng_for(self.seed, &[sample_id, "sampler"]);
        let draw = |rng: &mut rand_chacha::ChaCha8Rng, from: &[u32], k: usize| -> Vec<u32> {
            let k = k.min(from.len());
            index::sample(rng, from.len(), k)
                .into_iter()
                .map(|i| from[i])
                .collect()
        };
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        let context = sorted(
            [
                relevant.clone(),
                draw(&mut rng, &irrelevant, n_chunks - relevant.len()),
            ]
            .concat(),
        );
        let mut rejected = Vec::with_capacity(self.cfg.num_negatives);
        let mut strategy = Vec::with_capacity(self.cfg.num_negatives);
        for j in 0..self.cfg.num_negatives {
            if j % 2 == 1 && relevant.len() >= 2 {
                let keep = rng.random_range(1..relevant.len());
                let part = draw(&mut rng, &relevant, keep);
                let fill = draw(&mut rng, &irrelevant, n_chunks - keep);
                rejected.push(sorted([part, fill].concat()));
                strategy.push("partial");
            } else {
                rejected.push(sorted(draw(&mut rng, &irrelevant, n_chunks)));
                strategy.push("irrelevant");
            }
        }
        Ok(Selection {
            context,
            chosen: relevant,
            rejected,
            strategy,
        })
    }
}

impl Stage for SamplerStage {
    fn name(&self) -> &'static str {
        "sampler"
    }

    fn input_schema(&self) -> SchemaRef {
        logo_schemas::scored_schema()
    }

    fn output_schema(&self) -> SchemaRef {
        sampled_schema()
    }

    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let rows = ScoredRecord::from_batch(&batch)?;
        let this = &*self;
        let out = map_rows(rows, "sampler", ctx, |r| {
            match this.select(&r.key.sample_id, &r.chunk_scores) {
                Err(reason) => RowOutcome::Skip(reason),
                Ok(sel) => RowOutcome::Keep(SampledRecord {
                    key: r.key,
                    chunk_input_ids: r.chunk_input_ids,
                    chunk_text: r.chunk_text,
                    chunk_scores: r.chunk_scores,
                    context_chunk_ids: sel.context,
                    chosen_chunk_ids: sel.chosen,
                    rejected_chunk_ids: sel.rejected,
                    rejected_strategy: sel.strategy.into_iter().map(String::from).collect(),
                }),
            }
        })?;
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(n: usize, threshold: i32, m: usize) -> SamplerStage {
        SamplerStage::try_new(
            &SamplerConfig {
                num_chunks: n,
                threshold,
                num_negatives: m,
            },
            7,
        )
        .unwrap()
    }

    fn ascending(v: &[u32]) -> bool {
        v.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn hand_example() {
        // scores of 8 chunks, δ = 6: relevant = {1 (7), 4 (9), 6 (8)}; N = 5, M = 3.
        let s = stage(5, 6, 3);
        let scores = [0, 7, 6, 1, 9, 2, 8, 0];
        let sel = s.select("doc#q0", &scores).unwrap();
        assert_eq!(sel.chosen, vec![1, 4, 6]);
        assert_eq!(sel.context.len(), 5);
        assert!(ascending(&sel.context));
        for r in [1, 4, 6] {
            assert!(sel.context.contains(&r));
        }
        assert_eq!(sel.strategy, vec!["irrelevant", "partial", "irrelevant"]);
        // irrelevant-only: 5 chunks, none relevant (5 irrelevant chunks exist).
        assert_eq!(sel.rejected[0], vec![0, 2, 3, 5, 7]);
        // partial: 1 or 2 of the 3 relevant, filled to 5.
        let p = &sel.rejected[1];
        let k = p.iter().filter(|i| [1, 4, 6].contains(i)).count();
        assert!((1..3).contains(&k), "{p:?}");
        assert_eq!(p.len(), 5);
        assert!(ascending(p));
    }

    #[test]
    fn skips_are_reasoned() {
        let s = stage(4, 6, 2);
        assert_eq!(s.select("x", &[9, 9, 9]), Err(SKIP_TOO_FEW_CHUNKS));
        assert_eq!(s.select("x", &[6, 1, 2, 3]), Err(SKIP_NO_RELEVANT));
    }

    #[test]
    fn more_relevant_than_n_keeps_top_scores_in_order() {
        let s = stage(3, 0, 1);
        let sel = s.select("x", &[5, 9, 1, 9, 7, 2]).unwrap();
        assert_eq!(sel.chosen, vec![1, 3, 4]);
        assert_eq!(sel.context, vec![1, 3, 4]);
        // Every chunk scores above δ = 0, so no irrelevant chunk exists: the irrelevant-only
        // negative is answered without context.
        assert_eq!(sel.rejected[0], Vec::<u32>::new());
    }

    #[test]
    fn invariants_over_random_scores() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for n in [1usize, 4, 16] {
            let s = stage(n, 6, 4);
            for t in 0..300 {
                let len = n + rng.random_range(0..40);
                let scores: Vec<i32> = (0..len).map(|_| rng.random_range(0..12)).collect();
                let id = format!("s{t}");
                let Ok(sel) = s.select(&id, &scores) else {
                    continue;
                };
                let relevant: Vec<u32> = (0..len as u32)
                    .filter(|&i| scores[i as usize] > 6)
                    .collect();
                assert_eq!(sel.context.len(), n);
                assert!(ascending(&sel.context) && ascending(&sel.chosen));
                // every kept relevant chunk is in C'; all relevant when they fit.
                assert!(sel.chosen.iter().all(|c| sel.context.contains(c)));
                if relevant.len() <= n {
                    assert_eq!(sel.chosen, relevant);
                }
                for (r, st) in sel.rejected.iter().zip(&sel.strategy) {
                    assert!(ascending(r));
                    assert!(r.len() <= n);
                    let k = r.iter().filter(|c| sel.chosen.contains(c)).count();
                    match *st {
                        "irrelevant" => assert_eq!(k, 0),
                        "partial" => assert!(k >= 1 && k < sel.chosen.len()),
                        _ => unreachable!(),
                    }
                }
                // Same seed and id, same selection.
                assert_eq!(s.select(&id, &scores).unwrap(), sel);
            }
        }
    }
}
