//! The validated, fixed-size tick the engine consumes, and the stateless checks that turn a
//! decoded `proto::Tick` into one.
//!
//! Runs on the gRPC edge (tokio worker threads) and in the tick-file reader. The stateful checks
//! (timestamp order, symbol cap) need per-symbol state and therefore run on the engine thread.

use std::fmt;

use crate::proto;

/// Longest symbol accepted, in bytes. Symbols travel inline (no heap) through the engine queue.
pub const MAX_SYMBOL_LEN: usize = 32;

/// A symbol stored inline so that ticks cross the engine queue without a heap pointer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Symbol {
    len: u8,
    bytes: [u8; MAX_SYMBOL_LEN],
}

impl Symbol {
    /// The empty symbol, used only to answer ticks whose symbol was refused.
    pub const EMPTY: Symbol = Symbol { len: 0, bytes: [0; MAX_SYMBOL_LEN] };

    /// Builds a symbol from 1..=32 bytes of UTF-8 that [`symbol_is_printable`] accepts.
    pub fn new(s: &str) -> Result<Self, Reject> {
        if s.is_empty() {
            return Err(Reject::EmptySymbol);
        }
        if s.len() > MAX_SYMBOL_LEN {
            return Err(Reject::SymbolTooLong);
        }
        if !symbol_is_printable(s) {
            return Err(Reject::InvalidSymbol);
        }
        let mut bytes = [0u8; MAX_SYMBOL_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self { len: s.len() as u8, bytes })
    }

    /// `s` cut to at most 32 bytes at a character boundary, unchecked: how the journal records
    /// a symbol as it was sent, also one that [`Symbol::new`] refuses.
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(MAX_SYMBOL_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; MAX_SYMBOL_LEN];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self { len: end as u8, bytes }
    }

    /// The symbol as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from a `&str`, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

/// Whether `s` can name a symbol: no control character, no bidi override or isolate, no
/// zero-width character or byte-order mark, and no whitespace at either end (so not only
/// whitespace). Such symbols look like another symbol, or like nothing, in logs and dashboards.
/// Interior spaces are allowed (`"AAPL US"`).
pub fn symbol_is_printable(s: &str) -> bool {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    let ends_blank = s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace);
    !ends_blank && !s.chars().any(invisible)
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tick carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A top-of-book quote.
    Quote,
    /// A trade.
    Trade,
}

/// Which side crossed the spread on a trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggressor {
    /// Not given.
    Unknown,
    /// The buyer crossed the spread.
    Buy,
    /// The seller crossed the spread.
    Sell,
}

impl Aggressor {
    /// +1 for buyer-initiated, -1 for seller-initiated, 0 when unknown.
    pub fn sign(self) -> f64 {
        match self {
            Aggressor::Buy => 1.0,
            Aggressor::Sell => -1.0,
            Aggressor::Unknown => 0.0,
        }
    }
}

/// One market event after the stateless checks. Quote fields are zero on trades and vice versa.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tick {
    /// The symbol.
    pub symbol: Symbol,
    /// The client's sequence number, echoed.
    pub seq: u64,
    /// Exchange time, ns since the epoch.
    pub exchange_ts_ns: i64,
    /// Quote or trade.
    pub kind: Kind,
    /// Best bid price (quotes).
    pub bid_px: f64,
    /// Best bid size (quotes).
    pub bid_qty: f64,
    /// Best ask price (quotes).
    pub ask_px: f64,
    /// Best ask size (quotes).
    pub ask_qty: f64,
    /// Trade price (trades).
    pub trade_px: f64,
    /// Trade size (trades).
    pub trade_qty: f64,
    /// Which side crossed (trades).
    pub aggressor: Aggressor,
}

