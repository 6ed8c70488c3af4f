//! quantd-load: an open-loop load generator for quantd's `SignalService`.
//!
//! The whole run's schedule (fixed rate, Poisson arrivals, or the recorded pace of a tick file) is
//! computed first. One pacer thread releases tick *i* at its due time whether or not replies have
//! come, round-robin over the streams; each stream's replies are read by its own task. Latency is
//! measured from the due time, so a stall in the server shows up in every tick that should have
//! been sent during it — coordinated omission cannot hide it (no correction needed or applied).
//! How late the pacer itself released ticks is measured too (`send_lag`), so the client's own
//! share of the latency is on the report. Every reply is checked: one per tick, in order, `seq`
//! echoed. With `batch` > 1 each stream sends `StreamTickBatches`: a stream's ticks go out `batch`
//! at a time, when the last of them is due, and each tick's latency is still taken from its own
//! due time (so it includes the wait for its batch to fill). End-to-end latency is split with the server's `server_recv_ns`/`server_send_ns` stamps
//! (same host, CLOCK_REALTIME).
//!
//! Threads: the pacer (`load-pacer`), the tokio runtime of the caller (one task per stream, and
//! the optional model-swap and probe tasks), and a progress-line thread.

pub mod plot;
pub mod probe;
pub mod report;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::proto::{Signal, SignalBatch, Tick, TickBatch};
use tokio::sync::mpsc::UnboundedSender;

pub use probe::{ProbePlan, ProbeReport};
pub use report::{Percentiles, Report, SwapReport};
pub use schedule::Pace;

/// What to send, how fast, for how long.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: String,
    /// host:port of the admin services (ModelAdmin, RiskAdmin): swaps and kill-switch probes.
    pub admin: String,
    /// A name for this run in reports and plots (default: the target).
    pub label: Option<String>,
    /// Recorded tick files (merged by time, replayed in a loop); empty: synthetic ticks.
    pub ticks: Vec<PathBuf>,
    /// Symbols for synthetic ticks.
    pub symbols: usize,
    pub pace: Pace,
    pub streams: usize,
    /// Ticks per message: 1 sends `StreamTicks` (one Tick each), N > 1 sends `StreamTickBatches`
    /// (one TickBatch of N ticks each; a stream's last batch may be shorter).
    pub batch: usize,
    /// How each tick is sent: on a stream (the default), or as one unary call per tick.
    pub protocol: Protocol,
    pub warmup: Duration,
    pub duration: Duration,
    /// The server's Prometheus endpoint (host:port): its own tick→signal and per-stage
    /// percentiles are read before and after the run.
    pub metrics: Option<String>,
    /// Hot-swap models during the run through `ModelAdmin.ActivateModel`.
    pub swap: Option<SwapPlan>,
    /// Kill-switch and scrape probes during the measured time.
    pub probe: Option<ProbePlan>,
    /// Print a progress line every second.
    pub progress: bool,
    pub seed: u64,
}

/// How ticks reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `SignalService.StreamTicks` (or `StreamTickBatches` with `batch` > 1): quantd's stream.
    Stream,
    /// One unary `SignalService.Predict` per tick, released at its due time whatever is in flight.
    Predict,
    /// One unary Open Inference Protocol `ModelInfer` per tick (KServe V2 / Triton gRPC), carrying
    /// that tick's feature row as quantd computes it (`quantd::dataset::FeatureEngine` over the
    /// recorded ticks): quantd's own `inference.GRPCInferenceService`, or an off-the-shelf model
    /// server serving the same model.
    Kserve {
        /// The model name the request names.
        model: String,
        /// The input tensor's name.
        input: String,
    },
}

impl Protocol {
    fn unary(&self) -> bool {
        *self != Protocol::Stream
    }
}

/// Model swaps during a run: every `every`, the next of `versions` (name, version) in turn.
#[derive(Clone, Debug)]
pub struct SwapPlan {
    pub every: Duration,
    pub versions: Vec<(String, String)>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds")
}

