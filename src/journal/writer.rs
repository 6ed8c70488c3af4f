//! The journal's files: Arrow IPC streams of ticks and of signals, with rotation, retention,
//! flush and fsync. Runs on the `quantd-journal` thread only.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt16Array, UInt32Array,
    UInt64Array,
};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::{ControlRecord, FeatureRows, JournalConfig, ModelRecord, Record, SignalRecord, TickRecord};
use crate::features::NUM_FEATURES;
use crate::tick::Reject;

/// The file name suffix of a closed journal file; one being written has `.partial` after it.
pub const EXTENSION: &str = "arrows";
const PARTIAL: &str = "partial";

/// The columns of `ticks-*.arrows`.
pub fn tick_schema() -> SchemaRef {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        u("arrival"),
        u("stream"),
        u("index"),
        u("server_recv_ns"),
        Field::new("symbol", DataType::Utf8, false),
        u("seq"),
        Field::new("exchange_ts_ns", DataType::Int64, false),
        Field::new("kind", DataType::Int32, false),
        Field::new("aggressor", DataType::Int32, false),
        f("bid_px"),
        f("bid_qty"),
        f("ask_px"),
        f("ask_qty"),
        f("trade_px"),
        f("trade_qty"),
        Field::new("conflate", DataType::Boolean, false),
    ]))
}

/// The columns of `signals-*.arrows`; the `features` column only where rows are kept.
pub fn signal_schema(rows: FeatureRows) -> SchemaRef {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    let b = |n: &str| Field::new(n, DataType::Boolean, false);
    let mut fields = vec![
        u("stream"),
        u("index"),
        u("server_send_ns"),
        u("server_recv_ns"),
        Field::new("symbol", DataType::Utf8, false),
        u("seq"),
        Field::new("exchange_ts_ns", DataType::Int64, false),
        Field::new("model", DataType::Utf8, true),
        Field::new("route", DataType::Utf8, true),
        f("score"),
        f("policy_position"),
        f("target_position"),
        Field::new("risk_bits", DataType::UInt16, false),
        Field::new("risk", DataType::Utf8, false),
        b("warming_up"),
        b("conflated"),
        Field::new("reject", DataType::Utf8, true),
        Field::new("batch", DataType::UInt64, true),
        Field::new("batch_pos", DataType::UInt32, true),
        f("var_scale"),
        u("features_hash"),
    ];
    if rows == FeatureRows::Row {
        fields.push(Field::new("features", features_type(), true));
    }
    Arc::new(Schema::new(fields))
}

/// The `features` column's type: the row of [`NUM_FEATURES`] floats (null unless kept).
pub fn features_type() -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, false)), NUM_FEATURES as i32)
}

fn features_column(rows: &[SignalRecord]) -> ArrayRef {
    let mut b = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows.len() * NUM_FEATURES),
        NUM_FEATURES as i32,
        rows.len(),
    )
    .with_field(Arc::new(Field::new_list_field(DataType::Float32, false)));
    for r in rows {
        match &r.features {
            Some(row) => {
                b.values().append_slice(row);
                b.append(true);
            }
            None => {
                b.values().append_slice(&[0.0; NUM_FEATURES]);
                b.append(false);
            }
        }
    }
    Arc::new(b.finish())
}

/// The columns of `controls-*.arrows`.
pub fn control_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("applied_ns", DataType::UInt64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, true),
        Field::new("before_batch", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("route", DataType::Utf8, true),
    ]))
}

fn control_batch(schema: &SchemaRef, rows: &[ControlRecord]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.applied_ns))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.symbol.as_ref().map(|s| s.as_str().to_owned())))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.before_batch))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.reason.as_str()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.route.as_deref()))),
        ],
    )
}

/// The columns of `models-*.arrows`.
pub fn model_schema() -> SchemaRef {
    let t = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("loaded_ns", DataType::UInt64, false),
        t("model"),
        t("sha256"),
        t("schema_version"),
        t("schema_hash"),
        t("dir"),
        t("backend"),
    ]))
}

