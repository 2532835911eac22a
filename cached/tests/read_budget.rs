//! Reads cost what they return, against the real daemon: batch reads are budgeted by the
//! bytes their reply will carry before anything is read, and a request that names a blob or
//! an action twice is refused. Once, a 7 KiB GetMany of one action repeated made cached
//! allocate 3.2 GiB. Memory is read from the daemon's /proc status (VmHWM: its peak RSS).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{data, frames, header, noise};
use proto::v1::{self, Compression};
use proto::{Digest, FRAME_SIZE};
use tonic::Code;
use tonic::transport::Channel;

const CACHED: &str = env!("CARGO_BIN_EXE_cached");

/// The cached binary on a free port, killed on drop.
struct Daemon {
    child: Child,
    channel: Channel,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = cached_e2e::free_port();
        let child = Command::new(CACHED)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "off"])
            .args(["--log-level", "warn", "--data-dir"])
            .arg(dir.path())
            .args(flags)
            .env_clear()
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "cached did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let channel =
            Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
        Self { child, channel, _dir: dir }
    }

    fn cas(&self) -> v1::cas_client::CasClient<Channel> {
        v1::cas_client::CasClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    fn go(&self) -> v1::go_cache_client::GoCacheClient<Channel> {
        v1::go_cache_client::GoCacheClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// The daemon's peak resident memory so far.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    async fn write(&self, blob: &[u8]) -> Digest {
        let digest = Digest::of(blob);
        let mut messages = vec![header(digest, Compression::Zstd)];
        messages.extend(frames(blob).into_iter().map(data));
        self.cas().write(futures::stream::iter(messages)).await.expect("write");
        digest
    }

    /// Records `count` Go entries (actions 0, 1, ...) whose output is `blob`.
    async fn put_entries(&self, blob: &[u8], count: u32) {
        let entry = common::go_entry(blob);
        let puts = (0..count).map(|i| {
            let request =
                v1::GoPutRequest { namespace: "ns".into(), action_id: action(i), entry: Some(entry.clone()) };
            let mut go = self.go();
            async move { go.put(request).await.expect("put") }
        });
        // 32 at a time, as a client's upload pipeline would.
        futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::buffer_unordered(
            futures::stream::iter(puts),
            32,
        ))
        .await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn action(i: u32) -> Bytes {
    let mut id = vec![0u8; 32];
    id[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(id)
}

fn get_many(ids: Vec<Bytes>) -> v1::GoGetManyRequest {
    v1::GoGetManyRequest { namespace: "ns".into(), action_ids: ids }
}

/// Peak memory may grow this much over a request whose reply is at most max_message_size
/// (16 MiB): the reply, its encoding and the allocator's slack. Reading every body in full
/// would take a GiB.
const PEAK_GROWTH: u64 = 160 << 20;

#[tokio::test]
async fn get_many_charges_inline_bodies_before_reading_them() {
    let daemon = Daemon::start(&[]).await;
    // One frame of incompressible bytes: the largest body that travels inline.
    let blob = noise(FRAME_SIZE, 1);
    daemon.write(&blob).await;
    let actions = 1000;
    daemon.put_entries(&blob, actions).await;
    daemon.go().get_many(get_many((0..10).map(action).collect())).await.unwrap();
    let before = daemon.peak_rss();

    let reply = daemon.go().get_many(get_many((0..actions).map(action).collect())).await.unwrap();
    let results = reply.into_inner().results;
    let grown = daemon.peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB", grown >> 20);
    assert!(grown < PEAK_GROWTH, "GetMany of {actions} 1 MiB bodies grew peak RSS by {} MiB", grown >> 20);
    assert_eq!(results.len(), actions as usize);
    assert!(results.iter().all(|r| r.entry.is_some()), "every entry is a hit");
    let inline: Vec<_> = results.iter().filter(|r| r.body_inline).collect();
    assert!(!inline.is_empty() && inline.len() <= 8, "{} bodies inline within half of 16 MiB", inline.len());
    assert!(zstd::bulk::decompress(&inline[0].body_zstd, FRAME_SIZE).unwrap() == blob);
}

#[tokio::test]
async fn a_blob_or_an_action_asked_twice_is_refused_and_costs_nothing() {
    let daemon = Daemon::start(&[]).await;
    let blob = noise(FRAME_SIZE, 2);
    let digest = daemon.write(&blob).await;
    daemon.put_entries(&blob, 1).await;
    daemon.go().get_many(get_many(vec![action(0)])).await.unwrap();
    let before = daemon.peak_rss();

    let err = daemon.go().get_many(get_many(vec![action(0); 2000])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("more than once"), "{}", err.message());
    let request =
        v1::BatchReadRequest { digests: vec![digest.to_wire(); 2000], accept: Compression::Zstd as i32 };
    let err = daemon.cas().batch_read(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("more than once"), "{}", err.message());
    let grown = daemon.peak_rss().saturating_sub(before);
    assert!(grown < PEAK_GROWTH, "refused requests grew peak RSS by {} MiB", grown >> 20);

    // FindMissing answers duplicates (trees repeat identical files), each missing digest once.
    let absent = Digest::of(b"absent");
    let digests = vec![absent.to_wire(), digest.to_wire(), absent.to_wire(), absent.to_wire()];
    let reply = daemon.cas().find_missing(v1::FindMissingRequest { digests }).await.unwrap();
    assert_eq!(reply.into_inner().missing, vec![absent.to_wire()]);
}

#[tokio::test]
async fn batch_read_stops_at_the_bytes_its_reply_may_carry() {
    let daemon = Daemon::start(&["--max-message-size", "4MiB"]).await;
    let mut digests = Vec::new();
    for seed in 0..8 {
        digests.push(daemon.write(&noise(FRAME_SIZE, 10 + seed)).await);
    }
    for accept in [Compression::Zstd, Compression::Identity] {
        let request = v1::BatchReadRequest {
            digests: digests.iter().map(|d| d.to_wire()).collect(),
            accept: accept as i32,
        };
        let reply = daemon.cas().batch_read(request).await.expect("a reply within max_message_size");
        let results = reply.into_inner().results;
        let served = results.iter().filter(|r| r.status.as_ref().unwrap().code == 0).count();
        assert!((1..=3).contains(&served), "{accept:?}: {served} blobs of 1 MiB in a 4 MiB reply");
        for result in &results[served..] {
            let status = result.status.as_ref().unwrap();
            assert_eq!(status.code, Code::ResourceExhausted as i32, "{}", status.message);
            assert!(status.message.contains("Cas.Read"), "{}", status.message);
        }
    }
}