/// Why a tick was refused. Each reason has a stable snake_case code used as the Prometheus
/// label and as the prefix of `Signal.reject_reason`. Allocation-free: the engine builds these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum Reject {
    /// A price or size is NaN or infinite.
    NonFinite,
    /// A price or size is zero or negative.
    NonPositive,
    /// The bid is above the ask.
    CrossedBook,
    /// The symbol is empty.
    EmptySymbol,
    /// The symbol is longer than 32 bytes.
    SymbolTooLong,
    /// The kind or aggressor is not a known value.
    InvalidEnum,
    /// Older than the symbol's last accepted tick.
    StaleTimestamp,
    /// The server's symbol cap is reached.
    TooManySymbols,
    /// The engine queue is full.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
    /// The model failed or scored a non-finite value.
    ModelError,
    /// The tick waited past the signal time-to-live.
    Expired,
    /// The stream has its window of ticks in flight (back-pressure `reject`).
    Overloaded,
    /// The engine's batch panicked.
    EngineError,
    /// The kill switch holds the symbol.
    KillSwitch,
    /// The symbol belongs to another shard.
    WrongShard,
    /// The symbol has control or invisible characters.
    InvalidSymbol,
    /// The exchange time is ahead of the server clock.
    FutureTimestamp,
    /// The price jumped implausibly from the symbol's last.
    PriceJump,
    /// A feature came out NaN or infinite.
    NonFiniteFeatures,
    /// The journal cannot take the tick (`on_full = "refuse"`).
    JournalUnavailable,
    /// Its batch holds more ticks than `stream.max_batch_ticks`.
    BatchTooLarge,
    /// The symbol already holds positions on as many routes as its state has room for.
    TooManyRoutes,
}

impl Reject {
    /// Every reason, in declaration order (what [`Reject::index`] counts).
    pub const ALL: &'static [Reject] = <Reject as strum::VariantArray>::VARIANTS;

    /// Stable machine-readable code (metrics label, prefix of the reject reason).
    pub fn code(self) -> &'static str {
        self.into()
    }

    /// The reason whose [`Reject::code`] is `code` (the journal reads its records back by it).
    pub fn from_code(code: &str) -> Option<Reject> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// Human-readable explanation, sent after the code.
    pub fn detail(self) -> &'static str {
        match self {
            Reject::NonFinite => "a price or size is NaN or infinite",
            Reject::NonPositive => "a price or size is zero or negative",
            Reject::CrossedBook => "bid_px is above ask_px",
            Reject::EmptySymbol => "symbol is empty",
            Reject::SymbolTooLong => "symbol is longer than 32 bytes",
            Reject::InvalidEnum => "kind or aggressor is not a known enum value",
            Reject::StaleTimestamp => "exchange_ts_ns is older than this symbol's last accepted tick",
            Reject::TooManySymbols => "the server's distinct-symbol cap is reached",
            Reject::QueueFull => "the engine queue is full; the tick was not processed",
            Reject::ShuttingDown => "the server is shutting down",
            Reject::ModelError => "the model failed on this batch or produced a non-finite score",
            Reject::Expired => {
                "the tick waited longer than the signal time-to-live; features were updated, no position is sent"
            }
            Reject::Overloaded => "this stream has the most ticks in flight it may have (back-pressure mode reject)",
            Reject::EngineError => "the engine failed on this batch and restarted; the symbol's features were reset",
            Reject::KillSwitch => {
                "the risk kill switch holds this symbol flat (the signal's risk field names the trigger)"
            }
            Reject::WrongShard => "this replica does not own the symbol's shard; route it by quantd's shard rule",
            Reject::InvalidSymbol => {
                "symbol has a control, bidi-override or zero-width character, or leading, trailing or only whitespace"
            }
            Reject::FutureTimestamp => {
                "exchange_ts_ns is further ahead of the server clock than ticks.max_future_skew_ms (a unit mix-up?)"
            }
            Reject::PriceJump => {
                "a price is further from the symbol's last mid than ticks.max_rel_jump; the symbol's state is unchanged"
            }
            Reject::NonFiniteFeatures => {
                "this tick would make a feature NaN or infinite (an extreme or subnormal price); the symbol's state is unchanged"
            }
            Reject::JournalUnavailable => {
                "the journal cannot record this tick (its ring is full or its disk refuses writes; journal.on_full = refuse_ticks); the tick was not processed"
            }
            Reject::BatchTooLarge => {
                "its batch holds more ticks than the server's stream.max_batch_ticks; no tick of the batch was processed"
            }
            Reject::TooManyRoutes => {
                "the symbol already holds positions on as many routes as the engine keeps per symbol (4); its features were updated"
            }
        }
    }

    /// Position in [`Reject::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.detail())
    }
}

