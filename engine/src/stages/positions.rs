//! Index synthesizer: synthetic position ids that stretch a real context of k tokens to a
//! virtual context of K (paper Eq. 4 and Appendix D).
//!
//! The prompt is a list of segments (template prefix, the N chunks of C', question with the
//! assistant header; `prompt_segments`). Let R be the longest response of the sample (chosen
//! or rejected, end-of-turn token included); the responses continue after the last prompt
//! position, so the prompt may use positions `[0, K − R)`, i.e. `E = K − R − k` extra
//! positions beyond its own k.
//!
//! - **continuous** (Appendix D, Fig. 10a): one bias per segment; positions are consecutive
//!   inside a segment. The biases are the order statistics of S − 1 integers drawn uniformly
//!   from `[0, E]`, the first segment's bias is 0. This is Eq. 4's `b ~ U(·)` per chunk with
//!   the draws sorted, so the ids stay strictly increasing while gaps spread uniformly over K.
//! - **sparse** (Fig. 10b): one bias per token: the k positions are a uniform random subset of
//!   `[0, K − R)` containing 0, in increasing order.
//!
//! - **paper** (`positions.scheme: paper`, replaces continuous): Eq. 4 as printed, one bias
//!   per segment drawn independently, `b_c ~ U(1, ⌊c·E/(S − 1)⌋)` for segment c = 1..S − 1
//!   (the upper bound grows with the chunk index; a bound below 1 gives 0), `b_0 = 0`.
//!   Positions are consecutive inside a segment and the last segment can reach `E`, but
//!   consecutive biases are not ordered, so ids may repeat or go back across a segment border
//!   (the trainer accepts that only for rows marked `paper`).
//! - **off** (`positions.scheme: off`): no synthesis, ids `0..k` for every sample (the
//!   ablation without Eq. 4).
//!
//! A sample uses continuous (or paper) with probability `continuous_ratio` (0.9: the paper's
//! 9:1), else sparse. `positions.scheme: sorted` (the default) is the order-statistics
//! variant above. All draws depend only on the run seed and the sample id. Invariants
//! (tested): first id 0, max + R < K, contiguous inside segments for continuous and paper,
//! strictly increasing for continuous, sparse and off.
//!
//! Input [`logo_schemas::generations_schema`], output [`logo_schemas::training_schema`].
//! A sample longer than K is skipped with a counted reason.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use logo_schemas::{training_schema, GeneratedRecord, Record, TrainingSample};
use rand::seq::index;
use rand::Rng;

use crate::config::{PositionScheme, PositionsConfig};
use crate::error::Result;
use crate::stage::{emit, map_rows, RowOutcome, Stage, StageContext};
use crate::stages::seed::rng_for;

/// Reason counted when prompt + longest response does not fit in K.
pub const SKIP_TOO_LONG: &str = "prompt + response longer than target_length";

/// Position synthesis strategy (Appendix D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One bias per segment.
    Continuous,
    /// One bias per token.
    Sparse,
    /// One independent bias per segment, Eq. 4 as printed (`positions.scheme: paper`).
    Paper,
    /// Plain `0..k` (`positions.scheme: off`).
    Off,
}

impl Strategy {
    /// The name written to `position_strategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Continuous => "continuous",
            Strategy::Sparse => "sparse",
            Strategy::Paper => "paper",
            Strategy::Off => "off",
        }
    }
}

/// The index synthesizer stage.
pub struct PositionsStage {
    cfg: PositionsConfig,
    seed: u64,
}

impl PositionsStage {
    /// Errors: none beyond the config's own validation.
    pub fn try_new(cfg: &PositionsConfig, seed: u64) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            seed,
        })
    }

    /// Synthesises the prompt's position ids.
    ///
    /// `segments`: lengths of the prompt's segments (sum k, tokens). `reserve`: the longest
    /// response in tokens R. Returns `[k]` position ids and the strategy used, or `None` when
    /// `k + reserve > K`.
    pub fn synthesize(
        &self,
        sample_id: &str,
        segments: &[u32],
        reserve: usize,
    ) -> Option<(Vec<u32>, Strategy)> {
        let mut rng = rng_for(self.seed, &[sample_id, "positions"]);
        let strategy = match (self.cfg.scheme, rng.random_bool(self.cfg.continuous_ratio)) {
            (PositionScheme::Off, _) => Strategy::Off,
            (_, false) => Strategy::Sparse,
            (PositionScheme::Sorted, true) => Strategy::Continuous,
            (PositionScheme::Paper, true) => Strategy::Paper,
        };
        let ids = positions(
            &mut rng,
            strategy,
            segments,
            self.cfg.target_length,
            reserve,
        )?;
        Some((ids, strategy))
    }
}

