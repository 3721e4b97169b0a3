//! Compiles `proto/frame.proto` with protox (a pure-Rust protobuf compiler),
//! so building the workspace never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/frame.proto");
    let descriptors = protox::compile(["proto/frame.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
