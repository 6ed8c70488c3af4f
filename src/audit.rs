//! `quantd audit`: proves every journaled signal by re-running the journaled ticks through the
//! engine's own code and models, and comparing bit for bit. Runs on the caller's thread.
//!
//! The journal records what the engine did and with what: each tick as received (with its
//! server receive time and its stream's conflation mode), each signal with the engine pass
//! (`batch`) and place in it (`batch_pos`) that answered it, the model `name@version` that
//! scored it, and the inputs the risk gate took from outside the tick stream (the VaR scale, the
//! admin kill switch as the `kill_admin` flag, a time-to-live expiry). The audit feeds the ticks
//! to a [`SyncEngine`] in the live engine's own batches and order, hands back those outside
//! inputs ([`RecordedTick`]), switches models where the signals do (a hot swap), sends each tick
//! down the route it took live (the config's routes, and the admin route changes the journal
//! recorded, each before the engine pass it preceded), and compares
//! each reply with its journaled signal: score, policy and target positions, risk flags,
//! warm-up, conflation, reject and the feature row's hash.
//!
//! A journal directory may hold several server runs (a restart); each run (the start time in the
//! file names) is audited with a fresh engine, as the server began it: cold, or rebuilt from the
//! warm-start ticks the run journaled at its head ([`WARM_STREAM`]), exactly as the server did. Signals answered at the
//! edge (malformed ticks, back-pressure, a full queue) never reached the engine: they are counted,
//! not re-run. What the audit cannot prove, it says: a signal whose tick was not journaled
//! (`drop_and_count`), a batch the engine answered after a panic (`engine_error`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::engine::{ActiveModel, Control, Recorded, RecordedTick, Reply, SyncEngine};
use crate::journal::read::{self, JournalReadError};
use crate::journal::warm::WARM_STREAM;
use crate::journal::{ControlRecord, ModelRecord, SignalRecord, TickRecord};
use crate::model::LoadedModel;
use crate::model::manifest::ModelError;
use crate::risk::{External, RiskFlags};
use crate::routes::{BY_SYMBOL, model_name};
use crate::telemetry::Telemetry;
use crate::tick::Reject;

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalReadError),
    /// The directory holds no journal files.
    #[error("{0}: no journal files (ticks-*.arrows, signals-*.arrows) in this directory")]
    Empty(PathBuf),
    /// A model the journal names could not be loaded.
    #[error("model {label}: {source}")]
    Model {
        /// The model's `name@version`.
        label: String,
        /// Why it was refused.
        source: ModelError,
    },
    /// The model directory holds other files than the ones the journal recorded.
    #[error(
        "model {label}: the file in {dir} has sha256 {found}, the journal recorded {journaled}: not the model that served"
    )]
    WrongModel {
        /// The model's `name@version`.
        label: String,
        /// The version directory looked in.
        dir: PathBuf,
        /// The sha256 of the file found there.
        found: String,
        /// The sha256 the journal recorded at load.
        journaled: String,
    },
    /// A journaled route change cannot be read back.
    #[error("a journaled route change cannot be read: {0}")]
    Route(String),
    /// The audit's settings are invalid.
    #[error("invalid settings: {0}")]
    Settings(String),
}

/// What to audit.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// The journal directory.
    pub journal: PathBuf,
    /// The models directory (`<models>/<name>/<version>`), as the server had it.
    pub models: PathBuf,
    /// The server's config (engine, `[ticks]`, `[risk]`, policy override).
    pub config: Config,
    /// Mismatches kept with their full context (all are counted).
    pub keep_mismatches: usize,
}

/// One signal that the re-run did not reproduce, with everything needed to look into it.
#[derive(Debug, Serialize)]
pub struct Mismatch {
    /// The server run (the start time in the journal's file names).
    pub run: u64,
    /// The tick's stream (a number the server gave it).
    pub stream: u64,
    /// The tick's index in its stream.
    pub index: u64,
    /// The engine pass that answered it live.
    pub batch: u64,
    /// Its position in that pass.
    pub batch_pos: u32,
    /// The model (`name@version`) that scored it.
    pub model: String,
    /// The tick's symbol.
    pub symbol: String,
    /// The tick's sequence number.
    pub seq: u64,
    /// The fields that differ, each as `field: journaled != re-run`.
    pub differences: Vec<String>,
    /// The journaled tick, signal and the re-run's reply, in full.
    pub tick: String,
    /// The journaled signal, in full.
    pub journaled: String,
    /// The re-run's reply, in full.
    pub replayed: String,
}