/// Where the ticks come from. Tick *i* goes to stream `i % streams`; with several streams each
/// gets its own symbol suffix (`.k`) so streams never share a symbol.
enum Source {
    Recorded(Vec<Tick>),
    /// `quantd::synthetic` quotes over this many symbols.
    Synthetic(usize),
}

impl Source {
    fn open(opts: &Options) -> anyhow::Result<Self> {
        if opts.ticks.is_empty() {
            return Ok(Source::Synthetic(opts.symbols.max(1)));
        }
        let recorded = quantd::tickfile::read_all(&opts.ticks)?;
        if recorded.is_empty() {
            bail!("no ticks in {:?}", opts.ticks);
        }
        Ok(Source::Recorded(recorded.iter().map(|t| t.to_proto()).collect()))
    }

    fn exchange_times(&self) -> Vec<i64> {
        match self {
            Source::Recorded(r) => r.iter().map(|t| t.exchange_ts_ns).collect(),
            Source::Synthetic(_) => Vec::new(),
        }
    }

    /// Tick `i` of the run. Its exchange timestamp is set by the pacer to the due wall-clock
    /// time, so timestamps always increase (also across runs against the same server).
    fn tick(&self, i: usize, streams: usize) -> Tick {
        let mut t = match self {
            Source::Recorded(r) => r[i % r.len()].clone(),
            Source::Synthetic(symbols) => quantd::synthetic::quote(0, *symbols, i),
        };
        if streams > 1 {
            use std::fmt::Write;
            let _ = write!(t.symbol, ".{}", i % streams);
        }
        t.seq = i as u64;
        t
    }
}

/// A channel to `target`: `host:port` over TCP, or `unix:PATH` over a Unix domain socket (with
/// `localhost` as the HTTP/2 authority: the socket path is not one, and quantd's h2 refuses it).
pub async fn connect(target: &str) -> anyhow::Result<tonic::transport::Channel> {
    let Some(path) = target.strip_prefix("unix:") else {
        return Ok(tonic::transport::Endpoint::from_shared(format!("http://{target}"))?.connect().await?);
    };
    let path = std::path::PathBuf::from(path);
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    });
    Ok(tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector(connector).await?)
}

