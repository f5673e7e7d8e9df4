//! Data parallelism splits by rows: W ranks that each take their examples of the global stream
//! (`ExampleStream::for_rank`) together take exactly the global stream's examples, in step;
//! any data with at least W samples feeds W ranks, shares within a pass differ by at most one
//! sample, and a pass ends on every rank together.

mod common;

use std::path::Path;

use common::*;
use logo_schemas::SCHEMA_VERSION;
use logo_trainer::data::{ExampleStream, TrainingData};

/// `rows[i]` samples per file, one row group per file; sample ids `doc:0`, `doc:1`, … in file
/// order.
fn data(dir: &Path, rows: &[u32]) -> TrainingData {
    let mut next = 0;
    for (f, &n) in rows.iter().enumerate() {
        let samples: Vec<_> = (next..next + n).map(sample).collect();
        next += n;
        write_parquet(
            &dir.join(format!("{f}.parquet")),
            &samples,
            Some(SCHEMA_VERSION),
        );
    }
    TrainingData::open(dir).unwrap()
}

fn stream(data: &TrainingData, rank: usize, world: usize) -> ExampleStream {
    ExampleStream::new(data.row_groups().to_vec(), 4, 7, data.num_negatives()).for_rank(rank, world)
}

/// The first `n` sample ids of `rank`'s stream.
fn ids(data: &TrainingData, rank: usize, world: usize, n: usize) -> Vec<String> {
    let mut s = stream(data, rank, world);
    (0..n)
        .map(|_| s.next_example().unwrap().sample_id)
        .collect()
}

/// The ranks' streams interleave to the one-rank stream: rank r's k-th example is the global
/// k·W + r-th; so the first pass of N samples gives the ranks ⌈N/W⌉ or ⌊N/W⌋ samples each,
/// every sample once, and both ranks then start the second pass.
fn check(data: &TrainingData, n: usize, world: usize) {
    let global = ids(data, 0, 1, 3 * n);
    let per_rank: Vec<Vec<String>> = (0..world).map(|r| ids(data, r, world, n)).collect();
    for (r, mine) in per_rank.iter().enumerate() {
        for (k, id) in mine.iter().enumerate() {
            assert_eq!(id, &global[k * world + r], "rank {r}, example {k}");
        }
    }
    // The first pass: every sample exactly once over the ranks.
    let mut first: Vec<String> = (0..n)
        .map(|i| per_rank[i % world][i / world].clone())
        .collect();
    first.sort();
    let mut all: Vec<String> = (0..n as u32).map(|i| format!("doc:{i}#q0")).collect();
    all.sort();
    assert_eq!(first, all, "one pass over {n} samples on {world} ranks");
}

#[test]
fn three_samples_feed_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path(), &[3]);
    assert_eq!(d.row_groups().len(), 1);
    check(&d, 3, 2);
    // Rank 0 takes global examples 0 and 2 of the first pass, rank 1 example 1.
    let global = ids(&d, 0, 1, 4);
    assert_eq!(ids(&d, 0, 2, 2), vec![global[0].clone(), global[2].clone()]);
    assert_eq!(ids(&d, 1, 2, 2), vec![global[1].clone(), global[3].clone()]);
}

#[test]
fn two_row_groups_of_unequal_size_feed_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path(), &[4, 1]);
    let sizes: Vec<usize> = d.row_groups().iter().map(|g| g.rows).collect();
    assert_eq!(sizes, vec![4, 1]);
    check(&d, 5, 2);
    check(&d, 5, 3);
}
