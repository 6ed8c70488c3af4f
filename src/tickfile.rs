//! Reading recorded ticks from files: quantd's canonical CSV, the Binance quote and trade
//! captures in `shared/data/ticks` as they are, plain or gzip (detected by magic bytes), and the
//! journal's `ticks-*.arrows` files (live capture: what the server received).
//!
//! Used by `quantd features`, replay, benches, tests and the load generator, on whatever thread
//! calls it (never the engine thread). Several files are merged by exchange timestamp (ties keep
//! the order the files were given), so a quotes file and a trades file of the same instrument
//! come out interleaved as a live feed would deliver them. Every bad row is an error naming the
//! file and line; nothing is skipped silently.
//!
//! Canonical CSV header (all columns required, in this order):
//! `seq,exchange_ts_ns,symbol,kind,bid_px,bid_qty,ask_px,ask_qty,trade_px,trade_qty,aggressor`
//! with `kind` in `quote|trade` and `aggressor` in `buy|sell|unknown` (empty means unknown).
//!
//! Binance captures: quotes (`local_ts_ns,exch_event_ts_ms,exch_tx_ts_ms,symbol,update_id,
//! bid_px,bid_qty,ask_px,ask_qty`) are stamped with `exch_tx_ts_ms`, or `local_ts_ns` where the
//! capture has no exchange time (Binance spot bookTicker); trades (`local_ts_ns,exch_event_ts_ms,
//! trade_ts_ms,symbol,trade_id,price,qty,buyer_is_maker`) with `trade_ts_ms`, aggressor SELL when
//! `buyer_is_maker` is true. Their `seq` is the row's position in the merged output (1-based).
//!
//! Journal files (Arrow IPC streams, detected by their first bytes) come out in the order the
//! server received the ticks, over every stream, with the client's `seq`: they are what the
//! engine was fed, so they are not merged by exchange time, and cannot be mixed with captures.
//! Given in any order, they are read in the order the journal wrote them; a file a crash left
//! open reads up to its last complete batch; the copies a warm start journaled are left out. A
//! tick the server refused at its edge as malformed
//! (it was journaled as received) is skipped and counted ([`TickReader::journal_refused`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::tick::{Aggressor, Reject, Tick};

/// The canonical header, also written by tools that produce tick files.
pub const CANONICAL_HEADER: &str =
    "seq,exchange_ts_ns,symbol,kind,bid_px,bid_qty,ask_px,ask_qty,trade_px,trade_qty,aggressor";
const BINANCE_QUOTES_HEADER: &str =
    "local_ts_ns,exch_event_ts_ms,exch_tx_ts_ms,symbol,update_id,bid_px,bid_qty,ask_px,ask_qty";
const BINANCE_TRADES_HEADER: &str = "local_ts_ns,exch_event_ts_ms,trade_ts_ms,symbol,trade_id,price,qty,buyer_is_maker";

/// Why tick files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TickFileError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The header is neither quantd's nor a Binance capture's.
    #[error(
        "{path}: unknown tick file format; header is {header:?}; expected quantd's canonical header {CANONICAL_HEADER:?} or a Binance quote/trade capture"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The header found.
        header: String,
    },
    /// A row does not parse.
    #[error("{path}:{line}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// What is wrong.
        msg: String,
    },
    /// A row is a tick the edge would refuse.
    #[error("{path}:{line}: tick refused: {reject}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// Why.
        reject: Reject,
    },
    /// A row is older than the one before.
    #[error(
        "{path}:{line}: timestamp {ts} is older than the previous row's {prev}; tick files must be sorted by exchange time"
    )]
    Unsorted {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// Its exchange time.
        ts: i64,
        /// The previous row's.
        prev: i64,
    },
    /// No file was given.
    #[error("no tick files given")]
    NoFiles,
    /// A journal file could not be read.
    #[error(transparent)]
    Journal(#[from] crate::journal::read::JournalReadError),
    /// Journal files and CSV captures were given together.
    #[error(
        "{0}: journal files (Arrow) and tick captures (CSV) cannot be read together: the journal is in arrival order, captures are merged by exchange time"
    )]
    MixedJournal(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Canonical,
    BinanceQuotes,
    BinanceTrades,
}

/// One file's rows, in order, with one row of look-ahead for the merge.
struct FileReader {
    path: PathBuf,
    format: Format,
    rows: csv::StringRecordsIntoIter<Box<dyn Read>>,
    line: u64,
    last_ts: i64,
    peeked: Option<(Tick, bool)>,
}

