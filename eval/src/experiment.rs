//! The experiment report (`logo-experiment-report`, driven by `scripts/experiment.py`): reads
//! the per-model evaluation JSON of one experiment (base, SFT, SimPO, LOGO on the test split),
//! computes bootstrap 95 % intervals, and writes `summary.json`, `report.md` and the plots:
//! one bar chart per metric with a group per task (QA file, NIAH needle) and error bars, the
//! NIAH heatmaps of all models side by side, perplexity curves and the training curves.
//!
//! Bootstrap (Efron's percentile interval): the items of a cell (QA questions, NIAH cells)
//! are resampled with replacement [`BOOTSTRAP_RESAMPLES`] times (ChaCha8, seed 0); the
//! interval is the 2.5th and 97.5th percentile of the resampled means. Means over a whole
//! task are over items (micro), not over files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::niah::NiahReport;
use crate::perplexity::PerplexityReport;
use crate::qa::QaReport;

/// Resamples of the bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// A mean with its bootstrap 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Mean of the items.
    pub mean: f64,
    /// 2.5th percentile of the bootstrap means.
    pub lo: f64,
    /// 97.5th percentile of the bootstrap means.
    pub hi: f64,
    /// Items.
    pub n: usize,
}

/// The percentile bootstrap of the mean of `values` (see the module doc); all fields 0 for
/// no values, `lo = hi = mean` for one.
pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> Interval {
    let n = values.len();
    if n == 0 {
        return Interval {
            mean: 0.0,
            lo: 0.0,
            hi: 0.0,
            n: 0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((means.len() - 1) as f64 * q).round() as usize];
    Interval {
        mean,
        lo: at(0.025),
        hi: at(0.975),
        n,
    }
}

/// One evaluated model in `runs.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunModel {
    /// `base`, `logo`, `sft`, `simpo`.
    pub label: String,
    /// Adapter folder, none for the base model.
    pub adapter: Option<String>,
    /// `qa.json` of the test split.
    #[serde(default)]
    pub qa: Option<PathBuf>,
    /// `niah.json` per needle set.
    #[serde(default)]
    pub niah: BTreeMap<String, PathBuf>,
    /// `perplexity.json`.
    #[serde(default)]
    pub perplexity: Option<PathBuf>,
    /// The adapter's `metrics.jsonl`.
    #[serde(default)]
    pub metrics: Option<PathBuf>,
}

/// `runs.json`, written by `scripts/experiment.py`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runs {
    /// Experiment name.
    pub name: String,
    /// A label printed at the top of the report (e.g. "DRY RUN").
    #[serde(default)]
    pub label: String,
    /// The models.
    pub models: Vec<RunModel>,
    /// Everything else the driver recorded (sweep, split, data counters, seconds, commit,
    /// machine), copied into `summary.json`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// What one model scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Label.
    pub label: String,
    /// Metric (`f1`, `rouge_l`, `exact_match`) → task (QA file, or `all`) → interval.
    pub qa: BTreeMap<String, BTreeMap<String, Interval>>,
    /// Needle set → recall interval over its cells.
    pub niah_recall: BTreeMap<String, Interval>,
    /// Needle set → (retrieval score, retrieval heads), torch generator only.
    pub retrieval: BTreeMap<String, (f64, usize)>,
    /// Context length → perplexity.
    pub perplexity: BTreeMap<usize, f64>,
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::input(path, e.to_string()))
}

/// Reads one QA metric off a score row.
type QaMetric = fn(&crate::metrics::QaScores) -> f64;
/// Reads one training metric off a step.
type StepField = fn(&logo_trainer::loss::StepMetrics) -> f64;

