//! Reading the journal back: its tick, signal and model files as Rust records, for the tick-file
//! reader (`quantd features`, `quantd replay`, training), `quantd audit` and the warm start.
//! Runs on whatever thread calls it, never the engine's.
//!
//! Files are ordered as the journal wrote them (the process start and the file number in the
//! name), records within a file as written. A file a crash left without its end-of-stream marker
//! reads up to its last complete batch and is reported in [`Read::unterminated`]; nothing after
//! that point is guessed at.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt16Array};
use arrow_array::{FixedSizeListArray, Float32Array, UInt32Array, UInt64Array};
use arrow_ipc::reader::StreamReader;

use super::writer::EXTENSION;
use super::{ControlRecord, ModelRecord, SignalRecord, TickRecord};
use crate::features::NUM_FEATURES;
use crate::risk::RiskFlags;
use crate::tick::{Reject, Symbol};

/// Why a journal file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalReadError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an Arrow IPC stream this journal wrote.
    #[error("{path}: not a readable Arrow IPC stream: {msg}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// Arrow's message.
        msg: String,
    },
    /// A column is missing or of the wrong type.
    #[error("{path}: column {column}: {msg} (is this a quantd journal file of that kind?)")]
    Column {
        /// The file.
        path: PathBuf,
        /// The column.
        column: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// A value cannot be what the journal writes.
    #[error("{path}: row {row}: {msg}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Its row in the file.
        row: usize,
        /// What is wrong with it.
        msg: String,
    },
}

/// Records of one kind, in journal order, and the files that ended early.
#[derive(Debug)]
pub struct Read<R> {
    /// The records, in file order.
    pub records: Vec<R>,
    /// Files without their end-of-stream marker (a crash, a kill -9, a full disk): read up to
    /// their last complete batch.
    pub unterminated: Vec<PathBuf>,
}

/// Whether `path` starts like an Arrow IPC stream (the continuation marker), as journal files do.
pub fn is_journal_file(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == [0xff; 4]
}

/// The journal's files of `kind` (`ticks`, `signals`, `models`) in `dir`, closed and partial, in
/// the order they were written.
pub fn files(dir: &Path, kind: &str) -> Result<Vec<PathBuf>, JournalReadError> {
    let io = |source| JournalReadError::Io { path: dir.to_owned(), source };
    let prefix = format!("{kind}-");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with(&prefix)
                && (name.ends_with(&format!(".{EXTENSION}")) || name.ends_with(&format!(".{EXTENSION}.partial")))
        })
        .collect();
    sort_files(&mut out);
    Ok(out)
}

/// The writing server run (its start time) and the file's number in it, from a journal file's
/// name (`<kind>-<start>-<n>.arrows`); None for a name of another form.
pub fn run_and_number(path: &Path) -> Option<(u64, u64)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    let mut parts = stem.rsplitn(3, '-');
    let n = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    Some((start, n))
}

/// Orders journal files by the writing process's start time and the file number in their
/// names; names of another form keep their given order, after those.
pub fn sort_files(paths: &mut [PathBuf]) {
    paths.sort_by_key(|p| run_and_number(p).map_or((1, (0, 0)), |k| (0, k)));
}

/// Reads every batch of one file; a file that ends early keeps what was complete.
fn batches(path: &Path) -> Result<(Vec<RecordBatch>, bool), JournalReadError> {
    let file = File::open(path).map_err(|source| JournalReadError::Io { path: path.to_owned(), source })?;
    let reader = StreamReader::try_new(BufReader::new(file), None)
        .map_err(|e| JournalReadError::Arrow { path: path.to_owned(), msg: e.to_string() })?;
    let mut out = Vec::new();
    for b in reader {
        match b {
            Ok(b) => out.push(b),
            Err(_) => return Ok((out, false)),
        }
    }
    // A clean end of stream without the marker (a file cut exactly between batches) reads
    // the same as a closed one; the `.partial` suffix tells them apart.
    let terminated = path.extension().is_none_or(|e| e != "partial");
    Ok((out, terminated))
}

/// Typed access to one batch's columns, with errors that name the file and column.
struct Columns<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn get<T: Array + 'static>(&self, column: &'static str) -> Result<&'a T, JournalReadError> {
        let err = |msg: String| JournalReadError::Column { path: self.path.to_owned(), column, msg };
        let array = self.batch.column_by_name(column).ok_or_else(|| err("missing".into()))?;
        array.as_any().downcast_ref::<T>().ok_or_else(|| err(format!("unexpected type {}", array.data_type())))
    }
}

