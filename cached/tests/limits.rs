//! Limits answer with clear status codes instead of taking the server down.

mod common;

use bytes::Bytes;
use common::{Server, data, header, noise};
use proto::Digest;
use proto::v1::{self, Compression};
use tonic::Code;

#[tokio::test]
async fn oversize_blobs_messages_and_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let limits = [("max_blob_size", "1MiB"), ("max_message_size", "2MiB"), ("max_batch_items", "10")];
    let server = Server::start(dir.path(), &limits).await;
    let clients = server.clients().await;

    let big = Digest { hash: [1; 32], size: 2 << 20 };
    let err =
        clients.cas.clone().write(futures::stream::iter([header(big, Compression::Zstd)])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_blob_size"), "{}", err.message());

    let blob = noise(1 << 20, 1);
    let message =
        vec![header(Digest::of(&blob), Compression::Identity), data(Bytes::from(noise(3 << 20, 2)))];
    let err = clients.cas.clone().write(futures::stream::iter(message)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::OutOfRange,
        "tonic refuses messages over max_message_size: {}",
        err.message()
    );
    let batch = v1::BatchWriteRequest {
        blobs: vec![v1::batch_write_request::Blob {
            digest: Some(Digest::of(&blob).to_wire()),
            compression: Compression::Identity as i32,
            data: Bytes::from(noise(3 << 20, 3)),
        }],
    };
    assert_eq!(clients.cas.clone().batch_write(batch).await.unwrap_err().code(), Code::OutOfRange);

    let digests = (0..11u8).map(|i| Digest { hash: [i; 32], size: 1 }.to_wire()).collect();
    let err = clients.cas.clone().find_missing(v1::FindMissingRequest { digests }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_batch_items"), "{}", err.message());

    // The server is still serving.
    let digest = clients.write(&blob).await;
    assert!(clients.is_stored(digest).await);
    server.stop().await;
}

#[tokio::test]
async fn malformed_writes_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let err =
        clients.cas.clone().write(futures::stream::iter([data(Bytes::from_static(b"x"))])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("WriteHeader"), "{}", err.message());

    let blob = b"not a zstd frame".to_vec();
    let message = vec![header(Digest::of(&blob), Compression::Zstd), data(Bytes::from(blob))];
    let err = clients.cas.clone().write(futures::stream::iter(message)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("frame 0"), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn an_upload_over_max_size_is_refused_at_its_header() {
    let dir = tempfile::tempdir().unwrap();
    // No max_blob_size: it follows max_size.
    let server = Server::start(dir.path(), &[("max_size", "64MiB"), ("idle_timeout", "1h")]).await;
    let clients = server.clients().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let too_big = Digest { hash: [5; 32], size: 65 << 20 };
    sender.send(header(too_big, Compression::Zstd)).await.unwrap();
    let mut cas = clients.cas.clone();
    let upload = cas.write(tokio_stream::wrappers::ReceiverStream::new(receiver));
    // The stream stays open and no body is sent: the answer comes from the header alone.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), upload)
        .await
        .expect("refused without waiting for a body");
    let err = answer.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("max_blob_size"), "{}", err.message());
    drop(sender);
    server.stop().await;
}

#[test]
fn max_blob_size_over_max_size_fails_at_start_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let port = cached_e2e::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cached"))
        .args(["--max-size", "1GiB", "--max-blob-size", "2GiB", "--metrics-listen", "off"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("cached started with max_blob_size over max_size");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_blob_size") && stderr.contains("max_size"), "{stderr}");
}
