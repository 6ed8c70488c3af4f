//! Several models live at once (issue: multi-model routing): a real server with the repo's
//! models routes ticks by the config's `[[routes]]` and by the stream's `x-quantd-model`
//! header, metadata first; an unknown or malformed model header refuses the stream at open; and
//! the engine keeps one position per route, so two strategies on one symbol never share one.

mod common;

use common::*;
use quantd::engine::{ActiveModel, Recorded, RecordedTick, SyncEngine};
use quantd::model::LoadedModel;
use quantd::policy::{PolicyParams, Position};
use quantd::proto::Tick;
use quantd::risk::External;
use quantd::routes::{BY_SYMBOL, MODEL_HEADER, RouteSpec};
use quantd::telemetry::Telemetry;
use tonic::Code;

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";
const ETH_QUOTES: &str = "binance_usdm_ethusdt_20240808_quotes.csv.gz";
const MLP: &str = "quantd-mlp@2";
const TCN: &str = "quantd-tcn@2";

fn routed_config() -> quantd::config::Config {
    let mut cfg = test_config();
    cfg.routes = vec![RouteSpec {
        name: Some("eth-tcn".into()),
        symbols: vec!["ETH*".into()],
        model: "quantd-tcn".into(),
        policy: None,
    }];
    cfg.validate().expect("routed config is valid");
    cfg
}

fn with_model<T>(message: T, model: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(MODEL_HEADER, model.parse().unwrap());
    req
}

