//! One report for one or two models (base, adapter): the per-task results, a flat table of
//! headline numbers with the adapter − base differences, written as `report.json` and printed.

use serde::{Deserialize, Serialize};

use crate::niah::NiahReport;
use crate::perplexity::PerplexityReport;
use crate::qa::QaReport;

/// Everything measured on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// `base` or `adapter`.
    pub label: String,
    /// The base model file.
    pub model: String,
    /// The PEFT adapter folder, if any.
    pub adapter: Option<String>,
    /// Needle in a haystack.
    pub niah: Option<NiahReport>,
    /// Long-context QA.
    pub qa: Option<QaReport>,
    /// Sliding-window perplexity.
    pub perplexity: Option<PerplexityReport>,
}

/// One line of the table: a metric's value per model and, for two models, second − first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// What is measured (`NIAH recall`, `QA F1 multidoc_qa.jsonl`, `PPL @ 2048`).
    pub metric: String,
    /// Whether larger is better (false for perplexity).
    pub higher_is_better: bool,
    /// One value per model, in the report's order (`None` where not measured).
    pub values: Vec<Option<f64>>,
    /// `values[1] − values[0]` when both exist.
    pub delta: Option<f64>,
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Per-model results, base first when comparing.
    pub models: Vec<ModelReport>,
    /// The headline table.
    pub table: Vec<TableRow>,
}

impl Report {
    /// Builds the table from `models`: NIAH mean recall and recall per context length; QA F1,
    /// ROUGE-L and EM per file and their mean over files; perplexity per context length.
    pub fn new(models: Vec<ModelReport>) -> Report {
        let mut rows = Rows {
            models: &models,
            rows: Vec::new(),
        };
        rows.niah();
        rows.qa();
        rows.perplexity();
        let table = rows.rows;
        Report { models, table }
    }

    /// The table as aligned text: one column per model, then Δ (second − first) when there are
    /// two.
    pub fn format_table(&self) -> String {
        let width = self
            .table
            .iter()
            .map(|r| r.metric.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = format!("{:<width$}", "metric");
        for m in &self.models {
            out.push_str(&format!(" {:>10}", m.label));
        }
        if self.models.len() == 2 {
            out.push_str(&format!(" {:>10}", "Δ"));
        }
        out.push('\n');
        for row in &self.table {
            out.push_str(&format!("{:<width$}", row.metric));
            for v in &row.values {
                match v {
                    Some(v) => out.push_str(&format!(" {v:>10.4}")),
                    None => out.push_str(&format!(" {:>10}", "-")),
                }
            }
            if let Some(d) = row.delta {
                let better = (d > 0.0) == row.higher_is_better && d != 0.0;
                let sign = if d == 0.0 {
                    " "
                } else if better {
                    "+"
                } else {
                    "-"
                };
                out.push_str(&format!(" {d:>+10.4} {sign}"));
            }
            out.push('\n');
        }
        out
    }
}

/// The rows of [`Report::table`] while they are built: each reads one metric from every model
/// (the first model decides which rows exist).
struct Rows<'a> {
    models: &'a [ModelReport],
    rows: Vec<TableRow>,
}

