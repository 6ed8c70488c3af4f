//! The `[registry]` config section, owned by the registry: its serde shape, defaults and own
//! checks. Read on the control path at start-up; the `quantd-registry` thread keeps a copy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::files::FileLimits;
use crate::problem::{Kind, Problems};

/// `[registry]`: discovery, shadow promotion, probation and rollback, and the size limits on
/// model files.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySection {
    /// Watch the models directory for new versions (besides the periodic rescan).
    pub watch: bool,
    /// Periodic rescan of the models directory, ms (the fallback when watching misses events).
    pub rescan_ms: u64,
    /// New versions go to shadow first instead of straight to active.
    pub shadow_new_versions: bool,
    /// Promote a shadow model after this many compared ticks if agreement is high enough
    /// (0: only by admin call).
    pub shadow_promote_after_ticks: u64,
    /// Fraction of ticks whose side must agree for automatic promotion.
    pub shadow_min_agreement: f64,
    /// How long a newly activated model is watched for automatic rollback, ms.
    pub probation_ms: u64,
    /// Roll back automatically when more than this fraction of the new model's scores are
    /// non-finite or its calls fail during probation.
    pub rollback_max_error_rate: f64,
    /// Largest `model.onnx` (or verification set) read, bytes; larger files are refused
    /// unread.
    pub max_model_bytes: u64,
    /// Largest `manifest.toml` read, bytes (this bounds its golden rows too).
    pub max_manifest_bytes: u64,
    /// The `quantd-registry` thread's nice value (0: unchanged). Positive by default: a hot
    /// swap's verification and warm-up run there, and on a machine whose cores the engine and
    /// the I/O threads keep busy they yield to them (the models serving meanwhile are not
    /// delayed by another's load). Start-up loads run before the thread, at normal priority.
    pub nice: i32,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            watch: true,
            rescan_ms: 2_000,
            shadow_new_versions: false,
            shadow_promote_after_ticks: 10_000,
            shadow_min_agreement: 0.9,
            probation_ms: 10_000,
            rollback_max_error_rate: 0.0,
            max_model_bytes: FileLimits::default().max_model_bytes,
            max_manifest_bytes: FileLimits::default().max_manifest_bytes,
            nice: 10,
        }
    }
}

impl RegistrySection {
    /// The section's own problems (fields named `registry.*`).
    pub fn problems(&self) -> Problems {
        use Kind::*;
        let r = self;
        let mut p = Problems::new();
        p.check(r.rescan_ms == 0, "registry.rescan_ms", OutOfRange, || "registry.rescan_ms must be > 0".into());
        p.check(r.max_model_bytes == 0 || r.max_manifest_bytes == 0, "registry.max_model_bytes", OutOfRange, || {
            "registry.max_model_bytes and registry.max_manifest_bytes must be > 0".into()
        });
        p.check(!(0.0..=1.0).contains(&r.shadow_min_agreement), "registry.shadow_min_agreement", OutOfRange, || {
            format!("registry.shadow_min_agreement {} must be in [0, 1]", r.shadow_min_agreement)
        });
        p.check(
            !(0.0..=1.0).contains(&r.rollback_max_error_rate),
            "registry.rollback_max_error_rate",
            OutOfRange,
            || format!("registry.rollback_max_error_rate {} must be in [0, 1]", r.rollback_max_error_rate),
        );
        p.check(!(-20..=19).contains(&r.nice), "registry.nice", OutOfRange, || {
            format!("registry.nice {} must be in [-20, 19]", r.nice)
        });
        p
    }

    /// The size limits model files are read under.
    pub fn file_limits(&self) -> FileLimits {
        FileLimits { max_model_bytes: self.max_model_bytes, max_manifest_bytes: self.max_manifest_bytes }
    }

    /// The periodic rescan's interval.
    pub fn rescan(&self) -> Duration {
        Duration::from_millis(self.rescan_ms)
    }

    /// How long a newly activated model is watched for automatic rollback.
    pub fn probation(&self) -> Duration {
        Duration::from_millis(self.probation_ms)
    }
}
