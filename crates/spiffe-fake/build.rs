//! Compiles `proto/workload.proto` with protox (a protobuf compiler in Rust: no system `protoc`
//! on build machines) and generates the tonic server for the fake Workload API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let descriptors = protox::compile(["workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // The client is for the crate's own tests (a call without the security header).
        .build_client(true)
        .build_server(true)
        // Only the X.509 calls are served; the JWT calls answer "unimplemented".
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