impl std::error::Error for Reject {}

fn positive_finite(values: &[f64]) -> Result<(), Reject> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Reject::NonFinite);
    }
    if values.iter().any(|v| *v <= 0.0) {
        return Err(Reject::NonPositive);
    }
    Ok(())
}

impl Tick {
    /// A quote tick, checked.
    #[allow(clippy::too_many_arguments)]
    pub fn quote(
        symbol: &str,
        seq: u64,
        exchange_ts_ns: i64,
        bid_px: f64,
        bid_qty: f64,
        ask_px: f64,
        ask_qty: f64,
    ) -> Result<Self, Reject> {
        let symbol = Symbol::new(symbol)?;
        positive_finite(&[bid_px, bid_qty, ask_px, ask_qty])?;
        if bid_px > ask_px {
            return Err(Reject::CrossedBook);
        }
        Ok(Self {
            symbol,
            seq,
            exchange_ts_ns,
            kind: Kind::Quote,
            bid_px,
            bid_qty,
            ask_px,
            ask_qty,
            trade_px: 0.0,
            trade_qty: 0.0,
            aggressor: Aggressor::Unknown,
        })
    }

    /// A trade tick, checked.
    pub fn trade(
        symbol: &str,
        seq: u64,
        exchange_ts_ns: i64,
        trade_px: f64,
        trade_qty: f64,
        aggressor: Aggressor,
    ) -> Result<Self, Reject> {
        let symbol = Symbol::new(symbol)?;
        positive_finite(&[trade_px, trade_qty])?;
        Ok(Self {
            symbol,
            seq,
            exchange_ts_ns,
            kind: Kind::Trade,
            bid_px: 0.0,
            bid_qty: 0.0,
            ask_px: 0.0,
            ask_qty: 0.0,
            trade_px,
            trade_qty,
            aggressor,
        })
    }

    /// The stateless checks on a decoded wire tick. Only the fields of the tick's kind are
    /// checked; the others are ignored (and zeroed).
    pub fn from_proto(t: &proto::Tick) -> Result<Self, Reject> {
        let kind = proto::TickKind::try_from(t.kind).map_err(|_| Reject::InvalidEnum)?;
        let aggressor = match proto::Aggressor::try_from(t.aggressor).map_err(|_| Reject::InvalidEnum)? {
            proto::Aggressor::Unknown => Aggressor::Unknown,
            proto::Aggressor::Buy => Aggressor::Buy,
            proto::Aggressor::Sell => Aggressor::Sell,
        };
        match kind {
            proto::TickKind::Quote => {
                Self::quote(&t.symbol, t.seq, t.exchange_ts_ns, t.bid_px, t.bid_qty, t.ask_px, t.ask_qty)
            }
            proto::TickKind::Trade => {
                Self::trade(&t.symbol, t.seq, t.exchange_ts_ns, t.trade_px, t.trade_qty, aggressor)
            }
        }
    }