fn open(path: &Path) -> Result<Box<dyn Read>, TickFileError> {
    let io = |source| TickFileError::Io { path: path.to_owned(), source };
    let mut r = BufReader::with_capacity(1 << 16, File::open(path).map_err(io)?);
    let gz = r.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(MultiGzDecoder::new(r)) } else { Box::new(r) })
}

impl FileReader {
    fn new(path: &Path) -> Result<Self, TickFileError> {
        let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(open(path)?);
        let header = csv
            .headers()
            .map_err(|e| TickFileError::Parse { path: path.to_owned(), line: 1, msg: e.to_string() })?
            .iter()
            .collect::<Vec<_>>()
            .join(",");
        let format = match header.trim_start_matches('\u{feff}') {
            CANONICAL_HEADER => Format::Canonical,
            BINANCE_QUOTES_HEADER => Format::BinanceQuotes,
            BINANCE_TRADES_HEADER => Format::BinanceTrades,
            _ => {
                return Err(TickFileError::UnknownFormat { path: path.to_owned(), header });
            }
        };
        Ok(Self { path: path.to_owned(), format, rows: csv.into_records(), line: 1, last_ts: i64::MIN, peeked: None })
    }

    fn parse_err(&self, msg: impl Into<String>) -> TickFileError {
        TickFileError::Parse { path: self.path.clone(), line: self.line, msg: msg.into() }
    }

    fn field<T: std::str::FromStr>(&self, rec: &csv::StringRecord, i: usize, name: &str) -> Result<T, TickFileError> {
        let raw = rec.get(i).unwrap_or("");
        raw.trim().parse().map_err(|_| self.parse_err(format!("column {name}: cannot parse {raw:?}")))
    }

    /// The next tick and whether it carries its own seq (canonical files do).
    fn next_tick(&mut self) -> Option<Result<(Tick, bool), TickFileError>> {
        let rec = match self.rows.next()? {
            Ok(r) => r,
            Err(e) => {
                self.line += 1;
                return Some(Err(self.parse_err(e.to_string())));
            }
        };
        self.line = rec.position().map_or(self.line + 1, |p| p.line());
        Some(self.parse(&rec))
    }

    fn parse(&mut self, rec: &csv::StringRecord) -> Result<(Tick, bool), TickFileError> {
        let invalid = |reject| TickFileError::Invalid { path: self.path.clone(), line: self.line, reject };
        let (tick, own_seq) = match self.format {
            Format::Canonical => {
                let seq: u64 = self.field(rec, 0, "seq")?;
                let ts: i64 = self.field(rec, 1, "exchange_ts_ns")?;
                let symbol = rec.get(2).unwrap_or("");
                let tick = match rec.get(3).unwrap_or("").trim() {
                    "quote" => Tick::quote(
                        symbol,
                        seq,
                        ts,
                        self.field(rec, 4, "bid_px")?,
                        self.field(rec, 5, "bid_qty")?,
                        self.field(rec, 6, "ask_px")?,
                        self.field(rec, 7, "ask_qty")?,
                    ),
                    "trade" => {
                        let aggressor = match rec.get(10).unwrap_or("").trim() {
                            "buy" => Aggressor::Buy,
                            "sell" => Aggressor::Sell,
                            "" | "unknown" => Aggressor::Unknown,
                            other => {
                                return Err(
                                    self.parse_err(format!("column aggressor: {other:?} is not buy|sell|unknown"))
                                );
                            }
                        };
                        Tick::trade(
                            symbol,
                            seq,
                            ts,
                            self.field(rec, 8, "trade_px")?,
                            self.field(rec, 9, "trade_qty")?,
                            aggressor,
                        )
                    }
                    other => {
                        return Err(self.parse_err(format!("column kind: {other:?} is not quote|trade")));
                    }
                };
                (tick.map_err(invalid)?, true)
            }
            Format::BinanceQuotes => {
                let ts = match rec.get(2).unwrap_or("").trim() {
                    "" => self.field::<i64>(rec, 0, "local_ts_ns")?,
                    _ => self.field::<i64>(rec, 2, "exch_tx_ts_ms")?.saturating_mul(1_000_000),
                };
                let tick = Tick::quote(
                    rec.get(3).unwrap_or(""),
                    0,
                    ts,
                    self.field(rec, 5, "bid_px")?,
                    self.field(rec, 6, "bid_qty")?,
                    self.field(rec, 7, "ask_px")?,
                    self.field(rec, 8, "ask_qty")?,
                );
                (tick.map_err(invalid)?, false)
            }
            Format::BinanceTrades => {
                let ts = self.field::<i64>(rec, 2, "trade_ts_ms")?.saturating_mul(1_000_000);
                let aggressor = match rec.get(7).unwrap_or("").trim() {
                    "true" => Aggressor::Sell,
                    "false" => Aggressor::Buy,
                    other => {
                        return Err(self.parse_err(format!("column buyer_is_maker: {other:?} is not true|false")));
                    }
                };
                let tick = Tick::trade(
                    rec.get(3).unwrap_or(""),
                    0,
                    ts,
                    self.field(rec, 5, "price")?,
                    self.field(rec, 6, "qty")?,
                    aggressor,
                );
                (tick.map_err(invalid)?, false)
            }
        };
        if tick.exchange_ts_ns < self.last_ts {
            return Err(TickFileError::Unsorted {
                path: self.path.clone(),
                line: self.line,
                ts: tick.exchange_ts_ns,
                prev: self.last_ts,
            });
        }
        self.last_ts = tick.exchange_ts_ns;
        Ok((tick, own_seq))
    }

