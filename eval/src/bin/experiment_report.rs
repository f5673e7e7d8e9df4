//! `logo-experiment-report`: the report of one experiment of `scripts/experiment.py` from its
//! `runs.json`: `summary.json`, `report.md`, bar charts with bootstrap 95 % intervals, the NIAH
//! heatmaps side by side, perplexity and training curves (see [`logo_eval::experiment`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use logo_eval::experiment::{
    bar_chart, heatmaps_side_by_side, summarise, training_curves, Interval, ModelSummary, Runs,
};
use logo_eval::niah::NiahReport;
use logo_eval::perplexity::PerplexityReport;
use logo_eval::{EvalError, Result};
use logo_trainer::checkpoint::read_metrics;
use logo_trainer::loss::StepMetrics;

/// Writes the report of an experiment (`runs.json` of scripts/experiment.py) into --out.
#[derive(Debug, Parser)]
#[command(name = "logo-experiment-report", version)]
struct Cli {
    /// The driver's runs.json.
    #[arg(long)]
    runs: PathBuf,
    /// Report folder (created).
    #[arg(long)]
    out: PathBuf,
}

fn ci(c: Option<&Interval>) -> String {
    match c {
        Some(c) if c.n > 0 => format!("{:.3} [{:.3}, {:.3}]", c.mean, c.lo, c.hi),
        _ => "–".into(),
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| EvalError::io(path, e))
}

/// A JSON file as `T`. Errors: [`EvalError::Io`], [`EvalError::Input`] naming the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::input(path, e.to_string()))
}

fn report(cli: &Cli) -> Result<()> {
    let runs: Runs = read_json(&cli.runs)?;
    std::fs::create_dir_all(&cli.out).map_err(|e| EvalError::io(&cli.out, e))?;
    let sums: Vec<ModelSummary> = runs.models.iter().map(summarise).collect::<Result<_>>()?;
    qa_charts(&sums, &cli.out)?;
    let needles = niah_plots(&runs, &sums, &cli.out)?;
    curves(&runs, &cli.out)?;
    let md = markdown(&runs, &sums, &needles);
    write(&cli.out.join("report.md"), &md)?;
    let summary = serde_json::json!({
        "name": runs.name,
        "label": runs.label,
        "models": sums,
        "runs": runs.extra,
    });
    write(
        &cli.out.join("summary.json"),
        &(serde_json::to_string_pretty(&summary).expect("serialisable") + "\n"),
    )?;
    print!("{md}");
    Ok(())
}

fn labels(sums: &[ModelSummary]) -> Vec<String> {
    sums.iter().map(|s| s.label.clone()).collect()
}

/// `qa_{metric}.png` for F1, ROUGE-L and exact match: one bar per model and task (file).
fn qa_charts(sums: &[ModelSummary], out: &Path) -> Result<()> {
    for metric in ["f1", "rouge_l", "exact_match"] {
        let tasks: BTreeSet<String> = sums
            .iter()
            .filter_map(|s| s.qa.get(metric))
            .flat_map(|m| m.keys().cloned())
            .collect();
        if tasks.is_empty() {
            continue;
        }
        let tasks: Vec<String> = tasks.into_iter().collect();
        let cells: Vec<Vec<Option<Interval>>> = sums
            .iter()
            .map(|s| {
                tasks
                    .iter()
                    .map(|t| s.qa.get(metric).and_then(|m| m.get(t)).copied())
                    .collect()
            })
            .collect();
        bar_chart(
            &format!("QA {metric} on the test split (95 % bootstrap intervals)"),
            metric,
            &labels(sums),
            &tasks,
            &cells,
            &out.join(format!("qa_{metric}.png")),
        )?;
    }
    Ok(())
}

