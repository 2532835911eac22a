//! Test harness: the real cached (`cached::run`) on 127.0.0.1 with an ephemeral port and a
//! temporary RocksDB, plus small client helpers that speak the wire protocol directly.

#![allow(dead_code, unreachable_pub)]

pub mod ca;
pub mod logs;
pub mod process;
pub mod tokens;

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use proto::frames::FrameEncoder;
use proto::v1::cas_client::CasClient;
use proto::v1::go_cache_client::GoCacheClient;
use proto::v1::stats_client::StatsClient;
use proto::v1::{self, Compression, write_request};
use proto::{Digest, FRAME_SIZE};
use tonic::transport::Channel;

pub struct Server {
    inner: cached::embedded::Embedded,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// With `registry_listen`.
    pub registry_addr: Option<SocketAddr>,
}

impl Server {
    /// Starts cached on `dir` with the given settings (keys as in the config file).
    pub async fn start(dir: &Path, settings: &[(&str, &str)]) -> Self {
        let inner = cached::embedded::Embedded::start(dir, settings).await.expect("cached starts");
        Self { addr: inner.addr, metrics_addr: inner.metrics_addr, registry_addr: inner.registry_addr, inner }
    }

    /// Shuts down gracefully and waits until the store is flushed and closed.
    pub async fn stop(self) {
        self.inner.stop().await.expect("server stopped cleanly");
    }

    pub async fn clients(&self) -> Clients {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Clients {
            cas: CasClient::new(channel.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            go: GoCacheClient::new(channel.clone()).max_encoding_message_size(64 << 20),
            stats: StatsClient::new(channel),
        }
    }

    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr).await.expect("metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).await.expect("response");
        body
    }
}

#[derive(Clone)]
pub struct Clients {
    pub cas: CasClient<Channel>,
    pub go: GoCacheClient<Channel>,
    pub stats: StatsClient<Channel>,
}

impl Clients {
    pub async fn stats(&self) -> v1::StatsResponse {
        self.stats.clone().get(v1::StatsRequest {}).await.expect("stats").into_inner()
    }

    pub async fn store_stats(&self) -> v1::StoreStats {
        self.stats().await.store.expect("store stats")
    }

    pub async fn is_stored(&self, digest: Digest) -> bool {
        let request = v1::FindMissingRequest { digests: vec![digest.to_wire()] };
        self.cas.clone().find_missing(request).await.expect("find missing").into_inner().missing.is_empty()
    }

    /// Uploads `data` as zstd frames under `digest` (which may deliberately be wrong).
    pub async fn write_as(
        &self,
        digest: Digest,
        frames: Vec<Bytes>,
    ) -> Result<v1::WriteResponse, tonic::Status> {
        let mut messages = vec![header(digest, Compression::Zstd)];
        messages.extend(frames.into_iter().map(data));
        self.cas.clone().write(futures::stream::iter(messages)).await.map(|r| r.into_inner())
    }

    pub async fn write(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        self.write_as(digest, frames(data)).await.expect("write");
        digest
    }

    pub async fn read(
        &self,
        digest: Digest,
        offset: u64,
        limit: u64,
        accept: Compression,
    ) -> Result<Vec<u8>, tonic::Status> {
        let request =
            v1::ReadRequest { digest: Some(digest.to_wire()), offset, limit, accept: accept as i32 };
        let mut stream = self.cas.clone().read(request).await?.into_inner();
        let mut out = Vec::new();
        let mut decoder = zstd::bulk::Decompressor::new().expect("decompressor");
        while let Some(message) = stream.next().await {
            let message = message?;
            if message.compression == Compression::Zstd as i32 {
                let raw = decoder.decompress(&message.data, FRAME_SIZE).expect("valid frame");
                out.extend_from_slice(&raw[message.skip_bytes as usize..]);
            } else {
                out.extend_from_slice(&message.data);
            }
        }
        if accept == Compression::Zstd {
            let wanted = if limit == 0 { digest.size - offset } else { limit.min(digest.size - offset) };
            out.truncate(wanted as usize);
        }
        Ok(out)
    }
}

pub fn header(digest: Digest, compression: Compression) -> v1::WriteRequest {
    v1::WriteRequest {
        kind: Some(write_request::Kind::Header(v1::WriteHeader {
            digest: Some(digest.to_wire()),
            compression: compression as i32,
        })),
    }
}

pub fn data(bytes: Bytes) -> v1::WriteRequest {
    v1::WriteRequest { kind: Some(write_request::Kind::Data(bytes)) }
}

/// `data` cut into 1 MiB pieces, each compressed into one zstd frame.
pub fn frames(data: &[u8]) -> Vec<Bytes> {
    let mut encoder = FrameEncoder::new(1).expect("encoder");
    data.chunks(FRAME_SIZE).map(|chunk| Bytes::from(encoder.encode(chunk).expect("compress"))).collect()
}

/// A Go entry for `body`: its OutputID (SHA-256) and digest, as the go command's bridge puts it.
pub fn go_entry(body: &[u8]) -> v1::GoEntry {
    use sha2::Digest as _;
    let digest = Digest::of(body);
    v1::GoEntry {
        output_id: sha2::Sha256::digest(body).to_vec().into(),
        size: digest.size,
        digest: Some(digest.to_wire()),
        time_unix_nanos: 1,
    }
}

/// Incompressible bytes from a seed, so sizes on disk are predictable.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The settings that put cached's jobs and records on `db`.
pub fn database_settings(db: &cached_e2e::postgres::Postgres) -> Vec<(String, String)> {
    vec![
        ("database_url".to_owned(), db.url()),
        ("database_password_file".to_owned(), db.password_file().display().to_string()),
    ]
}
