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

use arc_swap::ArcSwapOption;

use crate::features::NUM_FEATURES;

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

/// The cards of the models the engine serves now, published by the engine thread.
#[derive(Default)]
pub struct Served {
    active: ArcSwapOption<ModelCard>,
    shadow: ArcSwapOption<ModelCard>,
}

impl Served {
    pub(super) fn set(&self, role: Role, card: Option<Arc<ModelCard>>) {
        match role {
            Role::Active => self.active.store(card),
            Role::Shadow => self.shadow.store(card),
        }
    }

    /// The served models, the active one first.
    pub fn cards(&self) -> Vec<(Role, Arc<ModelCard>)> {
        [(Role::Active, self.active.load_full()), (Role::Shadow, self.shadow.load_full())]
            .into_iter()
            .filter_map(|(role, card)| Some((role, card?)))
            .collect()
    }

    /// The served model `name` at `version` (empty: the active one of that name, else the shadow).
    pub fn find(&self, name: &str, version: &str) -> Option<Arc<ModelCard>> {
        self.cards()
            .into_iter()
            .map(|(_, card)| card)
            .find(|c| c.name == name && (version.is_empty() || c.version == version))
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
    fn cards_are_found_by_name_and_version() {
        let served = Served::default();
        assert!(served.find("m", "").is_none());
        served.set(Role::Active, Some(Arc::new(ModelCard::new("m@2", "features", "score", 1))));
        served.set(Role::Shadow, Some(Arc::new(ModelCard::new("m@3", "features", "score", 1))));
        assert_eq!(served.find("m", "").unwrap().version, "2", "no version: the active one");
        assert_eq!(served.find("m", "3").unwrap().version, "3");
        assert!(served.find("m", "4").is_none());
        assert!(served.find("other", "").is_none());
        served.set(Role::Shadow, None);
        assert!(served.find("m", "3").is_none());
        assert_eq!(served.cards().len(), 1);
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
