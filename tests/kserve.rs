//! The Open Inference Protocol (KServe V2 / Triton gRPC) on a real server with the real default
//! model: metadata, ModelInfer on real feature rows in both encodings (scores equal to the same
//! model loaded in-process, bit for bit), the shadow reached by its version, windowed models,
//! refusals, and a full inference queue answered RESOURCE_EXHAUSTED, never silent growth.

mod common;

use std::time::Duration;

use common::*;
use quantd::inference_proto as pb;
use quantd::inference_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use quantd::model::LoadedModel;
use quantd::registry::LoadMode;
use tonic::Code;
use tonic::transport::Channel;

const NAME: &str = "quantd-mlp";

async fn infer_client(server: &quantd::server::Server) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", server.addr())).await.expect("connect")
}

/// The verification rows training kept beside the default model: real feature rows.
fn real_rows(n: usize) -> Vec<f32> {
    let rows = quantd::model::manifest::read_rows(&repo().join("models/quantd-mlp/2/verify.npy"), 14).unwrap();
    rows[..n * 14].to_vec()
}

fn request(model: &str, version: &str, rows: &[f32], raw: bool) -> pb::ModelInferRequest {
    let n = (rows.len() / 14) as i64;
    let mut input = pb::model_infer_request::InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![n, 14],
        ..Default::default()
    };
    let mut raw_input_contents = Vec::new();
    if raw {
        raw_input_contents.push(rows.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        input.contents = Some(pb::InferTensorContents { fp32_contents: rows.to_vec(), ..Default::default() });
    }
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "req-1".into(),
        inputs: vec![input],
        raw_input_contents,
        ..Default::default()
    }
}

fn scores(resp: &pb::ModelInferResponse) -> Vec<f32> {
    assert_eq!(resp.outputs.len(), 1);
    match resp.raw_output_contents.first() {
        Some(raw) => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        None => resp.outputs[0].contents.as_ref().unwrap().fp32_contents.clone(),
    }
}