/// `niah_recall.png` (bars per needle set) and `niah_{needle}.png` (the models' heatmaps side
/// by side); returns the needle sets, sorted.
fn niah_plots(runs: &Runs, sums: &[ModelSummary], out: &Path) -> Result<Vec<String>> {
    let needles: Vec<String> = sums
        .iter()
        .flat_map(|s| s.niah_recall.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if needles.is_empty() {
        return Ok(needles);
    }
    let cells: Vec<Vec<Option<Interval>>> = sums
        .iter()
        .map(|s| {
            needles
                .iter()
                .map(|n| s.niah_recall.get(n).copied())
                .collect()
        })
        .collect();
    bar_chart(
        "NIAH recall (95 % bootstrap intervals over cells)",
        "recall",
        &labels(sums),
        &needles,
        &cells,
        &out.join("niah_recall.png"),
    )?;
    for needle in &needles {
        let reports: Vec<(String, NiahReport)> = runs
            .models
            .iter()
            .filter_map(|m| m.niah.get(needle).map(|p| (m.label.clone(), p)))
            .map(|(l, p)| Ok((l, read_json(p)?)))
            .collect::<Result<_>>()?;
        heatmaps_side_by_side(&reports, &out.join(format!("niah_{needle}.png")))?;
    }
    Ok(needles)
}

/// `perplexity.png` and `training.png` (the adapters' metrics.jsonl), when any model has them.
fn curves(runs: &Runs, out: &Path) -> Result<()> {
    let curves: Vec<(String, PerplexityReport)> = runs
        .models
        .iter()
        .filter_map(|m| m.perplexity.as_ref().map(|p| (m.label.clone(), p)))
        .map(|(l, p)| Ok((l, read_json(p)?)))
        .collect::<Result<_>>()?;
    if !curves.is_empty() {
        let refs: Vec<(String, &PerplexityReport)> =
            curves.iter().map(|(l, r)| (l.clone(), r)).collect();
        logo_eval::plot::perplexity_curves(&refs, &out.join("perplexity.png"))?;
    }
    let training: Vec<(String, Vec<StepMetrics>)> = runs
        .models
        .iter()
        .filter_map(|m| m.metrics.as_ref().map(|p| (m.label.clone(), p)))
        .map(|(l, p)| Ok((l, read_metrics(p)?)))
        .collect::<Result<_>>()?;
    if !training.is_empty() {
        training_curves(&training, &out.join("training.png"))?;
    }
    Ok(())
}

/// `report.md`: the main table, QA F1 per task, the sweep, the run's provenance.
fn markdown(runs: &Runs, sums: &[ModelSummary], needles: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Experiment `{}`\n", runs.name);
    if !runs.label.is_empty() {
        let _ = writeln!(md, "**{}**\n", runs.label);
    }
    let _ = writeln!(
        md,
        "Test split; means with bootstrap 95 % intervals (QA over questions, NIAH over \
         cells). Retrieval score: LOGO Appendix B, Eq. 5 (mean of the top-10 heads ≥ 0.1; \
         heads ≥ 0.1 in parentheses).\n"
    );
    main_table(&mut md, sums, needles);
    f1_table(&mut md, sums);
    if let Some(sweep) = runs.extra.get("sweep") {
        sweep_table(&mut md, sweep);
    }
    if let Some(stages) = runs.extra.get("stages") {
        stages_table(&mut md, stages);
    }
    for key in [
        "split",
        "data",
        "seconds",
        "command",
        "git_commit",
        "machine",
    ] {
        if let Some(v) = runs.extra.get(key) {
            let _ = writeln!(md, "\n{key}: `{v}`");
        }
    }
    let _ = writeln!(
        md,
        "\nPlots: `qa_f1.png`, `qa_rouge_l.png`, `qa_exact_match.png`, `niah_recall.png`, \
         `niah_<needle>.png` (heatmaps side by side), `perplexity.png`, `training.png`."
    );
    md
}

/// One row per model: QA over all tasks, NIAH recall and retrieval per needle set, perplexity
/// per length.
fn main_table(md: &mut String, sums: &[ModelSummary], needles: &[String]) {
    let ppl_lengths: BTreeSet<usize> = sums
        .iter()
        .flat_map(|s| s.perplexity.keys().copied())
        .collect();
    let mut header = "| model | QA F1 | QA ROUGE-L | QA EM |".to_string();
    for n in needles {
        let _ = write!(header, " NIAH {n} recall | retrieval ({n}) |");
    }
    for l in &ppl_lengths {
        let _ = write!(header, " ppl @ {l} |");
    }
    let _ = writeln!(md, "{header}");
    let cols = header.matches('|').count() - 1;
    let _ = writeln!(md, "{}|", "|---".repeat(cols));
    for s in sums {
        let q = |m: &str| ci(s.qa.get(m).and_then(|x| x.get("all")));
        let mut row = format!(
            "| {} | {} | {} | {} |",
            s.label,
            q("f1"),
            q("rouge_l"),
            q("exact_match")
        );
        for n in needles {
            let r = s
                .retrieval
                .get(n)
                .map_or("–".into(), |(t, h)| format!("{t:.3} ({h})"));
            let _ = write!(row, " {} | {r} |", ci(s.niah_recall.get(n)));
        }
        for l in &ppl_lengths {
            let p = s
                .perplexity
                .get(l)
                .map_or("–".into(), |p| format!("{p:.2}"));
            let _ = write!(row, " {p} |");
        }
        let _ = writeln!(md, "{row}");
    }
}

fn f1_table(md: &mut String, sums: &[ModelSummary]) {
    let _ = writeln!(md, "\nQA F1 per task:\n");
    let tasks: BTreeSet<String> = sums
        .iter()
        .filter_map(|s| s.qa.get("f1"))
        .flat_map(|m| m.keys().cloned())
        .collect();
    let _ = writeln!(
        md,
        "| model | {} |",
        tasks.iter().cloned().collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---|".repeat(tasks.len()));
    for s in sums {
        let cells: Vec<String> = tasks
            .iter()
            .map(|t| ci(s.qa.get("f1").and_then(|m| m.get(t))))
            .collect();
        let _ = writeln!(md, "| {} | {} |", s.label, cells.join(" | "));
    }
}

/// The sweep's points with their validation F1, the chosen one marked.
fn sweep_table(md: &mut String, sweep: &serde_json::Value) {
    let _ = writeln!(md, "\nSweep (LOGO, chosen by validation QA F1):\n");
    let _ = writeln!(md, "| # | point | validation F1 | questions |");
    let _ = writeln!(md, "|---|---|---|---|");
    let chosen = sweep.get("chosen").and_then(|c| c.as_u64());
    let Some(points) = sweep.get("points").and_then(|p| p.as_array()) else {
        return;
    };
    for (i, p) in points.iter().enumerate() {
        let mark = if chosen == Some(i as u64) {
            " (chosen)"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| {i}{mark} | `{}` | {:.4} | {} |",
            p.get("point").map_or(String::new(), |x| x.to_string()),
            p.get("validation_f1")
                .and_then(|x| x.as_f64())
                .unwrap_or(f64::NAN),
            p.get("questions").map_or(String::new(), |x| x.to_string())
        );
    }
}

/// The provenance of a staged run (`scripts/experiment.py`): one row per done stage from its
/// `stage.json` (`{"STAGE": {"minutes", "git_commit", "cpu"}}`), sorted by stage name.
fn stages_table(md: &mut String, stages: &serde_json::Value) {
    let Some(stages) = stages.as_object() else {
        return;
    };
    let _ = writeln!(
        md,
        "\nStages ({} done; each folder's `stage.json` has its commands and machine):\n",
        stages.len()
    );
    let _ = writeln!(md, "| stage | minutes | git commit | cpu |");
    let _ = writeln!(md, "|---|---|---|---|");
    let field = |v: &serde_json::Value, k: &str| match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
        None => String::new(),
    };
    for (name, v) in stages {
        let _ = writeln!(
            md,
            "| {name} | {} | `{}` | {} |",
            field(v, "minutes"),
            field(v, "git_commit"),
            field(v, "cpu")
        );
    }
}

fn main() -> ExitCode {
    logo_env::cli::reset_sigpipe();
    let cli = Cli::parse();
    match report(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logo-experiment-report: {}", logo_env::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