/// Per model: signals checked and how many were reproduced.
#[derive(Debug, Default, Serialize)]
pub struct ModelAudit {
    /// Signals of this model checked.
    pub signals: u64,
    /// Of those, identical in every field.
    pub reproduced: u64,
    /// Of those, different in at least one.
    pub mismatched: u64,
}

/// What `quantd audit` found over a journal directory.
#[derive(Debug, Default, Serialize)]
pub struct AuditReport {
    /// Server runs in the directory (each start of a server writes its own files).
    pub runs: usize,
    /// Ticks received from clients.
    pub ticks: u64,
    /// Ticks a warm start rebuilt symbol state from (re-run the same way before the batches).
    pub warm_ticks: u64,
    /// Signals in the journal.
    pub signals: u64,
    /// Signals the engine answered, re-run and identical in every field.
    pub reproduced: u64,
    /// Signals the engine answered whose re-run differs.
    pub mismatched: u64,
    /// Signals answered at the edge (never in an engine batch), by reject code.
    pub edge_answered: BTreeMap<String, u64>,
    /// Engine signals whose batch cannot be re-run: a tick or a signal of it is missing from the
    /// journal (dropped under `drop_and_count`); the symbols in it are not proven after it.
    pub missing_ticks: u64,
    /// Engine signals of a run that ended in a crash (its files were left `.partial`), from its
    /// first batch the journal holds only in part: the crash cut them off, so they are not
    /// proven (everything before them is).
    pub after_crash: u64,
    /// Admin calls (`SetKillSwitch`, `ResetSymbol`, `SetRoute`) re-applied where the journal
    /// recorded them.
    pub admin_calls: u64,
    /// Signals answered `engine_error` after a panic (no decision to reproduce).
    pub engine_errors: u64,
    /// Ticks journaled without a signal (the server stopped before answering, or the signal was
    /// dropped under `drop_and_count`).
    pub unanswered_ticks: u64,
    /// The same counts per model.
    pub by_model: BTreeMap<String, ModelAudit>,
    /// The first mismatches, in full.
    pub mismatches: Vec<Mismatch>,
    /// Journal files a crash left without their end marker (read up to their last batch).
    pub unterminated: Vec<PathBuf>,
    /// Wall-clock seconds the audit took.
    pub seconds: f64,
}

impl AuditReport {
    /// Every engine signal reproduced, and nothing that should be proven is missing.
    pub fn passed(&self) -> bool {
        self.mismatched == 0 && self.missing_ticks == 0
    }
}

