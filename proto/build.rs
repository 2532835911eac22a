//! Compiles the `.proto` files with protox (pure Rust), so building needs no protoc, and writes
//! the table of message shapes the decoding guard walks (`src/guard.rs`).

use std::fmt::Write as _;
use std::path::PathBuf;

use prost_types::DescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use tonic_prost_build::FileDescriptorSet;

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
    std::fs::write(out_dir.join("wire_shapes.rs"), shapes(&fds))?;
    // `bytes` fields as `Bytes`, so frames pass from RocksDB to the socket without copies.
    // Every gRPC method decodes through the guard; it needs each message's full name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::guard::GuardedCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}

/// Rust source of `MESSAGES` (each message's fields that decode into an element of their own:
/// sub-messages, by their index in `MESSAGES`, and repeated fields) and `REQUESTS` (what the
/// methods take).
fn shapes(fds: &FileDescriptorSet) -> String {
    let mut messages = Vec::new();
    for file in &fds.file {
        for message in &file.message_type {
            collect(file.package(), message, &mut messages);
        }
    }
    let index = |name: &str| messages.iter().position(|(full, _)| full == name);
    let mut out = String::from("static MESSAGES: &[Shape] = &[\n");
    for (name, message) in &messages {
        let _ = write!(out, "    Shape {{ name: {name:?}, fields: &[");
        for field in &message.field {
            let repeated = field.label() == Label::Repeated;
            let nested =
                (field.r#type() == Type::Message).then(|| index(field.type_name().trim_start_matches('.')));
            if repeated || nested.is_some() {
                let nested = nested.flatten();
                // Only numbers pack: a repeated string or bytes field is one element per item.
                let numbers =
                    repeated && !matches!(field.r#type(), Type::String | Type::Bytes | Type::Message);
                let _ = write!(
                    out,
                    "Field {{ number: {}, repeated: {repeated}, numbers: {numbers}, message: {nested:?} }}, ",
                    field.number()
                );
            }
        }
        out.push_str("] },\n");
    }
    out.push_str("];\n\nstatic REQUESTS: &[&str] = &[\n");
    for file in &fds.file {
        for method in file.service.iter().flat_map(|service| &service.method) {
            let _ = writeln!(out, "    {:?},", method.input_type().trim_start_matches('.'));
        }
    }
    out.push_str("];\n");
    out
}

/// Every message, nested ones included, with its full name.
fn collect<'a>(prefix: &str, message: &'a DescriptorProto, out: &mut Vec<(String, &'a DescriptorProto)>) {
    let name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested, out);
    }
    out.push((name, message));
}
