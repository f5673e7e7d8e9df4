//! The streaming run: source → [questions] → chunker → scorer → sampler → generator →
//! positions → Parquet, each stage on its own thread, joined by bounded crossbeam channels of
//! `runtime.channel_capacity` batches, so memory stays bounded whatever the corpus size.
//!
//! A batch that fails a stage fatally (model error, bug) stops the run: the error flows down
//! the channels and every thread ends. Bad rows never do: they go to `rejects.jsonl`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend;
use crate::config::{BackendKind, PipelineConfig};
use crate::error::{EngineError, Result};
use crate::model::Policy;
use crate::sink::{Manifest, ParquetSink};
use crate::source::Source;
use crate::stage::{Rejects, RunStats, Stage, StageContext};
use crate::stages::{
    ChunkerStage, GeneratorStage, PositionsStage, QuestionsStage, SamplerStage, ScorerStage,
};
use crate::template::PromptTemplate;

/// Options of one run that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Read at most this many documents.
    pub limit: Option<usize>,
    /// Output folder instead of `sink.output`.
    pub output: Option<PathBuf>,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The manifest written next to the data.
    pub manifest: Manifest,
    /// The output folder.
    pub output: PathBuf,
    /// Wall time of the run.
    pub elapsed: Duration,
}

type Msg = Result<RecordBatch>;

/// Runs the whole pipeline. Errors: [`EngineError::Config`] before any work (bad paths,
/// unloadable model or tokenizer), then only fatal errors (I/O on the output, model failure).
pub fn run(cfg: &PipelineConfig, opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    cfg.validate()?;
    let mut source = Source::try_new(cfg, opts.limit)?;
    let (tokenizer, template) =
        PromptTemplate::load(&cfg.model).map_err(|e| EngineError::Config {
            key: "model".into(),
            message: e.to_string(),
        })?;
    // The candle policy is loaded only when it generates; a server needs only the tokenizer.
    let policy = match cfg.generator.backend {
        BackendKind::InProcess => Some(Arc::new(Mutex::new(Policy::load(&cfg.model).map_err(
            |e| EngineError::Config {
                key: "model.path".into(),
                message: e.to_string(),
            },
        )?))),
        BackendKind::Openai => None,
    };
    let backend = backend::from_config(cfg, policy, &tokenizer, template.stop_ids())?;

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

    let output = opts
        .output
        .clone()
        .unwrap_or_else(|| cfg.sink.output.clone());
    let mut sink = ParquetSink::create(&output, cfg.sink.row_group_size)?;
    let rejects = Rejects::create(&output.join("rejects.jsonl"))?;
    let stats = RunStats::default();

    let bars = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>10} {spinner} {pos:>6} rows in {elapsed_precise} ({per_sec}) {msg}",
    )
    .expect("valid template");
    let bar = |name: &str, len: Option<u64>| {
        let b = bars.add(len.map_or_else(ProgressBar::no_length, ProgressBar::new));
        b.set_style(style.clone());
        b.set_prefix(name.to_string());
        b.enable_steady_tick(Duration::from_millis(250));
        b
    };

    let cap = cfg.runtime.channel_capacity;
    let result = std::thread::scope(|scope| -> Result<()> {
        let (tx, mut rx) = bounded::<Msg>(cap);
        let source_bar = bar("source", opts.limit.map(|l| l as u64));
        let (rejects, stats) = (&rejects, &stats);
        let source = &mut source;
        scope.spawn(move || {
            while let Some(msg) = source.next_batch(rejects, stats) {
                source_bar.set_position(source.documents() as u64);
                let fatal = msg.is_err();
                if tx.send(msg).is_err() || fatal {
                    break;
                }
            }
            source_bar.finish();
        });
        for stage in stages {
            let (tx, next_rx) = bounded::<Msg>(cap);
            let b = bar(stage.name(), None);
            let input = std::mem::replace(&mut rx, next_rx);
            scope.spawn(move || run_stage(stage, input, tx, rejects, stats, b));
        }
        let sink_bar = bar("parquet", None);
        for msg in rx {
            let batch = msg?;
            sink.write(&batch)?;
            sink_bar.set_position(sink.rows());
        }
        sink_bar.finish();
        Ok(())
    });
    result?;
    rejects.flush()?;
    let manifest = Manifest {
        schema_version: logo_schemas::SCHEMA_VERSION.into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        files: vec![],
        config: cfg.clone(),
        documents: source.documents() as u64,
        rejects: rejects.counts(),
        stats: stats.snapshot(),
    };
    let manifest = sink.finish(manifest)?;
    Ok(RunSummary {
        manifest,
        output,
        elapsed: started.elapsed(),
    })
}

fn run_stage(
    mut stage: Box<dyn Stage>,
    input: Receiver<Msg>,
    output: Sender<Msg>,
    rejects: &Rejects,
    stats: &RunStats,
    bar: ProgressBar,
) {
    let ctx = StageContext { rejects, stats };
    for msg in input {
        let batch = match msg {
            Ok(b) => b,
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
                if out.into_iter().any(|b| output.send(Ok(b)).is_err()) {
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

/// Formats the end-of-run summary: documents in, samples out, skipped by reason, rejects,
/// seconds and rows per stage.
pub fn format_summary(s: &RunSummary) -> String {
    use std::fmt::Write;
    let m = &s.manifest;
    let samples: u64 = m.files.iter().map(|f| f.rows).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "logo-engine summary ({:.1} s)",
        s.elapsed.as_secs_f64()
    );
    let _ = writeln!(out, "  documents in     {}", m.documents);
    let _ = writeln!(
        out,
        "  questions        {}",
        m.stats.rows_out.get("source").copied().unwrap_or(0)
    );
    let _ = writeln!(out, "  samples out      {samples}");
    let rejected: u64 = m.rejects.values().sum();
    let _ = writeln!(out, "  rejects          {rejected}");
    for (stage, n) in &m.rejects {
        let _ = writeln!(out, "    {stage:<14} {n}");
    }
    let skipped: u64 = m.stats.skipped.values().sum();
    let _ = writeln!(out, "  skipped          {skipped}");
    for (reason, n) in &m.stats.skipped {
        let _ = writeln!(out, "    {reason}: {n}");
    }
    if !m.stats.events.is_empty() {
        let _ = writeln!(out, "  events");
        for (event, n) in &m.stats.events {
            let _ = writeln!(out, "    {event}: {n}");
        }
    }
    let _ = writeln!(
        out,
        "  stage            rows in  rows out   seconds    tokens"
    );
    for (stage, secs) in &m.stats.seconds {
        let _ = writeln!(
            out,
            "    {stage:<12} {:>9} {:>9} {:>9.2} {:>9}",
            m.stats.rows_in.get(stage).copied().unwrap_or(0),
            m.stats.rows_out.get(stage).copied().unwrap_or(0),
            secs,
            m.stats.tokens.get(stage).copied().unwrap_or(0)
        );
    }
    for f in &m.files {
        let _ = writeln!(
            out,
            "  wrote {} ({} rows, {} bytes)",
            s.output.join(&f.path).display(),
            f.rows,
            f.bytes
        );
    }
    out
}
