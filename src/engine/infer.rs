//! Stateless scoring of caller-given feature rows (the Open Inference Protocol's `ModelInfer`,
//! served at the edge by `server::kserve`) on the engine thread, by the engine's own active or
//! shadow model.
//!
//! - [`ModelCard`]: what a caller may know of a served model (names, window, io names). The
//!   engine publishes the cards of the models it serves in [`Served`] (lock-free, `arc-swap`)
//!   whenever a swap or a shadow change takes effect, so the edge checks a request against the
//!   model that will really score it.
//! - [`InferJob`]: the rows and the score buffer, both allocated by the caller (an I/O thread);
//!   the engine fills the scores and hands the whole job back through a oneshot channel, so
//!   the engine thread neither allocates nor frees for it.
//!
//! The engine takes one job at a time and scores at most one model call (`max_batch` rows) of
//! it per pass, between tick batches: a large request never holds ticks back by more than one
//! batch's model call.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::features::NUM_FEATURES;
use crate::routes::{RouteId, Routes};

/// Most jobs waiting for the engine; one more is refused (RESOURCE_EXHAUSTED at the edge). Room
/// for a burst of one-row requests while the engine is off its core for a few milliseconds.
pub const INFER_QUEUE: usize = 1024;

/// Most input values (floats) waiting in queued jobs: the memory bound (16 MiB) on large requests.
pub const MAX_QUEUED_VALUES: usize = 1 << 22;

/// Most rows in one request.
pub const MAX_INFER_ROWS: usize = 4096;

/// A served model as callers of the inference protocol see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCard {
    /// The model name (`models/<name>/`).
    pub name: String,
    /// The version (`models/<name>/<version>/`).
    pub version: String,
    /// The graph's input name.
    pub input: String,
    /// The graph's output name.
    pub output: String,
    /// Feature rows per input (1: `[n, 14]`; more: `[n, window, 14]`).
    pub window: usize,
}

impl ModelCard {
    /// A card for `label` (`name@version`; no `@`: the whole label is the name, version "").
    pub fn new(label: &str, input: &str, output: &str, window: usize) -> Self {
        let (name, version) = label.rsplit_once('@').unwrap_or((label, ""));
        Self { name: name.into(), version: version.into(), input: input.into(), output: output.into(), window }
    }

    /// Floats per input: `window * NUM_FEATURES`.
    pub fn width(&self) -> usize {
        self.window * NUM_FEATURES
    }

    /// The input's shape with -1 for the batch.
    pub fn input_shape(&self) -> Vec<i64> {
        crate::model::manifest::input_shape(self.window)
    }
}

/// Which role a served model has in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Its signals are served.
    Active,
    /// It runs beside the active one, compared but never emitting.
    Shadow,
}

/// One live model name as the edge sees it: its active card, its shadow's, and the route a
/// stream that names it (`x-quantd-model`) takes.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The active version's card.
    pub active: Arc<ModelCard>,
    /// The shadow version's card, when one runs beside it.
    pub shadow: Option<Arc<ModelCard>>,
    /// The model's stream route.
    pub stream_route: RouteId,
}

/// The models the engine serves now, published by the engine thread whenever a swap or a shadow
/// change takes effect (read lock-free by the edge).
#[derive(Default)]
pub struct Served {
    models: ArcSwap<Vec<ServedModel>>,
    routes: ArcSwapOption<Routes>,
}

impl Served {
    pub(super) fn publish(&self, models: Vec<ServedModel>, routes: &Routes) {
        self.models.store(Arc::new(models));
        self.routes.store(Some(Arc::new(routes.clone())));
    }