/// Audits every run in `opts.journal`.
pub fn run(opts: &AuditOptions) -> Result<AuditReport, AuditError> {
    let started = std::time::Instant::now();
    let load = opts.config.load_options().map_err(|e| AuditError::Settings(e.to_string()))?;
    let mut report = AuditReport::default();
    let mut models = Models { dir: opts.models.clone(), load, journaled: HashMap::new(), policy: opts.config.policy };
    let runs = runs(&opts.journal)?;
    if runs.is_empty() {
        return Err(AuditError::Empty(opts.journal.clone()));
    }
    report.runs = runs.len();
    for (start, files) in runs {
        let ticks = read::ticks(&files.ticks)?;
        let signals = read::signals(&files.signals)?;
        let loaded = read::models(&files.models)?;
        // In the order the engine applied them (the journal writes them as they are confirmed).
        let mut controls = read::controls(&files.controls)?.records;
        controls.sort_by_key(|c| c.before_batch);
        let crashed = !ticks.unterminated.is_empty() || !signals.unterminated.is_empty();
        report.unterminated.extend(ticks.unterminated.iter().chain(&signals.unterminated).cloned());
        for m in loaded.records {
            models.journaled.insert(m.model.clone(), m);
        }
        audit_run(opts, start, crashed, (&ticks.records, &signals.records, &controls), &mut models, &mut report)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One server run's journal files.
#[derive(Default)]
struct RunFiles {
    ticks: Vec<PathBuf>,
    signals: Vec<PathBuf>,
    models: Vec<PathBuf>,
    controls: Vec<PathBuf>,
}

/// The journal's files grouped by server run (the start time in their names), oldest first.
fn runs(dir: &Path) -> Result<BTreeMap<u64, RunFiles>, AuditError> {
    let mut out: BTreeMap<u64, RunFiles> = BTreeMap::new();
    for (kind, pick) in [
        ("ticks", (|r: &mut RunFiles| &mut r.ticks) as fn(&mut RunFiles) -> &mut Vec<PathBuf>),
        ("signals", |r| &mut r.signals),
        ("models", |r| &mut r.models),
        ("controls", |r| &mut r.controls),
    ] {
        for path in read::files(dir, kind)? {
            let start = read::run_and_number(&path).map_or(0, |(start, _)| start);
            pick(out.entry(start).or_default()).push(path);
        }
    }
    out.retain(|_, r| !r.ticks.is_empty() || !r.signals.is_empty());
    Ok(out)
}

/// The models the journal names, loaded from the models directory once each and checked
/// against the sha256 the journal recorded when the server loaded them.
struct Models {
    dir: PathBuf,
    load: crate::model::LoadOptions,
    journaled: HashMap<String, ModelRecord>,
    policy: Option<crate::policy::PolicyParams>,
}

impl Models {
    fn load(&self, label: &str) -> Result<Box<ActiveModel>, AuditError> {
        let err = |source| AuditError::Model { label: label.to_owned(), source };
        let (name, version) = label.rsplit_once('@').unwrap_or((label, ""));
        let dir = self.dir.join(name).join(version);
        let m = LoadedModel::load_with(&dir, &self.load).map_err(err)?;
        if let Some(j) = self.journaled.get(label)
            && j.sha256 != m.manifest.sha256
        {
            return Err(AuditError::WrongModel {
                label: label.to_owned(),
                dir,
                found: m.manifest.sha256.clone(),
                journaled: j.sha256.clone(),
            });
        }
        Ok(Box::new(ActiveModel::from_loaded(m, self.policy)))
    }
}

/// Re-runs one server run's engine batches and compares every reply with its signal.
/// `journal`: the run's ticks, signals and the admin calls the engine applied (each with the
/// engine pass it preceded).
fn audit_run(
    opts: &AuditOptions,
    run: u64,
    crashed: bool,
    journal: (&[TickRecord], &[SignalRecord], &[ControlRecord]),
    models: &mut Models,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let (ticks, signals, controls) = journal;
    let mut next_control = 0;
    let (warm, ticks): (Vec<&TickRecord>, Vec<&TickRecord>) = ticks.iter().partition(|t| t.stream == WARM_STREAM);
    let warm = crate::journal::warm::rebuild_ticks(warm);
    report.warm_ticks += warm.len() as u64;
    report.ticks += ticks.len() as u64;
    report.signals += signals.len() as u64;
    let by_key: HashMap<(u64, u64), &TickRecord> = ticks.iter().map(|t| ((t.stream, t.index), *t)).collect();
    let answered: std::collections::HashSet<(u64, u64)> = signals.iter().map(|s| (s.stream, s.index)).collect();
    report.unanswered_ticks += ticks.iter().filter(|t| !answered.contains(&(t.stream, t.index))).count() as u64;
    // The engine's signals in the engine's order: by pass, then place in the pass.
    let mut engine: Vec<&SignalRecord> = Vec::with_capacity(signals.len());
    for s in signals {
        match (s.batch, s.reject) {
            (0, Some(Reject::EngineError)) => report.engine_errors += 1,
            (0, r) => *report.edge_answered.entry(r.map_or("none", Reject::code).to_owned()).or_default() += 1,
            _ => engine.push(s),
        }
    }
    engine.sort_by_key(|s| (s.batch, s.batch_pos));
    // The default model: the one that scored the default route (journals older than routes: the
    // first model seen).
    let default_label = engine.iter().find(|s| s.route.as_deref() == Some("default")).and_then(|s| s.model.clone());
    let mut sync: Option<(SyncEngine, HashMap<String, Arc<str>>)> = None;
    let mut replies = Vec::new();
    let mut i = 0;
    while i < engine.len() {
        let end = i + engine[i..].iter().take_while(|s| s.batch == engine[i].batch).count();
        let batch = &engine[i..end];
        i = end;
        let Some(label) = batch.iter().find_map(|s| s.model.clone()) else { continue };
        let complete = batch.iter().enumerate().all(|(k, s)| s.batch_pos as usize == k);
        let Some(mut inputs) = batch
            .iter()
            .map(|s| by_key.get(&(s.stream, s.index)).and_then(|t| recorded_tick(t, s)))
            .collect::<Option<Vec<RecordedTick>>>()
            .filter(|_| complete)
        else {
            if crashed {
                report.after_crash += (engine.len() - i + batch.len()) as u64;
                break;
            }
            report.missing_ticks += batch.len() as u64;
            continue;
        };
        if sync.is_none() {
            let label = default_label.clone().unwrap_or_else(|| label.clone());
            let config = opts.config.engine_config();
            let mut engine = SyncEngine::new(&config, models.load(&label)?, Telemetry::new());
            engine.warm(&warm);
            sync = Some((engine, HashMap::from([(model_name(&label).to_owned(), label)])));
        }
        let (engine, live) = sync.as_mut().expect("made above");
        // Every model that scored a tick of the batch, at the version that scored it (a name
        // not live yet goes live beside the others, as it did live).
        let routed = batch.iter().any(|s| s.route.is_some());
        let scorers = batch.iter().filter(|s| !routed || s.route.is_some()).filter_map(|s| s.model.as_ref());
        for label in scorers {
            if live.get(model_name(label)).is_none_or(|l| l != label) {
                engine.control(Control::Swap { model: models.load(label)?, done: None });
                live.insert(model_name(label).to_owned(), label.clone());
            }
        }
        // Admin calls, between the same two batches as live: a reset forgets the symbol's
        // state; a kill switch holds it in the symbol table (a held symbol is never evicted), the
        // kill decision itself coming from each signal's recorded `kill_admin`; a route change
        // sets the route as live did.
        while let Some(c) = controls.get(next_control)
            && c.before_batch <= batch[0].batch
        {
            engine.control(match (c.kind, c.symbol, c.route_spec()) {
                ("reset", Some(symbol), _) => Control::Reset { symbol, done: None },
                ("route", _, Some(spec)) => {
                    let spec = spec.map_err(|e| AuditError::Route(e.to_string()))?;
                    Control::SetRoute { spec: Box::new(spec), done: None }
                }
                (kind, symbol, _) => Control::Kill { symbol, engaged: kind == "kill", done: None },
            });
            report.admin_calls += 1;
            next_control += 1;
        }
        // Each tick down the route it took live.
        if let Some(table) = engine.served().routes().filter(|_| routed) {
            for (tick, s) in inputs.iter_mut().zip(batch) {
                let id = s.route.as_ref().and_then(|name| table.iter().position(|r| r.name == *name));
                tick.route = id.map_or(BY_SYMBOL, |id| id as crate::routes::RouteId);
            }
        }
        replies.clear();
        for chunk in inputs.chunks(engine.max_batch()) {
            engine.run_recorded(chunk, &mut replies);
        }
        for ((journaled, reply), tick) in batch.iter().zip(&replies).zip(&inputs) {
            let label = journaled.model.as_deref().unwrap_or(&label);
            let model = report.by_model.entry(label.to_owned()).or_default();
            model.signals += 1;
            let differences = differences(journaled, reply);
            if differences.is_empty() {
                model.reproduced += 1;
                report.reproduced += 1;
                continue;
            }
            model.mismatched += 1;
            report.mismatched += 1;
            if report.mismatches.len() < opts.keep_mismatches {
                report.mismatches.push(Mismatch {
                    run,
                    stream: journaled.stream,
                    index: journaled.index,
                    batch: journaled.batch,
                    batch_pos: journaled.batch_pos,
                    model: label.to_string(),
                    symbol: journaled.symbol.as_str().to_owned(),
                    seq: journaled.seq,
                    differences,
                    tick: format!("{:?}", by_key.get(&(journaled.stream, journaled.index))),
                    journaled: format!("{journaled:?}"),
                    replayed: format!("{reply:?} (recorded inputs {tick:?})"),
                });
            }
        }
    }
    Ok(())
}

/// The journaled tick as the engine took it, with the outside inputs its signal recorded (None:
/// the tick does not parse, which a tick the engine answered always does).
fn recorded_tick(t: &TickRecord, s: &SignalRecord) -> Option<RecordedTick> {
    let tick = t.tick().ok()?;
    let external = External { var_scale: s.var_scale, admin_kill: s.risk.contains(RiskFlags::KILL_ADMIN) };
    let expired = s.reject == Some(Reject::Expired);
    Some(RecordedTick {
        tick,
        recv_ns: t.recv_ns,
        conflate: t.conflate,
        recorded: Recorded { external, expired },
        route: BY_SYMBOL,
    })
}

/// Every field of the decision that differs, bit for bit for numbers.
fn differences(j: &SignalRecord, r: &Reply) -> Vec<String> {
    let mut out = Vec::new();
    let mut num = |name: &str, a: f64, b: f64| {
        if a.to_bits() != b.to_bits() {
            out.push(format!("{name}: {a:?} != {b:?}"));
        }
    };
    num("score", j.score, r.score);
    num("policy_position", j.policy_position, r.policy_position);
    num("target_position", j.target_position, r.target_position);
    num("var_scale", j.var_scale, r.external.var_scale);
    let mut other = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} != {b}"));
        }
    };
    other("risk", format!("{:?}", j.risk), format!("{:?}", r.risk));
    other("warming_up", j.warming_up.to_string(), r.warming_up.to_string());
    other("conflated", j.conflated.to_string(), r.conflated.to_string());
    other("reject", format!("{:?}", j.reject), format!("{:?}", r.reject));
    let replayed_hash = r.features.as_ref().map_or(0, |row| crate::features::row_hash(row));
    other("features_hash", format!("{:#018x}", j.features_hash), format!("{replayed_hash:#018x}"));
    other("model", format!("{:?}", j.model), format!("{:?}", r.model));
    other("symbol", j.symbol.to_string(), r.symbol.to_string());
    other("seq", j.seq.to_string(), r.seq.to_string());
    if let (Some(a), Some(b)) = (&j.features, &r.features)
        && a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits())
    {
        out.push(format!("features: {a:?} != {b:?}"));
    }
    out
}

