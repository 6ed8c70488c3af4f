//! `inference.GRPCInferenceService`, the Open Inference Protocol (KServe V2; Triton's gRPC API),
//! on the service port beside `SignalService`: clients written for Triton or KServe call
//! quantd's models unchanged. Runs on the data plane's tokio runtime (`quantd-io`).
//!
//! `ModelInfer` scores caller-given FP32 feature rows (`[n, 14]`, or `[n, window, 14]` for a
//! windowed model) with a model the engine serves now (the active one, or the shadow by its
//! version), on the engine thread, with that model's own backend: the same numbers a tick
//! scored on the same row gets. It is stateless: no per-symbol features, no policy, no risk.
//! Everything a request gets wrong is checked here, before the engine sees it, and answered
//! with a status that says what the model takes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::engine::EngineHandle;
use crate::engine::infer::{InferError, InferJob, MAX_INFER_ROWS, ModelCard, Role};
use crate::features::NUM_FEATURES;
use crate::inference_proto as pb;
use crate::inference_proto::grpc_inference_service_server::GrpcInferenceService;
use crate::readiness::Readiness;
use crate::telemetry::{InferOutcome, Telemetry};
use crate::text::clip;
use crate::tick::Reject;

/// The platform reported for every model: each is an ONNX graph, whichever backend runs it.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// The only datatype quantd's models take and give.
const FP32: &str = "FP32";

/// The largest ModelInfer request the service decodes: [`MAX_INFER_ROWS`] inputs of
/// `max_window` FP32 rows, plus room for names and framing.
pub fn max_request_bytes(max_window: usize) -> usize {
    MAX_INFER_ROWS * max_window.max(1) * NUM_FEATURES * 4 + 64 * 1024
}

/// A request refused at the edge or by the engine (mapped to a gRPC status at the end of this
/// module, the one place it becomes one).
#[derive(Debug, thiserror::Error)]
pub enum InferRefusal {
    /// No served model has that name (and version).
    #[error("model {wanted} is not served here; served: {served}")]
    UnknownModel {
        /// What the request named.
        wanted: String,
        /// What is served, with roles.
        served: String,
    },
    /// The request's tensors do not fit the model.
    #[error("{0}")]
    Invalid(String),
    /// The engine's inference queue is full.
    #[error("the engine has {jobs} inference requests ({values} input values) waiting; retry later")]
    Busy {
        /// Requests waiting.
        jobs: usize,
        /// Their input values.
        values: usize,
    },
    /// The engine is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine could not score it.
    #[error(transparent)]
    Engine(#[from] InferError),
}

impl InferRefusal {
    fn outcome(&self) -> InferOutcome {
        match self {
            Self::UnknownModel { .. } => InferOutcome::UnknownModel,
            Self::Invalid(_) => InferOutcome::Invalid,
            Self::Busy { .. } => InferOutcome::Busy,
            Self::ShuttingDown | Self::Engine(_) => InferOutcome::Failed,
        }
    }
}

impl From<InferRefusal> for Status {
    fn from(e: InferRefusal) -> Self {
        let msg = e.to_string();
        match e {
            InferRefusal::UnknownModel { .. } | InferRefusal::Engine(InferError::NotServed(_)) => {
                Status::not_found(msg)
            }
            InferRefusal::Invalid(_) => Status::invalid_argument(msg),
            InferRefusal::Busy { .. } => Status::resource_exhausted(msg),
            InferRefusal::ShuttingDown => Status::unavailable(msg),
            InferRefusal::Engine(InferError::Backend(_)) => Status::internal(msg),
        }
    }
}

/// The service over the engine's served models.
pub struct Inference {
    engine: EngineHandle,
    readiness: Arc<Readiness>,
    telemetry: Arc<Telemetry>,
}

impl Inference {
    /// The service answering from `engine`'s models and the server's `readiness`.
    pub fn new(engine: EngineHandle, telemetry: Arc<Telemetry>) -> Self {
        Self { engine, readiness: telemetry.readiness.clone(), telemetry }
    }

    fn find(&self, name: &str, version: &str) -> Result<Arc<ModelCard>, InferRefusal> {
        self.engine.served().find(name, version).ok_or_else(|| InferRefusal::UnknownModel {
            wanted: match version {
                "" => format!("'{}'", clip(name)),
                v => format!("'{}' version '{}'", clip(name), clip(v)),
            },
            served: served_list(&self.engine),
        })
    }

