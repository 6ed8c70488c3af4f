//! Which ONNX Runtime execution provider runs a model (CPU, CUDA or TensorRT), and what happens
//! when the one asked for cannot run here: fail the load, or fall back to the CPU provider.
//!
//! Runs on the control path while a session is built ([`super::LoadedModel::load_with`]). The
//! GPU providers are compiled in only with the cargo features `cuda` / `tensorrt` (the `ort`
//! features of the same names); they also need the GPU build of ONNX Runtime at run time (the
//! PyPI `onnxruntime-gpu` wheel ships `libonnxruntime_providers_cuda.so` and
//! `libonnxruntime_providers_tensorrt.so` beside `libonnxruntime.so`).

use ort::session::builder::SessionBuilder;
use serde::{Deserialize, Serialize};

/// The execution provider asked for in the config (`execution_provider`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs the `cuda` feature and the GPU build of ONNX Runtime).
    Cuda,
    /// NVIDIA TensorRT (needs the `tensorrt` feature and libnvinfer).
    Tensorrt,
}

impl ExecutionProvider {
    /// The label in logs and in `quantd_model_info{provider}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }

    /// Whether this binary was built with the provider's cargo feature.
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda => cfg!(feature = "cuda"),
            Self::Tensorrt => cfg!(feature = "tensorrt"),
        }
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "tensorrt" => Ok(Self::Tensorrt),
            other => Err(format!("unknown execution provider {other:?} (cpu, cuda or tensorrt)")),
        }
    }
}

/// What to do when the requested GPU provider cannot be registered (`provider_fallback`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFallback {
    /// Refuse the model (at start-up: the server does not start).
    #[default]
    Fail,
    /// Log a warning and run on the CPU provider.
    Cpu,
}

/// Provider settings, one per server (every model version loads with the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderConfig {
    /// The provider to run sessions on.
    pub provider: ExecutionProvider,
    /// What to do when it cannot run.
    pub fallback: ProviderFallback,
    /// CUDA device ordinal for the GPU providers.
    pub device_id: i32,
}

/// Registers the configured provider on `builder`. Returns the provider that will run the
/// session, or why the requested one could not be used when the fallback is `fail`.
pub(crate) fn register(cfg: &ProviderConfig, builder: &mut SessionBuilder) -> Result<ExecutionProvider, String> {
    if cfg.provider == ExecutionProvider::Cpu {
        return Ok(ExecutionProvider::Cpu);
    }
    match try_register(cfg, builder) {
        Ok(()) => Ok(cfg.provider),
        Err(why) => match cfg.fallback {
            ProviderFallback::Fail => Err(format!(
                "execution provider {} is unavailable: {why} (set provider_fallback = \"cpu\" to run on the CPU instead)",
                cfg.provider.label()
            )),
            ProviderFallback::Cpu => {
                tracing::warn!(requested = cfg.provider.label(), reason = %why, "execution provider unavailable; falling back to cpu");
                Ok(ExecutionProvider::Cpu)
            }
        },
    }
}

#[cfg(any(feature = "cuda", feature = "tensorrt"))]
fn try_register(cfg: &ProviderConfig, builder: &mut SessionBuilder) -> Result<(), String> {
    use ort::ep::ExecutionProvider as _;
    if !cfg.provider.compiled_in() {
        return Err(format!("this binary was built without the `{}` cargo feature", cfg.provider.label()));
    }
    match cfg.provider {
        ExecutionProvider::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        ExecutionProvider::Cuda => {
            ort::ep::CUDA::default().with_device_id(cfg.device_id).register(builder).map_err(|e| e.to_string())
        }
        #[cfg(feature = "tensorrt")]
        ExecutionProvider::Tensorrt => {
            ort::ep::TensorRT::default().with_device_id(cfg.device_id).register(builder).map_err(|e| e.to_string())?;
            // Nodes TensorRT does not take run on CUDA when that provider is built too, else CPU.
            #[cfg(feature = "cuda")]
            ort::ep::CUDA::default().with_device_id(cfg.device_id).register(builder).map_err(|e| e.to_string())?;
            Ok(())
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("compiled_in() was checked"),
    }
}

#[cfg(not(any(feature = "cuda", feature = "tensorrt")))]
fn try_register(cfg: &ProviderConfig, _builder: &mut SessionBuilder) -> Result<(), String> {
    Err(format!(
        "this binary was built without the `{}` cargo feature (cargo build --release --features {})",
        cfg.provider.label(),
        cfg.provider.label()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_config_names_agree() {
        for p in [ExecutionProvider::Cpu, ExecutionProvider::Cuda, ExecutionProvider::Tensorrt] {
            let parsed: ExecutionProvider = serde_json::from_str(&format!("\"{}\"", p.label())).unwrap();
            assert_eq!(parsed, p);
            assert_eq!(p.label().parse::<ExecutionProvider>(), Ok(p));
        }
        assert!("gpu".parse::<ExecutionProvider>().is_err());
        assert!(ExecutionProvider::Cpu.compiled_in());
    }
}
