//! Shared pieces of the benchmarks: an embedded cached server on loopback, and test data
//! that compresses like real Go build outputs rather than like zeros or noise.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A cached server running in this process on 127.0.0.1, stopped on drop.
pub struct EmbeddedServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    _data_dir: tempfile::TempDir,
}

impl EmbeddedServer {
    pub async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let flags = BTreeMap::from([
            ("data_dir".to_owned(), data_dir.path().display().to_string()),
            ("metrics_listen".to_owned(), "off".to_owned()),
            ("max_size".to_owned(), "64GiB".to_owned()),
        ]);
        let config = cached::config::Config::load(&flags, None, &|_| None).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = cached::run(config, listener, None, shutdown).await {
                eprintln!("embedded cached failed: {err}");
            }
        });
        Self { addr, stop: Some(stop), _data_dir: data_dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