/// Reads `paths` (one kind) in the given order, each batch through `each`.
fn read_kind<R>(
    paths: &[PathBuf],
    mut each: impl FnMut(&Path, &Columns, &mut Vec<R>) -> Result<(), JournalReadError>,
) -> Result<Read<R>, JournalReadError> {
    let mut read = Read { records: Vec::new(), unterminated: Vec::new() };
    for path in paths {
        let (batches, terminated) = batches(path)?;
        if !terminated {
            read.unterminated.push(path.clone());
        }
        for batch in &batches {
            each(path, &Columns { path, batch }, &mut read.records)?;
        }
    }
    Ok(read)
}

/// The tick records of `paths`, in journal order.
pub fn ticks(paths: &[PathBuf]) -> Result<Read<TickRecord>, JournalReadError> {
    read_kind(paths, |_, c, out| {
        let u = |n| c.get::<UInt64Array>(n);
        let f = |n| c.get::<Float64Array>(n);
        let (arrival, stream, index, recv, seq) =
            (u("arrival")?, u("stream")?, u("index")?, u("server_recv_ns")?, u("seq")?);
        let (symbol, ts) = (c.get::<StringArray>("symbol")?, c.get::<Int64Array>("exchange_ts_ns")?);
        let (kind, aggressor) = (c.get::<Int32Array>("kind")?, c.get::<Int32Array>("aggressor")?);
        let (bid_px, bid_qty, ask_px, ask_qty) = (f("bid_px")?, f("bid_qty")?, f("ask_px")?, f("ask_qty")?);
        let (trade_px, trade_qty, conflate) = (f("trade_px")?, f("trade_qty")?, c.get::<BooleanArray>("conflate")?);
        for i in 0..c.batch.num_rows() {
            out.push(TickRecord {
                arrival: arrival.value(i),
                stream: stream.value(i),
                index: index.value(i),
                recv_ns: recv.value(i),
                symbol: Symbol::truncated(symbol.value(i)),
                seq: seq.value(i),
                exchange_ts_ns: ts.value(i),
                kind: kind.value(i),
                aggressor: aggressor.value(i),
                bid_px: bid_px.value(i),
                bid_qty: bid_qty.value(i),
                ask_px: ask_px.value(i),
                ask_qty: ask_qty.value(i),
                trade_px: trade_px.value(i),
                trade_qty: trade_qty.value(i),
                conflate: conflate.value(i),
            });
        }
        Ok(())
    })
}

/// Repeated strings of a column read as one shared `Arc<str>` while they repeat.
#[derive(Default)]
struct Shared(Option<(String, Arc<str>)>);

impl Shared {
    fn get(&mut self, column: &StringArray, i: usize) -> Option<Arc<str>> {
        if column.is_null(i) {
            return None;
        }
        let name = column.value(i);
        Some(match &self.0 {
            Some((last, shared)) if last == name => shared.clone(),
            _ => {
                let shared: Arc<str> = Arc::from(name);
                self.0 = Some((name.to_owned(), shared.clone()));
                shared
            }
        })
    }
}

