//! GoCache.Put checks an entry's OutputID without reading its blob: the store took the blob's
//! SHA-256 while it verified the upload. Before, a Put of a large blob hashed it on a blocking
//! thread that went on long after the client gave up, so a stream of cheap Puts could keep
//! the server's CPUs busy.

mod common;

use std::time::Duration;

use common::{Server, noise};
use proto::v1;
use sha2::{Digest as _, Sha256};
use tonic::Code;

/// The compressed bytes read from the store so far, from /metrics.
async fn store_read_bytes(server: &Server) -> u64 {
    let text = server.metrics().await;
    let line = text
        .lines()
        .find(|line| line.starts_with("cached_store_read_bytes"))
        .unwrap_or_else(|| panic!("no cached_store_read_bytes in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn put_reads_no_blob_even_when_its_client_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let body = noise(64 << 20, 7);
    let digest = clients.write(&body).await;
    let entry = v1::GoEntry {
        output_id: Sha256::digest(&body).to_vec().into(),
        size: digest.size,
        digest: Some(digest.to_wire()),
        time_unix_nanos: 1,
    };
    let put = v1::GoPutRequest { namespace: "ns".into(), action_id: vec![1; 32].into(), entry: Some(entry) };
    let before = store_read_bytes(&server).await;

    // A client that gives up at once: its call is dropped (the stream reset) mid-request.
    let _ = tokio::time::timeout(Duration::from_micros(200), clients.go.clone().put(put.clone())).await;
    // One that waits for its answer.
    clients.go.clone().put(put.clone()).await.expect("put");
    let wrong = v1::GoPutRequest {
        entry: Some(v1::GoEntry { output_id: vec![9; 32].into(), ..put.entry.clone().unwrap() }),
        ..put.clone()
    };
    let err = clients.go.clone().put(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not to its OutputID"), "{}", err.message());

    // Hashing the blob would read it, a frame at a time.
    let read = store_read_bytes(&server).await - before;
    assert_eq!(read, 0, "Puts read {} MiB of the blob to hash it", read >> 20);
    let get = v1::GoGetRequest { namespace: "ns".into(), action_id: vec![1; 32].into() };
    let hit = clients.go.clone().get(get).await.unwrap().into_inner();
    assert_eq!(hit.entry.map(|entry| entry.digest), Some(Some(digest.to_wire())));
    server.stop().await;
}

/// Entries are not blobs eviction could give back, and a job's lease may record them without
/// end: below the free-space floor none is stored, as no upload is.
#[tokio::test]
async fn below_the_free_space_floor_no_entry_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let body = noise(4096, 3);
    let digest = server.clients().await.write(&body).await;
    server.stop().await;

    // A floor no disk here has above it.
    let server = Server::start(dir.path(), &[("min_free_space", "1PiB")]).await;
    let entry = v1::GoEntry {
        output_id: Sha256::digest(&body).to_vec().into(),
        size: digest.size,
        digest: Some(digest.to_wire()),
        time_unix_nanos: 1,
    };
    let put = v1::GoPutRequest { namespace: "ns".into(), action_id: vec![2; 32].into(), entry: Some(entry) };
    let err = server.clients().await.go.put(put).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("min_free_space"), "{}", err.message());
    let get = v1::GoGetRequest { namespace: "ns".into(), action_id: vec![2; 32].into() };
    assert!(server.clients().await.go.get(get).await.unwrap().into_inner().entry.is_none());
    server.stop().await;
}
