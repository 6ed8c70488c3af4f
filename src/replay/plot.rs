//! The replay's equity-curve and drawdown plot (`equity.png`): one line per model and latency
//! setting. Labels need a TrueType font ([`crate::plotting::ensure_font`]).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{ReplayError, ReplayReport};
use crate::backtest::EquityPoint;

/// Writes `equity.png` into `dir`.
pub fn equity_and_drawdown(dir: &Path, report: &ReplayReport) -> Result<(), ReplayError> {
    crate::plotting::ensure_font().map_err(ReplayError::Plot)?;
    let path = dir.join("equity.png");
    let root = BitMapBackend::new(&path, (1100, 760)).into_drawing_area();
    draw(&root, report).map_err(|e| ReplayError::Plot(e.to_string()))
}

fn drawdown(curve: &[EquityPoint]) -> Vec<(f64, f64)> {
    let mut peak: f64 = 0.0;
    curve
        .iter()
        .map(|p| {
            peak = peak.max(p.equity);
            (p.ts_ns as f64, p.equity - peak)
        })
        .collect()
}

fn draw<'a, DB: DrawingBackend + 'a>(
    root: &'a DrawingArea<DB, Shift>,
    report: &'a ReplayReport,
) -> Result<(), Box<dyn std::error::Error + 'a>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(500);
    let mut lines: Vec<(String, &[EquityPoint])> = Vec::new();
    for m in &report.models {
        lines.push((format!("{} (zero latency)", m.label), &m.zero_latency.equity));
        lines.push((format!("{} (realistic latency)", m.label), &m.with_latency.equity));
    }
    let t0 = report.eval_from_ns as f64;
    let minutes = |ts: f64| (ts - t0) / 60e9;
    let all = || lines.iter().flat_map(|(_, c)| c.iter());
    let x_max = all().map(|p| minutes(p.ts_ns as f64)).fold(1.0, f64::max);
    let (mut lo, mut hi) = all().fold((0.0f64, 0.0f64), |(lo, hi), p| (lo.min(p.equity), hi.max(p.equity)));
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 1.0, hi + 1.0);
    }
    let pad = (hi - lo) * 0.05;
    let mut chart = ChartBuilder::on(&top)
        .caption("equity (quote currency) over the evaluation period", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))?;
    chart.configure_mesh().x_desc("minutes").draw()?;
    for (i, (name, curve)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = curve.iter().map(|p| (minutes(p.ts_ns as f64), p.equity)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).draw()?;
    let dd: Vec<Vec<(f64, f64)>> = lines.iter().map(|(_, c)| drawdown(c)).collect();
    let dd_min = dd.iter().flatten().map(|p| p.1).fold(-1e-9, f64::min);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("drawdown", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (dd_min * 1.05)..0f64)?;
    chart.configure_mesh().x_desc("minutes").draw()?;
    for (i, line) in dd.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(LineSeries::new(line.into_iter().map(|(t, d)| (minutes(t), d)), color.stroke_width(1)))?;
    }
    root.present()?;
    Ok(())
}