    async fn infer(&self, req: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, InferRefusal> {
        let card = self.find(&req.model_name, &req.model_version)?;
        let input = parse_request(&req, &card)?;
        let (job, done) = InferJob::new(card.clone(), input.rows);
        match self.engine.infer(job) {
            Ok(()) => {}
            Err((_, Reject::QueueFull)) => {
                let (jobs, values) = self.engine.infer_backlog();
                return Err(InferRefusal::Busy { jobs, values });
            }
            Err(_) => return Err(InferRefusal::ShuttingDown),
        }
        let (job, result) = done.await.map_err(|_| InferRefusal::ShuttingDown)?;
        result?;
        let n = job.len() as i64;
        let mut out = pb::model_infer_response::InferOutputTensor {
            name: card.output.clone(),
            datatype: FP32.into(),
            shape: vec![n, 1],
            ..Default::default()
        };
        let mut raw_output_contents = Vec::new();
        if input.raw {
            raw_output_contents.push(job.scores.iter().flat_map(|s| s.to_le_bytes()).collect());
        } else {
            out.contents = Some(pb::InferTensorContents { fp32_contents: job.scores, ..Default::default() });
        }
        Ok(pb::ModelInferResponse {
            model_name: card.name.clone(),
            model_version: card.version.clone(),
            id: req.id,
            outputs: vec![out],
            raw_output_contents,
            ..Default::default()
        })
    }
}

/// "name@version (active), ..." of what the engine serves now.
fn served_list(engine: &EngineHandle) -> String {
    let cards = engine.served().cards();
    if cards.is_empty() {
        return "nothing".into();
    }
    let role = |r: Role| if r == Role::Active { "active" } else { "shadow" };
    cards.iter().map(|(r, c)| format!("{}@{} ({})", c.name, c.version, role(*r))).collect::<Vec<_>>().join(", ")
}

/// A request's rows, checked against the model.
struct Rows {
    rows: Vec<f32>,
    /// The input came as raw bytes (the answer goes back the same way).
    raw: bool,
}

/// Checks the request's one input against `card` (name, datatype, shape, size, finiteness) and
/// its requested outputs, and returns the rows.
fn parse_request(req: &pb::ModelInferRequest, card: &ModelCard) -> Result<Rows, InferRefusal> {
    let bad = |msg: String| InferRefusal::Invalid(msg);
    let takes = || {
        let shape = card.input_shape().into_iter().map(|d| if d < 0 { "n".into() } else { d.to_string() });
        format!("input '{}' FP32 [{}]", card.input, shape.collect::<Vec<_>>().join(", "))
    };
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!("{} inputs given; the model takes one: {}", req.inputs.len(), takes())));
    };
    if input.name != card.input {
        return Err(bad(format!("no input named '{}'; the model takes {}", clip(&input.name), takes())));
    }
    if input.datatype != FP32 {
        return Err(bad(format!("datatype {} is not taken; the model takes {}", clip(&input.datatype), takes())));
    }
    let shape = card.input_shape();
    let n = match input.shape.split_first() {
        Some((&n, rest)) if rest == &shape[1..] && n >= 1 => n as usize,
        _ => return Err(bad(format!("shape {:?} does not fit; the model takes {}", input.shape, takes()))),
    };
    if n > MAX_INFER_ROWS {
        return Err(bad(format!("{n} rows in one request; at most {MAX_INFER_ROWS}")));
    }
    for o in &req.outputs {
        if o.name != card.output {
            return Err(bad(format!("no output named '{}'; the model gives '{}'", clip(&o.name), card.output)));
        }
    }
    let want = n * card.width();
    let (rows, raw) = match (req.raw_input_contents.as_slice(), &input.contents) {
        ([], Some(c)) => (c.fp32_contents.clone(), false),
        ([bytes], None) => {
            if bytes.len() != want * 4 {
                return Err(bad(format!(
                    "raw input is {} bytes; shape {:?} in FP32 is {} bytes",
                    bytes.len(),
                    input.shape,
                    want * 4
                )));
            }
            (bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), true)
        }
        ([], None) => return Err(bad("the input has no contents and no raw_input_contents".into())),
        _ => return Err(bad("give the input either as contents or as one raw_input_contents entry, not both".into())),
    };
    if rows.len() != want {
        return Err(bad(format!("{} values given; shape {:?} needs {want}", rows.len(), input.shape)));
    }
    if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
        let (row, col) = (i / card.width(), i % NUM_FEATURES);
        return Err(bad(format!("value {} (row {row}, feature {col}) is not finite", rows[i])));
    }
    Ok(Rows { rows, raw })
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.readiness.is_ready() }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self.readiness.is_ready() && self.engine.served().find(&r.name, &r.version).is_some();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "quantd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let card = self.find(&r.name, &r.version)?;
        // Every served version of the name, the asked-for (or active) one first.
        let mut versions = vec![card.version.clone()];
        for (_, c) in self.engine.served().cards() {
            if c.name == card.name && c.version != card.version {
                versions.push(c.version.clone());
            }
        }
        let tensor = |name: &str, shape: Vec<i64>| pb::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: FP32.into(),
            shape,
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: card.name.clone(),
            versions,
            platform: PLATFORM.into(),
            inputs: vec![tensor(&card.input, card.input_shape())],
            outputs: vec![tensor(&card.output, vec![-1, 1])],
        }))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        let counters = &self.telemetry.counters.infer;
        match self.infer(r.into_inner()).await {
            Ok(answer) => {
                counters.add(InferOutcome::Answered, 1);
                Ok(Response::new(answer))
            }
            Err(e) => {
                counters.add(e.outcome(), 1);
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(shape: Vec<i64>, values: Vec<f32>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: FP32.into(),
                shape,
                contents: Some(pb::InferTensorContents { fp32_contents: values, ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn refusal(req: &pb::ModelInferRequest, card: &ModelCard) -> String {
        match parse_request(req, card) {
            Err(InferRefusal::Invalid(msg)) => msg,
            Err(e) => panic!("not an invalid-argument refusal: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn rows_are_taken_from_contents_or_raw_bytes() {
        let card = ModelCard::new("m@1", "features", "score", 1);
        let values: Vec<f32> = (0..28).map(|i| i as f32 * 0.5).collect();
        let rows = parse_request(&request(vec![2, 14], values.clone()), &card).unwrap();
        assert_eq!((rows.rows.as_slice(), rows.raw), (values.as_slice(), false));
        let mut raw = request(vec![2, 14], Vec::new());
        raw.inputs[0].contents = None;
        raw.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
        let rows = parse_request(&raw, &card).unwrap();
        assert_eq!((rows.rows.as_slice(), rows.raw), (values.as_slice(), true));
    }

    #[test]
    fn what_does_not_fit_is_refused_with_what_the_model_takes() {
        let card = ModelCard::new("m@1", "features", "score", 1);
        let takes = "the model takes input 'features' FP32 [n, 14]";
        assert!(refusal(&request(vec![1, 7], vec![0.0; 7]), &card).contains(takes));
        assert!(refusal(&request(vec![0, 14], vec![]), &card).contains(takes));
        assert!(refusal(&request(vec![14], vec![0.0; 14]), &card).contains(takes));
        assert!(refusal(&request(vec![2, 14], vec![0.0; 14]), &card).contains("needs 28"));
        let mut fp64 = request(vec![1, 14], vec![0.0; 14]);
        fp64.inputs[0].datatype = "FP64".into();
        assert!(refusal(&fp64, &card).contains("datatype FP64 is not taken"));
        let mut named = request(vec![1, 14], vec![0.0; 14]);
        named.inputs[0].name = "x".into();
        assert!(refusal(&named, &card).contains("no input named 'x'"));
        let mut nan = vec![0.0; 28];
        nan[17] = f32::NAN;
        assert!(refusal(&request(vec![2, 14], nan), &card).contains("(row 1, feature 3) is not finite"));
        let mut truncated = request(vec![1, 14], vec![]);
        truncated.inputs[0].contents = None;
        truncated.raw_input_contents = vec![vec![0u8; 55]];
        assert!(refusal(&truncated, &card).contains("raw input is 55 bytes"));
        let mut out = request(vec![1, 14], vec![0.0; 14]);
        out.outputs =
            vec![pb::model_infer_request::InferRequestedOutputTensor { name: "y".into(), ..Default::default() }];
        assert!(refusal(&out, &card).contains("the model gives 'score'"));
        let big = MAX_INFER_ROWS + 1;
        assert!(refusal(&request(vec![big as i64, 14], vec![0.0; big * 14]), &card).contains("at most 4096"));
    }

    #[test]
    fn a_windowed_model_takes_its_window() {
        let card = ModelCard::new("tcn@2", "window", "score", 3);
        let mut req = request(vec![1, 3, 14], vec![0.0; 42]);
        req.inputs[0].name = "window".into();
        assert_eq!(parse_request(&req, &card).unwrap().rows.len(), 42);
        req.inputs[0].shape = vec![3, 14];
        assert!(refusal(&req, &card).contains("FP32 [n, 3, 14]"));
    }
}
