//! The report's pictures (plotters, PNG): the needle-in-a-haystack heatmap (context length ×
//! depth, green for recall 1 to red for 0, gkamradt's palette; LOGO Fig. 3) and the perplexity
//! curves against context length (LOGO Fig. 4).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{EvalError, Result};
use crate::niah::NiahReport;
use crate::perplexity::PerplexityReport;

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn plot_err(path: &Path, e: Box<dyn std::error::Error>) -> EvalError {
    EvalError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// gkamradt's colour map: red `#F0496E` (0) → amber `#EBB839` (0.5) → green `#0CD79F` (1).
pub fn recall_colour(recall: f64) -> RGBColor {
    let stops = [
        (240.0, 73.0, 110.0),
        (235.0, 184.0, 57.0),
        (12.0, 215.0, 159.0),
    ];
    let x = recall.clamp(0.0, 1.0) * 2.0;
    let (a, b, t) = if x <= 1.0 {
        (stops[0], stops[1], x)
    } else {
        (stops[1], stops[2], x - 1.0)
    };
    let mix = |p: f64, q: f64| (p + (q - p) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws `report` as a heatmap PNG (900×520) titled `title`: one column per context length,
/// one row per depth (0 % at the top), each cell coloured by [`recall_colour`] and labelled
/// with its recall. Errors: [`EvalError::Plot`] naming the file.
pub fn niah_heatmap(report: &NiahReport, title: &str, path: &Path) -> Result<()> {
    draw_heatmap(report, title, path).map_err(|e| plot_err(path, e))
}

fn draw_heatmap(report: &NiahReport, title: &str, path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    draw_heatmap_on(&root, report, title)?;
    root.present()?;
    Ok(())
}

/// Draws the heatmap of `report` on `root` (any size; a panel of a larger image).
pub(crate) fn draw_heatmap_on(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    report: &NiahReport,
    title: &str,
) -> DrawResult {
    let (w, h) = root.dim_in_pixel();
    let (width, height) = (w as i32, h as i32);
    let lengths = &report.context_lengths;
    let depths = &report.depths;
    let (nx, ny) = (lengths.len().max(1) as i32, depths.len().max(1) as i32);
    // Plot area in pixels: left margin for depth labels, bottom for length labels.
    let (left, top, right, bottom) = (110, 60, width - 30, height - 70);
    let cw = (right - left) / nx;
    let ch = (bottom - top) / ny;
    let font = |size: i32| ("sans-serif", size).into_font().color(&BLACK);
    let centred = |size: i32| {
        font(size).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ))
    };
    root.draw(&Text::new(
        format!("{title}: mean recall {:.2}", report.mean_recall),
        (width / 2, 25),
        centred(22),
    ))?;
    for r in &report.results {
        let Some(x) = lengths.iter().position(|&l| l == r.case.context_length) else {
            continue;
        };
        let Some(y) = depths.iter().position(|&d| d == r.case.depth_percent) else {
            continue;
        };
        // Depth 0 % in the top row, as in gkamradt's and LOGO's figures.
        let (x0, y0) = (left + x as i32 * cw, top + y as i32 * ch);
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + cw, y0 + ch)],
            recall_colour(r.recall).filled(),
        ))?;
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + cw, y0 + ch)],
            WHITE.stroke_width(1),
        ))?;
        root.draw(&Text::new(
            format!("{:.2}", r.recall),
            (x0 + cw / 2, y0 + ch / 2),
            centred(16),
        ))?;
    }
    for (i, l) in lengths.iter().enumerate() {
        root.draw(&Text::new(
            l.to_string(),
            (left + i as i32 * cw + cw / 2, bottom + 15),
            centred(15),
        ))?;
    }
    for (i, d) in depths.iter().enumerate() {
        root.draw(&Text::new(
            format!("{d:.0}%"),
            (left - 30, top + i as i32 * ch + ch / 2),
            centred(15),
        ))?;
    }
    root.draw(&Text::new(
        "context length (tokens)",
        ((left + right) / 2, bottom + 45),
        centred(16),
    ))?;
    root.draw(&Text::new("depth", (35, (top + bottom) / 2), centred(16)))?;
    Ok(())
}

/// Draws the perplexity of each labelled report against context length (PNG, 900×520), with
/// a dashed vertical line at the model's trained length. Errors: [`EvalError::Plot`].
pub fn perplexity_curves(reports: &[(String, &PerplexityReport)], path: &Path) -> Result<()> {
    draw_curves(reports, path).map_err(|e| plot_err(path, e))
}

fn draw_curves(reports: &[(String, &PerplexityReport)], path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || reports.iter().flat_map(|(_, r)| r.points.iter());
    let x_max = points().map(|p| p.context_length).max().unwrap_or(1) as f64;
    let limit = reports.first().map_or(0, |(_, r)| r.model_limit) as f64;
    let (lo, hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.perplexity), b.max(p.perplexity))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        let pad = (hi - lo) * 0.1;
        (lo - pad, hi + pad)
    } else {
        (lo.min(1.0) * 0.9, hi.max(1.0) * 1.1)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption("sliding-window perplexity", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max.max(limit) * 1.05, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("context length (tokens)")
        .y_desc("perplexity")
        .draw()?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, (name, report)) in reports.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let xy: Vec<(f64, f64)> = report
            .points
            .iter()
            .map(|p| (p.context_length as f64, p.perplexity))
            .collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), colour.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart.draw_series(xy.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?;
    }
    if limit > 0.0 {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(limit, lo), (limit, hi)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label(format!("trained length {limit:.0}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_ends_and_middle() {
        assert_eq!(recall_colour(0.0), RGBColor(240, 73, 110));
        assert_eq!(recall_colour(0.5), RGBColor(235, 184, 57));
        assert_eq!(recall_colour(1.0), RGBColor(12, 215, 159));
        assert_eq!(recall_colour(7.0), RGBColor(12, 215, 159));
        // Halfway between amber and green: (123.5, 199.5, 108) rounded.
        assert_eq!(recall_colour(0.75), RGBColor(124, 200, 108));
    }
}