fn model_batch(schema: &SchemaRef, rows: &[ModelRecord]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let t = |f: fn(&ModelRecord) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.loaded_ns))),
            t(|r| &r.model),
            t(|r| &r.sha256),
            t(|r| &r.schema_version),
            t(|r| &r.schema_hash),
            t(|r| &r.dir),
            t(|r| &r.backend),
        ],
    )
}

fn tick_batch(schema: &SchemaRef, rows: &[TickRecord]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let u = |f: fn(&TickRecord) -> u64| Arc::new(UInt64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let f = |f: fn(&TickRecord) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let i = |f: fn(&TickRecord) -> i32| Arc::new(Int32Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    RecordBatch::try_new(
        schema.clone(),
        vec![
            u(|r| r.arrival),
            u(|r| r.stream),
            u(|r| r.index),
            u(|r| r.recv_ns),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.symbol.as_str()))),
            u(|r| r.seq),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.exchange_ts_ns))),
            i(|r| r.kind),
            i(|r| r.aggressor),
            f(|r| r.bid_px),
            f(|r| r.bid_qty),
            f(|r| r.ask_px),
            f(|r| r.ask_qty),
            f(|r| r.trade_px),
            f(|r| r.trade_qty),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.conflate)))),
        ],
    )
}

fn signal_batch(schema: &SchemaRef, rows: &[SignalRecord]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let u = |f: fn(&SignalRecord) -> u64| Arc::new(UInt64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let f = |f: fn(&SignalRecord) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let b =
        |f: fn(&SignalRecord) -> bool| Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(f(r))))) as ArrayRef;
    let risk: Vec<String> = rows.iter().map(|r| r.risk.codes().collect::<Vec<_>>().join("|")).collect();
    RecordBatch::try_new(
        schema.clone(),
        vec![
            u(|r| r.stream),
            u(|r| r.index),
            u(|r| r.send_ns),
            u(|r| r.recv_ns),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.symbol.as_str()))),
            u(|r| r.seq),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.exchange_ts_ns))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.model.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.route.as_deref()))),
            f(|r| r.score),
            f(|r| r.policy_position),
            f(|r| r.target_position),
            Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.risk.bits()))),
            Arc::new(StringArray::from_iter_values(risk)),
            b(|r| r.warming_up),
            b(|r| r.conflated),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.reject.map(Reject::code)))),
            Arc::new(UInt64Array::from_iter(rows.iter().map(|r| (r.batch > 0).then_some(r.batch)))),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| (r.batch > 0).then_some(r.batch_pos)))),
            f(|r| r.var_scale),
            u(|r| r.features_hash),
        ]
        .into_iter()
        .chain(schema.column_with_name("features").map(|_| features_column(rows)))
        .collect(),
    )
}

/// Files left as `.partial` in `dir` (by a crash, a kill -9 or a failed disk).
pub fn partial_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == PARTIAL))
        .collect();
    out.sort();
    Ok(out)
}

/// One open file of one kind.
struct Open {
    writer: StreamWriter<BufWriter<File>>,
    path: PathBuf,
    opened: Instant,
}

/// One kind of record (ticks or signals): its pending rows and its current file.
struct Stream<R> {
    kind: &'static str,
    schema: SchemaRef,
    batch: fn(&SchemaRef, &[R]) -> Result<RecordBatch, arrow_schema::ArrowError>,
    pending: Vec<R>,
    open: Option<Open>,
    /// Files begun by this process (part of the name, so names never repeat).
    count: u64,
}

impl<R> Stream<R> {
    fn new(
        kind: &'static str,
        schema: SchemaRef,
        batch: fn(&SchemaRef, &[R]) -> Result<RecordBatch, arrow_schema::ArrowError>,
    ) -> Self {
        Self { kind, schema, batch, pending: Vec::new(), open: None, count: 0 }
    }

