//! quantd's own INT8 path: what a quantd INT8 model computes, written down in code ([`plan`],
//! read from the ONNX QDQ graph with the generated [`onnx`] types), a portable [`reference`](mod@reference) that
//! executes it, and the native [`kernel`] with runtime ISA dispatch ([`isa`]) that the engine
//! thread calls where it is exact and faster than ONNX Runtime.
//!
//! Reading, packing and verification run on the control path (model load); only
//! [`kernel::NativeKernel::score`] runs on the engine thread.

pub mod isa;
pub mod kernel;
pub mod onnx;
pub mod plan;
pub mod reference;

pub use isa::Isa;
pub use kernel::{NativeKernel, Saturation};
pub use plan::{Plan, Unsupported};

#[cfg(test)]
mod tests;
