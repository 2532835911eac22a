//! The `cached` binary as operators run it: configuration errors, signals, memory.

mod common;

use cached_e2e::free_port;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use futures::StreamExt;
use proto::v1::{self, Compression};
use proto::{Digest, FRAME_SIZE};

const CACHED: &str = env!("CARGO_BIN_EXE_cached");

fn cached(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(CACHED);
    command.args(args).env_clear().env("HOME", std::env::temp_dir());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

fn failure(mut command: Command) -> String {
    let output = command.output().expect("run cached");
    assert_eq!(output.status.code(), Some(2), "configuration errors exit with 2");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = failure(cached(&["--max-size", "lots"], &[]));
    assert!(err.contains("--max-size") && err.contains("lots"), "{err}");
    let err = failure(cached(&[], &[("CACHED_LISTEN", "nowhere")]));
    assert!(err.contains("CACHED_LISTEN"), "{err}");
    let file = dir.path().join("cached.toml");
    std::fs::write(&file, "max_size = \"1GiB\"\nmax_sise = 3\n").unwrap();
    let err = failure(cached(&["--config", file.to_str().unwrap()], &[]));
    assert!(err.contains("unknown key `max_sise`"), "{err}");
    std::fs::write(&file, "high_watermark = 2\n").unwrap();
    let err = failure(cached(&[], &[("CACHED_CONFIG", file.to_str().unwrap())]));
    assert!(err.contains("high_watermark") && err.contains("cached.toml"), "{err}");
}

/// cached on 127.0.0.1:`port` with its store in `data_dir`, no metrics endpoint.
fn serving(data_dir: &std::path::Path, port: u16, more_args: &[&str]) -> Command {
    let listen = format!("127.0.0.1:{port}");
    let mut args =
        vec!["--listen", &listen, "--data-dir", data_dir.to_str().unwrap(), "--metrics-listen", "off"];
    args.extend_from_slice(more_args);
    cached(&args, &[])
}

struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(data_dir: &std::path::Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &std::path::Path, more_args: &[&str]) -> Self {
        let port = free_port();
        let child = serving(data_dir, port, more_args).spawn().expect("start cached");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "cached did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    async fn cas(&self) -> v1::cas_client::CasClient<tonic::transport::Channel> {
        v1::cas_client::CasClient::connect(self.url.clone()).await.expect("connect")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_second_cached_on_the_same_data_directory_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Daemon::start(dir.path());
    let second = serving(dir.path(), free_port(), &[]).output().expect("run cached");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("is in use by another cached process") && err.contains("--data-dir"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let blob = common::noise(FRAME_SIZE + 7, 5);
    let digest = Digest::of(&blob);
    let mut messages = vec![common::header(digest, Compression::Zstd)];
    messages.extend(common::frames(&blob).into_iter().map(common::data));
    daemon.cas().await.write(futures::stream::iter(messages)).await.unwrap();

    daemon.signal("TERM");
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "cached exits cleanly on SIGTERM: {status:?}");
    let mut stderr = String::new();
    daemon.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("store flushed"), "{stderr}");

    let daemon = Daemon::start(dir.path());
    let missing = daemon
        .cas()
        .await
        .find_missing(v1::FindMissingRequest { digests: vec![digest.to_wire()] })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert!(missing.is_empty(), "the blob survived the restart");
}

/// Streams a 1 GiB blob in and out of the real daemon and samples its RSS meanwhile.
#[tokio::test]
async fn memory_stays_flat_while_a_1gib_blob_streams() {
    const FRAMES: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut cas = daemon.cas().await;
    // One incompressible frame sent 1024 times: the server still decompresses, hashes and
    // stores every one, while the test stays cheap.
    let block = common::noise(FRAME_SIZE, 42);
    let frame = common::frames(&block).remove(0);
    let mut hasher = blake3::Hasher::new();
    for _ in 0..FRAMES {
        hasher.update(&block);
    }
    let digest = Digest::from_hasher(&hasher, (FRAMES * FRAME_SIZE) as u64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = daemon.rss_bytes();

    let pid = daemon.child.id();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::Builder::new()
            .name("rss sampler".into())
            .spawn(move || {
                let mut peak = 0u64;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        && let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:"))
                    {
                        peak =
                            peak.max(line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            })
            .expect("start the RSS sampler")
    };

    let sent = frame.clone();
    let upload = futures::stream::iter(
        std::iter::once(common::header(digest, Compression::Zstd))
            .chain((0..FRAMES).map(move |_| common::data(Bytes::clone(&sent)))),
    );
    cas.write(upload).await.expect("1 GiB upload");
    let request = v1::ReadRequest {
        digest: Some(digest.to_wire()),
        accept: Compression::Zstd as i32,
        ..Default::default()
    };
    let mut stream = cas.read(request).await.unwrap().into_inner();
    let mut frames_read = 0;
    while let Some(message) = stream.next().await {
        assert!(message.unwrap().data == frame);
        frames_read += 1;
    }
    assert_eq!(frames_read, FRAMES);

    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let growth = peak.saturating_sub(idle);
    eprintln!("idle RSS {} MiB, peak {} MiB, growth {} MiB", idle >> 20, peak >> 20, growth >> 20);
    assert!(growth <= 64 << 20, "RSS grew by {} MiB while streaming 1 GiB", growth >> 20);
}

fn token(name: &str, secret: &str) -> TokenSpec {
    TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list("read").unwrap(),
        namespaces: NamespacePattern::parse_list("*").unwrap(),
        secret_hash: SecretHash::new(secret).unwrap(),
        rate_limit: None,
        max_priority: None,
    }
}

/// What a call presenting `secret` gets: OK, or the refusal's code.
async fn call_with(daemon: &Daemon, secret: &str) -> tonic::Code {
    let mut request = tonic::Request::new(v1::FindMissingRequest { digests: Vec::new() });
    request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    match daemon.cas().await.find_missing(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// Polls until calls with `secret` get `code` (a signal is handled asynchronously).
async fn until_code(daemon: &Daemon, secret: &str, code: tonic::Code) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while call_with(daemon, secret).await != code {
        assert!(Instant::now() < deadline, "calls with {secret} never got {code:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_tokens_and_keeps_them_when_the_file_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, token("old", "old-secret").to_toml()).unwrap();
    let daemon = Daemon::start_with(&dir.path().join("data"), &["--tokens-file", file.to_str().unwrap()]);
    assert_eq!(call_with(&daemon, "old-secret").await, tonic::Code::Ok);
    assert_eq!(call_with(&daemon, "new-secret").await, tonic::Code::Unauthenticated);

    std::fs::write(&file, token("new", "new-secret").to_toml()).unwrap();
    daemon.signal("HUP");
    until_code(&daemon, "old-secret", tonic::Code::Unauthenticated).await;
    assert_eq!(call_with(&daemon, "new-secret").await, tonic::Code::Ok, "revoked and added at once");

    // A file that does not parse changes nothing, and neither does one with no tokens left:
    // revoking every token must not let anonymous callers in.
    std::fs::write(&file, "[[tokens]]\nname = \"half\"\n").unwrap();
    daemon.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, "").unwrap();
    daemon.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call_with(&daemon, "new-secret").await, tonic::Code::Ok);
    assert_eq!(call_with(&daemon, "anyone").await, tonic::Code::Unauthenticated);
}