    /// Writes the pending rows as one batch and flushes; returns the rows written, or the error
    /// (the rows are then lost, and the file is abandoned as `.partial`).
    fn write(&mut self, dir: &Path, start: u64) -> Result<u64, String> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let rows = self.pending.len() as u64;
        let result = self.try_write(dir, start);
        self.pending.clear();
        if result.is_err() {
            self.open = None;
        }
        result.map(|()| rows)
    }

    fn try_write(&mut self, dir: &Path, start: u64) -> Result<(), String> {
        if self.open.is_none() {
            let path = dir.join(format!("{}-{start}-{:06}.{EXTENSION}.{PARTIAL}", self.kind, self.count));
            self.count += 1;
            let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let writer = StreamWriter::try_new(BufWriter::new(file), &self.schema).map_err(|e| e.to_string())?;
            self.open = Some(Open { writer, path, opened: Instant::now() });
        }
        let batch = (self.batch)(&self.schema, &self.pending).map_err(|e| e.to_string())?;
        let open = self.open.as_mut().expect("opened above");
        open.writer.write(&batch).map_err(|e| format!("{}: {e}", open.path.display()))?;
        open.writer.flush().map_err(|e| format!("{}: {e}", open.path.display()))
    }

    /// Writes the pending rows, keeping them for the next write if this one fails.
    fn write_kept(&mut self, dir: &Path, start: u64) -> Result<(), String>
    where
        R: Clone,
    {
        let kept = self.pending.clone();
        self.write(dir, start).map(|_| ()).inspect_err(|_| self.pending = kept)
    }

    fn sync(&mut self) -> Result<(), String> {
        match &mut self.open {
            Some(o) => o.writer.get_ref().get_ref().sync_data().map_err(|e| format!("{}: {e}", o.path.display())),
            None => Ok(()),
        }
    }

    fn due(&self, config: &JournalConfig) -> bool {
        self.open.as_ref().is_some_and(|o| {
            let bytes = o.writer.get_ref().get_ref().metadata().map_or(0, |m| m.len());
            bytes >= config.rotate_bytes || o.opened.elapsed() >= Duration::from_secs(config.rotate_secs)
        })
    }

    /// Closes the current file past its size or age and applies the retention.
    fn rotate_if_due(&mut self, config: &JournalConfig, out: &mut Outcome) {
        if !self.due(config) {
            return;
        }
        out.rotated += 1;
        if let Err(e) = self.close() {
            out.error = Some(e);
        }
        self.retain(&config.dir, config.retention_files);
    }

    /// Ends the current file (end-of-stream marker, fsync) and renames it to its final name.
    fn close(&mut self) -> Result<(), String> {
        let Some(mut o) = self.open.take() else { return Ok(()) };
        o.writer.finish().map_err(|e| format!("{}: {e}", o.path.display()))?;
        o.writer.get_ref().get_ref().sync_data().map_err(|e| format!("{}: {e}", o.path.display()))?;
        let done = o.path.with_extension("");
        std::fs::rename(&o.path, &done).map_err(|e| format!("{}: {e}", o.path.display()))
    }

    /// Deletes the oldest closed files of this kind beyond `keep` (0: keep all).
    fn retain(&self, dir: &Path, keep: usize) {
        if keep == 0 {
            return;
        }
        let prefix = format!("{}-", self.kind);
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut closed: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(&prefix) && name.ends_with(&format!(".{EXTENSION}"))
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        closed.sort();
        let excess = closed.len().saturating_sub(keep);
        for (_, path) in closed.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "journal retention: cannot delete");
            }
        }
    }
}

/// What one write did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Tick records written.
    pub ticks_written: u64,
    /// Signal records written.
    pub signals_written: u64,
    /// Tick records lost to a write error.
    pub ticks_lost: u64,
    /// Signal records lost to a write error.
    pub signals_lost: u64,
    /// Files rotated.
    pub rotated: u64,
    /// The write error, when there was one.
    pub error: Option<String>,
}

/// Both kinds of journal file.
pub struct Files {
    config: JournalConfig,
    /// CLOCK_REALTIME ns when this process began journaling (part of the file names).
    start: u64,
    ticks: Stream<TickRecord>,
    signals: Stream<SignalRecord>,
    models: Stream<ModelRecord>,
    controls: Stream<ControlRecord>,
    last_flush: Instant,
    last_sync: Instant,
}

