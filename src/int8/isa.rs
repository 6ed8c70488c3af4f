//! The instruction-set levels of the native kernel, what this CPU has, and what ONNX Runtime's
//! u8×s8 kernels do on it.
//!
//! Detected once on the control path; the engine thread only runs the level a kernel was built for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One implementation level of the native kernel, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// 512-bit `VPDPBUSD` (AVX-512 F + BW + VNNI): exact u8×s8 dot products, 16 outputs a step.
    Avx512Vnni,
    /// 256-bit `VPDPBUSD` (AVX-VNNI): exact, 8 outputs a step.
    AvxVnni,
    /// AVX2 without saturation: u8 and s8 widened to i16, `VPMADDWD` into i32 (never `VPMADDUBSW`,
    /// whose i16 pair sums saturate).
    Avx2,
    /// Plain Rust on any CPU.
    Portable,
}

impl Isa {
    /// Every level, fastest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2, Isa::Portable];

    /// The label in configuration, logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512vnni",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512Vnni => {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vnni")
                }
                Isa::AvxVnni => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni"),
                Isa::Avx2 => std::is_x86_feature_detected!("avx2"),
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The fastest level this CPU runs.
    pub fn best() -> Isa {
        Isa::ALL.into_iter().find(|i| i.available()).unwrap_or(Isa::Portable)
    }

    /// Every level this CPU runs, fastest first.
    pub fn available_levels() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Isa::ALL
            .into_iter()
            .find(|i| i.label() == s)
            .ok_or_else(|| format!("unknown ISA level {s:?}; one of {}", Isa::ALL.map(Isa::label).join(", ")))
    }
}

/// Whether ONNX Runtime's u8×s8 integer kernels are exact on this CPU: only with VNNI (AVX-512
/// or AVX) dot products. Without them MLAS uses `VPMADDUBSW`, whose int16 pair sums saturate when
/// weights use the full int8 range.
pub fn ort_u8s8_exact() -> bool {
    Isa::Avx512Vnni.available() || Isa::AvxVnni.available()
}

/// The largest |int8 weight| with which `VPMADDUBSW` cannot saturate: a pair of u8×s8 products
/// sums to at most 2 · 255 · 64 = 32640 ≤ `i16::MAX`. quantd's training emits weights in -64..64.
pub const VPMADDUBSW_SAFE_WEIGHT: u8 = 64;

/// Whether ONNX Runtime's u8×s8 kernels compute a graph exactly on this CPU, given the largest
/// |value| of its int8 weights (`None`: not known): with VNNI always, without it when the
/// weights are within [`VPMADDUBSW_SAFE_WEIGHT`].
pub fn ort_u8s8_exact_for(max_abs_weight: Option<u8>) -> bool {
    ort_u8s8_exact() || max_abs_weight.is_some_and(|w| w <= VPMADDUBSW_SAFE_WEIGHT)
}

/// The CPU features that matter here, as `/proc/cpuinfo` spells them: for messages and tests.
pub fn cpu_flags() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let flags = [
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("avx512bw", std::is_x86_feature_detected!("avx512bw")),
            ("avx512_vnni", std::is_x86_feature_detected!("avx512vnni")),
            ("avx_vnni", std::is_x86_feature_detected!("avxvnni")),
        ];
        let on: Vec<_> = flags.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect();
        let off: Vec<_> = flags.iter().filter(|(_, on)| !*on).map(|(f, _)| *f).collect();
        format!("has [{}], lacks [{}]", on.join(" "), off.join(" "))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "not x86-64".to_owned()
    }
}
