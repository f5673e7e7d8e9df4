//! Throughput of the non-generation stages (source, chunker, scorer with both backends,
//! sampler, positions) over the real L-Eval documents of `../shared/data/leval`, in
//! documents/s and tokens/s, written as JSON to `bench/results/engine_stages.json`.
//!
//! When `LOGO_BENCH_PYTHON` names a python with spaCy and an English pipeline
//! (`en_core_web_sm`), the same question/chunk pairs are scored by spaCy NER (the paper's
//! evaluator, and what a user would pick instead) in the same run: its time, the speed ratio,
//! and the agreement of our scores with spaCy's (Pearson r) are reported too.
//!
//! Run: `cargo bench -p logo-engine --bench stages` (needs the embedded model's tokenizer:
//! `scripts/just setup`). Not a test: nothing here asserts a speed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use logo_engine::config::{
    ChunkerConfig, PipelineConfig, PositionsConfig, SamplerConfig, ScorerBackend, ScorerConfig,
};
use logo_engine::source::Source;
use logo_engine::stage::{RunStats, Stage, StageContext};
use logo_engine::stages::{ChunkerStage, PositionsStage, SamplerStage, ScorerStage};
use logo_formats::rejects::Rejects;
use logo_policy::model::default_model_config;
use logo_policy::tokenizer::load_tokenizer;
use logo_schemas::{Record, SampledRecord, ScoredRecord};
use serde_json::json;

fn leval() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/leval");
    p.is_dir().then_some(p)
}

struct Timed {
    seconds: f64,
    out: Vec<RecordBatch>,
}