impl Files {
    /// No file open yet; the first record opens one.
    pub fn new(config: &JournalConfig) -> Self {
        Self {
            config: config.clone(),
            start: crate::clock::realtime_ns(),
            ticks: Stream::new("ticks", tick_schema(), tick_batch),
            signals: Stream::new("signals", signal_schema(config.feature_rows), signal_batch),
            models: Stream::new("models", model_schema(), model_batch),
            controls: Stream::new("controls", control_schema(), control_batch),
            last_flush: Instant::now(),
            last_sync: Instant::now(),
        }
    }

    /// Adds a tick or signal record to the batch being built.
    pub fn push(&mut self, r: Record) {
        match r {
            Record::Tick(t) => self.ticks.pending.push(t),
            Record::Signal(mut s) => {
                if let Some(row) = &s.features {
                    s.features_hash = crate::features::row_hash(row);
                }
                if self.config.feature_rows == FeatureRows::Hash {
                    s.features = None;
                }
                self.signals.pending.push(s)
            }
        }
    }

    /// Adds a model-load record (written at once: loads are rare).
    pub fn push_model(&mut self, m: ModelRecord) {
        self.models.pending.push(m);
    }

    /// Adds an admin-call record (written at once: calls are rare).
    pub fn push_control(&mut self, c: ControlRecord) {
        self.controls.pending.push(c);
    }

    /// Rows waiting for the next batch (every kind).
    pub fn pending(&self) -> usize {
        self.ticks.pending.len() + self.signals.pending.len() + self.models.pending.len() + self.controls.pending.len()
    }

    /// Time since the last flush.
    pub fn since_flush(&self) -> Duration {
        self.last_flush.elapsed()
    }

    /// Writes both kinds' pending rows, fsyncs when due, and rotates files past their size or age.
    pub fn write_pending(&mut self) -> Outcome {
        let mut out = Outcome::default();
        let (dir, start) = (self.config.dir.clone(), self.start);
        let (t, s) = (self.ticks.pending.len() as u64, self.signals.pending.len() as u64);
        match self.ticks.write(&dir, start) {
            Ok(n) => out.ticks_written = n,
            Err(e) => (out.ticks_lost, out.error) = (t, Some(e)),
        }
        match self.signals.write(&dir, start) {
            Ok(n) => out.signals_written = n,
            Err(e) => (out.signals_lost, out.error) = (s, Some(e)),
        }
        // Model and control records are written at once and their files kept open (a handful per
        // day); a failed one is kept for the next write rather than lost.
        for r in [self.models.write_kept(&dir, start), self.controls.write_kept(&dir, start)] {
            if let Err(e) = r {
                out.error = Some(e);
            }
        }
        self.last_flush = Instant::now();
        if self.config.fsync_ms == 0 || self.last_sync.elapsed() >= Duration::from_millis(self.config.fsync_ms) {
            for r in [self.ticks.sync(), self.signals.sync(), self.models.sync(), self.controls.sync()] {
                if let Err(e) = r {
                    out.error = Some(e);
                }
            }
            self.last_sync = Instant::now();
        }
        self.ticks.rotate_if_due(&self.config, &mut out);
        self.signals.rotate_if_due(&self.config, &mut out);
        out
    }

