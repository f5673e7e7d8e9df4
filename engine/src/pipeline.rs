//! The streaming run: source → [questions] → chunker → scorer → sampler → generator →
//! positions → Parquet, each stage on its own thread, joined by bounded crossbeam channels of
//! `runtime.channel_capacity` batches, so memory stays bounded whatever the corpus size.
//!
//! The input is split into units ([`crate::source::UnitPlan`], `sink.unit_rows` records
//! each); batches never mix units, and the end of each unit flows down the channels behind its
//! batches with the unit's rejects and counters, so the sink commits one Parquet part per unit
//! ([`crate::sink::Output`]). A rerun on the same output skips the committed units; a shard
//! (`--shard I/N`, or Slurm's array variables) takes the units whose index ≡ I (mod N).
//! Generations go through the replay cache ([`crate::pipeline::replay`]), so a rerun after a crash
//! generates only what had not finished.
//!
//! A batch that fails a stage fatally (model error, bug) stops the run: the error flows down
//! the channels and every thread ends; the unit is marked failed. Bad rows never do: they go
//! to `rejects.jsonl`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use logo_policy::backend::{self, GenerationBackend};
use logo_policy::config::BackendKind;

use crate::config::PipelineConfig;
use crate::error::{EngineError, Result};
use crate::sink::{Fingerprint, Manifest, Output, UnitRecord};
use crate::source::{plan_units, Source, SourceItem, Unit, UnitPlan};
use crate::stage::{check_wiring, RunStats, Stage, StageContext, StatsSnapshot};
use crate::stages::{
    ChunkerStage, GeneratorStage, PositionsStage, QuestionsStage, SamplerStage, ScorerStage,
};
use logo_formats::rejects::{Reject, Rejects};
use logo_policy::model::Policy;
use logo_policy::template::PromptTemplate;
use replay::{ReplayCache, Replaying, CACHE_DIR};

/// Options of one run that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Read at most this many documents (part of the run's fingerprint).
    pub limit: Option<usize>,
    /// Output folder instead of `sink.output`.
    pub output: Option<PathBuf>,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Replace an output that holds a different run (its data stays until this run's first
    /// unit is committed). Without it such an output stops the run before any work. An
    /// output of the same run is resumed either way.
    pub overwrite: bool,
    /// The units to take; default all (`0/1`).
    pub shard: Shard,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The manifest written next to the data (totals over every unit done so far, all shards).
    pub manifest: Manifest,
    /// The output folder.
    pub output: PathBuf,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// This process's shard.
    pub shard: Shard,
    /// Units this process committed.
    pub units_committed: u64,
    /// Units of this shard found finished and skipped.
    pub units_skipped: u64,
    /// Generations answered from the replay cache.
    pub replayed: u64,
    /// Generations computed by the model.
    pub generated: u64,
    /// Busy seconds per stage in this process.
    pub seconds: std::collections::BTreeMap<String, f64>,
}

/// One finished unit flowing down the channels behind its batches.
#[derive(Debug)]
struct UnitLog {
    unit: Unit,
    documents: u64,
    rejects: Vec<Reject>,
    stats: StatsSnapshot,
}

#[derive(Debug)]
enum Item {
    Batch { unit: u64, batch: RecordBatch },
    End(Box<UnitLog>),
}

type Msg = Result<Item>;

