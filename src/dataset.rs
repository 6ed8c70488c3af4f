//! `quantd features`: the feature rows the engine would compute for recorded ticks, written as
//! CSV (header row) or NumPy `.npy` (structured array, one named field per column).
//!
//! Runs on the caller's thread. It uses the engine's own per-symbol code path
//! ([`FeatureEngine`]), so training inputs are the serving inputs, bit for bit.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use crate::features::{NUM_FEATURES, SymbolFeatures, names};
use crate::plausibility::{JumpGuard, TickChecks};
use crate::symbols::SymbolTable;
use crate::tick::{Reject, Tick};
use crate::tickfile::{TickFileError, TickReader};

/// Per-symbol feature state plus the stateful checks, exactly as the engine applies them
/// ([`TickChecks::admit`] with the default `[ticks]` settings and no server clock, as in replay).
pub struct FeatureEngine {
    table: SymbolTable<(SymbolFeatures, JumpGuard)>,
    checks: TickChecks,
}

impl FeatureEngine {
    /// An engine of feature state for at most `max_symbols` symbols, `reserve` of them allocated up front.
    pub fn new(max_symbols: usize, reserve: usize) -> Self {
        Self { table: SymbolTable::new(max_symbols, reserve), checks: TickChecks::default() }
    }

    /// Checks the tick against its symbol's state (timestamp order, price jump, finiteness,
    /// symbol cap), folds it in and writes the features. Returns the state after the update; a
    /// refused tick leaves it unchanged.
    pub fn update(&mut self, tick: &Tick, out: &mut [f32; NUM_FEATURES]) -> Result<&SymbolFeatures, Reject> {
        let (state, guard) = self.table.get_or_insert_with(tick.symbol, Default::default)?;
        self.checks.admit(state, guard, tick, 0, out)?;
        Ok(state)
    }

    /// Symbols seen so far.
    pub fn symbols(&self) -> usize {
        self.table.len()
    }
}

/// Why `quantd features` could not write its rows.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The tick files could not be read.
    #[error(transparent)]
    Ticks(#[from] TickFileError),
    /// The output file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The output file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output name ends in neither `.csv` nor `.npy`.
    #[error("output {0}: unsupported extension; use .csv or .npy")]
    Extension(String),
    /// A tick was refused by the engine's checks.
    #[error("tick seq {seq} ({symbol}): {reject}")]
    Rejected {
        /// Its sequence number.
        seq: u64,
        /// Its symbol.
        symbol: String,
        /// Why it was refused.
        reject: Reject,
    },
}

/// One output row.
pub struct Row<'a> {
    /// The tick.
    pub tick: &'a Tick,
    /// Its mid price after the update.
    pub mid: f64,
    /// The feature row the engine computed for it.
    pub features: &'a [f32; NUM_FEATURES],
}