/// The audit's summary for a terminal.
pub fn print(report: &AuditReport) {
    let verdict = if report.passed() { "PASS" } else { "FAIL" };
    println!(
        "audit {verdict}: {} of {} engine signals reproduced bit for bit ({} mismatched, {} without their tick) over {} ticks in {} run(s), {:.2} s",
        report.reproduced,
        report.reproduced + report.mismatched + report.missing_ticks + report.after_crash,
        report.mismatched,
        report.missing_ticks,
        report.ticks,
        report.runs,
        report.seconds
    );
    if report.admin_calls > 0 {
        println!(
            "  admin calls (kill switch, reset, route change) re-applied between the same batches: {}",
            report.admin_calls
        );
    }
    if report.warm_ticks > 0 {
        println!("  warm starts rebuilt from {} journaled ticks, re-run the same way", report.warm_ticks);
    }
    for (model, m) in &report.by_model {
        println!("  {model}: {} signals, {} reproduced, {} mismatched", m.signals, m.reproduced, m.mismatched);
    }
    if !report.edge_answered.is_empty() {
        let edge: Vec<String> = report.edge_answered.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  answered at the edge (not engine decisions): {}", edge.join(", "));
    }
    if report.after_crash > 0 {
        println!(
            "  cut off by a crash (the run's last batches, journaled in part; not proven): {}",
            report.after_crash
        );
    }
    if report.engine_errors > 0 {
        println!("  engine_error after a panic (no decision to prove): {}", report.engine_errors);
    }
    if report.unanswered_ticks > 0 {
        println!("  ticks journaled without a signal: {}", report.unanswered_ticks);
    }
    for f in &report.unterminated {
        println!("  {} ends early (a crash?): read up to its last complete batch", f.display());
    }
    if let Some(m) = report.mismatches.first() {
        println!(
            "first mismatch: run {} stream {} index {} (batch {} pos {}), {} {} seq {}",
            m.run, m.stream, m.index, m.batch, m.batch_pos, m.model, m.symbol, m.seq
        );
        for d in &m.differences {
            println!("  {d}");
        }
        println!("  tick:     {}", m.tick);
        println!("  journal:  {}", m.journaled);
        println!("  re-run:   {}", m.replayed);
    }
}