/// The same version loaded in-process scores `rows` (the served backend is exact to the model's
/// integer semantics: ONNX Runtime within the manifest's bound of 0 steps, native bit for bit).
fn scored_in_process(version: &str, rows: &[f32]) -> Vec<f32> {
    quantd::model::runtime::init(None).unwrap();
    let mut m = LoadedModel::load(&repo().join("models").join(NAME).join(version), 64).unwrap();
    m.score_rows(rows, 64).unwrap().scores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_scores_real_rows_in_both_encodings() {
    let server = start(&test_config()).await;
    let mut c = infer_client(&server).await;
    assert!(c.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = |name: &str, version: &str| pb::ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(c.model_ready(ready(NAME, "")).await.unwrap().into_inner().ready);
    assert!(c.model_ready(ready(NAME, "2")).await.unwrap().into_inner().ready);
    assert!(!c.model_ready(ready(NAME, "1")).await.unwrap().into_inner().ready, "loaded nowhere");
    assert!(!c.model_ready(ready("nope", "")).await.unwrap().into_inner().ready);

    let meta = c
        .model_metadata(pb::ModelMetadataRequest { name: NAME.into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (meta.name.as_str(), meta.versions.as_slice(), meta.platform.as_str()),
        (NAME, &["2".to_string()][..], "onnxruntime_onnx")
    );
    assert_eq!((meta.inputs[0].name.as_str(), meta.inputs[0].datatype.as_str()), ("features", "FP32"));
    assert_eq!(meta.inputs[0].shape, [-1, 14]);
    assert_eq!((meta.outputs[0].name.as_str(), meta.outputs[0].shape.as_slice()), ("score", &[-1, 1][..]));

    // 1000 rows: more than one model call (max_batch 64), so the engine scores the request over
    // several passes.
    let rows = real_rows(1000);
    let want = scored_in_process("2", &rows);
    for raw in [false, true] {
        let resp = c.model_infer(request(NAME, "", &rows, raw)).await.unwrap().into_inner();
        assert_eq!((resp.model_name.as_str(), resp.model_version.as_str(), resp.id.as_str()), (NAME, "2", "req-1"));
        assert_eq!(resp.outputs[0].shape, [1000, 1]);
        assert_eq!(resp.outputs[0].name, "score");
        assert_eq!(resp.raw_output_contents.is_empty(), !raw, "answered in the request's encoding");
        let got = scores(&resp);
        assert_eq!(got, want, "raw = {raw}: the served scores equal the model's own, bit for bit");
        assert!(got.iter().any(|s| *s != got[0]), "real rows give varied scores");
    }
    let metrics = wait_for_metric(&server, "quantd_infer_requests_total{outcome=\"answered\"}", 2.0).await;
    assert_eq!(sample(&metrics, "quantd_infer_requests_total{outcome=\"answered\"}"), Some(2.0));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_the_model_takes() {
    let server = start(&test_config()).await;
    let mut c = infer_client(&server).await;
    let rows = real_rows(4);
    let err = c.model_infer(request("nope", "", &rows, false)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("'nope' is not served here; served: quantd-mlp@2 (active)"), "{}", err.message());
    let err = c.model_infer(request(NAME, "7", &rows, false)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let mut narrow = request(NAME, "", &rows[..4 * 7], false);
    narrow.inputs[0].shape = vec![4, 7];
    let err = c.model_infer(narrow).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("the model takes input 'features' FP32 [n, 14]"), "{}", err.message());
    let mut truncated = request(NAME, "", &rows, true);
    truncated.raw_input_contents[0].truncate(13);
    let err = c.model_infer(truncated).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("raw input is 13 bytes"), "{}", err.message());
    let err =
        c.model_metadata(pb::ModelMetadataRequest { name: "nope".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The tick path is untouched by refused requests.
    let mut ticks = client(&server).await;
    let t = recorded(&["binance_usdm_btcusdt_20240808_quotes.csv.gz"], 50);
    assert_eq!(stream_all(&mut ticks, t).await.len(), 50);
    let metrics = wait_for_metric(&server, "quantd_infer_requests_total{outcome=\"invalid\"}", 2.0).await;
    assert_eq!(sample(&metrics, "quantd_infer_requests_total{outcome=\"unknown_model\"}"), Some(2.0));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_is_reached_by_its_version() {
    let server = start(&test_config()).await;
    server.registry().load(NAME, "1", LoadMode::Shadow).await.unwrap();
    let mut c = infer_client(&server).await;
    // The engine publishes the shadow when it takes it, between two passes.
    let meta = loop {
        let meta = c
            .model_metadata(pb::ModelMetadataRequest { name: NAME.into(), version: "1".into() })
            .await
            .map(|r| r.into_inner());
        if let Ok(meta) = meta {
            break meta;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(meta.versions, ["1", "2"], "the asked-for version first, then the other served one");
    let rows = real_rows(200);
    let shadow = scores(&c.model_infer(request(NAME, "1", &rows, false)).await.unwrap().into_inner());
    let active = scores(&c.model_infer(request(NAME, "", &rows, false)).await.unwrap().into_inner());
    assert_eq!(shadow, scored_in_process("1", &rows));
    assert_eq!(active, scored_in_process("2", &rows));
    assert_ne!(shadow, active, "two different models");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_model_takes_windows() {
    let mut cfg = test_config();
    cfg.model = Some("quantd-tcn@2".into());
    let server = start(&cfg).await;
    let mut c = infer_client(&server).await;
    let meta = c
        .model_metadata(pb::ModelMetadataRequest { name: "quantd-tcn".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, [-1, 16, 14]);
    let windows: Vec<f32> = real_rows(16 * 3);
    let mut req = request("quantd-tcn", "", &windows, true);
    req.inputs[0].name = meta.inputs[0].name.clone();
    req.inputs[0].shape = vec![3, 16, 14];
    let got = scores(&c.model_infer(req.clone()).await.unwrap().into_inner());
    quantd::model::runtime::init(None).unwrap();
    let mut m = LoadedModel::load(&repo().join("models/quantd-tcn/2"), 64).unwrap();
    assert_eq!(got, m.score_rows(&windows, 64).unwrap().scores);
    req.inputs[0].shape = vec![48, 14];
    let err = c.model_infer(req).await.unwrap_err();
    assert!(err.message().contains("FP32 [n, 16, 14]"), "{}", err.message());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_inference_queue_is_refused_and_counted() {
    let server = start(&test_config()).await;
    let engine = server.engine().unwrap();
    engine.set_paused(true);
    // Requests of 4096 rows: 73 of them (4,186,112 values) fit under the 4,194,304 values the
    // engine queues; the rest are refused at once.
    let rows: Vec<f32> = real_rows(2048).repeat(2);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr())).unwrap().connect().await.unwrap();
    let calls: Vec<_> = (0..80)
        .map(|_| {
            let req = request(NAME, "", &rows, true);
            let mut c = GrpcInferenceServiceClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
            tokio::spawn(async move { c.model_infer(req).await })
        })
        .collect();
    // Wait until every call is either queued or refused, then let the engine go.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.infer_backlog().0 + calls.iter().filter(|c| c.is_finished()).count() < 80
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let backlog = engine.infer_backlog();
    engine.set_paused(false);
    let (mut answered, mut busy) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => {
                assert_eq!(scores(&r.into_inner()).len(), 4096);
                answered += 1
            }
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    e.message().contains("73 inference requests (4186112 input values) waiting"),
                    "{}",
                    e.message()
                );
                busy += 1
            }
            Err(e) => panic!("unexpected status {e:?}"),
        }
    }
    assert_eq!(backlog, (73, 73 * 4096 * 14), "what waited while the engine was paused");
    assert_eq!((answered, busy), (73, 7), "the backlog is bounded; the rest are refused at once");
    let metrics = wait_for_metric(&server, "quantd_infer_requests_total{outcome=\"answered\"}", 73.0).await;
    assert_eq!(sample(&metrics, "quantd_infer_requests_total{outcome=\"busy\"}"), Some(7.0));
    assert_eq!(engine.infer_backlog(), (0, 0), "nothing left behind");
    server.shutdown(Duration::from_secs(1)).await;
}
