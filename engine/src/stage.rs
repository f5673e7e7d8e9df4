//! The stage contract and what every stage shares: its context (the rejects file,
//! [`logo_formats::rejects`]) and the run counters.
//!
//! A stage is one file under `stages/` with one struct implementing [`Stage`]. Its
//! constructor (`try_new`) validates its configuration and fixes its output schema before any
//! data flows; [`Stage::process`] maps one input [`RecordBatch`] to zero or more output batches.
//! The pipeline ([`crate::pipeline`]) runs each stage on its own thread between bounded
//! channels, so memory stays bounded whatever the corpus size; stages use rayon inside a batch.
//!
//! Row-level problems (bad input, a sample that cannot be built) never fail a batch: the row
//! goes to [`Rejects`] (bad input) or is counted as skipped with a reason ([`RunStats::skip`]),
//! and the other rows go on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::Serialize;

use logo_formats::rejects::{Reject, Rejects};

use crate::error::{EngineError, Result};

/// One transform of the pipeline.
pub trait Stage: Send {
    /// Short name used in progress bars, the summary and rejects (`chunker`, `scorer`, ...).
    fn name(&self) -> &'static str;

    /// Schema of the batches [`Stage::process`] takes (a `logo_schemas` boundary schema):
    /// [`check_wiring`] compares it with what the stage before it emits, before any row flows.
    fn input_schema(&self) -> SchemaRef;

    /// Schema of every batch [`Stage::process`] returns (a `logo_schemas` boundary schema).
    fn output_schema(&self) -> SchemaRef;

    /// Transforms one batch. Bad rows go to `ctx.rejects` or `ctx.stats` and are left out of
    /// the output. Errors: only what stops the whole run (a model failure, a bug).
    fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>>;
}

/// Checks that each stage takes what the one before it emits (the first: `source`), field by
/// field (names, types, nullability; metadata aside), so a pipeline wired wrong stops before
/// any row flows (DataFusion's `try_new` checks of a plan). Errors: [`EngineError::Internal`]
/// naming both stages and the first field that differs.
pub fn check_wiring(source: &SchemaRef, stages: &[Box<dyn Stage>]) -> Result<()> {
    let mut from = ("source", source.clone());
    for stage in stages {
        let want = stage.input_schema();
        if want.fields() != from.1.fields() {
            let differs = want
                .fields()
                .iter()
                .zip(from.1.fields().iter())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("{a:?} vs {b:?}"))
                .unwrap_or_else(|| {
                    let (n, m) = (want.fields().len(), from.1.fields().len());
                    format!("{n} fields vs {m}")
                });
            return Err(EngineError::Internal(format!(
                "pipeline wiring: {} takes another schema than {} emits: {differs}",
                stage.name(),
                from.0
            )));
        }
        from = (stage.name(), stage.output_schema());
    }
    Ok(())
}

/// What a stage may touch besides its own state.
pub struct StageContext<'a> {
    /// The rejects file.
    pub rejects: &'a Rejects,
    /// Counters of the run.
    pub stats: &'a RunStats,
}

/// Counters of a run: rows in and out and busy time per stage, skipped samples by reason,
/// counted events.
#[derive(Debug, Default)]
pub struct RunStats {
    inner: Mutex<StatsSnapshot>,
}

impl StatsSnapshot {
    /// Adds every counter of `other` to these.
    pub fn add(&mut self, other: &StatsSnapshot) {
        fn add<V: Copy + std::ops::AddAssign + Default>(
            a: &mut BTreeMap<String, V>,
            b: &BTreeMap<String, V>,
        ) {
            for (k, v) in b {
                *a.entry(k.clone()).or_default() += *v;
            }
        }
        add(&mut self.rows_in, &other.rows_in);
        add(&mut self.rows_out, &other.rows_out);
        add(&mut self.seconds, &other.seconds);
        add(&mut self.tokens, &other.tokens);
        add(&mut self.skipped, &other.skipped);
        add(&mut self.events, &other.events);
    }
}

/// A copy of [`RunStats`] at one moment.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StatsSnapshot {
    /// Rows received per stage.
    pub rows_in: BTreeMap<String, u64>,
    /// Rows emitted per stage.
    pub rows_out: BTreeMap<String, u64>,
    /// Busy seconds per stage (wall time inside `process`). Empty in unit records and the
    /// manifest (timings go to the run log, `runs.jsonl`); left out of their JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seconds: BTreeMap<String, f64>,
    /// Tokens handled per stage (chunker: document tokens; generator: generated tokens).
    pub tokens: BTreeMap<String, u64>,
    /// Samples skipped, keyed `stage: reason`.
    pub skipped: BTreeMap<String, u64>,
    /// Other counted events, keyed `stage: event` (generator: `retries` of server requests,
    /// `regenerations after length`, `regenerations after a duplicate`). Retries depend on
    /// what the servers did during this output's runs, so unlike the other counters they may
    /// differ between an interrupted run and an uninterrupted one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, u64>,
}

impl RunStats {
    /// Counts one sample skipped by `stage` for `reason` (e.g. `sampler`, `no relevant chunk`).
    pub fn skip(&self, stage: &str, reason: &str) {
        *self
            .inner
            .lock()
            .expect("stats lock")
            .skipped
            .entry(format!("{stage}: {reason}"))
            .or_default() += 1;
    }