    /// The wire form of this tick (used by clients, replay and tests).
    pub fn to_proto(&self) -> proto::Tick {
        proto::Tick {
            symbol: self.symbol.as_str().to_owned(),
            seq: self.seq,
            exchange_ts_ns: self.exchange_ts_ns,
            kind: match self.kind {
                Kind::Quote => proto::TickKind::Quote as i32,
                Kind::Trade => proto::TickKind::Trade as i32,
            },
            bid_px: self.bid_px,
            bid_qty: self.bid_qty,
            ask_px: self.ask_px,
            ask_qty: self.ask_qty,
            trade_px: self.trade_px,
            trade_qty: self.trade_qty,
            aggressor: match self.aggressor {
                Aggressor::Unknown => proto::Aggressor::Unknown as i32,
                Aggressor::Buy => proto::Aggressor::Buy as i32,
                Aggressor::Sell => proto::Aggressor::Sell as i32,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(bid: f64, ask: f64) -> proto::Tick {
        proto::Tick {
            symbol: "BTCUSDT".into(),
            seq: 1,
            exchange_ts_ns: 1,
            kind: proto::TickKind::Quote as i32,
            bid_px: bid,
            bid_qty: 1.0,
            ask_px: ask,
            ask_qty: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_good_quote_and_round_trips() {
        let t = Tick::from_proto(&q(100.0, 100.5)).unwrap();
        assert_eq!(t.symbol.as_str(), "BTCUSDT");
        assert_eq!(Tick::from_proto(&t.to_proto()).unwrap(), t);
    }

    #[test]
    fn rejects_each_bad_field_with_its_reason() {
        assert_eq!(Tick::from_proto(&q(f64::NAN, 1.0)), Err(Reject::NonFinite));
        assert_eq!(Tick::from_proto(&q(1.0, f64::INFINITY)), Err(Reject::NonFinite));
        assert_eq!(Tick::from_proto(&q(0.0, 1.0)), Err(Reject::NonPositive));
        assert_eq!(Tick::from_proto(&q(-1.0, 1.0)), Err(Reject::NonPositive));
        assert_eq!(Tick::from_proto(&q(2.0, 1.0)), Err(Reject::CrossedBook));
        let mut t = q(1.0, 2.0);
        t.symbol = String::new();
        assert_eq!(Tick::from_proto(&t), Err(Reject::EmptySymbol));
        t.symbol = "X".repeat(33);
        assert_eq!(Tick::from_proto(&t), Err(Reject::SymbolTooLong));
        t.symbol = "X".repeat(32);
        assert!(Tick::from_proto(&t).is_ok());
        t.kind = 7;
        assert_eq!(Tick::from_proto(&t), Err(Reject::InvalidEnum));
        t.kind = proto::TickKind::Quote as i32;
        for bad in ["BTC\0USDT", "BTC\u{202E}USDT", "BTC\u{200B}", "\u{FEFF}BTC", "   ", " BTC", "BTC\t", "\u{2066}X"] {
            t.symbol = bad.into();
            assert_eq!(Tick::from_proto(&t), Err(Reject::InvalidSymbol), "{bad:?}");
        }
        for good in ["AAPL US", "BTC-USD", "ÉTÉ", "BRK.B"] {
            t.symbol = good.into();
            assert!(Tick::from_proto(&t).is_ok(), "{good:?}");
        }
        let mut tr = q(1.0, 2.0);
        tr.kind = proto::TickKind::Trade as i32;
        tr.trade_px = 10.0;
        tr.trade_qty = 0.0;
        assert_eq!(Tick::from_proto(&tr), Err(Reject::NonPositive));
    }

    #[test]
    fn reject_codes_are_unique() {
        let mut codes: Vec<_> = Reject::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reject::ALL.len());
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        // The codes are a wire contract (README, clients): renaming a variant must not change one.
        let wire = [
            "non_finite",
            "non_positive",
            "crossed_book",
            "empty_symbol",
            "symbol_too_long",
            "invalid_enum",
            "stale_timestamp",
            "too_many_symbols",
            "queue_full",
            "shutting_down",
            "model_error",
            "expired",
            "overloaded",
            "engine_error",
            "kill_switch",
            "wrong_shard",
            "invalid_symbol",
            "future_timestamp",
            "price_jump",
            "non_finite_features",
            "journal_unavailable",
            "batch_too_large",
            "too_many_routes",
        ];
        assert_eq!(Reject::ALL.iter().map(|r| r.code()).collect::<Vec<_>>(), wire);
    }
}