/// Streams `ticks` with `x-quantd-model: model` and collects every signal.
async fn stream_with_model(
    server: &quantd::server::Server,
    ticks: Vec<Tick>,
    model: &str,
) -> Vec<quantd::proto::Signal> {
    let mut c = client(server).await;
    let mut replies = c.stream_ticks(with_model(tokio_stream::iter(ticks), model)).await.expect("opens").into_inner();
    let mut out = Vec::new();
    while let Some(s) = replies.message().await.expect("stream stays healthy") {
        out.push(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_routes_and_stream_metadata_choose_the_model_metadata_first() {
    let server = start(&routed_config()).await;
    let ticks = recorded(&[BTC_QUOTES, ETH_QUOTES], 3_000);
    let (first, later) = ticks.split_at(2_000);
    // By the config's routes: ETH* to the TCN, the rest to the default MLP.
    let signals = stream_all(&mut client(&server).await, first.to_vec()).await;
    assert_eq!(signals.len(), first.len());
    let mut by_model = std::collections::BTreeMap::<(String, String), usize>::new();
    for (t, s) in first.iter().zip(&signals) {
        assert_eq!(s.seq, t.seq);
        assert!(s.reject_reason.is_empty(), "{}: {}", t.symbol, s.reject_reason);
        let want = if t.symbol.starts_with("ETH") { TCN } else { MLP };
        assert_eq!(s.model, want, "{} at seq {}", t.symbol, t.seq);
        *by_model.entry((t.symbol.clone(), s.model.clone())).or_default() += 1;
    }
    assert_eq!(by_model.len(), 2, "both symbols and both models seen: {by_model:?}");
    // The stream's header beats the routes: every symbol to the TCN, features carried on.
    let signals = stream_with_model(&server, later.to_vec(), "quantd-tcn@2").await;
    assert_eq!(signals.len(), later.len());
    assert!(signals.iter().all(|s| s.model == TCN && s.reject_reason.is_empty()), "all on the TCN");
    assert!(signals.iter().any(|s| !s.warming_up), "symbol state is shared with the other routes");
    // Unary calls take the header too.
    let next = recorded(&[BTC_QUOTES], 3_000).into_iter().next_back().unwrap();
    let one = client(&server).await.predict(with_model(next, "quantd-tcn")).await.unwrap().into_inner();
    assert_eq!(one.model, TCN);
    // Per-model metrics: each live model name's outcomes, calls and batch sizes; the label is
    // the model name, never a symbol.
    for m in ["quantd-mlp", "quantd-tcn"] {
        for family in [
            format!("quantd_model_ticks_total{{model=\"{m}\",outcome=\"scored\"}}"),
            format!("quantd_model_stage_seconds_count{{model=\"{m}\",stage=\"inference\"}}"),
            format!("quantd_model_stage_seconds_count{{model=\"{m}\",stage=\"engine\"}}"),
            format!("quantd_model_inference_batch_size_count{{model=\"{m}\"}}"),
        ] {
            wait_for_metric(&server, &family, 1.0).await;
        }
    }
    let text = scrape(&server).await;
    assert!(!text.contains("model=\"BTCUSDT\"") && !text.contains("model=\"quantd-lstm\""), "bounded by live names");
    server.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_malformed_model_refuses_the_stream_at_open() {
    let server = start(&routed_config()).await;
    let mut c = client(&server).await;
    let open = |model: &'static str| {
        let mut c = c.clone();
        async move { c.stream_ticks(with_model(tokio_stream::iter(Vec::<Tick>::new()), model)).await.err() }
    };
    let unknown = open("quantd-nope").await.expect("refused");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("served: quantd-mlp@2, quantd-tcn@2"), "{}", unknown.message());
    let old = open("quantd-mlp@1").await.expect("refused");
    assert_eq!(old.code(), Code::NotFound);
    assert!(old.message().contains("not the active version"), "{}", old.message());
    for bad in ["quantd-mlp@", "@2", "a@b@c"] {
        assert_eq!(open(bad).await.expect("refused").code(), Code::InvalidArgument, "{bad}");
    }
    let unary = c.predict(with_model(Tick::default(), "quantd-lstm")).await.unwrap_err();
    assert_eq!(unary.code(), Code::NotFound, "quantd-lstm is in models/ but no route makes it live");
    let m = wait_for_metric(&server, "quantd_stream_events_total{event=\"refused_bad_option\"}", 5.0).await;
    assert!(sample(&m, "quantd_stream_events_total{event=\"refused_bad_option\"}").unwrap() >= 5.0);
    server.shutdown(std::time::Duration::from_secs(2)).await;
}

#[test]
fn two_routes_on_one_symbol_keep_separate_positions() {
    quantd::model::runtime::init(None).unwrap();
    let m = LoadedModel::load(&repo().join("models/quantd-mlp/2"), 64).unwrap();
    let manifest = m.manifest.policy;
    // A config route on the symbol that opens at any score (its own policy), and the MLP's own
    // stream route with the manifest's: one model, two strategies on BTCUSDT.
    let eager = PolicyParams { entry_bps: 0.05, exit_bps: 0.0, ..manifest };
    let cfg = quantd::config::Config {
        routes: vec![RouteSpec {
            name: Some("eager".into()),
            symbols: vec!["BTCUSDT".into()],
            model: "quantd-mlp".into(),
            policy: Some(eager),
        }],
        ..Default::default()
    };
    let mut engine =
        SyncEngine::new(&cfg.engine_config(), Box::new(ActiveModel::from_loaded(m, None)), Telemetry::new());
    let stream = engine.served().stream_route("quantd-mlp", "").unwrap();
    let ticks: Vec<_> = quantd::tickfile::TickReader::open(&[shared_ticks(BTC_QUOTES)])
        .unwrap()
        .take(4_000)
        .map(|t| t.unwrap())
        .collect();
    let external = External { var_scale: 1.0, admin_kill: false };
    let recorded: Vec<RecordedTick> = ticks
        .iter()
        .enumerate()
        .map(|(i, &tick)| RecordedTick {
            tick,
            recv_ns: 0,
            conflate: false,
            recorded: Recorded { external, expired: false },
            route: if i % 2 == 0 { BY_SYMBOL } else { stream },
        })
        .collect();
    let mut replies = Vec::new();
    for chunk in recorded.chunks(engine.max_batch()) {
        engine.run_recorded(chunk, &mut replies);
    }
    assert_eq!(replies.len(), ticks.len());
    // Each route's position follows its own policy on its own ticks' scores only; one position
    // shared by both would have held where a route's own stayed flat, or the reverse.
    let policies = [eager, manifest];
    let (mut own, mut shared) = ([Position::default(), Position::default()], Position::default());
    let (mut scored, mut would_differ) = (0, 0);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.model.as_deref(), Some(MLP));
        assert!(r.reject.is_none() && r.risk.is_empty(), "tick {i}: {:?} {:?}", r.reject, r.risk);
        if r.warming_up {
            continue;
        }
        let want = own[i % 2].update(r.score, &policies[i % 2]);
        assert_eq!(r.policy_position, want, "tick {i}: route {} kept its own position", i % 2);
        would_differ += (shared.update(r.score, &policies[i % 2]) != want) as usize;
        scored += 1;
    }
    assert!(scored > 3_000, "{scored} ticks past warm-up");
    assert!(would_differ > 0, "the test must tell one shared position from two: no tick differed");
}