/// Asks the kernel for precise sleeps (the default 50 µs timer slack would make every short sleep
/// late by up to that much). Best effort: on failure sleeps are just coarser.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Waits until `due`: sleeps while it is more than 8 µs away, then spins. Sleeping keeps the
/// cores free for the server under test, which shares the machine; with a 1 ns timer slack a
/// short sleep wakes within a few µs, and what it costs is measured as `send_lag`.
fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(8) {
            std::thread::sleep(left - Duration::from_micros(4));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Where the pacer puts one stream's due ticks: a message each, or a batch once `n` are due.
enum Outlet {
    Ticks(UnboundedSender<Tick>),
    Batches { tx: UnboundedSender<TickBatch>, n: usize, filling: Vec<Tick> },
}

impl Outlet {
    /// Takes a due tick; returns how many ticks went out (0 while a batch fills), or `None` when
    /// the stream is gone.
    fn put(&mut self, t: Tick) -> Option<u64> {
        match self {
            Outlet::Ticks(tx) => tx.send(t).ok().map(|()| 1),
            Outlet::Batches { n, filling, .. } => {
                filling.push(t);
                if filling.len() < *n { Some(0) } else { self.flush() }
            }
        }
    }

    /// Sends a batch that is filling, short or not.
    fn flush(&mut self) -> Option<u64> {
        match self {
            Outlet::Ticks(_) => Some(0),
            Outlet::Batches { tx, n, filling } => {
                let ticks = std::mem::replace(filling, Vec::with_capacity(*n));
                let sent = ticks.len() as u64;
                if sent == 0 {
                    return Some(0);
                }
                tx.send(TickBatch { ticks }).ok().map(|()| sent)
            }
        }
    }
}

/// Releases every tick at its due time, round-robin over the streams' outlets (a batch goes out
/// when its last tick is due; short batches at the end). Returns how late each release was.
fn pace(
    source: Source,
    offsets: Arc<Vec<u64>>,
    mut outlets: Vec<Outlet>,
    start: Instant,
    start_ns: u64,
    sent: Arc<AtomicU64>,
) -> Histogram<u64> {
    precise_sleeps();
    let mut lag = histogram();
    let streams = outlets.len();
    for (i, &offset) in offsets.iter().enumerate() {
        let due = start + Duration::from_nanos(offset);
        wait_until(due);
        lag.saturating_record(due.elapsed().as_nanos() as u64);
        let mut t = source.tick(i, streams);
        t.exchange_ts_ns = (start_ns + offset) as i64;
        match outlets[i % streams].put(t) {
            Some(n) => sent.fetch_add(n, Ordering::Relaxed),
            None => break,
        };
    }
    for o in &mut outlets {
        if let Some(n) = o.flush() {
            sent.fetch_add(n, Ordering::Relaxed);
        }
    }
    lag
}

/// What a stream's call sends: the pacer's ticks, or its batches; or, for unary protocols, the
/// calls the dispatcher made of them.
enum Inbox {
    Ticks(tokio::sync::mpsc::UnboundedReceiver<Tick>),
    Batches(tokio::sync::mpsc::UnboundedReceiver<TickBatch>),
    Unary(tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<Answer>>),
}

/// One stream's replies, signal by signal, each with the time its message arrived.
enum Replies {
    Ticks(tonic::Streaming<Signal>),
    Batches {
        batches: tonic::Streaming<SignalBatch>,
        rest: std::vec::IntoIter<Signal>,
        arrived: (Instant, u64),
    },
    /// Unary calls in flight, in the order their ticks were released (each stamped when it
    /// completed, so waiting here for an earlier one does not shift a later one's latency).
    Unary(tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<Answer>>),
}

/// One unary call's answer: a signal (for ModelInfer: the score, `seq` from the echoed id) and
/// when it arrived.
type Answer = Result<(Signal, Instant, u64), tonic::Status>;

impl Replies {
    /// The next signal and when its message arrived (monotonic, and CLOCK_REALTIME ns).
    async fn next(&mut self) -> Result<Option<(Signal, Instant, u64)>, tonic::Status> {
        match self {
            Replies::Ticks(s) => Ok(s.message().await?.map(|s| (s, Instant::now(), now_ns()))),
            Replies::Batches { batches, rest, arrived } => loop {
                if let Some(s) = rest.next() {
                    return Ok(Some((s, arrived.0, arrived.1)));
                }
                let Some(b) = batches.message().await? else { return Ok(None) };
                *arrived = (Instant::now(), now_ns());
                *rest = b.signals.into_iter();
            },
            Replies::Unary(calls) => match calls.recv().await {
                None => Ok(None),
                Some(call) => call.await.map_err(|e| tonic::Status::internal(e.to_string()))?.map(Some),
            },
        }
    }
}

/// Feature rows of the recorded ticks, in their order (tick `i` of a run is recorded tick
/// `i % len`), as the server computes them; a tick the engine's checks refuse gets its
/// symbol's previous row (or zeros), as a gateway holding the last features would send.
fn feature_rows(source: &Source) -> anyhow::Result<Arc<Vec<[f32; quantd::features::NUM_FEATURES]>>> {
    let Source::Recorded(ticks) = source else { bail!("the kserve protocol needs recorded --ticks") };
    let mut engine = quantd::dataset::FeatureEngine::new(1 << 16, 64);
    let mut last: std::collections::HashMap<String, [f32; quantd::features::NUM_FEATURES]> = Default::default();
    let mut rows = Vec::with_capacity(ticks.len());
    for t in ticks {
        let mut row = [0.0; quantd::features::NUM_FEATURES];
        let row = match quantd::tick::Tick::from_proto(t).ok().map(|tick| engine.update(&tick, &mut row)) {
            Some(Ok(_)) => row,
            _ => last.get(&t.symbol).copied().unwrap_or_default(),
        };
        last.insert(t.symbol.clone(), row);
        rows.push(row);
    }
    Ok(Arc::new(rows))
}

/// Sends each released tick as its own unary call (open loop: whatever is in flight), handing
/// the calls to the receiver in release order.
async fn dispatch(
    channel: tonic::transport::Channel,
    protocol: Protocol,
    rows: Option<Arc<Vec<[f32; quantd::features::NUM_FEATURES]>>>,
    mut ticks: tokio::sync::mpsc::UnboundedReceiver<Tick>,
    calls: tokio::sync::mpsc::UnboundedSender<tokio::task::JoinHandle<Answer>>,
) {
    use quantd::inference_proto as kv2;
    while let Some(tick) = ticks.recv().await {
        let channel = channel.clone();
        let call = match &protocol {
            Protocol::Stream => unreachable!("streams are not dispatched per tick"),
            Protocol::Predict => tokio::spawn(async move {
                let s = SignalServiceClient::new(channel).predict(tick).await?.into_inner();
                Ok((s, Instant::now(), now_ns()))
            }),
            Protocol::Kserve { model, input } => {
                let rows = rows.as_ref().expect("feature rows with the kserve protocol");
                let row = rows[tick.seq as usize % rows.len()];
                let request = kv2::ModelInferRequest {
                    model_name: model.clone(),
                    id: tick.seq.to_string(),
                    inputs: vec![kv2::model_infer_request::InferInputTensor {
                        name: input.clone(),
                        datatype: "FP32".into(),
                        shape: vec![1, quantd::features::NUM_FEATURES as i64],
                        ..Default::default()
                    }],
                    raw_input_contents: vec![row.iter().flat_map(|v| v.to_le_bytes()).collect()],
                    ..Default::default()
                };
                tokio::spawn(async move {
                    let mut client = kv2::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
                    let r = client.model_infer(request).await?.into_inner();
                    let (now, now_rt) = (Instant::now(), now_ns());
                    let seq = r.id.parse().map_err(|_| tonic::Status::internal(format!("id {:?} not echoed", r.id)))?;
                    let score = match (r.raw_output_contents.first(), r.outputs.first()) {
                        (Some(raw), _) if raw.len() >= 4 => f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
                        (_, Some(o)) => {
                            o.contents.as_ref().and_then(|c| c.fp32_contents.first().copied()).unwrap_or(f32::NAN)
                        }
                        _ => f32::NAN,
                    };
                    Ok((Signal { seq, score: f64::from(score), ..Default::default() }, now, now_rt))
                })
            }
        };
        if calls.send(call).is_err() {
            return;
        }
    }
}

/// What one stream measured.
struct StreamResult {
    received: u64,
    rejected: u64,
    errors: Vec<String>,
    e2e: Histogram<u64>,
    to_server: Histogram<u64>,
    server: Histogram<u64>,
    /// Server internal by the model that scored the tick.
    by_model: std::collections::BTreeMap<String, Histogram<u64>>,
    to_client: Histogram<u64>,
    /// (due offset ns, server latency ns) of every measured tick, kept only when swapping.
    per_tick: Vec<(u64, u64)>,
}

/// Everything a stream's receiver needs to know about the run.
#[derive(Clone)]
struct Run {
    offsets: Arc<Vec<u64>>,
    streams: usize,
    start: Instant,
    start_ns: u64,
    warmup_ns: u64,
    keep_per_tick: bool,
    received: Arc<AtomicU64>,
    /// Watches for the first signal bound by a probe's kill-switch call.
    kill: Option<Arc<probe::KillWatch>>,
}

async fn receive(run: Run, stream: usize, mut replies: Replies, end: Instant) -> StreamResult {
    let mut r = StreamResult {
        received: 0,
        rejected: 0,
        errors: Vec::new(),
        e2e: histogram(),
        to_server: histogram(),
        server: histogram(),
        by_model: Default::default(),
        to_client: histogram(),
        per_tick: Vec::new(),
    };
    let total = run.offsets.len() as u64;
    let mut expected = stream as u64;
    while expected < total {
        let (s, now, now_rt) = match tokio::time::timeout_at(end.into(), replies.next()).await {
            Err(_) => {
                let missing = (total - expected).div_ceil(run.streams as u64);
                r.errors
                    .push(format!("stream {stream}: {missing} replies missing or late (none within 5 s of the run)"));
                break;
            }
            Ok(Err(status)) => {
                r.errors.push(format!("stream {stream}: stream failed: {status}"));
                break;
            }
            Ok(Ok(None)) => {
                r.errors.push(format!("stream {stream}: the server closed the stream early"));
                break;
            }
            Ok(Ok(Some(s))) => s,
        };
        if s.seq != expected {
            r.errors.push(format!(
                "stream {stream}: reply seq {} where {expected} was due (out of order or missing)",
                s.seq
            ));
            break;
        }
        expected += run.streams as u64;
        r.received += 1;
        if let Some(k) = &run.kill {
            k.observe(&s);
        }
        run.received.fetch_add(1, Ordering::Relaxed);
        if !s.reject_reason.is_empty() {
            r.rejected += 1;
        }
        let offset = run.offsets[s.seq as usize];
        if offset < run.warmup_ns {
            continue;
        }
        let due_ns = run.start_ns + offset;
        r.e2e.saturating_record(
            now.saturating_duration_since(run.start + Duration::from_nanos(offset)).as_nanos() as u64
        );
        if s.server_recv_ns > 0 {
            let server = s.server_send_ns.saturating_sub(s.server_recv_ns);
            r.to_server.saturating_record(s.server_recv_ns.saturating_sub(due_ns));
            r.server.saturating_record(server);
            if !s.model.is_empty() {
                match r.by_model.get_mut(&s.model) {
                    Some(h) => h.saturating_record(server),
                    None => {
                        let mut h = histogram();
                        h.saturating_record(server);
                        r.by_model.insert(s.model.clone(), h);
                    }
                }
            }
            r.to_client.saturating_record(now_rt.saturating_sub(s.server_send_ns));
            if run.keep_per_tick {
                r.per_tick.push((offset, server));
            }
        }
    }
    r.errors.truncate(20);
    r
}

/// Swaps models on schedule through the admin API; returns the offsets (ns from the start) at
/// which each swap was asked for and succeeded.
async fn swap_models(admin: String, plan: SwapPlan, start: Instant, warmup: Duration, end: Instant) -> Vec<u64> {
    let mut done = Vec::new();
    let mut admin = match quantd::proto::model_admin_client::ModelAdminClient::connect(format!("http://{admin}")).await
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("swap: cannot connect to the admin service: {e}");
            return done;
        }
    };
    let mut next = start + warmup + plan.every / 2;
    let mut i = 0;
    while next < end && !plan.versions.is_empty() {
        tokio::time::sleep_until(next.into()).await;
        let (name, version) = plan.versions[i % plan.versions.len()].clone();
        let at = start.elapsed().as_nanos() as u64;
        match admin.activate_model(quantd::proto::ModelRef { name, version }).await {
            Ok(_) => done.push(at),
            Err(e) => eprintln!("swap failed: {e}"),
        }
        i += 1;
        next += plan.every;
    }
    done
}