impl Rows<'_> {
    /// Adds the row `metric` when some model has a value; Δ when there are exactly two.
    fn push(&mut self, metric: String, higher: bool, get: &dyn Fn(&ModelReport) -> Option<f64>) {
        let values: Vec<Option<f64>> = self.models.iter().map(get).collect();
        if values.iter().all(Option::is_none) {
            return;
        }
        let delta = match values.as_slice() {
            [Some(a), Some(b)] => Some(b - a),
            _ => None,
        };
        self.rows.push(TableRow {
            metric,
            higher_is_better: higher,
            values,
            delta,
        });
    }

    /// NIAH mean recall, then recall per context length (mean over depths).
    fn niah(&mut self) {
        if let Some(niah) = self.models.first().and_then(|m| m.niah.as_ref()) {
            self.push("NIAH recall (mean)".into(), true, &|m| {
                m.niah.as_ref().map(|n| n.mean_recall)
            });
            for &l in &niah.context_lengths {
                self.push(format!("NIAH recall @ {l}"), true, &|m| {
                    let n = m.niah.as_ref()?;
                    let cells: Vec<f64> = n
                        .results
                        .iter()
                        .filter(|r| r.case.context_length == l)
                        .map(|r| r.recall)
                        .collect();
                    (!cells.is_empty()).then(|| cells.iter().sum::<f64>() / cells.len() as f64)
                });
            }
        }
    }

    /// QA F1, ROUGE-L and EM per file, then their means over files when there are several.
    fn qa(&mut self) {
        if let Some(qa) = self.models.first().and_then(|m| m.qa.as_ref()) {
            let names: Vec<String> = qa.files.iter().map(|f| f.file.clone()).collect();
            for name in &names {
                let file = |m: &ModelReport| {
                    m.qa.as_ref()?
                        .files
                        .iter()
                        .find(|f| &f.file == name)
                        .map(|f| f.mean)
                };
                self.push(format!("QA F1 {name}"), true, &|m| file(m).map(|s| s.f1));
                self.push(format!("QA ROUGE-L {name}"), true, &|m| {
                    file(m).map(|s| s.rouge_l)
                });
                self.push(format!("QA EM {name}"), true, &|m| {
                    file(m).map(|s| s.exact_match)
                });
            }
            if names.len() > 1 {
                self.push("QA F1 (mean of files)".into(), true, &|m| {
                    m.qa.as_ref().map(|q| q.mean.f1)
                });
                self.push("QA ROUGE-L (mean of files)".into(), true, &|m| {
                    m.qa.as_ref().map(|q| q.mean.rouge_l)
                });
                self.push("QA EM (mean of files)".into(), true, &|m| {
                    m.qa.as_ref().map(|q| q.mean.exact_match)
                });
            }
        }
    }

    /// Perplexity per context length, marked when beyond the model's limit.
    fn perplexity(&mut self) {
        if let Some(ppl) = self.models.first().and_then(|m| m.perplexity.as_ref()) {
            for p in &ppl.points {
                let l = p.context_length;
                let mark = if p.beyond_model_limit {
                    " (beyond limit)"
                } else {
                    ""
                };
                self.push(format!("PPL @ {l}{mark}"), false, &|m| {
                    m.perplexity
                        .as_ref()?
                        .points
                        .iter()
                        .find(|q| q.context_length == l)
                        .map(|q| q.perplexity)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perplexity::PerplexityPoint;

    fn ppl(values: &[(usize, f64)]) -> PerplexityReport {
        PerplexityReport {
            text_tokens: 100,
            model_limit: 8192,
            points: values
                .iter()
                .map(|&(l, p)| PerplexityPoint {
                    context_length: l,
                    stride: l / 2,
                    windows: 1,
                    scored_tokens: 99,
                    nll_sum: 99.0 * p.ln(),
                    perplexity: p,
                    beyond_model_limit: l > 8192,
                })
                .collect(),
        }
    }

    fn model(label: &str, p: PerplexityReport) -> ModelReport {
        ModelReport {
            label: label.into(),
            model: "m.gguf".into(),
            adapter: None,
            niah: None,
            qa: None,
            perplexity: Some(p),
        }
    }

    #[test]
    fn table_has_differences_and_marks_direction() {
        let r = Report::new(vec![
            model("base", ppl(&[(1024, 20.0), (16384, 50.0)])),
            model("adapter", ppl(&[(1024, 19.5), (16384, 60.0)])),
        ]);
        assert_eq!(r.table.len(), 2);
        assert_eq!(r.table[0].metric, "PPL @ 1024");
        assert_eq!(r.table[0].delta, Some(-0.5));
        assert_eq!(r.table[1].metric, "PPL @ 16384 (beyond limit)");
        assert_eq!(r.table[1].delta, Some(10.0));
        let text = r.format_table();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("base") && lines[0].contains("adapter") && lines[0].contains('Δ')
        );
        // Lower perplexity is better: −0.5 is an improvement (+), +10 a regression (−).
        assert!(lines[1].trim_end().ends_with("-0.5000 +"), "{}", lines[1]);
        assert!(lines[2].trim_end().ends_with("+10.0000 -"), "{}", lines[2]);
    }
}