    fn peek(&mut self) -> Result<Option<&(Tick, bool)>, TickFileError> {
        if self.peeked.is_none() {
            self.peeked = self.next_tick().transpose()?;
        }
        Ok(self.peeked.as_ref())
    }
}

/// Merged, time-ordered ticks from one or more files. Yields an error for the first bad row
/// and then stops.
pub struct TickReader {
    files: Vec<FileReader>,
    emitted: u64,
    failed: bool,
    /// Journal input: its ticks in arrival order (the files were read at open).
    journal: Option<std::vec::IntoIter<Tick>>,
    journal_refused: u64,
}

impl TickReader {
    /// Opens the files and merges them by exchange time (journal files: in arrival order).
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, TickFileError> {
        if paths.is_empty() {
            return Err(TickFileError::NoFiles);
        }
        let journal: Vec<bool> = paths.iter().map(|p| crate::journal::read::is_journal_file(p.as_ref())).collect();
        if journal.iter().any(|&j| j) {
            if let Some(i) = journal.iter().position(|&j| !j) {
                return Err(TickFileError::MixedJournal(paths[i].as_ref().to_owned()));
            }
            return Self::open_journal(paths);
        }
        let files = paths.iter().map(|p| FileReader::new(p.as_ref())).collect::<Result<_, _>>()?;
        Ok(Self { files, emitted: 0, failed: false, journal: None, journal_refused: 0 })
    }

    fn open_journal<P: AsRef<Path>>(paths: &[P]) -> Result<Self, TickFileError> {
        let mut paths: Vec<PathBuf> = paths.iter().map(|p| p.as_ref().to_owned()).collect();
        crate::journal::read::sort_files(&mut paths);
        let read = crate::journal::read::ticks(&paths)?;
        for p in &read.unterminated {
            tracing::warn!(file = %p.display(), "journal file ends early (a crash?): read up to its last complete batch");
        }
        let mut refused = 0;
        // A warm start's copies of earlier ticks are not new input.
        let ticks: Vec<Tick> = read
            .records
            .iter()
            .filter(|r| r.stream != crate::journal::warm::WARM_STREAM)
            .filter_map(|r| {
                let tick = r.tick().ok();
                refused += u64::from(tick.is_none());
                tick
            })
            .collect();
        Ok(Self {
            files: Vec::new(),
            emitted: 0,
            failed: false,
            journal: Some(ticks.into_iter()),
            journal_refused: refused,
        })
    }

    /// Journal input: the ticks skipped because the server had refused them as malformed.
    pub fn journal_refused(&self) -> u64 {
        self.journal_refused
    }

    fn next_inner(&mut self) -> Result<Option<Tick>, TickFileError> {
        if let Some(journal) = self.journal.as_mut() {
            return Ok(journal.next());
        }
        let mut best: Option<(usize, i64)> = None;
        for i in 0..self.files.len() {
            if let Some((t, _)) = self.files[i].peek()?
                && best.is_none_or(|(_, ts)| t.exchange_ts_ns < ts)
            {
                best = Some((i, t.exchange_ts_ns));
            }
        }
        let Some((i, _)) = best else { return Ok(None) };
        let (mut tick, own_seq) = self.files[i].peeked.take().expect("peeked above");
        self.emitted += 1;
        if !own_seq {
            tick.seq = self.emitted;
        }
        Ok(Some(tick))
    }
}

impl Iterator for TickReader {
    type Item = Result<Tick, TickFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_inner();
        self.failed = r.is_err();
        r.transpose()
    }
}

/// Reads every tick of `paths`, merged by time (journal files: in arrival order).
pub fn read_all<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Tick>, TickFileError> {
    let mut reader = TickReader::open(paths)?;
    let ticks = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    if reader.journal_refused() > 0 {
        tracing::info!(
            skipped = reader.journal_refused(),
            "journal ticks the server had refused as malformed were skipped"
        );
    }
    Ok(ticks)
}