    /// Closes both files (end-of-stream marker, fsync, final names).
    pub fn close(&mut self) {
        let (dir, start) = (self.config.dir.clone(), self.start);
        for r in [self.models.write_kept(&dir, start), self.controls.write_kept(&dir, start)] {
            if let Err(e) = r {
                tracing::error!(error = %e, "journal: writing the model or control records failed");
            }
        }
        for r in [self.ticks.close(), self.signals.close(), self.models.close(), self.controls.close()] {
            if let Err(e) = r {
                tracing::error!(error = %e, "journal: closing a file failed");
            }
        }
        let dir = self.config.dir.clone();
        self.ticks.retain(&dir, self.config.retention_files);
        self.signals.retain(&dir, self.config.retention_files);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    use crate::journal::OnFull;
    use crate::risk::RiskFlags;
    use crate::tick::Symbol;

    fn config(dir: &Path) -> JournalConfig {
        JournalConfig { enabled: true, dir: dir.to_owned(), on_full: OnFull::DropAndCount, ..JournalConfig::default() }
    }

    fn tick(i: u64) -> TickRecord {
        TickRecord {
            arrival: i,
            stream: 7,
            index: i,
            recv_ns: 1_000 + i,
            symbol: Symbol::new("BTCUSDT").unwrap(),
            seq: i + 1,
            exchange_ts_ns: 5_000 + i as i64,
            kind: 0,
            aggressor: 0,
            bid_px: 100.0 + i as f64,
            bid_qty: 1.0,
            ask_px: 100.5 + i as f64,
            ask_qty: 2.0,
            trade_px: 0.0,
            trade_qty: 0.0,
            conflate: false,
        }
    }

    fn signal(i: u64) -> SignalRecord {
        SignalRecord {
            stream: 7,
            index: i,
            send_ns: 2_000 + i,
            recv_ns: 1_000 + i,
            symbol: Symbol::new("BTCUSDT").unwrap(),
            seq: i + 1,
            exchange_ts_ns: 5_000 + i as i64,
            model: i.is_multiple_of(2).then(|| Arc::from("quantd-mlp@2")),
            route: i.is_multiple_of(2).then(|| Arc::from("default")),
            score: i as f64 * 0.5,
            policy_position: 0.25,
            target_position: 0.2,
            risk: RiskFlags::KILL_ADMIN,
            warming_up: i < 3,
            conflated: false,
            reject: (i == 4).then_some(Reject::PriceJump),
            batch: if i == 4 { 0 } else { 1 + i / 4 },
            batch_pos: (i % 4) as u32,
            var_scale: 1.0,
            features_hash: 0xfeed + i,
            features: (i == 1).then_some([0.5; NUM_FEATURES]),
        }
    }

    fn read_all(path: &Path) -> (Vec<RecordBatch>, Result<(), arrow_schema::ArrowError>) {
        let reader = arrow_ipc::reader::StreamReader::try_new(File::open(path).unwrap(), None).unwrap();
        let mut batches = Vec::new();
        for b in reader {
            match b {
                Ok(b) => batches.push(b),
                Err(e) => return (batches, Err(e)),
            }
        }
        (batches, Ok(()))
    }

    fn files(dir: &Path, prefix: &str, ext: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(prefix) && n.ends_with(ext)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_read_back_with_their_values_and_files_get_final_names_when_closed() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Files::new(&config(d.path()));
        for i in 0..10 {
            f.push(Record::Tick(tick(i)));
            f.push(Record::Signal(signal(i)));
        }
        let out = f.write_pending();
        assert_eq!((out.ticks_written, out.signals_written, out.error), (10, 10, None));
        assert_eq!(partial_files(d.path()).unwrap().len(), 2, "open files are .partial");
        f.close();
        assert!(partial_files(d.path()).unwrap().is_empty());
        let (ticks, end) = read_all(&files(d.path(), "ticks-", ".arrows")[0]);
        end.unwrap();
        assert_eq!(ticks[0].schema(), tick_schema());
        assert_eq!(ticks.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
        let (signals, end) = read_all(&files(d.path(), "signals-", ".arrows")[0]);
        end.unwrap();
        let s = &signals[0];
        let col = |n: &str| s.column_by_name(n).unwrap().clone();
        let model = col("model");
        let model = model.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((model.value(0), model.is_null(1)), ("quantd-mlp@2", true));
        let reject = col("reject");
        let reject = reject.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((reject.is_null(3), reject.value(4)), (true, "price_jump"));
        let risk = col("risk");
        assert_eq!(risk.as_any().downcast_ref::<StringArray>().unwrap().value(0), "kill_admin");
        let score = col("score");
        assert_eq!(score.as_any().downcast_ref::<Float64Array>().unwrap().value(9), 4.5);
    }

    #[test]
    fn signals_keep_the_hash_of_their_feature_row_and_the_row_itself_where_configured() {
        use crate::journal::read;
        for rows in [FeatureRows::Hash, FeatureRows::Row] {
            let d = tempfile::tempdir().unwrap();
            let mut f = Files::new(&JournalConfig { feature_rows: rows, ..config(d.path()) });
            for i in 0..3 {
                f.push(Record::Signal(signal(i)));
            }
            f.write_pending();
            f.close();
            let back = read::signals(&files(d.path(), "signals-", ".arrows")).unwrap().records;
            let row = [0.5; NUM_FEATURES];
            assert_eq!(back[1].features_hash, crate::features::row_hash(&row));
            assert_ne!(back[1].features_hash, 0);
            assert_eq!((back[0].features_hash, back[0].features), (0xfeed, None), "no row: the record's own hash");
            assert_eq!(back[1].features, (rows == FeatureRows::Row).then_some(row), "{rows:?}");
            assert_eq!((back[2].batch, back[2].batch_pos, back[2].var_scale), (1, 2, 1.0));
        }
    }

    #[test]
    fn model_records_are_written_at_once_and_survive_a_failed_write() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        let mut f = Files::new(&config(&gone));
        let model = ModelRecord {
            loaded_ns: 1,
            model: "quantd-mlp@2".into(),
            sha256: "ab".repeat(32),
            schema_version: "quantd-features/v1".into(),
            schema_hash: "cd".repeat(32),
            dir: "models/quantd-mlp/2".into(),
            backend: "native (avx2)".into(),
        };
        f.push_model(model.clone());
        assert!(f.write_pending().error.is_some(), "no directory yet");
        std::fs::create_dir(&gone).unwrap();
        assert_eq!(f.write_pending().error, None);
        f.close();
        let (batches, end) = read_all(&files(&gone, "models-", ".arrows")[0]);
        end.unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1, "kept for the next write, once");
        let sha = batches[0].column_by_name("sha256").unwrap().clone();
        assert_eq!(sha.as_any().downcast_ref::<StringArray>().unwrap().value(0), model.sha256);
    }