/// Position ids for `segments` under `strategy` in `[0, target_length − reserve)`; `None` when
/// the real tokens do not fit. See the module doc for the distributions.
pub fn positions(
    rng: &mut impl Rng,
    strategy: Strategy,
    segments: &[u32],
    target_length: usize,
    reserve: usize,
) -> Option<Vec<u32>> {
    let k: usize = segments.iter().map(|&s| s as usize).sum();
    let room = target_length.checked_sub(reserve)?;
    let extra = room.checked_sub(k)?;
    if k == 0 {
        return Some(vec![]);
    }
    match strategy {
        Strategy::Continuous => {
            let mut biases: Vec<usize> = (1..segments.len())
                .map(|_| rng.random_range(0..=extra))
                .collect();
            biases.sort_unstable();
            biases.insert(0, 0);
            let mut out = Vec::with_capacity(k);
            let mut offset = 0usize;
            for (&len, &b) in segments.iter().zip(&biases) {
                out.extend((0..len as usize).map(|t| (offset + t + b) as u32));
                offset += len as usize;
            }
            Some(out)
        }
        Strategy::Paper => {
            let s = segments.len();
            let mut out = Vec::with_capacity(k);
            let mut offset = 0usize;
            for (c, &len) in segments.iter().enumerate() {
                let b = match c {
                    0 => 0,
                    c => {
                        let hi = c * extra / (s - 1);
                        if hi >= 1 {
                            rng.random_range(1..=hi)
                        } else {
                            0
                        }
                    }
                };
                out.extend((0..len as usize).map(|t| (offset + t + b) as u32));
                offset += len as usize;
            }
            Some(out)
        }
        Strategy::Off => Some((0..k as u32).collect()),
        Strategy::Sparse => {
            // k − 1 distinct positions from [1, room), plus 0.
            let mut picked: Vec<u32> = index::sample(rng, room - 1, k - 1)
                .into_iter()
                .map(|i| i as u32 + 1)
                .collect();
            picked.sort_unstable();
            picked.insert(0, 0);
            Some(picked)
        }
    }
}

