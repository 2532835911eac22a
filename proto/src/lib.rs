//! The cached wire contract and the domain types that both ends share.
//!
//! `v1` is the generated gRPC code; `Digest`, the Go IDs and the framing constants are what
//! every crate needs to speak it correctly.

#![forbid(unsafe_code)]

mod digest;
pub mod frames;
mod go_ids;
pub mod guard;
pub mod platform;
pub mod quoted;
pub mod text;
pub mod together;

pub use digest::{Digest, DigestError};
pub use go_ids::{ActionId, GoIdError, OutputId};
pub use platform::{Platform, PlatformError};

/// Generated messages, clients and servers for package `cached.v1`.
#[allow(unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("cached.v1");
}

/// Encoded `FileDescriptorSet` of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cached_descriptor");

/// Metadata of a RESOURCE_EXHAUSTED status that is worth retrying: milliseconds until a
/// retry may be admitted (a rate, a share of a pool). Without it the refusal stands (a full
/// disk) and a client stops asking for a while.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Uncompressed bytes in every stored zstd frame but a blob's last. Fixed so that the frame
/// holding any offset is `offset / FRAME_SIZE`, which makes range reads need no index.
pub const FRAME_SIZE: usize = 1 << 20;

/// Go action bodies up to this size travel inline in `GoCache.Get` replies (one frame), saving
/// the second round trip for the great majority of Go cache entries.
pub const INLINE_BODY_MAX: u64 = FRAME_SIZE as u64;