/// The identity of the model that writes the responses, part of the run's fingerprint and of
/// every replay-cache key: SHA-256 (hex) over the bytes of `model.path` and `model.tokenizer`
/// (a file, or every file of a folder, by name), every file of the adapter folder and the
/// in-memory weight format; with `generator.backend: openai` also the served model's name
/// (`generator.openai.model`: the weights are the server's).
/// Errors: [`EngineError::Config`] (`model.path`, `model.tokenizer`, `model.adapter`) naming
/// a file that cannot be read.
pub fn model_identity(cfg: &PipelineConfig) -> Result<String> {
    fn eat(h: &mut Sha256, key: &str, path: &Path) -> Result<()> {
        let err = |e: std::io::Error| EngineError::Config {
            key: key.into(),
            message: format!("{}: {e}", path.display()),
        };
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                eat(h, key, &f)?;
            }
            return Ok(());
        }
        let mut f = std::fs::File::open(path).map_err(err)?;
        h.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        std::io::copy(&mut f, h).map_err(err)?;
        Ok(())
    }
    let m = &cfg.model;
    let mut h = Sha256::new();
    eat(&mut h, "model.path", &m.path)?;
    if let Some(t) = &m.tokenizer {
        eat(&mut h, "model.tokenizer", t)?;
    }
    if let Some(a) = &m.adapter {
        eat(&mut h, "model.adapter", a)?;
    }
    h.update(format!("weights={:?}", m.weights).as_bytes());
    if let (BackendKind::Openai, Some(o)) = (cfg.generator.backend, &cfg.generator.openai) {
        h.update(format!("served={}", o.model).as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the whole pipeline, or resumes it (see the module doc).
///
/// Errors: [`EngineError::Config`] before any work (bad paths, unloadable model or
/// tokenizer); [`EngineError::Output`] before any work when the output holds another run and
/// `opts.overwrite` is off; then only fatal errors (I/O on the output, model failure), after
/// which the committed units stay and a rerun resumes.
pub fn run(cfg: &PipelineConfig, opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let shard = opts.shard;
    let Opened {
        plan,
        output_dir,
        mut output,
        replay,
        stages,
        todo,
        units_skipped,
    } = open(cfg, opts)?;
    let mut source = Source::for_units(
        &plan,
        todo.clone(),
        cfg.source.batch_size,
        cfg.questions.enabled,
    );
    let timings = RunStats::default();
    let mut flow = Flow {
        pending: todo.iter().map(|u| u.index).collect(),
        committed: 0,
    };
    let bars = Bars::new(opts.progress);
    let result = stream(
        cfg,
        &mut source,
        stages,
        &mut output,
        &mut flow,
        &timings,
        &bars,
        shard,
    );
    let end_log = |output: &Output, error: Option<String>| {
        let snap = timings.snapshot();
        output.log(&serde_json::json!({
            "event": "end",
            "unix": unix_now(),
            "pid": std::process::id(),
            "shard": shard.to_string(),
            "elapsed_seconds": started.elapsed().as_secs_f64(),
            "units_committed": flow.committed,
            "replayed": replay.replayed(),
            "generated": replay.generated(),
            "seconds": snap.seconds,
            "tokens": snap.tokens,
            "error": error,
        }))
    };
    if let Err(e) = result {
        if let Some(&unit) = flow.pending.front() {
            let _ = output.mark_failed(unit, &e.to_string());
        }
        let _ = end_log(&output, Some(e.to_string()));
        return Err(e);
    }
    let manifest = output.finish(cfg)?;
    end_log(&output, None)?;
    Ok(RunSummary {
        manifest,
        output: output_dir,
        elapsed: started.elapsed(),
        shard,
        units_committed: flow.committed,
        units_skipped,
        replayed: replay.replayed(),
        generated: replay.generated(),
        seconds: timings.snapshot().seconds,
    })
}

/// Everything a run opens before its first row flows.
struct Opened {
    plan: UnitPlan,
    output_dir: PathBuf,
    output: Output,
    replay: Arc<ReplayCache>,
    stages: Vec<Box<dyn Stage>>,
    /// This shard's units not yet committed, in order.
    todo: Vec<Unit>,
    /// This shard's units found committed.
    units_skipped: u64,
}

/// The part of [`run`] before any row flows: plans the units, fingerprints the run, loads the
/// tokenizer, template and backend, opens the output (refusing another run's unless
/// `opts.overwrite`) and the replay cache, builds the stages, and logs the start.
/// Errors: as [`run`]'s before any work.
fn open(cfg: &PipelineConfig, opts: &RunOptions) -> Result<Opened> {
    let shard = opts.shard;
    let plan = plan_units(
        &cfg.source.paths,
        cfg.sink.unit_rows as u64,
        opts.limit.map(|l| l as u64),
    )?;
    let model_id = model_identity(cfg)?;
    let fingerprint = Fingerprint::new(cfg, &plan, &model_id);
    let (tokenizer, template) =
        PromptTemplate::load(&cfg.model).map_err(|e| EngineError::Config {
            key: "model".into(),
            message: e.to_string(),
        })?;
    let backend = load_backend(cfg, &tokenizer, &template)?;
    let output_dir = opts
        .output
        .clone()
        .unwrap_or_else(|| cfg.sink.output.clone());
    // Refuses another run's output here, before anything is written.
    let output = Output::open(&output_dir, fingerprint, opts.overwrite)?;
    let replay = Arc::new(ReplayCache::open(
        &output_dir.join(CACHE_DIR),
        &format!("generations-{}-of-{}.jsonl", shard.index, shard.count),
        &model_id,
    )?);
    let backend: Arc<dyn GenerationBackend> = Arc::new(Replaying::new(backend, replay.clone()));
    let stages = build_stages(cfg, backend, tokenizer, template)?;

    let mine: Vec<Unit> = plan
        .units
        .iter()
        .filter(|u| shard.takes(u.index))
        .copied()
        .collect();
    let todo: Vec<Unit> = mine
        .iter()
        .filter(|u| !output.is_done(u.index))
        .copied()
        .collect();
    let units_skipped = (mine.len() - todo.len()) as u64;
    output.log(&serde_json::json!({
        "event": "start",
        "unix": unix_now(),
        "pid": std::process::id(),
        "shard": shard.to_string(),
        "fingerprint": output.fingerprint().id,
        "units_total": plan.units.len(),
        "units_todo": todo.len(),
        "units_skipped": units_skipped,
    }))?;
    Ok(Opened {
        plan,
        output_dir,
        output,
        replay,
        stages,
        todo,
        units_skipped,
    })
}

/// The generation backend `generator.backend` names; the candle policy is loaded only when it
/// generates (a server needs only the tokenizer). Errors: [`EngineError::Config`] for a model
/// that does not load; the backend's start-up checks ([`backend::from_config`]).
fn load_backend(
    cfg: &PipelineConfig,
    tokenizer: &tokenizers::Tokenizer,
    template: &PromptTemplate,
) -> Result<Arc<dyn GenerationBackend>> {
    let policy = match cfg.generator.backend {
        BackendKind::InProcess => Some(Arc::new(Mutex::new(Policy::load(&cfg.model).map_err(
            |e| EngineError::Config {
                key: "model.path".into(),
                message: e.to_string(),
            },
        )?))),
        BackendKind::Openai => None,
    };
    Ok(backend::from_config(
        cfg.generator.backend,
        cfg.generator.openai.as_ref(),
        &cfg.model,
        policy,
        tokenizer,
        template.stop_ids(),
    )?)
}

/// The stages in order (questions only when enabled), their wiring checked
/// ([`check_wiring`]). Errors: a stage's `try_new`; [`EngineError::Internal`] for a wiring
/// mismatch.
fn build_stages(
    cfg: &PipelineConfig,
    backend: Arc<dyn GenerationBackend>,
    tokenizer: tokenizers::Tokenizer,
    template: PromptTemplate,
) -> Result<Vec<Box<dyn Stage>>> {
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    if cfg.questions.enabled {
        stages.push(Box::new(QuestionsStage::try_new(
            cfg,
            backend.clone(),
            tokenizer.clone(),
            template.clone(),
        )?));
    }
    stages.push(Box::new(ChunkerStage::try_new(
        &cfg.chunker,
        tokenizer.clone(),
    )?));
    stages.push(Box::new(ScorerStage::try_new(&cfg.scorer)?));
    stages.push(Box::new(SamplerStage::try_new(&cfg.sampler, cfg.seed)?));
    stages.push(Box::new(GeneratorStage::try_new(
        cfg, backend, tokenizer, template,
    )?));
    stages.push(Box::new(PositionsStage::try_new(&cfg.positions, cfg.seed)?));
    check_wiring(&logo_schemas::documents_schema(), &stages)?;
    Ok(stages)
}

/// The units of a run still to commit (front: the one in flight) and those committed.
struct Flow {
    pending: VecDeque<u64>,
    committed: u64,
}

/// The progress bars of a run (hidden without `--progress`).
struct Bars {
    bars: MultiProgress,
    style: ProgressStyle,
}

impl Bars {
    fn new(visible: bool) -> Self {
        let bars = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>10} {spinner} {pos:>6} rows in {elapsed_precise} ({per_sec}) {msg}",
        )
        .expect("valid template");
        Bars { bars, style }
    }

    fn bar(&self, name: &str, len: Option<u64>) -> ProgressBar {
        let b = self
            .bars
            .add(len.map_or_else(ProgressBar::no_length, ProgressBar::new));
        b.set_style(self.style.clone());
        b.set_prefix(name.to_string());
        b.enable_steady_tick(Duration::from_millis(250));
        b
    }
}

