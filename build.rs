//! Compiles `proto/bank.proto` into Rust with prost-build.
//!
//! The schema is parsed by `protox` (pure Rust), so building snapbank never needs a system
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bank.proto");
    let descriptors = protox::compile(["proto/bank.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
