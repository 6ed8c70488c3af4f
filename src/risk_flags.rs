//! [`RiskFlags`]: which risk limits bound a signal, and their wire codes (`Signal.risk`, the
//! `quantd_risk_total` reason label). A leaf of the crate: the risk gate on the engine thread
//! sets them, telemetry counts them, the journal records them.

bitflags::bitflags! {
    /// The limits that bound a signal; [`RiskFlags::codes`] names them.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RiskFlags: u16 {
        /// The admin kill switch holds the symbol (or every symbol).
        const KILL_ADMIN = 1 << 0;
        /// The symbol's data is stale: a gap in exchange time.
        const KILL_STALE = 1 << 1;
        /// The tick's exchange time lags the server clock.
        const KILL_FEED_DELAY = 1 << 2;
        /// A feature is NaN or outside the model's training range.
        const KILL_FEATURES = 1 << 3;
        /// The model failed on this tick.
        const KILL_MODEL = 1 << 4;
        /// The VaR sizing scaled the target down.
        const VAR_SCALE = 1 << 5;
        /// The per-symbol position limit clipped the target.
        const POSITION_LIMIT = 1 << 6;
        /// The rate-of-change limit held the target back.
        const CHANGE_RATE = 1 << 7;
        /// The gross-notional limit over all symbols clipped the target.
        const GROSS_NOTIONAL = 1 << 8;
        /// Every kill-switch trigger.
        const KILLS = Self::KILL_ADMIN.bits() | Self::KILL_STALE.bits() | Self::KILL_FEED_DELAY.bits()
            | Self::KILL_FEATURES.bits() | Self::KILL_MODEL.bits();
    }
}

impl RiskFlags {
    /// (flag, wire code) of every flag, in the order they are applied (the codes are part of the
    /// API: `Signal.risk`, the `quantd_risk_total` reason label).
    pub const ALL: [(RiskFlags, &'static str); 9] = [
        (Self::KILL_ADMIN, "kill_admin"),
        (Self::KILL_STALE, "kill_stale"),
        (Self::KILL_FEED_DELAY, "kill_feed_delay"),
        (Self::KILL_FEATURES, "kill_features"),
        (Self::KILL_MODEL, "kill_model"),
        (Self::VAR_SCALE, "var_scale"),
        (Self::POSITION_LIMIT, "position_limit"),
        (Self::CHANGE_RATE, "change_rate"),
        (Self::GROSS_NOTIONAL, "gross_notional"),
    ];

    /// True when a kill-switch trigger fired.
    pub fn killed(self) -> bool {
        self.intersects(Self::KILLS)
    }

    /// The codes of the set flags, in application order.
    pub fn codes(self) -> impl Iterator<Item = &'static str> {
        Self::ALL.into_iter().filter(move |(f, _)| self.contains(*f)).map(|(_, c)| c)
    }

    /// The index of each flag in [`RiskFlags::ALL`] (for counters).
    pub fn indices(self) -> impl Iterator<Item = usize> {
        (0..Self::ALL.len()).filter(move |&i| self.contains(Self::ALL[i].0))
    }

    /// The first kill trigger's explanation, for the reject reason (after `kill_switch: `).
    pub fn kill_detail(self) -> Option<&'static str> {
        [
            (Self::KILL_ADMIN, "engaged by an admin call"),
            (Self::KILL_STALE, "the symbol's data is stale (gap in exchange time)"),
            (Self::KILL_FEED_DELAY, "the tick's exchange time lags the server clock"),
            (Self::KILL_FEATURES, "a feature is NaN or outside the model's training range"),
            (Self::KILL_MODEL, "the model failed on this tick"),
        ]
        .into_iter()
        .find(|(f, _)| self.contains(*f))
        .map(|(_, d)| d)
    }
}
