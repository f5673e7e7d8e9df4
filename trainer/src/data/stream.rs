//! [`ExampleStream`]: the seeded, endless stream of training examples over the row groups of
//! a data folder, and each rank's share of it.

use logo_schemas::col;
use rand::Rng;

use super::{read_row_group, Example, RowGroupRef};
use crate::error::{Result, TrainerError};

/// An endless, seeded stream of examples over some row groups: each epoch visits the row
/// groups in a seeded order and passes rows through a shuffle buffer of `buffer` rows.
///
/// Data parallelism splits by rows, not by row groups ([`ExampleStream::for_rank`]): every
/// rank runs the same global stream (same groups, same seed) and keeps the examples at
/// positions `rank, rank + W, rank + 2W, …`. So W ranks taking b examples each per step see
/// exactly the examples one rank with batch W·b would; any data with at least W rows feeds W
/// ranks; within a pass over the data the ranks' shares differ by at most one example, and a
/// pass ends on every rank together. The price: each rank reads and checks every row group.
pub struct ExampleStream {
    groups: Vec<RowGroupRef>,
    order: Vec<usize>,
    next_group: usize,
    buffer: Vec<Example>,
    capacity: usize,
    rng: rand_chacha::ChaCha8Rng,
    num_negatives: usize,
    vocab_size: Option<usize>,
    /// This rank and the number of ranks ([`ExampleStream::for_rank`]); `(0, 1)` by default.
    rank: usize,
    world_size: usize,
    /// Examples of the global stream drawn so far (every rank's).
    position: u64,
    /// Completed passes over the data.
    pub epoch: usize,
}

impl ExampleStream {
    /// `groups` must be non-empty. `buffer`: shuffle-buffer rows (≥ 1). `num_negatives`: the M
    /// every example must have.
    pub fn new(groups: Vec<RowGroupRef>, buffer: usize, seed: u64, num_negatives: usize) -> Self {
        use rand::SeedableRng;
        let mut s = Self {
            order: Vec::new(),
            groups,
            next_group: 0,
            buffer: Vec::new(),
            capacity: buffer.max(1),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            num_negatives,
            vocab_size: None,
            rank: 0,
            world_size: 1,
            position: 0,
            epoch: 0,
        };
        s.reshuffle_groups();
        s
    }

    /// Rejects, as [`TrainerError::Input`] naming the file, sample and column, any token id
    /// `≥ vocab_size` (the model's `vocab_size`): data tokenized for another model.
    pub fn with_vocab_size(mut self, vocab_size: usize) -> Self {
        self.vocab_size = Some(vocab_size);
        self
    }

    /// This stream as rank `rank` of `world_size` (see the type's doc): the examples at the
    /// global positions ≡ `rank` (mod `world_size`). Panics unless `rank < world_size`.
    pub fn for_rank(mut self, rank: usize, world_size: usize) -> Self {
        assert!(rank < world_size, "rank {rank} of {world_size}");
        self.rank = rank;
        self.world_size = world_size;
        self
    }

    fn reshuffle_groups(&mut self) {
        use rand::seq::SliceRandom;
        self.order = (0..self.groups.len()).collect();
        self.order.shuffle(&mut self.rng);
        self.next_group = 0;
    }

    fn refill(&mut self) -> Result<()> {
        while self.buffer.len() < self.capacity {
            if self.next_group == self.order.len() {
                if !self.buffer.is_empty() {
                    return Ok(()); // drain the buffer before the next epoch starts
                }
                self.epoch += 1;
                self.reshuffle_groups();
            }
            let rg = &self.groups[self.order[self.next_group]];
            self.next_group += 1;
            let rows = read_row_group(rg)?;
            for e in &rows {
                if let Some(v) = self.vocab_size {
                    let columns = [
                        (col::PROMPT_INPUT_IDS, &e.prompt_ids),
                        (col::CHOSEN_INPUT_IDS, &e.chosen_ids),
                    ];
                    let rejected = e.rejected_ids.iter().map(|r| (col::REJECTED_INPUT_IDS, r));
                    for (column, ids) in columns.into_iter().chain(rejected) {
                        if let Some(&t) = ids.iter().find(|&&t| t < 0 || t as usize >= v) {
                            return Err(TrainerError::Input {
                                path: rg.path.clone(),
                                message: format!(
                                    "sample {}: field {column}: token id {t} is outside the \
                                     model's vocabulary of {v} (data tokenized for another model?)",
                                    e.sample_id
                                ),
                            });
                        }
                    }
                }
                if e.rejected_ids.len() != self.num_negatives {
                    return Err(TrainerError::Input {
                        path: rg.path.clone(),
                        message: format!(
                            "sample {}: field rejected_input_ids: {} rejected responses, expected M = {}",
                            e.sample_id,
                            e.rejected_ids.len(),
                            self.num_negatives
                        ),
                    });
                }
            }
            self.buffer.extend(rows);
        }
        Ok(())
    }

    /// This rank's next example. Errors: a row group that fails to read or check.
    pub fn next_example(&mut self) -> Result<Example> {
        loop {
            let e = self.next_global()?;
            let position = self.position;
            self.position += 1;
            if position % self.world_size as u64 == self.rank as u64 {
                return Ok(e);
            }
        }
    }

    /// The global stream's next example (every rank draws the same).
    fn next_global(&mut self) -> Result<Example> {
        if self.buffer.is_empty() {
            self.refill()?;
            if self.buffer.is_empty() {
                return Err(TrainerError::Internal("data stream has no rows".into()));
            }
        }
        let i = self.rng.random_range(0..self.buffer.len());
        let e = self.buffer.swap_remove(i);
        if self.buffer.len() < self.capacity / 2 && self.next_group < self.order.len() {
            self.refill()?;
        }
        Ok(e)
    }

    /// The next `n` examples.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<Example>> {
        (0..n).map(|_| self.next_example()).collect()
    }
}