trait RowWriter {
    fn row(&mut self, r: &Row<'_>) -> std::io::Result<()>;
    fn finish(self: Box<Self>, rows: u64) -> std::io::Result<()>;
}

struct CsvRows(BufWriter<File>);

impl CsvRows {
    fn new(f: File) -> std::io::Result<Self> {
        let mut w = BufWriter::new(f);
        write!(w, "seq,symbol,exchange_ts_ns,mid")?;
        for n in names() {
            write!(w, ",{n}")?;
        }
        writeln!(w)?;
        Ok(Self(w))
    }
}

impl RowWriter for CsvRows {
    fn row(&mut self, r: &Row<'_>) -> std::io::Result<()> {
        write!(self.0, "{},{},{},{}", r.tick.seq, r.tick.symbol, r.tick.exchange_ts_ns, r.mid)?;
        for v in r.features {
            write!(self.0, ",{v}")?;
        }
        writeln!(self.0)
    }
    fn finish(mut self: Box<Self>, _rows: u64) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `.npy` v1.0 with a structured dtype: seq <u8, symbol S32, exchange_ts_ns <i8, mid <f8, then
/// one <f4 field per feature. The header is rewritten with the row count at the end.
struct NpyRows(BufWriter<File>);

const NPY_HEADER_LEN: usize = 1024;

fn npy_header(rows: u64) -> Vec<u8> {
    let mut descr = String::from("[('seq', '<u8'), ('symbol', 'S32'), ('exchange_ts_ns', '<i8'), ('mid', '<f8')");
    for n in names() {
        descr.push_str(&format!(", ('{n}', '<f4')"));
    }
    descr.push(']');
    let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': ({rows},), }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let body_len = NPY_HEADER_LEN - 10;
    h.extend_from_slice(&(body_len as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(NPY_HEADER_LEN - 1, b' ');
    h.push(b'\n');
    h
}

impl RowWriter for NpyRows {
    fn row(&mut self, r: &Row<'_>) -> std::io::Result<()> {
        let mut sym = [0u8; 32];
        let s = r.tick.symbol.as_str().as_bytes();
        sym[..s.len()].copy_from_slice(s);
        self.0.write_all(&r.tick.seq.to_le_bytes())?;
        self.0.write_all(&sym)?;
        self.0.write_all(&r.tick.exchange_ts_ns.to_le_bytes())?;
        self.0.write_all(&r.mid.to_le_bytes())?;
        for v in r.features {
            self.0.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }
    fn finish(mut self: Box<Self>, rows: u64) -> std::io::Result<()> {
        self.0.flush()?;
        let f = self.0.get_mut();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&npy_header(rows))?;
        f.flush()
    }
}

/// Computes the features of every tick in `inputs` (merged by time) and writes them to `out`.
/// Returns the number of rows. A tick the engine would reject is an error naming it.
pub fn write_features<P: AsRef<Path>>(inputs: &[P], out: &Path) -> Result<u64, ExportError> {
    let shown = out.display().to_string();
    let io = |source| ExportError::Io { path: shown.clone(), source };
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "csv" && ext != "npy" {
        return Err(ExportError::Extension(shown));
    }
    let reader = TickReader::open(inputs)?;
    // Write to a sibling temp file and rename at the end: a failed run leaves no partial output.
    let tmp = out.with_extension(format!("{ext}.partial"));
    let file = File::create(&tmp).map_err(io)?;
    let mut w: Box<dyn RowWriter> = if ext == "csv" {
        Box::new(CsvRows::new(file).map_err(io)?)
    } else {
        let mut w = BufWriter::new(file);
        w.write_all(&npy_header(0)).map_err(io)?;
        Box::new(NpyRows(w))
    };
    let result = (|| {
        let mut engine = FeatureEngine::new(usize::MAX, 64);
        let mut f = [0f32; NUM_FEATURES];
        let mut rows = 0u64;
        for tick in reader {
            let tick = tick?;
            let state = engine.update(&tick, &mut f).map_err(|reject| ExportError::Rejected {
                seq: tick.seq,
                symbol: tick.symbol.to_string(),
                reject,
            })?;
            w.row(&Row { tick: &tick, mid: state.mid(), features: &f }).map_err(io)?;
            rows += 1;
        }
        w.finish(rows).map_err(io)?;
        Ok(rows)
    })();
    match result {
        Ok(rows) => {
            std::fs::rename(&tmp, out).map_err(io)?;
            Ok(rows)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable_text() {
        let h = npy_header(12345);
        assert_eq!(h.len(), NPY_HEADER_LEN);
        assert_eq!(h.len() % 64, 0);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.contains("'shape': (12345,)"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn feature_engine_rejects_stale_ticks_per_symbol() {
        let mut e = FeatureEngine::new(10, 10);
        let mut f = [0f32; NUM_FEATURES];
        e.update(&Tick::quote("A", 1, 100, 1.0, 1.0, 1.1, 1.0).unwrap(), &mut f).unwrap();
        e.update(&Tick::quote("B", 2, 50, 1.0, 1.0, 1.1, 1.0).unwrap(), &mut f).unwrap();
        let stale = e.update(&Tick::quote("A", 3, 99, 1.0, 1.0, 1.1, 1.0).unwrap(), &mut f);
        assert_eq!(stale.err(), Some(Reject::StaleTimestamp));
        assert!(e.update(&Tick::quote("A", 4, 100, 1.0, 1.0, 1.1, 1.0).unwrap(), &mut f).is_ok());
    }
}