    #[test]
    fn an_unclosed_file_reads_back_up_to_its_last_batch() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Files::new(&config(d.path()));
        for batch in 0..3 {
            for i in 0..5 {
                f.push(Record::Tick(tick(batch * 5 + i)));
            }
            f.write_pending();
        }
        // A crash: no end-of-stream marker, no rename.
        std::mem::forget(f);
        let partial = partial_files(d.path()).unwrap();
        assert_eq!(partial.len(), 1);
        let (batches, _) = read_all(&partial[0]);
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 15);
    }

    #[test]
    fn files_rotate_by_size_and_only_the_newest_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Files::new(&JournalConfig { rotate_bytes: 4096, retention_files: 2, ..config(d.path()) });
        let mut rotated = 0;
        for batch in 0..6 {
            for i in 0..40 {
                f.push(Record::Tick(tick(batch * 40 + i)));
            }
            let out = f.write_pending();
            assert_eq!(out.error, None);
            rotated += out.rotated;
        }
        f.close();
        assert!(rotated >= 3, "{rotated} rotations");
        let kept = files(d.path(), "ticks-", ".arrows");
        assert_eq!(kept.len(), 2, "{kept:?}");
        // The newest two: the last rows are all there.
        let rows: usize = kept.iter().map(|p| read_all(p).0.iter().map(RecordBatch::num_rows).sum::<usize>()).sum();
        assert!(rows >= 40, "{rows}");
    }

    #[test]
    fn a_failed_write_loses_only_its_batch_and_the_next_file_takes_writes() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut f = Files::new(&config(&gone));
        std::fs::remove_dir(&gone).unwrap();
        f.push(Record::Tick(tick(0)));
        let out = f.write_pending();
        assert_eq!(out.ticks_lost, 1);
        assert!(out.error.is_some());
        std::fs::create_dir(&gone).unwrap();
        f.push(Record::Tick(tick(1)));
        let out = f.write_pending();
        assert_eq!((out.ticks_written, out.error), (1, None));
    }
}
