//! Generates the Rust code for the .proto files with the protoc binary vendored in
//! `protoc-bin-vendored`, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/tcc/v1/participant.proto",
            "proto/tcc/v1/coordinator.proto",
            "proto/pay/v1/branches.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
