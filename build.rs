//! Generates the gRPC code and the ONNX model types from `proto/` with a vendored `protoc`, so no
//! system package is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("quantd_descriptor.bin"))
        .compile_protos(&["proto/quantd/v1/quantd.proto"], &["proto"])?;
    // The Open Inference Protocol (KServe V2 / Triton gRPC), served beside quantd's own API.
    tonic_prost_build::configure()
        .build_client(true)
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_protos(&["proto/inference/inference.proto"], &["proto"])?;
    // ONNX's own schema (proto/onnx/onnx.proto, from the onnx PyPI package): the native INT8
    // path reads model files with these generated types.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&["proto/onnx/onnx.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
