//! Latency-percentile plots in the style of HdrHistogram's percentile distribution: x is the
//! percentile on a log scale of 1/(1 − q) (0%, 90%, 99%, 99.9%, …), y the latency in µs (log).
//! One line per report, so runs against several servers can be compared in one picture. Labels
//! need a TrueType font (`quantd::plotting::ensure_font`).

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::*;

use crate::Report;

fn x_of(percentile: f64) -> f64 {
    (1.0 / (1.0 - percentile / 100.0).max(1e-9)).log10()
}

fn x_label(x: &f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = (x.round() as usize).saturating_sub(2);
    format!("{q:.digits$}%")
}

/// Writes an SVG plot of the end-to-end distributions of `reports` to `path`.
pub fn percentile_plot(path: &Path, title: &str, reports: &[Report]) -> anyhow::Result<()> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = reports
        .iter()
        .filter(|r| !r.distribution.is_empty())
        .map(|r| (r.label.as_str(), r.distribution.iter().map(|&(q, us)| (x_of(q), us.max(0.1))).collect()))
        .collect();
    if series.is_empty() {
        bail!("nothing to plot: no report holds a latency distribution");
    }
    quantd::plotting::ensure_font().map_err(anyhow::Error::msg)?;
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    let x_max = pts().map(|p| p.0).fold(1.0, f64::max).ceil();
    let y_min = pts().map(|p| p.1).fold(f64::INFINITY, f64::min) * 0.8;
    let y_max = pts().map(|p| p.1).fold(0.0, f64::max) * 1.25;
    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&x_label)
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(x_label(&0.0), "0%");
        assert_eq!(x_label(&1.0), "90%");
        assert_eq!(x_label(&2.0), "99%");
        assert_eq!(x_label(&3.0), "99.9%");
        assert_eq!(x_label(&5.0), "99.999%");
        assert!((x_of(99.9) - 3.0).abs() < 1e-9);
    }
}
