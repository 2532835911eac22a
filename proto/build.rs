//! Compiles the `.proto` files with protox (pure Rust), so building needs no protoc.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "cached/v1/digest.proto",
    "cached/v1/cas.proto",
    "cached/v1/gocache.proto",
    "cached/v1/stats.proto",
    "cached/v1/builds.proto",
    "cached/v1/jobs.proto",
    "cached/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection serves this set, so grpcurl works without local .proto files.
    std::fs::write(out_dir.join("cached_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // `bytes` fields as `Bytes`, so frames pass from RocksDB to the socket without copies.
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
