//! A PNG of the training curves: loss (total, preference, SFT) and reward margin per step.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, TrainerError};
use crate::loss::StepMetrics;

/// Draws `metrics` to `path` (PNG, 1200×500): loss on the left, reward margin on the right.
/// Non-finite values are left out of the curves and the axis ranges. Errors: [`TrainerError::Internal`] when drawing fails, naming the file.
pub fn plot_training(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    draw(metrics, path).map_err(|e| TrainerError::Internal(format!("plot {}: {e}", path.display())))
}

/// One curve: legend label, colour, value of a step.
type Series = (&'static str, RGBColor, fn(&StepMetrics) -> f64);

fn draw(
    metrics: &[StepMetrics],
    path: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    panel(
        &left,
        metrics,
        "LOGO loss",
        "nats",
        &[
            ("loss", BLUE, |m| m.loss),
            ("preference (Eq. 2)", RED, |m| m.preference_loss),
            ("SFT −ℓ(y_w)", GREEN, |m| m.sft_loss),
        ],
    )?;
    panel(
        &right,
        metrics,
        "reward margin β·ℓ(y_w) − mean β·ℓ(y_l)",
        "margin",
        &[("margin", MAGENTA, |m| m.margin)],
    )?;
    root.present()?;
    Ok(())
}

/// A line chart of `series` against the step, with a legend, on `area`.
fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    metrics: &[StepMetrics],
    caption: &str,
    y_desc: &str,
    series: &[Series],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let steps = metrics.last().map(|m| m.step).unwrap_or(1).max(1) as f64;
    let (lo, hi) = metrics
        .iter()
        .flat_map(|m| series.iter().map(move |(_, _, f)| f(m)))
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) };
        (lo.min(0.0) - 1.0, hi.max(0.0) + 1.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..steps, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .draw()?;
    for &(name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                metrics
                    .iter()
                    .map(|m| (m.step as f64, f(m)))
                    .filter(|(_, v)| v.is_finite()),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        // Markers, so that short runs (one step) still show their values.
        chart.draw_series(
            metrics
                .iter()
                .filter(|m| f(m).is_finite())
                .map(|m| Circle::new((m.step as f64, f(m)), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step with an infinite or NaN value once made plotters loop forever on its axis
    /// range; now the value is left out and the PNG is written.
    #[test]
    fn non_finite_values_are_left_out() {
        let step = |step, loss| StepMetrics {
            step,
            lr: 1e-4,
            loss,
            preference_loss: loss,
            sft_loss: 1.0,
            reward_chosen: 0.0,
            reward_rejected: 0.0,
            margin: f64::NAN,
            accuracy: 0.5,
            grad_norm: 1.0,
            tokens: 10,
            seconds: 1.0,
        };
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("training.png");
        plot_training(&[step(1, 2.0), step(2, f64::INFINITY)], &png).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    }
}
