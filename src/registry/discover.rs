//! Finding model versions on disk: `<models_dir>/<name>/<version>/manifest.toml`.
//!
//! Runs on the registry's control thread. A version counts only once its manifest exists
//! (writers copy `model.onnx` first and the manifest last, or rename a finished directory in);
//! the sha256 check at load catches a model file still being written. Each version carries a
//! signature (sizes and modification times) so a failed version is retried only when its files
//! change.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::model::manifest::MANIFEST_FILE;

/// A version directory found in the models directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The model's name.
    pub name: String,
    /// The version.
    pub version: String,
    /// The version directory.
    pub dir: PathBuf,
    /// Changes whenever the manifest or model file is rewritten.
    pub signature: Vec<(u64, Option<SystemTime>)>,
}

/// A release version is a plain number (`2`); anything else (`2-fp32`, `2-ptq-minmax`) is a
/// variant, served only when pinned (`model = "name@2-fp32"`) or loaded by an admin call, never
/// picked or activated automatically.
pub fn is_release(version: &str) -> bool {
    !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())
}

/// The file in the models directory naming the model served when several names are present
/// and the config names none.
pub const DEFAULT_FILE: &str = "DEFAULT";

/// The model name `models_dir/DEFAULT` names, if the file exists.
pub fn default_name(models_dir: &Path) -> Option<String> {
    crate::files::read_regular_text(&models_dir.join(DEFAULT_FILE), 4096)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Version order: numeric where both are numbers, else lexicographic.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn subdirs(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        // Symlinked directories are listed too, so that loading refuses them with a reason
        // (quantd does not follow symlinks inside the models directory) instead of hiding them.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() || (t.is_symlink() && e.path().is_dir())))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn signature(dir: &Path) -> Vec<(u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().collect();
    files.sort_by_key(|e| e.file_name());
    files
        .iter()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| (m.len(), m.modified().ok()))
        .collect()
}

/// Every complete version under `models_dir`, sorted by name then version.
pub fn scan(models_dir: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    for name in subdirs(models_dir) {
        let mut versions: Vec<String> = subdirs(&models_dir.join(&name))
            .into_iter()
            .filter(|v| models_dir.join(&name).join(v).join(MANIFEST_FILE).is_file())
            .collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        for version in versions {
            let dir = models_dir.join(&name).join(&version);
            out.push(Found { signature: signature(&dir), name: name.clone(), version, dir });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_versions_in_version_order() {
        let d = tempfile::tempdir().unwrap();
        for v in ["2", "10", "11"] {
            std::fs::create_dir_all(d.path().join("m").join(v)).unwrap();
        }
        std::fs::write(d.path().join("m/2/manifest.toml"), "").unwrap();
        std::fs::write(d.path().join("m/10/manifest.toml"), "").unwrap();
        // 11 has no manifest yet: half-copied, not listed
        let found: Vec<_> = scan(d.path()).into_iter().map(|f| format!("{}@{}", f.name, f.version)).collect();
        assert_eq!(found, ["m@2", "m@10"]);
        let before = scan(d.path())[1].signature.clone();
        std::fs::write(d.path().join("m/10/manifest.toml"), "changed").unwrap();
        assert_ne!(scan(d.path())[1].signature, before, "a rewritten file changes the signature");
    }

    #[test]
    fn releases_are_plain_numbers_and_default_names_the_model() {
        assert!(is_release("2") && is_release("10"));
        for v in ["2-fp32", "2-ptq-minmax", "v2", "", "2.1"] {
            assert!(!is_release(v), "{v}");
        }
        let d = tempfile::tempdir().unwrap();
        assert_eq!(default_name(d.path()), None);
        std::fs::write(d.path().join(DEFAULT_FILE), "quantd-mlp\n").unwrap();
        assert_eq!(default_name(d.path()).as_deref(), Some("quantd-mlp"));
    }
}
