//! The content-addressed store over real gRPC and a real RocksDB.

mod common;

use bytes::Bytes;
use common::{Server, data, frames, header, noise};
use proto::v1::{self, Compression};
use proto::{Digest, FRAME_SIZE};
use tonic::Code;

const SIZES: [usize; 5] = [0, 1, FRAME_SIZE - 1, FRAME_SIZE + 1, 64 << 20];

#[tokio::test]
async fn blobs_round_trip_at_frame_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    for (seed, size) in SIZES.into_iter().enumerate() {
        let blob = noise(size, seed as u64);
        let digest = clients.write(&blob).await;
        assert!(clients.is_stored(digest).await, "{size}");
        for accept in [Compression::Zstd, Compression::Identity] {
            let read = clients.read(digest, 0, 0, accept).await.unwrap();
            assert!(read == blob, "size {size} read back differently as {accept:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn uncompressed_uploads_and_range_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(3 * FRAME_SIZE + 17, 9);
    let digest = Digest::of(&blob);
    // Identity uploads may be cut anywhere; the server frames them.
    let mut messages = vec![header(digest, Compression::Identity)];
    messages.extend(blob.chunks(300_001).map(|piece| data(Bytes::copy_from_slice(piece))));
    let response = clients.cas.clone().write(futures::stream::iter(messages)).await.unwrap().into_inner();
    assert!(!response.already_present);
    for (offset, limit) in
        [(0, 10), (FRAME_SIZE as u64 - 3, 7), (2 * FRAME_SIZE as u64 + 5, 0), (blob.len() as u64, 0)]
    {
        for accept in [Compression::Zstd, Compression::Identity] {
            let read = clients.read(digest, offset, limit, accept).await.unwrap();
            let end = if limit == 0 { blob.len() } else { (offset + limit) as usize };
            assert!(read == blob[offset as usize..end], "offset {offset} limit {limit} {accept:?}");
        }
    }
    let past_end = clients.read(digest, blob.len() as u64 + 1, 0, Compression::Zstd).await.unwrap_err();
    assert_eq!(past_end.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn batches_of_small_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blobs: Vec<Vec<u8>> = (0..20).map(|i| noise(i * 1000, i as u64)).collect();
    let request = v1::BatchWriteRequest {
        blobs: blobs
            .iter()
            .enumerate()
            .map(|(i, blob)| {
                let compressed = i % 2 == 0 && !blob.is_empty();
                v1::batch_write_request::Blob {
                    digest: Some(Digest::of(blob).to_wire()),
                    compression: if compressed { Compression::Zstd } else { Compression::Identity } as i32,
                    data: if compressed { frames(blob).remove(0) } else { Bytes::copy_from_slice(blob) },
                }
            })
            .collect(),
    };
    // One bad blob among them (odd: sent uncompressed): refused alone, in its place, whichever
    // of the server's write lanes it falls in.
    let mut request = request;
    const BAD: usize = 13;
    request.blobs[BAD].data = Bytes::from(noise(BAD * 1000, 99));
    let sent: Vec<_> = request.blobs.iter().map(|blob| blob.digest.clone()).collect();
    let written = clients.cas.clone().batch_write(request).await.unwrap().into_inner();
    let answered: Vec<_> = written.results.iter().map(|result| result.digest.clone()).collect();
    assert_eq!(answered, sent, "one result per blob, in the order sent");
    for (index, result) in written.results.iter().enumerate() {
        let code = result.status.as_ref().unwrap().code;
        let expected = if index == BAD { Code::InvalidArgument as i32 } else { 0 };
        assert_eq!(code, expected, "blob {index}: {result:?}");
    }

    let unknown = Digest::of(b"never stored");
    let mut digests: Vec<_> = blobs.iter().map(|b| Digest::of(b).to_wire()).collect();
    digests.push(unknown.to_wire());
    let read = clients
        .cas
        .clone()
        .batch_read(v1::BatchReadRequest { digests, accept: Compression::Identity as i32 })
        .await
        .unwrap()
        .into_inner();
    for (index, (result, blob)) in read.results.iter().zip(&blobs).enumerate() {
        if index == BAD {
            assert_eq!(result.status.as_ref().unwrap().code, Code::NotFound as i32, "nothing stored");
            continue;
        }
        assert_eq!(result.status.as_ref().unwrap().code, 0);
        assert!(result.data == blob[..]);
    }
    assert_eq!(read.results.last().unwrap().status.as_ref().unwrap().code, Code::NotFound as i32);
    server.stop().await;
}

#[tokio::test]
async fn wrong_digest_or_size_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(2 * FRAME_SIZE + 5, 1);
    let right = Digest::of(&blob);

    let wrong_hash = Digest { hash: *blake3::hash(b"something else").as_bytes(), size: right.size };
    let err = clients.write_as(wrong_hash, frames(&blob)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nothing was stored"), "{}", err.message());

    for size in [right.size - 1, right.size + 1] {
        let err = clients.write_as(Digest { size, ..right }, frames(&blob)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "size {size}: {}", err.message());
    }
    let mut tampered = blob.clone();
    tampered[FRAME_SIZE + 3] ^= 1;
    let err = clients.write_as(right, frames(&tampered)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert!(!clients.is_stored(right).await);
    assert!(!clients.is_stored(wrong_hash).await);
    let store = clients.store_stats().await;
    assert_eq!((store.blobs, store.stored_bytes), (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn truncated_or_aborted_uploads_stay_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(3 * FRAME_SIZE, 2);
    let digest = Digest::of(&blob);

    // The stream ends cleanly after two of three frames.
    let mut two_frames = frames(&blob);
    two_frames.pop();
    let err = clients.write_as(digest, two_frames).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ended after"), "{}", err.message());

    // The client goes away in the middle of the stream.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(header(digest, Compression::Zstd)).await.unwrap();
    sender.send(data(frames(&blob).remove(0))).await.unwrap();
    let mut cas = clients.cas.clone();
    let upload = cached::task::spawn("upload", async move {
        cas.write(tokio_stream::wrappers::ReceiverStream::new(receiver)).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    upload.abort();
    drop(sender);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    assert!(!clients.is_stored(digest).await);
    server.stop().await;
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    assert!(!clients.is_stored(digest).await);
    let store = clients.store_stats().await;
    assert_eq!((store.blobs, store.stored_bytes), (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn concurrent_writers_of_one_digest_store_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(3 * FRAME_SIZE + 11, 3);
    let digest = Digest::of(&blob);
    let uploads: Vec<_> = (0..16)
        .map(|_| {
            let (clients, frames) = (clients.clone(), frames(&blob));
            cached::task::spawn("upload", async move { clients.write_as(digest, frames).await })
        })
        .collect();
    let mut stored_bytes = 0;
    for upload in uploads {
        let response = upload.await.unwrap().expect("every writer succeeds");
        stored_bytes = stored_bytes.max(response.stored_bytes);
    }
    let store = clients.store_stats().await;
    assert_eq!(store.blobs, 1);
    assert_eq!(store.raw_bytes, digest.size);
    assert_eq!(store.stored_bytes, stored_bytes, "exactly one copy is accounted for");
    assert!(clients.read(digest, 0, 0, Compression::Zstd).await.unwrap() == blob);
    server.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let blob = noise(FRAME_SIZE + 1, 4);
    let server = Server::start(dir.path(), &[]).await;
    let digest = server.clients().await.write(&blob).await;
    let before = server.clients().await.store_stats().await;
    server.stop().await;

    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    assert!(clients.read(digest, 0, 0, Compression::Identity).await.unwrap() == blob);
    let after = clients.store_stats().await;
    assert_eq!(
        (after.blobs, after.raw_bytes, after.stored_bytes),
        (before.blobs, before.raw_bytes, before.stored_bytes)
    );
    server.stop().await;
}

#[tokio::test]
async fn missing_blob_reads_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let err = clients.read(Digest::of(b"absent"), 0, 0, Compression::Zstd).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let malformed = v1::ReadRequest {
        digest: Some(v1::Digest { hash: vec![1, 2, 3].into(), size_bytes: 3 }),
        ..Default::default()
    };
    let err = clients.cas.clone().read(malformed).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("32 bytes"), "{}", err.message());
    server.stop().await;
}