/// Streams the units of `source` through `stages` on scoped threads (the source and each
/// stage on its own, joined by bounded channels of `runtime.channel_capacity`) and commits
/// each unit's batches as one part on this thread, as the unit's end arrives. Errors: the
/// first fatal error of any thread, or of a commit; `flow.pending`'s front is then the unit
/// that failed.
#[allow(clippy::too_many_arguments)]
fn stream(
    cfg: &PipelineConfig,
    source: &mut Source,
    stages: Vec<Box<dyn Stage>>,
    output: &mut Output,
    flow: &mut Flow,
    timings: &RunStats,
    bars: &Bars,
    shard: Shard,
) -> Result<()> {
    let cap = cfg.runtime.channel_capacity;
    let row_group_size = cfg.sink.row_group_size;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, mut rx) = bounded::<Msg>(cap);
        let source_bar = bars.bar("units", Some(flow.pending.len() as u64));
        scope.spawn(move || run_source(source, tx, timings, source_bar));
        for stage in stages {
            let (tx, next_rx) = bounded::<Msg>(cap);
            let b = bars.bar(stage.name(), None);
            let input = std::mem::replace(&mut rx, next_rx);
            scope.spawn(move || run_stage(stage, input, tx, timings, b));
        }
        let sink_bar = bars.bar("parquet", None);
        let mut batches: Vec<RecordBatch> = Vec::new();
        for msg in rx {
            match msg? {
                Item::Batch { batch, .. } => batches.push(batch),
                Item::End(log) => {
                    let record = UnitRecord {
                        unit: log.unit,
                        part: None,
                        documents: log.documents,
                        rejects: log.rejects,
                        stats: log.stats,
                        shard: shard.to_string(),
                    };
                    output.commit(record, &batches, row_group_size)?;
                    sink_bar.inc(batches.iter().map(|b| b.num_rows() as u64).sum());
                    batches.clear();
                    flow.pending.pop_front();
                    flow.committed += 1;
                }
            }
        }
        sink_bar.finish();
        Ok(())
    })
}

