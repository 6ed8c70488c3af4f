//! `quantd replay`'s output: the signals CSV per model, `summary.json` and the equity plot,
//! written to a staging directory renamed into place only when complete, and the summary table
//! printed to stdout. Runs on the caller's thread, after the replay.

use std::io::Write;
use std::path::Path;

use comfy_table::{CellAlignment, Table, presets};

use super::{ReplayError, ReplayReport, io, plot};
use crate::engine::Reply;
use crate::tick::Reject;

/// The signals of one model as CSV (the deterministic part of the output).
pub fn write_signals<W: Write>(mut w: W, rows: &[Reply]) -> std::io::Result<()> {
    writeln!(w, "symbol,seq,exchange_ts_ns,score,policy_position,target_position,warming_up,reject,risk")?;
    for r in rows {
        let risk: Vec<&str> = r.risk.codes().collect();
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{}",
            r.symbol,
            r.seq,
            r.exchange_ts_ns,
            r.score,
            r.policy_position,
            r.target_position,
            r.warming_up,
            r.reject.map_or("", Reject::code),
            risk.join("|")
        )?;
    }
    Ok(())
}

fn file_name(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// Writes everything into `<out>.partial`, then renames it to `out`: a directory named `out`
/// is always complete.
pub(super) fn write_outputs(out: &Path, report: &ReplayReport) -> Result<(), ReplayError> {
    let staging = out.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = (|| {
        for m in &report.models {
            let path = staging.join(format!("signals-{}.csv", file_name(&m.label)));
            let f = std::fs::File::create(&path).map_err(io(&path))?;
            write_signals(std::io::BufWriter::new(f), &m.signals).map_err(io(&path))?;
        }
        let path = staging.join("summary.json");
        let json = serde_json::to_string_pretty(report).map_err(|e| ReplayError::Plot(e.to_string()))?;
        std::fs::write(&path, json).map_err(io(&path))?;
        plot::equity_and_drawdown(&staging, report)?;
        std::fs::rename(&staging, out).map_err(io(out))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// The printed summary: a header line, one table row per model and latency setting, and each
/// model's engine, risk and VaR lines.
pub fn print_table(report: &ReplayReport) {
    println!("{}", header(report));
    println!("{}", table(report));
    for m in &report.models {
        println!(
            "{}: replay {:.0} ticks/s; engine time p50 {:.1} µs, p99 {:.1} µs; risk {:?}; rejects {:?}",
            m.label,
            m.ticks_per_second,
            m.engine_ns_p50 as f64 / 1e3,
            m.engine_ns_p99 as f64 / 1e3,
            m.risk_bindings,
            m.rejects
        );
        for v in &m.var {
            println!(
                "{}: VaR {}: {:.4} per unit, scale {:.3}; back-test {} of {} horizons exceeded (expected {:.0}%), Kupiec p = {:.3}",
                m.label,
                v.symbol,
                v.var_per_unit,
                v.scale,
                v.exceedances,
                v.checks,
                v.expected_rate * 100.0,
                v.kupiec_p
            );
        }
    }
    for (a, b, f) in &report.agreement {
        println!("positions of {a} and {b} on the same side on {:.1}% of ticks", f * 100.0);
    }
}

fn header(report: &ReplayReport) -> String {
    let charged = match &report.latency_from {
        Some(p) => format!("end-to-end drawn from the live run {}", p.display()),
        None => "engine".to_owned(),
    };
    format!(
        "{} ticks, symbols {:?}; metrics from exchange time {} on; fee {} bps, latency = {charged} + feed {} µs + order {} µs",
        report.ticks,
        report.symbols,
        report.eval_from_ns,
        report.cost.fee_bps,
        report.cost.feed_latency_ns / 1000,
        report.cost.order_latency_ns / 1000
    )
}

/// The backtest metrics, one row per model and latency setting (zero, and real).
fn table(report: &ReplayReport) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_header([
        "model",
        "latency",
        "pnl",
        "pre-cost",
        "sharpe",
        "sortino",
        "max dd",
        "calmar",
        "turnover/d",
        "changes",
        "hit",
        "hold s",
        "IC",
        "rank IC",
    ]);
    for m in &report.models {
        for (name, x) in [("zero", &m.zero_latency), ("real", &m.with_latency)] {
            t.add_row([
                m.label.clone(),
                name.to_owned(),
                format!("{:.2}", x.pnl),
                format!("{:.2}", x.pnl_before_costs),
                format!("{:.2}", x.sharpe),
                format!("{:.2}", x.sortino),
                format!("{:.2}", x.max_drawdown),
                format!("{:.1}", x.calmar),
                format!("{:.0}", x.turnover_per_day),
                x.position_changes.to_string(),
                format!("{:.2}", x.hit_rate),
                format!("{:.1}", x.avg_holding_s),
                format!("{:.3}", x.ic),
                format!("{:.3}", x.rank_ic),
            ]);
        }
    }
    for i in 2..14 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}