impl Stage for PositionsStage {
    fn name(&self) -> &'static str {
        "positions"
    }

    fn input_schema(&self) -> SchemaRef {
        logo_schemas::generations_schema()
    }

    fn output_schema(&self) -> SchemaRef {
        training_schema()
    }

    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let rows = GeneratedRecord::from_batch(&batch)?;
        let this = &*self;
        let out = map_rows(rows, "positions", ctx, |g| {
            let reserve = g
                .rejected_input_ids
                .iter()
                .map(Vec::len)
                .chain([g.chosen_input_ids.len()])
                .max()
                .unwrap_or(0);
            let Some((ids, strategy)) =
                this.synthesize(&g.key.sample_id, &g.prompt_segments, reserve)
            else {
                return RowOutcome::Skip(SKIP_TOO_LONG);
            };
            RowOutcome::Keep(TrainingSample {
                key: g.key,
                context_chunk_ids: g.context_chunk_ids,
                context_chunk_scores: g.context_chunk_scores,
                prompt_input_ids: g.prompt_input_ids,
                prompt_segments: g.prompt_segments,
                chosen: g.chosen,
                chosen_input_ids: g.chosen_input_ids,
                chosen_origin: g.chosen_origin,
                rejected: g.rejected,
                rejected_input_ids: g.rejected_input_ids,
                rejected_strategy: g.rejected_strategy,
                generator: g.generator,
                generator_settings: g.generator_settings,
                chosen_chunk_ids: g.chosen_chunk_ids,
                rejected_chunk_ids: g.rejected_chunk_ids,
                chosen_finish_reason: g.chosen_finish_reason,
                rejected_finish_reason: g.rejected_finish_reason,
                chosen_stop_token_id: g.chosen_stop_token_id,
                rejected_stop_token_id: g.rejected_stop_token_id,
                chosen_seed: g.chosen_seed,
                rejected_seed: g.rejected_seed,
                generator_model: g.generator_model,
                prompt_position_ids: ids,
                position_strategy: strategy.as_str().into(),
                target_length: this.cfg.target_length as u32,
            })
        })?;
        emit(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn strictly_increasing(v: &[u32]) -> bool {
        v.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn no_room_means_identity_positions() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for s in [
            Strategy::Continuous,
            Strategy::Sparse,
            Strategy::Paper,
            Strategy::Off,
        ] {
            let p = positions(&mut rng, s, &[2, 3, 1], 10, 4).unwrap();
            assert_eq!(p, vec![0, 1, 2, 3, 4, 5]);
        }
        assert_eq!(
            positions(&mut rng, Strategy::Sparse, &[2, 3, 1], 10, 5),
            None
        );
    }

    #[test]
    fn invariants_for_both_strategies() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let segments = [5u32, 16, 16, 16, 16, 7];
        let k: usize = segments.iter().map(|&s| s as usize).sum();
        for strategy in [Strategy::Continuous, Strategy::Sparse] {
            for _ in 0..2000 {
                let target = k + 9 + rng.random_range(0..5000);
                let p = positions(&mut rng, strategy, &segments, target, 9).unwrap();
                assert_eq!(p.len(), k);
                assert_eq!(p[0], 0);
                assert!(strictly_increasing(&p));
                assert!((*p.last().unwrap() as usize) + 9 < target);
                if strategy == Strategy::Continuous {
                    let mut at = 0;
                    for &len in &segments {
                        let seg = &p[at..at + len as usize];
                        assert!(seg.windows(2).all(|w| w[1] == w[0] + 1), "{seg:?}");
                        at += len as usize;
                    }
                }
            }
        }
    }

    #[test]
    fn mix_is_nine_to_one_within_two_percent() {
        let stage = PositionsStage::try_new(&PositionsConfig::default(), 42).unwrap();
        let continuous = (0..10_000)
            .filter(|i| {
                let (_, s) = stage
                    .synthesize(&format!("s{i}"), &[4, 8, 8, 4], 16)
                    .unwrap();
                s == Strategy::Continuous
            })
            .count();
        let ratio = continuous as f64 / 10_000.0;
        assert!((ratio - 0.9).abs() <= 0.02, "continuous ratio {ratio}");
    }

    /// Relative distances between prompt tokens over many samples should cover [0, K): the
    /// point of Eq. 4 is that a short real context trains every distance up to K. Coverage is
    /// measured on 64 buckets of width K/64 and printed.
    #[test]
    fn relative_distances_cover_zero_to_k() {
        let k_target = 4096usize;
        let segments = [8u32, 32, 32, 32, 32, 8];
        for (strategy, ratio) in [(Strategy::Continuous, 1.0), (Strategy::Sparse, 0.0)] {
            let stage = PositionsStage::try_new(
                &PositionsConfig {
                    target_length: k_target,
                    continuous_ratio: ratio,
                    ..PositionsConfig::default()
                },
                1,
            )
            .unwrap();
            let mut buckets = [0u64; 64];
            let mut max_d = 0;
            for i in 0..300 {
                let (p, s) = stage.synthesize(&format!("s{i}"), &segments, 16).unwrap();
                assert_eq!(s, strategy);
                for a in 0..p.len() {
                    for b in a..p.len() {
                        let d = (p[b] - p[a]) as usize;
                        max_d = max_d.max(d);
                        buckets[d * 64 / k_target] += 1;
                    }
                }
            }
            let covered = buckets.iter().filter(|&&c| c > 0).count();
            println!(
                "{}: {covered}/64 distance buckets of width {} covered, max distance {max_d} of K = {k_target}",
                strategy.as_str(),
                k_target / 64
            );
            // Distances reach K − R − 1 at most; every bucket below that is hit.
            assert_eq!(covered, 64, "{strategy:?}: {buckets:?}");
            assert!(
                max_d >= k_target - 16 - 64,
                "{strategy:?}: max distance {max_d}"
            );
        }
    }

    #[test]
    fn same_seed_same_positions() {
        let a = PositionsStage::try_new(&PositionsConfig::default(), 5).unwrap();
        let b = PositionsStage::try_new(&PositionsConfig::default(), 5).unwrap();
        assert_eq!(
            a.synthesize("x", &[3, 9, 2], 4),
            b.synthesize("x", &[3, 9, 2], 4)
        );
        assert_ne!(
            a.synthesize("x", &[3, 9, 2], 4),
            a.synthesize("y", &[3, 9, 2], 4)
        );
    }

    /// Eq. 4 as printed on segments (2, 3, 1), K = 10, R = 2: k = 6, E = 2, S − 1 = 2, so
    /// b_1 ~ U(1, 1) = 1 and b_2 ~ U(1, 2): ids (0, 1, 3, 4, 5, 5 + b_2), i.e. 6 or 7, and
    /// both occur over seeds.
    #[test]
    fn paper_draw_by_hand() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let p = positions(&mut rng, Strategy::Paper, &[2, 3, 1], 10, 2).unwrap();
            assert_eq!(&p[..5], &[0, 1, 3, 4, 5], "seed {seed}");
            assert!(p[5] == 6 || p[5] == 7, "seed {seed}: {p:?}");
            seen.insert(p[5]);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![6, 7]);
        // Seed 0, the stage's own RNG family: a fixed, recorded draw.
        let stage = PositionsStage::try_new(
            &PositionsConfig {
                target_length: 10,
                continuous_ratio: 1.0,
                scheme: PositionScheme::Paper,
            },
            0,
        )
        .unwrap();
        let (p, s) = stage.synthesize("x", &[2, 3, 1], 2).unwrap();
        assert_eq!(s, Strategy::Paper);
        assert_eq!(&p[..5], &[0, 1, 3, 4, 5]);
    }

    /// Each paper bias b_c covers exactly [1, ⌊c·E/(S − 1)⌋] with mean (1 + hi)/2 (within 3 %
    /// over 4000 draws); segments stay contiguous, every id + R < K, and, unlike the sorted
    /// variant, ids go back across a border in most samples (printed).
    #[test]
    fn paper_bias_ranges_and_invariants() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let segments = [5u32, 16, 16, 16, 16, 7];
        let k: usize = segments.iter().map(|&s| s as usize).sum();
        let (target, reserve) = (k + 9 + 1000, 9);
        let extra = target - reserve - k; // E = 1000
        let draws = 4000;
        let mut sums = [0f64; 6];
        let mut lo = [usize::MAX; 6];
        let mut hi = [0usize; 6];
        let mut backwards = 0;
        for _ in 0..draws {
            let p = positions(&mut rng, Strategy::Paper, &segments, target, reserve).unwrap();
            assert_eq!(p.len(), k);
            assert_eq!(p[0], 0);
            assert!((*p.iter().max().unwrap() as usize) + reserve < target);
            let mut at = 0;
            for (c, &len) in segments.iter().enumerate() {
                let seg = &p[at..at + len as usize];
                assert!(seg.windows(2).all(|w| w[1] == w[0] + 1), "{seg:?}");
                let b = seg[0] as usize - at;
                sums[c] += b as f64;
                lo[c] = lo[c].min(b);
                hi[c] = hi[c].max(b);
                at += len as usize;
            }
            backwards += usize::from(!strictly_increasing(&p));
        }
        assert_eq!((lo[0], hi[0]), (0, 0));
        for c in 1..6 {
            let bound = c * extra / 5; // 200, 400, 600, 800, 1000
            assert_eq!((lo[c], hi[c]), (1, bound), "segment {c}");
            let mean = sums[c] / draws as f64;
            let expect = (1 + bound) as f64 / 2.0;
            assert!(
                (mean - expect).abs() < 0.03 * expect,
                "segment {c}: mean {mean} vs {expect}"
            );
        }
        println!("paper: {backwards}/{draws} samples with ids going back across a segment border");
        assert!(backwards > draws / 2, "{backwards}");
    }

    #[test]
    fn off_scheme_is_plain_positions_for_every_sample() {
        let stage = PositionsStage::try_new(
            &PositionsConfig {
                target_length: 4096,
                continuous_ratio: 0.5,
                scheme: PositionScheme::Off,
            },
            1,
        )
        .unwrap();
        for i in 0..50 {
            let (p, s) = stage.synthesize(&format!("s{i}"), &[3, 8, 2], 16).unwrap();
            assert_eq!(s, Strategy::Off);
            assert_eq!(p, (0..13).collect::<Vec<u32>>());
        }
        assert_eq!(stage.synthesize("x", &[3, 8, 2], 4084), None);
    }

    /// The default scheme is `sorted` and writes what it always did (seeded ids unchanged by
    /// the option: the same draws as [`positions`] with `Continuous`).
    #[test]
    fn sorted_is_the_default_scheme() {
        assert_eq!(PositionsConfig::default().scheme, PositionScheme::Sorted);
        let stage = PositionsStage::try_new(
            &PositionsConfig {
                continuous_ratio: 1.0,
                ..PositionsConfig::default()
            },
            42,
        )
        .unwrap();
        let (p, s) = stage.synthesize("doc#q0", &[4, 8, 8, 4], 16).unwrap();
        assert_eq!(s, Strategy::Continuous);
        let mut rng = rng_for(42, &["doc#q0", "positions"]);
        let _ = rng.random_bool(1.0);
        let again = positions(&mut rng, Strategy::Continuous, &[4, 8, 8, 4], 65536, 16).unwrap();
        assert_eq!(p, again);
        assert!(strictly_increasing(&p));
    }
}