/// The source's thread: each unit's batches, then its end with the unit's rejects and
/// counters; stops after a fatal error or when the channel closes.
fn run_source(source: &mut Source, tx: Sender<Msg>, timings: &RunStats, bar: ProgressBar) {
    let (rejects, stats) = (Rejects::collecting(), RunStats::default());
    while let Some(msg) = source.next_item(&rejects, &stats) {
        let msg = match msg {
            Ok(SourceItem::Batch { batch, .. }) if batch.num_rows() == 0 => continue,
            Ok(SourceItem::Batch { unit, batch }) => Ok(Item::Batch { unit, batch }),
            Ok(SourceItem::UnitEnd { unit, documents }) => {
                bar.inc(1);
                let stats = stats.take();
                timings.add(&stats);
                Ok(Item::End(Box::new(UnitLog {
                    unit,
                    documents,
                    rejects: rejects.take(),
                    stats,
                })))
            }
            Err(e) => Err(e),
        };
        let fatal = msg.is_err();
        if tx.send(msg).is_err() || fatal {
            break;
        }
    }
    bar.finish();
}

fn run_stage(
    mut stage: Box<dyn Stage>,
    input: Receiver<Msg>,
    output: Sender<Msg>,
    timings: &RunStats,
    bar: ProgressBar,
) {
    // This unit's rejects and counters; they travel with the unit's end.
    let (rejects, stats) = (Rejects::collecting(), RunStats::default());
    let ctx = StageContext {
        rejects: &rejects,
        stats: &stats,
    };
    for msg in input {
        let (unit, batch) = match msg {
            Ok(Item::Batch { unit, batch }) => (unit, batch),
            Ok(Item::End(mut log)) => {
                log.rejects.extend(rejects.take());
                let snap = stats.take();
                timings.add(&snap);
                log.stats.add(&snap);
                if output.send(Ok(Item::End(log))).is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                let _ = output.send(Err(e));
                break;
            }
        };
        let rows_in = batch.num_rows() as u64;
        let start = Instant::now();
        let result = stage.process(batch, &ctx);
        let busy = start.elapsed();
        match result {
            Ok(out) => {
                let rows_out: u64 = out.iter().map(|b| b.num_rows() as u64).sum();
                stats.record(stage.name(), rows_in, rows_out, busy);
                bar.inc(rows_in);
                if out
                    .into_iter()
                    .filter(|b| b.num_rows() > 0)
                    .any(|batch| output.send(Ok(Item::Batch { unit, batch })).is_err())
                {
                    break;
                }
            }
            Err(e) => {
                tracing::error!("stage {} failed: {e}", stage.name());
                let _ = output.send(Err(e));
                break;
            }
        }
    }
    bar.finish();
}

pub mod replay;
mod report;
mod shard;

pub use report::{format_status, format_summary};
pub use shard::Shard;
