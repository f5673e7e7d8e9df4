//! The in-process backend: W ranks as threads sharing a barrier and one slot per rank. It runs
//! the multi-rank code path without a GPU or a network, for tests.

use std::sync::{Arc, Barrier, Mutex};

use super::Collective;
use crate::error::{Result, TrainerError};

struct Shared {
    barrier: Barrier,
    /// Each rank's contribution to the current collective.
    slots: Vec<Mutex<Vec<f32>>>,
    /// Rank 0's bytes of the current broadcast.
    bytes: Mutex<Vec<u8>>,
}

/// One rank of an in-process group made by [`Threads::group`]. Sums are taken in rank order
/// (`((x₀ + x₁) + x₂) …`), the same on every rank and the same order as [`super::Tcp`].
/// A rank that stops calling collectives (a panicking thread) blocks the others: meant for
/// tests, where the harness reports the panic.
pub struct Threads {
    rank: usize,
    world_size: usize,
    shared: Arc<Shared>,
}

impl Threads {
    /// The W ranks of a new group, rank `r` at index `r`; move each into its own thread.
    /// Panics if `world_size` is 0.
    pub fn group(world_size: usize) -> Vec<Threads> {
        assert!(world_size > 0, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            barrier: Barrier::new(world_size),
            slots: (0..world_size).map(|_| Mutex::new(Vec::new())).collect(),
            bytes: Mutex::new(Vec::new()),
        });
        (0..world_size)
            .map(|rank| Threads {
                rank,
                world_size,
                shared: shared.clone(),
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn backend(&self) -> &'static str {
        "threads"
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        *lock(&self.shared.slots[self.rank]) = buf.to_vec();
        self.shared.barrier.wait();
        let mut sum = lock(&self.shared.slots[0]).clone();
        let mut mismatch = None;
        for r in 1..self.world_size {
            let slot = lock(&self.shared.slots[r]);
            if slot.len() != sum.len() {
                mismatch = Some((r, slot.len()));
                break;
            }
            for (s, x) in sum.iter_mut().zip(slot.iter()) {
                *s += *x;
            }
        }
        // Nobody overwrites a slot before everyone has read them all.
        self.shared.barrier.wait();
        if let Some((r, len)) = mismatch {
            return Err(TrainerError::Dist(format!(
                "all_reduce: rank 0 sent {} values, rank {r} sent {len}",
                sum.len()
            )));
        }
        buf.copy_from_slice(&sum);
        Ok(())
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>) -> Result<()> {
        if self.rank == 0 {
            *lock(&self.shared.bytes) = bytes.clone();
        }
        self.shared.barrier.wait();
        if self.rank != 0 {
            *bytes = lock(&self.shared.bytes).clone();
        }
        self.shared.barrier.wait();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_threads_sum_and_broadcast() {
        let handles: Vec<_> = Threads::group(3)
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    // rank r contributes [r, 10 r, 1]: sums [0+1+2, 0+10+20, 3] = [3, 30, 3].
                    let mut v = vec![r, 10.0 * r, 1.0];
                    c.all_reduce_sum_f32(&mut v).unwrap();
                    let mut b = if c.rank() == 0 {
                        b"hello".to_vec()
                    } else {
                        vec![]
                    };
                    c.broadcast_bytes(&mut b).unwrap();
                    c.barrier().unwrap();
                    (v, b)
                })
            })
            .collect();
        for h in handles {
            let (v, b) = h.join().unwrap();
            assert_eq!(v, vec![3.0, 30.0, 3.0]);
            assert_eq!(b, b"hello");
        }
    }
}