fn run_stage(stage: &mut dyn Stage, input: &[RecordBatch], ctx: &StageContext) -> Timed {
    let start = Instant::now();
    let mut out = Vec::new();
    for b in input {
        out.extend(stage.process(b.clone(), ctx).expect("stage runs"));
    }
    Timed {
        seconds: start.elapsed().as_secs_f64(),
        out,
    }
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

fn main() {
    let Some(data) = leval() else {
        eprintln!("SKIPPED: ../shared/data/leval is absent");
        return;
    };
    let model = default_model_config();
    if !model.path.is_file() {
        eprintln!("SKIPPED: embedded model absent (scripts/just setup)");
        return;
    }
    let tokenizer = load_tokenizer(&model).expect("tokenizer");
    let yaml = format!(
        "source: {{paths: ['{}/*.jsonl'], batch_size: 4}}\nmodel: {{path: '{}'}}\n",
        data.display(),
        model.path.display()
    );
    let cfg = PipelineConfig::from_yaml_str(&yaml, Path::new(".")).expect("config");
    let rejects = Rejects::in_memory();
    let stats = RunStats::default();
    let ctx = StageContext {
        rejects: &rejects,
        stats: &stats,
    };

    // Source.
    let start = Instant::now();
    let mut source = Source::try_new(&cfg, None).expect("source");
    let mut docs = Vec::new();
    while let Some(b) = source.next_batch(&rejects, &stats) {
        docs.push(b.expect("batch"));
    }
    let source_s = start.elapsed().as_secs_f64();
    let n_docs = source.documents();
    let n_rows = rows(&docs);

    // Chunker (paper default chunk_size 512).
    let mut chunker = ChunkerStage::try_new(&ChunkerConfig::default(), tokenizer).expect("chunker");
    let chunked = run_stage(&mut chunker, &docs, &ctx);
    let tokens = stats.snapshot().tokens.get("chunker").copied().unwrap_or(0);

    // Scorers.
    let mut scored_out = Vec::new();
    let mut scorer_results = serde_json::Map::new();
    for backend in [ScorerBackend::Lexical, ScorerBackend::Ner] {
        let mut scorer = ScorerStage::try_new(&ScorerConfig {
            backend,
            use_answer: true,
        })
        .expect("scorer");
        let t = run_stage(&mut scorer, &chunked.out, &ctx);
        let name = format!("{backend:?}").to_lowercase();
        scorer_results.insert(
            name.clone(),
            json!({"seconds": t.seconds, "rows_per_s": n_rows as f64 / t.seconds, "tokens_per_s": tokens as f64 / t.seconds}),
        );
        if backend == ScorerBackend::Lexical {
            scored_out = t.out;
        } else {
            // Keep NER scores for the spaCy agreement below.
            let ner: Vec<ScoredRecord> = t
                .out
                .iter()
                .flat_map(|b| ScoredRecord::from_batch(b).unwrap())
                .collect();
            scorer_results.insert(
                "ner_scores".into(),
                json!(ner
                    .iter()
                    .map(|r| r.chunk_scores.clone())
                    .collect::<Vec<_>>()),
            );
        }
    }

    // Sampler (N = 16, δ = 6 as in the paper) and positions (K = 65536).
    let mut sampler = SamplerStage::try_new(&SamplerConfig::default(), 42).expect("sampler");
    let sampled = run_stage(&mut sampler, &scored_out, &ctx);
    let positions = PositionsStage::try_new(&PositionsConfig::default(), 42).expect("positions");
    let sampled_rows: Vec<SampledRecord> = sampled
        .out
        .iter()
        .flat_map(|b| SampledRecord::from_batch(b).unwrap())
        .collect();
    let start = Instant::now();
    let mut synthesized = 0usize;
    for r in &sampled_rows {
        let mut segments = vec![24u32];
        segments.extend(
            r.context_chunk_ids
                .iter()
                .map(|&c| r.chunk_input_ids[c as usize].len() as u32),
        );
        segments.push(32);
        let (ids, _) = positions
            .synthesize(&r.key.sample_id, &segments, 129)
            .expect("fits in K");
        synthesized += ids.len();
    }
    let positions_s = start.elapsed().as_secs_f64();

    // spaCy, the paper's evaluator, on the same pairs.
    let spacy = spacy_compare(&chunked.out, &scorer_results);

    let report = json!({
        "benchmark": "engine_stages",
        "engine_version": env!("CARGO_PKG_VERSION"),
        "rayon_threads": rayon::current_num_threads(),
        "data": data.display().to_string(),
        "documents": n_docs,
        "questions": n_rows,
        "document_tokens": tokens,
        "source": {"seconds": source_s, "docs_per_s": n_docs as f64 / source_s},
        "chunker": {"seconds": chunked.seconds, "docs_per_s": n_docs as f64 / chunked.seconds,
                     "rows_per_s": n_rows as f64 / chunked.seconds, "tokens_per_s": tokens as f64 / chunked.seconds,
                     "chunk_size": 512},
        "scorer": {
            "lexical": scorer_results["lexical"],
            "ner": scorer_results["ner"],
        },
        "sampler": {"seconds": sampled.seconds, "rows_per_s": n_rows as f64 / sampled.seconds,
                     "samples_kept": rows(&sampled.out), "num_chunks": 16, "threshold": 6,
                     "skipped": stats.snapshot().skipped},
        "positions": {"seconds": positions_s, "samples": sampled_rows.len(),
                       "position_ids_per_s": synthesized as f64 / positions_s, "target_length": 65536},
        "spacy": spacy,
    });
    let report = common::stamp(report, &common::command("stages"));
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("engine_stages.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    eprintln!("wrote {}", path.display());
}

/// Scores the same (question + answer, chunk) pairs with spaCy NER through
/// `bench/spacy_scorer.py`; returns its timing, the ratio to our backends and the agreement.
fn spacy_compare(
    chunked: &[RecordBatch],
    ours: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let Some(python) = std::env::var_os("LOGO_BENCH_PYTHON") else {
        return json!({"skipped": "LOGO_BENCH_PYTHON not set (a python with spacy and en_core_web_sm)"});
    };
    let records: Vec<logo_schemas::ChunkedRecord> = chunked
        .iter()
        .flat_map(|b| logo_schemas::ChunkedRecord::from_batch(b).unwrap())
        .collect();
    let input: Vec<serde_json::Value> = records
        .iter()
        .map(
            |r| json!({"question": r.key.question, "answer": r.key.answer, "chunks": r.chunk_text}),
        )
        .collect();
    let dir = tempfile_dir();
    let in_path = dir.join("spacy_in.json");
    std::fs::write(&in_path, serde_json::to_string(&input).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/spacy_scorer.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&in_path)
        .output()
        .expect("python runs");
    if !out.status.success() {
        return json!({"error": String::from_utf8_lossy(&out.stderr).to_string()});
    }
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("spacy JSON");
    let spacy_s = theirs["seconds"].as_f64().unwrap_or(f64::NAN);
    let spacy_scores: Vec<Vec<f64>> =
        serde_json::from_value(theirs["scores"].clone()).unwrap_or_default();
    let ner_scores: Vec<Vec<f64>> =
        serde_json::from_value(ours["ner_scores"].clone()).unwrap_or_default();
    let flat = |v: &Vec<Vec<f64>>| v.iter().flatten().copied().collect::<Vec<f64>>();
    let r = pearson(&flat(&ner_scores), &flat(&spacy_scores));
    json!({
        "model": theirs["model"],
        "seconds": spacy_s,
        "speedup_lexical_vs_spacy": spacy_s / ours["lexical"]["seconds"].as_f64().unwrap(),
        "speedup_ner_vs_spacy": spacy_s / ours["ner"]["seconds"].as_f64().unwrap(),
        "pearson_ner_vs_spacy_scores": r,
    })
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("logo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    Some(cov / (va.sqrt() * vb.sqrt()))
}
