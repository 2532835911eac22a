//! Shared pieces of the benchmarks: an embedded cached server on loopback, and test data
//! that compresses like real Go build outputs rather than like zeros or noise.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod cpu;
pub mod report;
pub mod workspace;

/// A cached server running in this process on 127.0.0.1, stopped on drop.
pub struct EmbeddedServer {
    server: cached::embedded::Embedded,
    _data_dir: tempfile::TempDir,
}

impl EmbeddedServer {
    pub async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let server = cached::embedded::Embedded::start(data_dir.path(), &[("max_size", "64GiB")])
            .await
            .expect("cached starts");
        Self { server, _data_dir: data_dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

/// `len` bytes that compress about 2-4x with zstd, like Go package archives: runs of
/// structured text mixed with pseudo-random bytes.
pub fn build_output_like(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state.is_multiple_of(3) {
            out.extend_from_slice(&state.to_le_bytes());
        } else {
            out.extend_from_slice(b"go.buildid runtime.morestack ");
        }
    }
    out.truncate(len);
    out
}
