//! Compiles `proto/frame.proto` with protox (a pure-Rust protobuf compiler),
//! so building the workspace never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/frame.proto");
    let descriptors = protox::compile(["proto/frame.proto"], ["proto"])?;
    // `bytes` fields as `bytes::Bytes`: a reader decodes a whole chunk of
    // stored frames from one buffer and every payload is a zero-copy slice.
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