/// Summarises one model. Errors: unreadable or malformed JSON, naming the file.
pub fn summarise(m: &RunModel) -> Result<ModelSummary> {
    let mut qa: BTreeMap<String, BTreeMap<String, Interval>> = BTreeMap::new();
    if let Some(p) = &m.qa {
        let r: QaReport = read(p)?;
        let metrics: [(&str, QaMetric); 3] = [
            ("f1", |s| s.f1),
            ("rouge_l", |s| s.rouge_l),
            ("exact_match", |s| s.exact_match),
        ];
        for (name, get) in metrics {
            let per = qa.entry(name.into()).or_default();
            let all: Vec<f64> = r.items.iter().map(|i| get(&i.scores)).collect();
            per.insert("all".into(), bootstrap(&all, BOOTSTRAP_RESAMPLES, 0));
            for f in &r.files {
                let v: Vec<f64> = r
                    .items
                    .iter()
                    .filter(|i| i.file == f.file)
                    .map(|i| get(&i.scores))
                    .collect();
                let task = f.file.trim_end_matches(".jsonl").to_string();
                per.insert(task, bootstrap(&v, BOOTSTRAP_RESAMPLES, 0));
            }
        }
    }
    let mut niah_recall = BTreeMap::new();
    let mut retrieval = BTreeMap::new();
    for (needle, p) in &m.niah {
        let r: NiahReport = read(p)?;
        let v: Vec<f64> = r.results.iter().map(|x| x.recall).collect();
        niah_recall.insert(needle.clone(), bootstrap(&v, BOOTSTRAP_RESAMPLES, 0));
        if let Some(s) = &r.retrieval {
            retrieval.insert(needle.clone(), (s.top_mean, s.retrieval_heads));
        }
    }
    let mut perplexity = BTreeMap::new();
    if let Some(p) = &m.perplexity {
        let r: PerplexityReport = read(p)?;
        for x in r.points {
            perplexity.insert(x.context_length, x.perplexity);
        }
    }
    Ok(ModelSummary {
        label: m.label.clone(),
        qa,
        niah_recall,
        retrieval,
        perplexity,
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn plot_err(path: &Path, e: Box<dyn std::error::Error>) -> EvalError {
    EvalError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

const COLOURS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// A grouped bar chart (PNG, 1000×520): one group per task, one bar per model, each with its
/// 95 % interval as an error bar. `cells[model][task]`. Errors: [`EvalError::Plot`].
pub fn bar_chart(
    title: &str,
    y_label: &str,
    models: &[String],
    tasks: &[String],
    cells: &[Vec<Option<Interval>>],
    path: &Path,
) -> Result<()> {
    draw_bars(title, y_label, models, tasks, cells, path).map_err(|e| plot_err(path, e))
}

fn draw_bars(
    title: &str,
    y_label: &str,
    models: &[String],
    tasks: &[String],
    cells: &[Vec<Option<Interval>>],
    path: &Path,
) -> DrawResult {
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = cells
        .iter()
        .flatten()
        .flatten()
        .map(|c| c.hi.max(c.mean))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let nt = tasks.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..nt, 0f64..top)?;
    let names = tasks.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(tasks.len().max(1) * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()?;
    let nm = models.len().max(1) as f64;
    let width = 0.8 / nm;
    for (mi, model) in models.iter().enumerate() {
        let colour = COLOURS[mi % COLOURS.len()];
        let bars: Vec<(f64, Interval)> = cells[mi]
            .iter()
            .enumerate()
            .filter_map(|(ti, c)| c.map(|c| (ti as f64 + 0.1 + mi as f64 * width, c)))
            .collect();
        chart
            .draw_series(bars.iter().map(|(x, c)| {
                Rectangle::new([(*x, 0.0), (*x + width * 0.9, c.mean)], colour.filled())
            }))?
            .label(model.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        chart.draw_series(bars.iter().map(|(x, c)| {
            let mid = *x + width * 0.45;
            PathElement::new(vec![(mid, c.lo), (mid, c.hi)], BLACK.stroke_width(2))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Training curves (PNG, 1000×520): the total loss and the chosen response's NLL (`sft_loss`)
/// per step, one colour per adapter. Errors: [`EvalError::Plot`].
pub fn training_curves(
    runs: &[(String, Vec<logo_trainer::loss::StepMetrics>)],
    path: &Path,
) -> Result<()> {
    draw_training(runs, path).map_err(|e| plot_err(path, e))
}

fn draw_training(
    runs: &[(String, Vec<logo_trainer::loss::StepMetrics>)],
    path: &Path,
) -> DrawResult {
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let fields: [(&str, StepField); 2] = [
        ("loss (objective)", |m| m.loss),
        ("NLL of the chosen response (nats/token)", |m| m.sft_loss),
    ];
    for (panel, (name, get)) in panels.iter().zip(fields) {
        let steps = runs
            .iter()
            .flat_map(|(_, m)| m.iter().map(|x| x.step))
            .max()
            .unwrap_or(1) as f64;
        let vals = || {
            runs.iter()
                .flat_map(|(_, m)| m.iter().map(get))
                .filter(|x| x.is_finite())
        };
        let lo = vals().fold(f64::INFINITY, f64::min);
        let hi = vals().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05)
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..steps.max(1.0), lo..hi)?;
        chart.configure_mesh().x_desc("step").draw()?;
        for (i, (label, m)) in runs.iter().enumerate() {
            let colour = COLOURS[(i + 1) % COLOURS.len()];
            let xy: Vec<(f64, f64)> = m
                .iter()
                .map(|x| (x.step as f64, get(x)))
                .filter(|p| p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(xy, colour.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The NIAH heatmaps of several models side by side in one PNG (420 px per model × 520).
/// Errors: [`EvalError::Plot`].
pub fn heatmaps_side_by_side(reports: &[(String, NiahReport)], path: &Path) -> Result<()> {
    draw_side_by_side(reports, path).map_err(|e| plot_err(path, e))
}

fn draw_side_by_side(reports: &[(String, NiahReport)], path: &Path) -> DrawResult {
    let n = reports.len().max(1);
    let root = BitMapBackend::new(path, (420 * n as u32, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    for (panel, (label, report)) in root.split_evenly((1, n)).iter().zip(reports) {
        crate::plot::draw_heatmap_on(panel, report, label)?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_mean() {
        assert_eq!(bootstrap(&[], 100, 0).n, 0);
        let one = bootstrap(&[0.4], 100, 0);
        assert_eq!((one.mean, one.lo, one.hi), (0.4, 0.4, 0.4));
        // 0/1 outcomes, 30 of 100: mean 0.3, normal-approximation half-width
        // 1.96·√(0.3·0.7/100) = 0.0898; the percentile interval is within 0.02 of it.
        let v: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i < 30))).collect();
        let b = bootstrap(&v, 4000, 1);
        assert!((b.mean - 0.3).abs() < 1e-12);
        assert!((b.lo - (0.3 - 0.0898)).abs() < 0.02, "{b:?}");
        assert!((b.hi - (0.3 + 0.0898)).abs() < 0.02, "{b:?}");
        // Seeded: the same interval every run.
        assert_eq!(bootstrap(&v, 500, 3), bootstrap(&v, 500, 3));
    }
}