/// `(symbol, model)` of every signal, and the count of rejected ones.
fn labels(ticks: &[Tick], signals: &[quantd::proto::Signal]) -> (std::collections::BTreeSet<(String, String)>, usize) {
    assert_eq!(ticks.len(), signals.len());
    let rejected = signals.iter().filter(|s| !s.reject_reason.is_empty()).count();
    (ticks.iter().zip(signals).map(|(t, s)| (t.symbol.clone(), s.model.clone())).collect(), rejected)
}

fn pair(symbol: &str, model: &str) -> (String, String) {
    (symbol.to_owned(), model.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_model_swaps_shadows_and_rolls_back_while_another_serves_and_routes_change_at_run_time() {
    use quantd::proto::model_admin_client::ModelAdminClient;
    use quantd::proto::{GetActiveRequest, ListModelsRequest, LoadModelRequest, RollbackRequest, Route};
    let server = start(&routed_config()).await;
    let mut admin = ModelAdminClient::new(admin_channel(&server).await);
    let ticks = recorded(&[BTC_QUOTES, ETH_QUOTES], 5_000);
    let mut chunks = ticks.chunks(1_000);
    let mut send = async || {
        let chunk = chunks.next().unwrap().to_vec();
        let signals = stream_all(&mut client(&server).await, chunk.clone()).await;
        labels(&chunk, &signals)
    };
    let (btc, eth) = ("BTCUSDT", "ETHUSDT");
    assert_eq!(send().await, ([pair(btc, MLP), pair(eth, TCN)].into(), 0));

    // ListModels: each active version names the routes it serves.
    let models = admin.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let routes_of = |name: &str, version: &str| {
        models.iter().find(|m| m.name == name && m.version == version).map(|m| m.routes.clone()).unwrap()
    };
    assert_eq!(routes_of("quantd-mlp", "2"), ["default", "stream:quantd-mlp"]);
    assert_eq!(routes_of("quantd-tcn", "2"), ["eth-tcn", "stream:quantd-tcn"]);
    assert!(routes_of("quantd-tcn", "2-fp32").is_empty(), "not active");

    // Swap the TCN only: the MLP's ticks go on untouched, none refused.
    let tcn_named = |name: &str| GetActiveRequest { name: name.into() };
    let load = |version: &str, mode: quantd::proto::LoadMode| LoadModelRequest {
        name: "quantd-tcn".into(),
        version: version.into(),
        mode: mode as i32,
    };
    admin.load_model(load("2-ptq-minmax", quantd::proto::LoadMode::Activate)).await.unwrap();
    assert_eq!(send().await, ([pair(btc, MLP), pair(eth, "quantd-tcn@2-ptq-minmax")].into(), 0));
    let mlp = admin.get_active(tcn_named("")).await.unwrap().into_inner();
    assert_eq!((mlp.active.unwrap().version, mlp.previous), ("2".to_owned(), None), "the MLP's lane did not move");
    let back = admin.rollback(RollbackRequest { name: "quantd-tcn".into() }).await.unwrap().into_inner();
    assert_eq!(back.version, "2");
    assert_eq!(send().await, ([pair(btc, MLP), pair(eth, TCN)].into(), 0));
    let err = admin.rollback(RollbackRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "the MLP has no previous version: {}", err.message());

    // A shadow on the TCN's lane, none on the MLP's.
    admin.load_model(load("2-fp32", quantd::proto::LoadMode::Shadow)).await.unwrap();
    let tcn = admin.get_active(tcn_named("quantd-tcn")).await.unwrap().into_inner();
    assert_eq!(tcn.shadow.unwrap().version, "2-fp32");
    assert!(admin.get_active(tcn_named("")).await.unwrap().into_inner().shadow.is_none());
    let unknown = admin.get_active(tcn_named("quantd-nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);

    // SetRoute: BTC to the TCN from the next tick; a route on a model that is not live, or
    // named "default", is refused.
    let route = |name: &str, symbols: &[&str], model: &str| Route {
        name: name.into(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        model: model.into(),
        policy: None,
    };
    let list = admin.set_route(route("btc-tcn", &["BTC*"], "quantd-tcn")).await.unwrap().into_inner();
    assert!(list.routes.iter().any(|r| r.name == "btc-tcn" && r.model == "quantd-tcn"));
    assert_eq!(send().await, ([pair(btc, TCN), pair(eth, TCN)].into(), 0));
    for (bad, why) in
        [(route("x", &["X"], "quantd-lstm"), "not live"), (route("default", &["X"], "quantd-tcn"), "reserved")]
    {
        let err = admin.set_route(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(why), "{}", err.message());
    }
    // A model name brought in at run time goes live beside the others, with its stream route:
    // the activation answers once the engine serves it, so a stream opened next finds it.
    let lstm = LoadModelRequest {
        name: "quantd-lstm".into(),
        version: "2".into(),
        mode: quantd::proto::LoadMode::Activate as i32,
    };
    admin.load_model(lstm).await.unwrap();
    let chunk = chunks.next().unwrap().to_vec();
    let signals = stream_with_model(&server, chunk.clone(), "quantd-lstm").await;
    assert_eq!(labels(&chunk, &signals), ([pair(btc, "quantd-lstm@2"), pair(eth, "quantd-lstm@2")].into(), 0));
    server.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_re_runs_routed_ticks_as_live_two_strategies_on_one_symbol_included() {
    let journal = tempfile::tempdir().unwrap();
    let mut cfg = routed_config();
    // Eager policies (open at any score) on both config routes, so positions really move.
    let eager = PolicyParams { warmup_ticks: 100, entry_bps: 0.05, exit_bps: 0.0, full_position_bps: 5.0 };
    cfg.routes[0].policy = Some(eager);
    cfg.routes.push(RouteSpec {
        name: Some("btc-eager".into()),
        symbols: vec!["BTCUSDT".into()],
        model: "quantd-mlp".into(),
        policy: Some(eager),
    });
    cfg.journal.enabled = true;
    cfg.journal.dir = journal.path().to_owned();
    cfg.journal.flush_ms = 20;
    let server = start(&cfg).await;
    let ticks = recorded(&[BTC_QUOTES, ETH_QUOTES], 5_000);
    let (by_config, rest) = ticks.split_at(2_000);
    let (by_header, rest) = rest.split_at(1_000);
    let (by_both, after_set_route) = rest.split_at(1_000);
    // The config's routes, then the MLP's stream route on the same symbols (a second strategy
    // on BTCUSDT and ETHUSDT, at the manifest's policy), then the routes again: four routes and
    // two models in one run.
    let mut signals = stream_all(&mut client(&server).await, by_config.to_vec()).await;
    signals.extend(stream_with_model(&server, by_header.to_vec(), "quantd-mlp").await);
    signals.extend(stream_all(&mut client(&server).await, by_both.to_vec()).await);
    // Then an admin route change the audit's config does not hold: the BTCUSDT route to the TCN
    // with another policy (it keeps its positions). The journal records it, so the audit routes
    // as live did.
    let mut admin = quantd::proto::model_admin_client::ModelAdminClient::new(admin_channel(&server).await);
    let route = quantd::proto::Route {
        name: "btc-eager".into(),
        symbols: vec!["BTCUSDT".into()],
        model: "quantd-tcn".into(),
        policy: Some(quantd::proto::RoutePolicy {
            warmup_ticks: 100,
            entry_bps: 0.02,
            exit_bps: 0.0,
            full_position_bps: 2.0,
        }),
    };
    admin.set_route(route).await.expect("route set");
    let moved = stream_all(&mut client(&server).await, after_set_route.to_vec()).await;
    assert!(moved.iter().any(|s| s.symbol == "BTCUSDT" && s.model == TCN), "BTCUSDT moved to the TCN");
    signals.extend(moved);
    assert!(signals.iter().all(|s| s.reject_reason.is_empty()));
    let positions = |model: &str| signals.iter().filter(|s| s.model == model && s.target_position != 0.0).count();
    assert!(positions(MLP) > 0 && positions(TCN) > 0, "both models hold positions");
    server.shutdown(std::time::Duration::from_secs(2)).await;

    let opts = quantd::audit::AuditOptions {
        journal: journal.path().to_owned(),
        models: repo().join("models"),
        config: cfg,
        keep_mismatches: 3,
    };
    let report = quantd::audit::run(&opts).unwrap();
    assert_eq!(report.mismatched, 0, "{:?}", report.mismatches);
    assert_eq!(report.reproduced, ticks.len() as u64, "every routed signal reproduced bit for bit");
    assert_eq!(report.admin_calls, 1, "the journaled SetRoute re-applied");
    assert!(report.passed());
    let by_model: Vec<_> = report.by_model.keys().map(String::as_str).collect();
    assert_eq!(by_model, [MLP, TCN]);
}

#[test]
fn a_fast_models_ticks_do_not_wait_for_a_slow_models_call_and_each_stream_stays_in_order() {
    use quantd::engine::{EngineConfig, ReplyQueue, WorkItem};
    use std::time::Instant;
    quantd::model::runtime::init(None).unwrap();
    let load = |dir: &str| {
        let m = LoadedModel::load_with(&repo().join(dir), &quantd::model::LoadOptions::cpu(64)).unwrap();
        Box::new(ActiveModel::from_loaded(m, None))
    };
    let route =
        RouteSpec { name: None, symbols: vec!["ETH*".into()], model: "quantd-transformer".into(), policy: None };
    let cfg = EngineConfig { routes: vec![route], ..quantd::config::Config::default().engine_config() };
    let (mlp, transformer) = (load("models/quantd-mlp/2"), load("models/quantd-transformer/2"));
    let engine = quantd::engine::spawn_models(&cfg, mlp, vec![transformer], Telemetry::new(), &[]).unwrap();
    let handle = engine.handle();
    let ticks: Vec<_> = quantd::tickfile::TickReader::open(&[shared_ticks(BTC_QUOTES), shared_ticks(ETH_QUOTES)])
        .unwrap()
        .take(3_000)
        .map(|t| t.unwrap())
        .collect();
    // Stream "btc": BTC ticks (the MLP); stream "eth": ETH ticks (the Transformer); stream
    // "both": every tick, both models in one stream. One engine pass takes each round.
    let (btc, eth, both) = (ReplyQueue::new(4096), ReplyQueue::new(4096), ReplyQueue::new(4096));
    let mut mlp_first = 0;
    for round in ticks.chunks(20) {
        handle.set_paused(true);
        for t in round {
            let to = if t.symbol.as_str().starts_with("ETH") { &eth } else { &btc };
            for queue in [to, &both] {
                let item = WorkItem {
                    tick: *t,
                    reply_to: queue.clone(),
                    recv: Instant::now(),
                    recv_ns: 0,
                    conflate: false,
                    route: BY_SYMBOL,
                };
                assert!(handle.submit_deferred(item).is_ok());
            }
        }
        handle.set_paused(false);
        let (mut out, mut seqs) = ([Vec::new(), Vec::new()], Vec::new());
        while out[0].len() + out[1].len() + seqs.len() < 2 * round.len() {
            for (k, q) in [&btc, &eth].into_iter().enumerate() {
                while let Some(r) = q.pop() {
                    out[k].push(r);
                }
            }
            while let Some(r) = both.pop() {
                seqs.push(r.seq);
            }
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a stream's replies come in arrival order: {seqs:?}");
        let [b, e] = &out;
        // Counted only where an ETH tick came first: answered in arrival order, it would go first.
        let eth_first = round[0].symbol.as_str().starts_with("ETH");
        if let (Some(last_btc), Some(first_eth)) = (b.iter().map(|r| r.posted).max(), e.iter().map(|r| r.posted).min())
            && eth_first
            && b.iter().all(|r| r.batch == e[0].batch)
        {
            mlp_first += (last_btc < first_eth) as usize;
        }
    }
    assert!(mlp_first > 5, "the MLP's stream was answered before the Transformer's call ended in {mlp_first} passes");
    engine.shutdown();
}

#[test]
fn a_symbol_moved_by_set_route_leaves_its_old_route_and_never_runs_out_of_books() {
    use quantd::engine::Control;
    quantd::model::runtime::init(None).unwrap();
    let m = LoadedModel::load(&repo().join("models/quantd-mlp/2"), 64).unwrap();
    let cfg = quantd::config::Config::default().engine_config();
    let mut engine = SyncEngine::new(&cfg, Box::new(ActiveModel::from_loaded(m, None)), Telemetry::new());
    let ticks: Vec<_> = quantd::tickfile::TickReader::open(&[shared_ticks(BTC_QUOTES)])
        .unwrap()
        .take(1_600)
        .map(|t| t.unwrap())
        .collect();
    let route = |name: &str, symbols: &[&str]| {
        let symbols = symbols.iter().map(|s| s.to_string()).collect();
        let spec = RouteSpec { name: Some(name.into()), symbols, model: "quantd-mlp".into(), policy: None };
        Control::SetRoute { spec: Box::new(spec), done: None }
    };
    let mut replies = Vec::new();
    // Eight moves of BTCUSDT from route to route: twice the books a symbol has.
    for (k, chunk) in ticks.chunks(200).enumerate() {
        if k > 0 {
            engine.control(route(&format!("r{}", k - 1), &["NONE"]));
        }
        engine.control(route(&format!("r{k}"), &["BTCUSDT"]));
        replies.clear();
        for batch in chunk.chunks(engine.max_batch()) {
            engine.run(batch, &mut replies);
        }
        assert!(replies.iter().all(|r| r.reject.is_none()), "move {k}: {:?}", replies.iter().find_map(|r| r.reject));
        assert!(replies.iter().all(|r| r.route.as_deref() == Some(&*format!("r{k}"))), "move {k}: down route r{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_pins_its_model_to_a_version() {
    use quantd::proto::model_admin_client::ModelAdminClient;
    let mut cfg = routed_config();
    cfg.routes[0].model = "quantd-tcn@2-fp32".into();
    let server = start(&cfg).await;
    let ticks = recorded(&[BTC_QUOTES, ETH_QUOTES], 1_000);
    let signals = stream_all(&mut client(&server).await, ticks.clone()).await;
    let (seen, rejected) = labels(&ticks, &signals);
    assert_eq!((seen, rejected), ([pair("BTCUSDT", MLP), pair("ETHUSDT", "quantd-tcn@2-fp32")].into(), 0));
    let mut admin = ModelAdminClient::new(admin_channel(&server).await);
    let pinned = quantd::proto::Route {
        name: "x".into(),
        symbols: vec!["X".into()],
        model: "quantd-tcn@2".into(),
        policy: None,
    };
    let err = admin.set_route(pinned).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("takes a model name"), "{}", err.message());
    server.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_the_engine_has_no_room_for_is_refused_and_the_registry_says_so() {
    use quantd::proto::model_admin_client::ModelAdminClient;
    use quantd::proto::{GetActiveRequest, ListModelsRequest, LoadModelRequest, Route};
    let server = start(&routed_config()).await;
    let mut admin = ModelAdminClient::new(admin_channel(&server).await);
    // Fill the route table (32): default, eth-tcn and two stream routes are there already.
    for k in 0..28 {
        let route =
            Route { name: format!("r{k}"), symbols: vec![format!("X{k}")], model: "quantd-mlp".into(), policy: None };
        admin.set_route(route).await.expect("room for it");
    }
    let full = Route { name: "one-more".into(), symbols: vec!["Y".into()], model: "quantd-mlp".into(), policy: None };
    let err = admin.set_route(full).await.unwrap_err();
    assert!(err.message().contains("full"), "{}", err.message());
    // A new name needs a stream route: the engine has no room and hands the model back. The
    // activation answers once the engine has decided, with its reason.
    let lstm = LoadModelRequest {
        name: "quantd-lstm".into(),
        version: "2".into(),
        mode: quantd::proto::LoadMode::Activate as i32,
    };
    let err = admin.load_model(lstm).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("route table is full"), "{}", err.message());
    let models = admin.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    let status = models.into_iter().find(|m| m.name == "quantd-lstm" && m.version == "2").unwrap();
    assert_eq!(status.state, "failed", "{status:?}");
    assert!(status.error.contains("route table is full"), "{}", status.error);
    // Not live: the admin API and the edge agree with the engine.
    let err = admin.get_active(GetActiveRequest { name: "quantd-lstm".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let mut c = client(&server).await;
    let ticks = recorded(&[BTC_QUOTES], 10);
    let err = c.stream_ticks(with_model(tokio_stream::iter(ticks), "quantd-lstm")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    // The other models serve on, and the failure is counted by kind.
    let signals = stream_all(&mut client(&server).await, recorded(&[BTC_QUOTES, ETH_QUOTES], 400)).await;
    assert!(signals.iter().all(|s| s.reject_reason.is_empty() && (s.model == MLP || s.model == TCN)));
    let metrics = scrape(&server).await;
    assert!(
        metrics.contains("quantd_model_failures_total{model=\"quantd-lstm\",reason=\"out_of_range\"} 1"),
        "{}",
        metrics.lines().filter(|l| l.contains("failures")).collect::<Vec<_>>().join("\n")
    );
    server.shutdown(std::time::Duration::from_secs(2)).await;
}