/// Runs the load and returns the report. Errors are failures to run at all; a run with missing or
/// out-of-order replies returns a report whose `errors` say so.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.streams == 0 {
        bail!("--streams must be positive");
    }
    if opts.batch == 0 {
        bail!("--batch must be positive");
    }
    let source = Source::open(&opts)?;
    let span = opts.warmup + opts.duration;
    let offsets = Arc::new(schedule::offsets(opts.pace, span.as_nanos() as u64, opts.seed, &source.exchange_times())?);
    if offsets.is_empty() {
        bail!("the schedule holds no tick: raise --rate or --duration");
    }
    let before = match &opts.metrics {
        Some(m) => Some(report::scrape(m).await?),
        None => None,
    };
    if opts.protocol.unary() && opts.batch > 1 {
        bail!("--batch goes with the stream protocol only");
    }
    let rows = match &opts.protocol {
        Protocol::Kserve { .. } => Some(feature_rows(&source)?),
        _ => None,
    };
    let mut outlets = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..opts.streams {
        let channel = connect(&opts.target).await.context("connecting to the target")?;
        let client = SignalServiceClient::new(channel.clone());
        if opts.protocol.unary() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (calls_tx, calls_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(dispatch(channel, opts.protocol.clone(), rows.clone(), rx, calls_tx));
            outlets.push(Outlet::Ticks(tx));
            calls.push((client, Inbox::Unary(calls_rx)));
        } else if opts.batch == 1 {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            outlets.push(Outlet::Ticks(tx));
            calls.push((client, Inbox::Ticks(rx)));
        } else {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            outlets.push(Outlet::Batches { tx, n: opts.batch, filling: Vec::with_capacity(opts.batch) });
            calls.push((client, Inbox::Batches(rx)));
        }
    }
    // Start a little in the future so the pacer is running before the first due time.
    let start = Instant::now() + Duration::from_millis(100);
    let start_ns = now_ns() + 100_000_000;
    let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let run = Run {
        offsets: offsets.clone(),
        streams: opts.streams,
        start,
        start_ns,
        warmup_ns: opts.warmup.as_nanos() as u64,
        keep_per_tick: opts.swap.is_some(),
        received: received.clone(),
        kill: opts.probe.as_ref().map(|_| Arc::new(probe::KillWatch::new())),
    };
    let progress = opts.progress.then(|| report::Progress::start(span, sent.clone(), received.clone()));
    let pacer = {
        let (offsets, sent) = (offsets.clone(), sent.clone());
        std::thread::Builder::new()
            .name("load-pacer".into())
            .spawn(move || pace(source, offsets, outlets, start, start_ns, sent))?
    };
    // After the last due time, replies get at most this long to arrive.
    let end = start + span + Duration::from_secs(5);
    let swapper = opts
        .swap
        .clone()
        .map(|plan| tokio::spawn(swap_models(opts.admin.clone(), plan, start, opts.warmup, start + span)));
    let measured = (start + opts.warmup, start + span);
    // The probes run on a thread of their own with a current-thread runtime, as a separate admin
    // client would: on the load's runtime their timings would include waits behind the streams.
    let probes = match opts.probe.clone() {
        Some(plan) => {
            let watch = run.kill.clone().expect("a kill watch with every probe plan");
            let metrics = opts.metrics.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Some(std::thread::Builder::new().name("load-probe".into()).spawn(move || {
                runtime.block_on(async move {
                    let kill = probe::kill_switch(&plan, &watch, measured.0, measured.1);
                    let scrape = async {
                        match &metrics {
                            Some(m) if plan.scrapes > 0 => {
                                probe::scrapes(m, plan.scrapes, measured.0, measured.1).await
                            }
                            _ => (histogram(), Vec::new()),
                        }
                    };
                    let (kill, scrape) = tokio::join!(kill, scrape);
                    ProbeReport::new(kill, scrape)
                })
            })?)
        }
        None => None,
    };
    // The calls start once the pacer runs: a server may hold its response headers back until
    // the first tick arrives (grpcio does).
    let tasks: Vec<_> = calls
        .into_iter()
        .enumerate()
        .map(|(k, (mut client, inbox))| {
            let run = run.clone();
            tokio::spawn(async move {
                use tokio_stream::wrappers::UnboundedReceiverStream as Rx;
                let call = async {
                    Ok::<_, tonic::Status>(match inbox {
                        Inbox::Ticks(rx) => Replies::Ticks(client.stream_ticks(Rx::new(rx)).await?.into_inner()),
                        Inbox::Batches(rx) => Replies::Batches {
                            batches: client.stream_tick_batches(Rx::new(rx)).await?.into_inner(),
                            rest: Vec::new().into_iter(),
                            arrived: (Instant::now(), 0),
                        },
                        Inbox::Unary(calls) => Replies::Unary(calls),
                    })
                };
                match tokio::time::timeout_at(end.into(), call).await {
                    Ok(Ok(replies)) => Ok(receive(run, k, replies, end).await),
                    Ok(Err(status)) => Err(anyhow::anyhow!("stream {k}: the call failed: {status}")),
                    Err(_) => Err(anyhow::anyhow!("stream {k}: the server never answered the call")),
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let send_lag = pacer.join().map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let swaps = match swapper {
        Some(s) => s.await?,
        None => Vec::new(),
    };
    let probes = match probes {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || p.join()).await?.map_err(|_| anyhow!("the probe thread panicked"))?,
        ),
        None => None,
    };
    drop(progress);
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let after = match &opts.metrics {
        Some(m) => {
            tokio::time::sleep(Duration::from_millis(1200)).await; // one export interval
            Some(report::scrape(m).await?)
        }
        None => None,
    };
    let mut e2e = histogram();
    let (mut to_server, mut server, mut to_client) = (histogram(), histogram(), histogram());
    let (mut received, mut rejected) = (0, 0);
    let mut errors = Vec::new();
    let mut per_tick = Vec::new();
    let mut by_model: std::collections::BTreeMap<String, Histogram<u64>> = Default::default();
    for r in results {
        for (model, h) in r.by_model {
            match by_model.get_mut(&model) {
                Some(all) => all.add(&h)?,
                None => {
                    by_model.insert(model, h);
                }
            }
        }
        received += r.received;
        rejected += r.rejected;
        errors.extend(r.errors);
        e2e.add(&r.e2e)?;
        to_server.add(&r.to_server)?;
        server.add(&r.server)?;
        to_client.add(&r.to_client)?;
        per_tick.extend(r.per_tick);
    }
    let (server_histogram, server_stages) = match (before, after) {
        (Some(b), Some(a)) => report::server_side(&b, &a),
        _ => (None, Default::default()),
    };
    Ok(Report {
        label: opts.label.clone().unwrap_or_else(|| opts.target.clone()),
        target: opts.target.clone(),
        pace: format!("{:?}", opts.pace),
        streams: opts.streams,
        batch: opts.batch,
        protocol: match &opts.protocol {
            Protocol::Stream => "stream".into(),
            Protocol::Predict => "predict".into(),
            Protocol::Kserve { model, .. } => format!("kserve:{model}"),
        },
        target_rate: offsets.len() as f64 / span.as_secs_f64(),
        duration_s: opts.duration.as_secs_f64(),
        sent: sent.load(Ordering::Relaxed),
        received,
        achieved_rate: received as f64 / elapsed,
        rejected,
        errors,
        end_to_end: Percentiles::from(&e2e),
        client_to_server: Percentiles::from(&to_server),
        server_internal: Percentiles::from(&server),
        server_internal_by_model: by_model.iter().map(|(m, h)| (m.clone(), Percentiles::from(h))).collect(),
        server_to_client: Percentiles::from(&to_client),
        send_lag: Percentiles::from(&send_lag),
        server_histogram,
        server_stages,
        swaps: (!swaps.is_empty()).then(|| SwapReport::split(&swaps, &per_tick)),
        probes,
        distribution: report::distribution(&e2e),
    })
}
