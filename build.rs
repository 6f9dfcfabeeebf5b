//! Compiles `proto/bank.proto` (the wire) and `proto/store.proto` (a durable branch's stored
//! state) into Rust with prost-build.
//!
//! The schemas are parsed by `protox` (pure Rust), so building snapbank never needs a system
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bank.proto");
    println!("cargo:rerun-if-changed=proto/store.proto");
    let descriptors = protox::compile(["proto/bank.proto", "proto/store.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
