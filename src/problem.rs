//! Typed validation problems: what the configuration, manifest, risk, shard and backend checks
//! find, each with the field it is about, a [`Kind`] (the stable code that metric labels and
//! tests use, never the message text) and a human detail.
//!
//! Checks collect every problem at once into a [`Problems`] list. Control path only (start-up,
//! model loads).

use std::fmt;

/// What is wrong, as a stable snake_case code.
///
/// The model kinds are in the order a refused model's metric reason is chosen
/// (`quantd_model_failures_total{reason}`: the first kind among its problems).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, strum::IntoStaticStr, strum::EnumIter, strum::Display,
)]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// The manifest's signature is missing or does not verify.
    Signature,
    /// The execution provider cannot run here.
    Provider,
    /// A file's sha256 differs from the manifest's.
    Sha256,
    /// The feature schema (hash or names) differs from this server's.
    Schema,
    /// No backend is exact on this CPU, or the verification set is missing or unusable.
    Backend,
    /// A golden row is malformed or not reproduced.
    Golden,
    /// The model emits non-finite scores.
    NonFinite,
    /// The model's inputs or outputs do not fit the manifest or this server.
    IoMismatch,
    /// A manifest value that is invalid on its own.
    Manifest,
    /// A value outside its allowed range.
    OutOfRange,
    /// A value of the wrong form (a name, an address, an enum spelling).
    Invalid,
    /// Two settings contradict each other.
    Conflict,
    /// A path that does not exist or is not what it must be.
    Missing,
    /// A file that exists but cannot be read or parsed.
    Unreadable,
    /// A service that would be reachable from the network without authorisation.
    Exposed,
    /// Asks for something this build or machine does not have.
    Unsupported,
}

impl Kind {
    /// The snake_case code (metric labels).
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// One problem found by a check.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The config key or manifest field it is about (`engine.max_batch`, `sha256`, ...).
    pub field: String,
    /// What kind of problem it is (the metric label comes from this).
    pub kind: Kind,
    /// The whole human-readable explanation (shown as is).
    pub detail: String,
}

impl Problem {
    /// A problem about `field`.
    pub fn new(field: impl Into<String>, kind: Kind, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind, detail: detail.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The problems a check collected, in the order found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// No problem yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem.
    pub fn push(&mut self, field: impl Into<String>, kind: Kind, detail: impl Into<String>) {
        self.0.push(Problem::new(field, kind, detail));
    }

    /// Records a problem when `bad` holds; `detail` is only built then.
    pub fn check(&mut self, bad: bool, field: &str, kind: Kind, detail: impl FnOnce() -> String) {
        if bad {
            self.push(field, kind, detail());
        }
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    /// The problems as a vector, in the order found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// `Ok(())` when empty.
    pub fn into_result(self) -> Result<(), Vec<Problem>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }

    /// Whether a problem of this kind about this field was found.
    pub fn has(&self, field: &str, kind: Kind) -> bool {
        self.0.iter().any(|p| p.field == field && p.kind == kind)
    }
}

impl Extend<Problem> for Problems {
    fn extend<I: IntoIterator<Item = Problem>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<Problem> for Problems {
    fn from(p: Problem) -> Self {
        Self(vec![p])
    }
}

/// The problems' details as an indented list (one per line), for error messages.
pub fn bullet_list(problems: &[Problem]) -> String {
    problems.iter().map(|p| p.detail.as_str()).collect::<Vec<_>>().join("\n  - ")
}

/// The metric reason of a refusal: the first kind (in [`Kind`]'s order) among the problems.
pub fn reason(problems: &[Problem]) -> &'static str {
    problems.iter().map(|p| p.kind).min().map_or("manifest", Kind::label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case_and_the_reason_is_the_first_kind_in_order() {
        assert_eq!(Kind::IoMismatch.label(), "io_mismatch");
        assert_eq!(Kind::NonFinite.to_string(), "non_finite");
        let mut p = Problems::new();
        p.push("golden[0]", Kind::Golden, "golden row 0 differs");
        p.check(true, "sha256", Kind::Sha256, || "sha256 differs".into());
        p.check(false, "x", Kind::Signature, || unreachable!("only built when bad"));
        assert!(p.has("sha256", Kind::Sha256) && !p.has("sha256", Kind::Golden));
        let v = p.into_vec();
        assert_eq!(reason(&v), "sha256", "sha256 outranks golden whatever the order found");
        assert_eq!(bullet_list(&v), "golden row 0 differs\n  - sha256 differs");
    }
}
