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