    /// The engine's route table as it applies now (None before the engine started).
    pub fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.load_full()
    }

    /// The live model names with their cards, the default model first.
    pub fn models(&self) -> Arc<Vec<ServedModel>> {
        self.models.load_full()
    }

    /// Every served card: each name's active one, then its shadow.
    pub fn cards(&self) -> Vec<(Role, Arc<ModelCard>)> {
        let models = self.models();
        let mut cards = Vec::with_capacity(models.len() * 2);
        for m in models.iter() {
            cards.push((Role::Active, m.active.clone()));
            cards.extend(m.shadow.clone().map(|s| (Role::Shadow, s)));
        }
        cards
    }

    /// The served model `name` at `version` (empty: the active one of that name, else the shadow).
    pub fn find(&self, name: &str, version: &str) -> Option<Arc<ModelCard>> {
        self.cards()
            .into_iter()
            .map(|(_, card)| card)
            .find(|c| c.name == name && (version.is_empty() || c.version == version))
    }

    /// The stream route of model `name`, whose active version must be `version` when one is
    /// given; or why not, naming what is served.
    pub fn stream_route(&self, name: &str, version: &str) -> Result<RouteId, String> {
        let models = self.models();
        match models.iter().find(|m| m.active.name == name) {
            Some(m) if version.is_empty() || m.active.version == version => Ok(m.stream_route),
            Some(m) => Err(format!(
                "{name}@{version} is not the active version of {name} (it is {}); ask for {name} or {name}@{}",
                m.active.version, m.active.version
            )),
            None => {
                let names: Vec<String> =
                    models.iter().map(|m| format!("{}@{}", m.active.name, m.active.version)).collect();
                Err(format!("model {name:?} is not served; served: {}", names.join(", ")))
            }
        }
    }
}

/// Why the engine did not score a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The model it named stopped being served (a swap) between the check and the engine.
    #[error("{0} is no longer served (it was swapped out while the request waited)")]
    NotServed(String),
    /// The backend failed.
    #[error("the model call failed: {0}")]
    Backend(String),
}

/// What the engine hands back: the job with its scores filled, or why not.
pub type InferDone = (InferJob, Result<(), InferError>);

/// One request's rows on their way to the engine and back.
pub struct InferJob {
    /// The model to score with (compared by identity with the engine's models).
    pub card: Arc<ModelCard>,
    /// `n * card.width()` floats, row-major.
    pub rows: Vec<f32>,
    /// `n` scores, filled by the engine.
    pub scores: Vec<f32>,
    /// Rows scored so far (the engine scores a job one model call per pass).
    pub(super) done_rows: usize,
    /// Where the engine hands the job back (sending never blocks it).
    pub(super) reply: Option<tokio::sync::oneshot::Sender<InferDone>>,
}

impl InferJob {
    /// A job over `rows` (`n * card.width()` floats) and the receiver of its answer.
    pub fn new(card: Arc<ModelCard>, rows: Vec<f32>) -> (Self, tokio::sync::oneshot::Receiver<InferDone>) {
        let n = rows.len() / card.width().max(1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self { card, rows, scores: vec![0.0; n], done_rows: 0, reply: Some(tx) }, rx)
    }

    /// Rows in the job.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Hands the job back to its caller (who may have gone: then it is dropped with the channel).
    pub(super) fn finish(mut self, result: Result<(), InferError>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send((self, result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_and_stream_routes_are_found_by_name_and_version() {
        let served = Served::default();
        assert!(served.find("m", "").is_none());
        let card = |label| Arc::new(ModelCard::new(label, "features", "score", 1));
        let models = vec![
            ServedModel { active: card("m@2"), shadow: Some(card("m@3")), stream_route: 2 },
            ServedModel { active: card("t@1"), shadow: None, stream_route: 3 },
        ];
        served.publish(models, &Routes::new("m", &[]));
        assert_eq!(served.find("m", "").unwrap().version, "2", "no version: the active one");
        assert_eq!(served.find("m", "3").unwrap().version, "3");
        assert!(served.find("m", "4").is_none());
        assert!(served.find("other", "").is_none());
        assert_eq!(served.cards().len(), 3);
        assert_eq!(served.stream_route("t", ""), Ok(3));
        assert_eq!(served.stream_route("m", "2"), Ok(2));
        assert!(served.stream_route("m", "3").unwrap_err().contains("not the active version"));
        let unknown = served.stream_route("x", "").unwrap_err();
        assert!(unknown.contains("served: m@2, t@1"), "{unknown}");
    }

    #[test]
    fn a_card_knows_its_shape() {
        let flat = ModelCard::new("quantd-mlp@2", "features", "score", 1);
        assert_eq!((flat.name.as_str(), flat.version.as_str()), ("quantd-mlp", "2"));
        assert_eq!((flat.width(), flat.input_shape()), (14, vec![-1, 14]));
        let windowed = ModelCard::new("quantd-tcn@2", "window", "score", 32);
        assert_eq!((windowed.width(), windowed.input_shape()), (448, vec![-1, 32, 14]));
    }
}