/// The signal records of `paths`, in journal order.
pub fn signals(paths: &[PathBuf]) -> Result<Read<SignalRecord>, JournalReadError> {
    read_kind(paths, |path, c, out| {
        let u = |n| c.get::<UInt64Array>(n);
        let f = |n| c.get::<Float64Array>(n);
        let b = |n| c.get::<BooleanArray>(n);
        let (stream, index, send, recv, seq) =
            (u("stream")?, u("index")?, u("server_send_ns")?, u("server_recv_ns")?, u("seq")?);
        let (symbol, ts, model) =
            (c.get::<StringArray>("symbol")?, c.get::<Int64Array>("exchange_ts_ns")?, c.get::<StringArray>("model")?);
        let (score, policy, target) = (f("score")?, f("policy_position")?, f("target_position")?);
        let (risk, warming_up, conflated) = (c.get::<UInt16Array>("risk_bits")?, b("warming_up")?, b("conflated")?);
        let (reject, batch, batch_pos) =
            (c.get::<StringArray>("reject")?, u("batch")?, c.get::<UInt32Array>("batch_pos")?);
        let (var_scale, features_hash) = (f("var_scale")?, u("features_hash")?);
        // Only where the journal kept rows (`journal.feature_rows = "row"`).
        let rows = match c.batch.column_by_name("features") {
            None => None,
            Some(_) => {
                let rows = c.get::<FixedSizeListArray>("features")?;
                let values =
                    rows.values().as_any().downcast_ref::<Float32Array>().ok_or_else(|| JournalReadError::Column {
                        path: path.to_owned(),
                        column: "features",
                        msg: format!("unexpected item type {}", rows.value_type()),
                    })?;
                Some((rows, values))
            }
        };
        // Only in journals written since routes (older ones: every route None).
        let route = match c.batch.column_by_name("route") {
            None => None,
            Some(_) => Some(c.get::<StringArray>("route")?),
        };
        let (mut models, mut routes) = (Shared::default(), Shared::default());
        for i in 0..c.batch.num_rows() {
            let value = |msg: String| JournalReadError::Value { path: path.to_owned(), row: out.len(), msg };
            let model = models.get(model, i);
            let route = route.and_then(|r| routes.get(r, i));
            let reject = match reject.is_null(i) {
                true => None,
                false => Some(
                    Reject::from_code(reject.value(i))
                        .ok_or_else(|| value(format!("unknown reject code {:?}", reject.value(i))))?,
                ),
            };
            let risk = RiskFlags::from_bits(risk.value(i))
                .ok_or_else(|| value(format!("unknown risk bits {:#x}", risk.value(i))))?;
            out.push(SignalRecord {
                stream: stream.value(i),
                index: index.value(i),
                send_ns: send.value(i),
                recv_ns: recv.value(i),
                symbol: Symbol::truncated(symbol.value(i)),
                seq: seq.value(i),
                exchange_ts_ns: ts.value(i),
                model,
                route,
                score: score.value(i),
                policy_position: policy.value(i),
                target_position: target.value(i),
                risk,
                warming_up: warming_up.value(i),
                conflated: conflated.value(i),
                reject,
                batch: if batch.is_null(i) { 0 } else { batch.value(i) },
                batch_pos: if batch_pos.is_null(i) { 0 } else { batch_pos.value(i) },
                var_scale: var_scale.value(i),
                features_hash: features_hash.value(i),
                features: rows.filter(|(rows, _)| rows.is_valid(i)).map(|(_, values)| {
                    let at = i * NUM_FEATURES;
                    std::array::from_fn(|k| values.value(at + k))
                }),
            });
        }
        Ok(())
    })
}

/// The model records of `paths` (every version the server loaded), in journal order.
pub fn models(paths: &[PathBuf]) -> Result<Read<ModelRecord>, JournalReadError> {
    read_kind(paths, |_, c, out| {
        let t = |n| c.get::<StringArray>(n);
        let loaded = c.get::<UInt64Array>("loaded_ns")?;
        let (model, sha, sv, sh, dir, backend) =
            (t("model")?, t("sha256")?, t("schema_version")?, t("schema_hash")?, t("dir")?, t("backend")?);
        for i in 0..c.batch.num_rows() {
            out.push(ModelRecord {
                loaded_ns: loaded.value(i),
                model: model.value(i).to_owned(),
                sha256: sha.value(i).to_owned(),
                schema_version: sv.value(i).to_owned(),
                schema_hash: sh.value(i).to_owned(),
                dir: dir.value(i).to_owned(),
                backend: backend.value(i).to_owned(),
            });
        }
        Ok(())
    })
}

/// The admin calls the engine applied (`controls-*.arrows`), in journal order.
pub fn controls(paths: &[PathBuf]) -> Result<Read<ControlRecord>, JournalReadError> {
    read_kind(paths, |path, c, out| {
        let t = |n| c.get::<StringArray>(n);
        let (applied, before) = (c.get::<UInt64Array>("applied_ns")?, c.get::<UInt64Array>("before_batch")?);
        let (kind, symbol, reason) = (t("kind")?, t("symbol")?, t("reason")?);
        // Journals older than route changes have no `route` column.
        let route = match c.batch.column_by_name("route") {
            None => None,
            Some(_) => Some(t("route")?),
        };
        for i in 0..c.batch.num_rows() {
            let kind = match kind.value(i) {
                "kill" => "kill",
                "release" => "release",
                "reset" => "reset",
                "route" => "route",
                other => {
                    let msg = format!("unknown control kind {other:?}");
                    return Err(JournalReadError::Value { path: path.to_owned(), row: out.len(), msg });
                }
            };
            out.push(ControlRecord {
                applied_ns: applied.value(i),
                kind,
                symbol: (!symbol.is_null(i)).then(|| Symbol::truncated(symbol.value(i))),
                before_batch: before.value(i),
                reason: reason.value(i).to_owned(),
                route: route.filter(|r| !r.is_null(i)).map(|r| r.value(i).to_owned()),
            });
        }
        Ok(())
    })
}