/// Writes ticks in the canonical CSV format.
pub fn write_canonical<W: std::io::Write>(out: W, ticks: &[Tick]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(out);
    writeln!(w, "{CANONICAL_HEADER}")?;
    for t in ticks {
        let (kind, agg) = match (t.kind, t.aggressor) {
            (crate::tick::Kind::Quote, _) => ("quote", ""),
            (crate::tick::Kind::Trade, Aggressor::Buy) => ("trade", "buy"),
            (crate::tick::Kind::Trade, Aggressor::Sell) => ("trade", "sell"),
            (crate::tick::Kind::Trade, Aggressor::Unknown) => ("trade", "unknown"),
        };
        writeln!(
            w,
            "{},{},{},{kind},{},{},{},{},{},{},{agg}",
            t.seq, t.exchange_ts_ns, t.symbol, t.bid_px, t.bid_qty, t.ask_px, t.ask_qty, t.trade_px, t.trade_qty
        )?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_binance_quotes_and_trades_merged_by_time_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(File::create(&q).unwrap(), flate2::Compression::fast());
        writeln!(
            gz,
            "{BINANCE_QUOTES_HEADER}\n1,2,1000,BTCUSDT,7,100.0,1.5,100.1,2.5\n1,2,1002,BTCUSDT,8,100.0,1,100.2,2"
        )
        .unwrap();
        gz.finish().unwrap();
        let t = dir.path().join("t.csv");
        std::fs::write(
            &t,
            format!(
                "{BINANCE_TRADES_HEADER}\n1,2,1001,BTCUSDT,9,100.1,0.3,true\n1,2,1002,BTCUSDT,10,100.1,0.1,false\n"
            ),
        )
        .unwrap();
        let ticks = read_all(&[&q, &t]).unwrap();
        let ts: Vec<_> = ticks.iter().map(|t| (t.exchange_ts_ns / 1_000_000, t.kind)).collect();
        use crate::tick::Kind::*;
        assert_eq!(ts, vec![(1000, Quote), (1001, Trade), (1002, Quote), (1002, Trade)]);
        assert_eq!(ticks.iter().map(|t| t.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(ticks[1].aggressor, Aggressor::Sell);
        assert_eq!(ticks[3].aggressor, Aggressor::Buy);
        assert_eq!(ticks[0].bid_qty, 1.5);
    }

    #[test]
    fn canonical_round_trips() {
        let ticks = vec![
            Tick::quote("ETH", 5, 10, 1.0, 2.0, 1.5, 3.0).unwrap(),
            Tick::trade("ETH", 6, 11, 1.2, 0.5, Aggressor::Buy).unwrap(),
        ];
        let mut buf = Vec::new();
        write_canonical(&mut buf, &ticks).unwrap();
        let (_d, p) = file("c.csv", std::str::from_utf8(&buf).unwrap());
        assert_eq!(read_all(&[p]).unwrap(), ticks);
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let (_d, p) = file(
            "bad.csv",
            &format!("{BINANCE_QUOTES_HEADER}\n1,2,1000,X,7,100.0,1,100.1,2\n1,2,1001,X,8,abc,1,100.1,2\n"),
        );
        let err = read_all(&[&p]).unwrap_err().to_string();
        assert!(err.ends_with("bad.csv:3: column bid_px: cannot parse \"abc\""), "{err}");

        let (_d, p) = file("crossed.csv", &format!("{BINANCE_QUOTES_HEADER}\n1,2,1000,X,7,101.0,1,100.1,2\n"));
        let err = read_all(&[&p]).unwrap_err().to_string();
        assert!(err.contains("crossed.csv:2: tick refused: crossed_book"), "{err}");

        let (_d, p) =
            file("unsorted.csv", &format!("{BINANCE_TRADES_HEADER}\n1,2,1000,X,1,1,1,true\n1,2,999,X,2,1,1,true\n"));
        let err = read_all(&[&p]).unwrap_err().to_string();
        assert!(err.contains("unsorted.csv:3: timestamp"), "{err}");

        let (_d, p) = file("short.csv", &format!("{BINANCE_TRADES_HEADER}\n1,2,1000,X,1,1\n"));
        let err = read_all(&[&p]).unwrap_err().to_string();
        assert!(err.contains("short.csv:2"), "{err}");

        let (_d, p) = file("other.csv", "a,b,c\n1,2,3\n");
        assert!(matches!(read_all(&[&p]), Err(TickFileError::UnknownFormat { .. })));
        assert!(matches!(read_all::<&str>(&[]), Err(TickFileError::NoFiles)));
    }
}
