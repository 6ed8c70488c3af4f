//! Control-plane probes during a load run: does the control path still answer while the data
//! path is saturated?
//!
//! - Kill switch: `RiskAdmin.SetKillSwitch(all)` engaged and released in turn. Measured: how long
//!   each call takes to return, and how long after an engage call was sent the first signal
//!   bound by `kill_admin` reaches the client (the receivers of the run watch for it).
//! - Scrape: `GET /metrics` on the server's Prometheus endpoint, timed to the last byte.
//!
//! Runs as tasks on the caller's tokio runtime, beside the streams' receivers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quantd::proto::KillSwitchRequest;
use quantd::proto::risk_admin_client::RiskAdminClient;
use serde::{Deserialize, Serialize};

use crate::report::Percentiles;

/// What to probe, how often.
#[derive(Clone, Debug)]
pub struct ProbePlan {
    /// host:port of the server's RiskAdmin service.
    pub admin: String,
    /// Engage/release pairs of the all-symbols kill switch, spread over the measured time.
    pub kill_pairs: usize,
    /// `GET /metrics` calls spread over the measured time (needs the run's `metrics`).
    pub scrapes: usize,
}

/// What the probes measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeReport {
    /// `SetKillSwitch` calls, engage and release, until each returned.
    pub kill_call: Percentiles,
    /// From sending an engage call to the first `kill_admin` signal at the client.
    pub first_flat: Percentiles,
    /// From the engage call's return to that signal (0 when it came first).
    pub first_flat_after_return: Percentiles,
    /// Engage calls after which no `kill_admin` signal came within 1 s.
    pub kill_unseen: u64,
    /// Failed probe calls.
    pub failures: Vec<String>,
    /// `GET /metrics`, request sent to the last byte read.
    pub scrape: Percentiles,
}

/// Armed by an engage call until the first signal it binds; read by every receiver.
pub struct KillWatch {
    /// True while an engage call waits for its first `kill_admin` signal.
    armed: AtomicBool,
    /// Nanoseconds since `origin` that signal arrived (`NONE` until it has).
    seen_at: AtomicU64,
    origin: Instant,
}

const NONE: u64 = u64::MAX;

impl KillWatch {
    pub fn new() -> Self {
        Self { armed: AtomicBool::new(false), seen_at: AtomicU64::new(NONE), origin: Instant::now() }
    }

    /// Called by a receiver for every signal: the first `kill_admin` signal while armed records
    /// its arrival.
    #[inline]
    pub fn observe(&self, signal: &quantd::proto::Signal) {
        if self.armed.load(Ordering::Acquire)
            && signal.risk.iter().any(|r| r == "kill_admin")
            && self.armed.swap(false, Ordering::AcqRel)
        {
            self.seen_at.store(self.now(), Ordering::Release);
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn arm(&self) {
        self.seen_at.store(NONE, Ordering::Release);
        self.armed.store(true, Ordering::Release);
    }

    /// Waits up to `limit` for the armed call's signal; its arrival time, if it came.
    async fn wait(&self, limit: Duration) -> Option<u64> {
        let deadline = Instant::now() + limit;
        while self.seen_at.load(Ordering::Acquire) == NONE && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        self.armed.store(false, Ordering::Release);
        Some(self.seen_at.load(Ordering::Acquire)).filter(|&t| t != NONE)
    }
}

impl Default for KillWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// What the kill-switch probe measured, as histograms of nanoseconds.
pub struct KillFigures {
    calls: Histogram<u64>,
    from_send: Histogram<u64>,
    from_return: Histogram<u64>,
    unseen: u64,
    failures: Vec<String>,
}

/// Engages and releases the all-symbols kill switch `plan.kill_pairs` times between `from` and
/// `to`.
pub async fn kill_switch(plan: &ProbePlan, watch: &KillWatch, from: Instant, to: Instant) -> KillFigures {
    let mut f = KillFigures {
        calls: crate::histogram(),
        from_send: crate::histogram(),
        from_return: crate::histogram(),
        unseen: 0,
        failures: Vec::new(),
    };
    if plan.kill_pairs == 0 {
        return f;
    }
    let mut admin = match RiskAdminClient::connect(format!("http://{}", plan.admin)).await {
        Ok(a) => a,
        Err(e) => {
            f.failures.push(format!("kill switch: cannot connect to {}: {e}", plan.admin));
            return f;
        }
    };
    let every = (to.saturating_duration_since(from)) / plan.kill_pairs as u32;
    for k in 0..plan.kill_pairs {
        tokio::time::sleep_until((from + every * k as u32).into()).await;
        for engaged in [true, false] {
            if engaged {
                watch.arm();
            }
            let sent = watch.now();
            let req = KillSwitchRequest { symbol: String::new(), engaged, reason: "quantd-load probe".into() };
            let answer = admin.set_kill_switch(req).await;
            let returned = watch.now();
            match answer {
                Ok(_) => f.calls.saturating_record(returned - sent),
                Err(e) => f.failures.push(format!("SetKillSwitch(engaged={engaged}): {e}")),
            }
            if engaged {
                // The first bound signal (or a second's wait) before releasing.
                match watch.wait(Duration::from_secs(1)).await {
                    Some(at) => {
                        f.from_send.saturating_record(at.saturating_sub(sent));
                        f.from_return.saturating_record(at.saturating_sub(returned));
                    }
                    None => f.unseen += 1,
                }
            }
        }
    }
    f.failures.truncate(20);
    f
}

/// Scrapes `GET /metrics` at `metrics` `n` times between `from` and `to`.
pub async fn scrapes(metrics: &str, n: usize, from: Instant, to: Instant) -> (Histogram<u64>, Vec<String>) {
    let mut h = crate::histogram();
    let mut failures = Vec::new();
    let every = (to.saturating_duration_since(from)) / n.max(1) as u32;
    let mut body = Vec::with_capacity(1 << 20);
    for k in 0..n {
        tokio::time::sleep_until((from + every * k as u32).into()).await;
        let t0 = Instant::now();
        let res = crate::report::fetch_metrics(metrics, &mut body)
            .await
            .map(|()| body.starts_with(b"HTTP/1.1 200") || body.starts_with(b"HTTP/1.0 200"));
        match res {
            Ok(true) => h.saturating_record(t0.elapsed().as_nanos() as u64),
            Ok(false) => failures.push(format!("scrape {k}: not a 200 answer")),
            Err(e) => failures.push(format!("scrape {k}: {e}")),
        }
    }
    failures.truncate(20);
    (h, failures)
}

impl ProbeReport {
    pub fn new(kill: KillFigures, scrape: (Histogram<u64>, Vec<String>)) -> Self {
        let mut failures = kill.failures;
        failures.extend(scrape.1);
        Self {
            kill_call: Percentiles::from(&kill.calls),
            first_flat: Percentiles::from(&kill.from_send),
            first_flat_after_return: Percentiles::from(&kill.from_return),
            kill_unseen: kill.unseen,
            failures,
            scrape: Percentiles::from(&scrape.0),
        }
    }
}
