//! Locating `libonnxruntime` and creating the process-wide ONNX Runtime environment, once.
//!
//! Called on the control path before the first session is built. `ort` with `load-dynamic`
//! opens the library at run time; `make setup` extracts it from the PyPI `onnxruntime` wheel into
//! `.cache/onnxruntime/` inside the repository.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// ONNX Runtime version `make setup` installs and this build was tested with.
pub const ORT_VERSION: &str = "1.32.0";
/// Relative location of the library inside the repository (created by `make setup`).
pub const CACHE_LIB: &str = ".cache/onnxruntime/libonnxruntime.so.1";

/// Why ONNX Runtime could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No libonnxruntime was found.
    #[error(
        "ONNX Runtime library not found (looked in: {looked}). Run `make setup`, which extracts \
         libonnxruntime.so.{ORT_VERSION} from the PyPI onnxruntime wheel into {CACHE_LIB}, or set \
         ORT_DYLIB_PATH (or `ort_dylib_path` in the config) to a libonnxruntime.so"
    )]
    NotFound {
        /// Where it was looked for.
        looked: String,
    },
    /// The library was found but could not be loaded.
    #[error("could not load ONNX Runtime from {path}: {msg}")]
    Load {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        msg: String,
    },
}

static ENV: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Candidate library paths: the explicit one if given, else the repository cache next to the
/// working directory, the executable's ancestors and the source tree.
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_owned()];
    }
    let mut out = vec![PathBuf::from(CACHE_LIB)];
    if let Ok(exe) = std::env::current_exe() {
        out.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(CACHE_LIB)));
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(CACHE_LIB));
    out
}

/// Finds the library: the explicit path must exist; otherwise the first existing candidate.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let all = candidates(explicit);
    all.iter().find(|p| p.is_file()).cloned().ok_or_else(|| RuntimeError::NotFound {
        looked: all.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// Loads ONNX Runtime and creates the environment (first call only; later calls return the
/// library path chosen the first time). Uses `ort::init_from`, which reports a missing or broken
/// library as an error rather than panicking.
pub fn init(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let path = locate(explicit)?;
    let result = ENV.get_or_init(|| {
        let env = ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("quantd")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())?;
        Ok((path.clone(), env))
    });
    match result {
        Ok((p, _)) => Ok(p.clone()),
        Err(msg) => Err(RuntimeError::Load { path, msg: msg.clone() }),
    }
}

/// The environment created by [`init`].
pub fn environment() -> Option<&'static ort::environment::Environment> {
    ENV.get().and_then(|r| r.as_ref().ok()).map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_says_how_to_get_it() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err().to_string();
        assert!(err.contains("make setup"), "{err}");
        assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    }
}
