//! Safe defaults and limits of the real daemon: no tokens means loopback only, `cached token
//! new` makes tokens that work, oversize input is refused with memory flat, and upload slots and
//! idle streams are bounded.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_e2e::free_port;
use common::process::Daemon;
use common::{Server, data, header};
use proto::Digest;
use proto::v1::{self, Compression};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

const CACHED: &str = env!("CARGO_BIN_EXE_cached");

fn cached(args: &[&str]) -> Command {
    let mut command = Command::new(CACHED);
    command.args(args).env_clear().env("HOME", std::env::temp_dir());
    command
}

#[test]
fn beyond_loopback_without_tokens_refuses_to_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let args = ["--listen", &listen, "--metrics-listen", "off", "--data-dir", data_dir];
    let output = cached(&args).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("beyond loopback") && stderr.contains("--allow-anonymous"), "{stderr}");

    let mut child = cached(&[&args[..], &["--allow-anonymous"]].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "cached --allow-anonymous did not start");
        assert!(child.try_wait().unwrap().is_none(), "cached --allow-anonymous exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WARNING") && stderr.contains("without tokens"), "{stderr}");
}

fn authorized<T>(message: T, secret: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

#[tokio::test]
async fn token_new_prints_a_secret_once_and_a_table_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let output = cached(&[
        "token",
        "new",
        "--name",
        "ci",
        "--scopes",
        "read,cas-write,ac-write",
        "--namespaces",
        "main/*",
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let secret =
        text.lines().map(str::trim).find(|line| line.starts_with("cached_")).expect("the secret").to_owned();
    let table = &text[text.find("[[tokens]]").expect("the table")..];
    assert!(!table.contains(&secret), "the table holds the hash, not the secret:\n{table}");
    assert!(table.contains("name = \"ci\"") && table.contains("\"main/*\""), "{table}");

    // Scripts: the secret goes to a private file, stdout is only the table.
    let secret_file = dir.path().join("pr.token");
    let output = cached(&["token", "new", "--name", "pr-7", "--scopes", "read", "--namespaces", "pr-7/*"])
        .args(["--secret-file", secret_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let pr_table = String::from_utf8(output.stdout).unwrap();
    assert!(pr_table.starts_with("[[tokens]]"), "{pr_table}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    let pr_secret = std::fs::read_to_string(&secret_file).unwrap().trim().to_owned();

    let bad = cached(&["token", "new", "--name", "x", "--scopes", "read,wirte"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wirte"));

    let tokens_file = dir.path().join("tokens.toml");
    std::fs::write(&tokens_file, format!("{table}\n{pr_table}")).unwrap();
    let server =
        Server::start(&dir.path().join("data"), &[("tokens_file", tokens_file.to_str().unwrap())]).await;
    let clients = server.clients().await;
    let get =
        |namespace: &str| v1::GoGetRequest { namespace: namespace.to_owned(), action_id: vec![7; 32].into() };
    clients.go.clone().get(authorized(get("main/linux"), &secret)).await.expect("ci reads main/*");
    let err = clients.go.clone().get(authorized(get("pr-7/linux"), &secret)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    clients.go.clone().get(authorized(get("pr-7/linux"), &pr_secret)).await.expect("pr-7 reads its own");
    server.stop().await;
}

/// One round of every kind of oversize input; each must be refused with the right code.
async fn oversize_round(
    cas: &mut v1::cas_client::CasClient<tonic::transport::Channel>,
    go: &mut v1::go_cache_client::GoCacheClient<tonic::transport::Channel>,
) {
    let huge = Digest { hash: [9; 32], size: 64 << 30 };
    let err = cas.write(futures::stream::iter([header(huge, Compression::Zstd)])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let small = Digest::of(b"small");
    let message = vec![header(small, Compression::Identity), data(Bytes::from(vec![1u8; 3 << 20]))];
    let err = cas.write(futures::stream::iter(message)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "a message over max_message_size: {err:?}");

    // More data than the header declared.
    let declared = Digest { hash: [3; 32], size: 1000 };
    let message = vec![header(declared, Compression::Identity), data(Bytes::from(vec![1u8; 1 << 20]))];
    let err = cas.write(futures::stream::iter(message)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let digests = (0..11u8).map(|i| Digest { hash: [i; 32], size: 1 }.to_wire()).collect();
    let err = cas.find_missing(v1::FindMissingRequest { digests }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let blobs = (0..11u8)
        .map(|i| v1::batch_write_request::Blob {
            digest: Some(Digest::of(&[i]).to_wire()),
            compression: 0,
            data: Bytes::from(vec![i]),
        })
        .collect();
    let err = cas.batch_write(v1::BatchWriteRequest { blobs }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let action_ids = (0..11u8).map(|i| Bytes::from(vec![i; 32])).collect();
    let err = go.get_many(v1::GoGetManyRequest { namespace: String::new(), action_ids }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn oversize_input_is_refused_and_memory_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ["--max-blob-size", "1MiB", "--max-message-size", "2MiB", "--max-batch-items", "10"];
    let daemon = Daemon::start(dir.path(), &limits, &[]);
    let channel = daemon.channel().await;
    let mut cas = v1::cas_client::CasClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let mut go = v1::go_cache_client::GoCacheClient::new(channel);
    // The first rounds warm up thread pools and buffers; the rest must not grow memory.
    for _ in 0..3 {
        oversize_round(&mut cas, &mut go).await;
    }
    let before = daemon.rss();
    for _ in 0..30 {
        oversize_round(&mut cas, &mut go).await;
    }
    let after = daemon.rss();
    let growth = after.saturating_sub(before);
    eprintln!("RSS before {} MiB, after {} MiB", before >> 20, after >> 20);
    assert!(growth < 16 << 20, "RSS grew by {} MiB over 30 rounds of refused input", growth >> 20);
}

/// An upload whose client sends the header and then whatever the test pushes into `sender`.
fn open_upload(
    clients: &common::Clients,
    digest: Digest,
) -> (mpsc::Sender<v1::WriteRequest>, cached::task::Task<Result<v1::WriteResponse, tonic::Status>>) {
    let (sender, receiver) = mpsc::channel(4);
    let mut cas = clients.cas.clone();
    let task = cached::task::spawn("upload", async move {
        cas.write(ReceiverStream::new(receiver)).await.map(|r| r.into_inner())
    });
    let first = sender.clone();
    cached::task::spawn(
        "upload header",
        async move { first.send(header(digest, Compression::Identity)).await },
    )
    .detach();
    (sender, task)
}

#[tokio::test]
async fn upload_slots_are_capped_and_stalled_streams_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("max_concurrent_uploads", "1"), ("idle_timeout", "500ms")];
    let server = Server::start(dir.path(), &settings).await;
    let clients = server.clients().await;
    let blob = b"slow upload".to_vec();
    let digest = Digest::of(&blob);

    // One upload holds the only slot while its client is still sending.
    let (sender, first) = open_upload(&clients, digest);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = clients.write_as(Digest::of(b"other"), vec![Bytes::from_static(b"other")]).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_concurrent_uploads"), "{}", err.message());
    sender.send(data(Bytes::from(blob.clone()))).await.unwrap();
    drop(sender);
    first.await.unwrap().expect("the first upload completes");

    // A client that stops sending is cut off after idle_timeout, and its slot freed.
    let started = Instant::now();
    let (sender, stalled) = open_upload(&clients, Digest::of(b"never sent"));
    let err = stalled.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("idle_timeout"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
    drop(sender);
    clients.write(b"next").await;
    server.stop().await;
}

#[test]
fn unknown_config_keys_are_still_refused_beside_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cached.toml");
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"ci\"\nscopes = [\"read\"]\nnamespaces = [\"*\"]\nsecret_hash = \"x\"\n",
    )
    .unwrap();
    let output = cached(&["--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tokens[0]") && stderr.contains("secret_hash"), "{stderr}");
}