    /// Adds `n` to the counter of `event` of `stage` (see [`StatsSnapshot::events`]).
    pub fn count(&self, stage: &str, event: &str, n: u64) {
        if n == 0 {
            return;
        }
        *self
            .inner
            .lock()
            .expect("stats lock")
            .events
            .entry(format!("{stage}: {event}"))
            .or_default() += n;
    }

    /// Adds `n` tokens handled by `stage`.
    pub fn add_tokens(&self, stage: &str, n: u64) {
        *self
            .inner
            .lock()
            .expect("stats lock")
            .tokens
            .entry(stage.into())
            .or_default() += n;
    }

    /// Records one `process` call of `stage`.
    pub fn record(&self, stage: &str, rows_in: u64, rows_out: u64, busy: Duration) {
        let mut s = self.inner.lock().expect("stats lock");
        *s.rows_in.entry(stage.into()).or_default() += rows_in;
        *s.rows_out.entry(stage.into()).or_default() += rows_out;
        *s.seconds.entry(stage.into()).or_default() += busy.as_secs_f64();
    }

    /// Adds every counter of `snap`.
    pub fn add(&self, snap: &StatsSnapshot) {
        self.inner.lock().expect("stats lock").add(snap);
    }

    /// The counters now, cleared afterwards.
    pub fn take(&self) -> StatsSnapshot {
        std::mem::take(&mut *self.inner.lock().expect("stats lock"))
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().expect("stats lock").clone()
    }
}

/// The output of a stage: one batch of `rows`, or none when every row was left out.
/// Errors: [`EngineError::Schema`] when a value does not fit its column.
pub fn emit<R: logo_schemas::Record>(rows: &[R]) -> Result<Vec<RecordBatch>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![R::to_batch(rows)?])
}

/// What a stage makes of one row: the row-level result of every stage, in place of nested
/// `Result<Option<_>, Reject>`s. Run-stopping failures stay the outer [`Result`].
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome<T> {
    /// The row's output record.
    Keep(T),
    /// Left out on purpose (not bad input), counted as `"{stage}: {reason}"` in the run's
    /// skip counts ([`RunStats::skip`]).
    Skip(&'static str),
    /// Bad input: the row goes to `rejects.jsonl` ([`Rejects::push`]).
    Reject(Reject),
}

impl<T> RowOutcome<T> {
    /// Counts a skip under `stage` or writes a reject, and returns the kept record.
    /// Errors: [`EngineError::Io`] from the rejects file.
    pub fn settle(self, stage: &str, ctx: &StageContext) -> Result<Option<T>> {
        match self {
            RowOutcome::Keep(t) => Ok(Some(t)),
            RowOutcome::Skip(reason) => {
                ctx.stats.skip(stage, reason);
                Ok(None)
            }
            RowOutcome::Reject(reject) => {
                ctx.rejects.push(reject)?;
                Ok(None)
            }
        }
    }
}

/// Runs `f` on every row in parallel (rayon) and settles the outcomes in input order
/// ([`RowOutcome::settle`] under `stage`): the kept records, in order. Errors:
/// [`EngineError::Io`] from the rejects file.
pub fn map_rows<I, O, F>(rows: Vec<I>, stage: &str, ctx: &StageContext, f: F) -> Result<Vec<O>>
where
    I: Send,
    O: Send,
    F: Fn(I) -> RowOutcome<O> + Sync + Send,
{
    use rayon::prelude::*;
    let results: Vec<RowOutcome<O>> = rows.into_par_iter().map(f).collect();
    let mut kept = Vec::with_capacity(results.len());
    for r in results {
        kept.extend(r.settle(stage, ctx)?);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SamplerConfig, ScorerConfig};
    use crate::stages::{SamplerStage, ScorerStage};

    fn scorer() -> Box<dyn Stage> {
        Box::new(ScorerStage::try_new(&ScorerConfig::default()).unwrap())
    }

    fn sampler() -> Box<dyn Stage> {
        Box::new(SamplerStage::try_new(&SamplerConfig::default(), 1).unwrap())
    }

    /// chunks → scorer → sampler is wired right; the sampler straight after the chunks, or the
    /// scorer after itself, is refused naming both stages.
    #[test]
    fn a_pipeline_wired_wrong_is_refused_before_any_row() {
        let chunks = logo_schemas::chunks_schema();
        check_wiring(&chunks, &[scorer(), sampler()]).unwrap();
        let err = check_wiring(&chunks, &[sampler()]).unwrap_err().to_string();
        assert!(
            err.contains("sampler takes another schema than source emits"),
            "{err}"
        );
        let err = check_wiring(&chunks, &[scorer(), scorer()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scorer takes another schema than scorer emits"),
            "{err}"
        );
    }

    /// Keep returns the record; Skip counts `stage: reason`; Reject writes one reject.
    #[test]
    fn row_outcomes_settle_into_records_skips_and_rejects() {
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let ctx = StageContext {
            rejects: &rejects,
            stats: &stats,
        };
        let reject = Reject {
            stage: "s".into(),
            file: "f.jsonl".into(),
            row: 3,
            field: Some("question".into()),
            reason: "empty".into(),
        };
        let kept = map_rows(vec![1, 2, 3, 4], "s", &ctx, |i| match i {
            2 => RowOutcome::Skip("even"),
            3 => RowOutcome::Reject(reject.clone()),
            _ => RowOutcome::Keep(i * 10),
        })
        .unwrap();
        assert_eq!(kept, vec![10, 40]);
        assert_eq!(stats.snapshot().skipped.get("s: even"), Some(&1));
        assert_eq!(rejects.total(), 1);
    }
}
