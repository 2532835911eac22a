//! Stored frames carry nothing beyond their content: an upload whose frames hide extra bytes
//! (a zstd skippable frame, trailing bytes, a second frame, a frame far larger than what it
//! holds) is refused on every upload path and stores nothing. Such padding once let a 1-byte
//! blob cost 16 MiB on every read.

mod common;

use bytes::Bytes;
use common::{Clients, Server, frames, noise};
use proto::v1::{self, Compression};
use proto::{Digest, FRAME_SIZE};
use tonic::Code;

/// A zstd skippable frame (magic 0x184D2A50) holding `len` bytes.
fn skippable(len: usize) -> Vec<u8> {
    let mut out = 0x184D_2A50u32.to_le_bytes().to_vec();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.resize(8 + len, 0xAB);
    out
}

/// The one frame of `blob` with `extra` after it.
fn padded(blob: &[u8], extra: &[u8]) -> Bytes {
    let mut frame = frames(blob).remove(0).to_vec();
    frame.extend_from_slice(extra);
    Bytes::from(frame)
}

/// What each way of hiding bytes in a frame looks like, by name.
fn tampered(blob: &[u8]) -> Vec<(&'static str, Bytes)> {
    let half = blob.len() / 2;
    let two_frames = [frames(&blob[..half]).remove(0), frames(&blob[half..]).remove(0)].concat();
    let mut skippable_first = skippable(1 << 10);
    skippable_first.extend_from_slice(&frames(blob).remove(0));
    vec![
        ("a skippable frame after", padded(blob, &skippable(1 << 20))),
        ("a skippable frame before", Bytes::from(skippable_first)),
        ("trailing bytes", padded(blob, b"trailing junk after the frame")),
        ("a few trailing bytes", padded(blob, b"xy")),
        ("two frames in one", Bytes::from(two_frames)),
        ("no content size", Bytes::from(sizeless(blob))),
    ]
}

fn sizeless(blob: &[u8]) -> Vec<u8> {
    let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
    compressor.include_contentsize(false).unwrap();
    compressor.compress(blob).unwrap()
}

async fn assert_nothing_stored(clients: &Clients, digest: Digest) {
    assert!(!clients.is_stored(digest).await);
    let store = clients.store_stats().await;
    assert_eq!((store.blobs, store.stored_bytes), (0, 0), "nothing was stored");
}

#[tokio::test]
async fn cas_write_refuses_frames_that_carry_extra_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(1000, 1);
    let digest = Digest::of(&blob);
    for (what, frame) in tampered(&blob) {
        let err = clients.write_as(digest, vec![frame]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
        assert!(err.message().contains("nothing was stored"), "{what}: {}", err.message());
        assert_nothing_stored(&clients, digest).await;
    }
    // The last frame of a longer blob, too.
    let long = noise(FRAME_SIZE + 10, 2);
    let mut framed = frames(&long);
    framed[1] = padded(&long[FRAME_SIZE..], &skippable(64));
    let err = clients.write_as(Digest::of(&long), framed).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_nothing_stored(&clients, Digest::of(&long)).await;
    // The honest upload still works.
    clients.write(&blob).await;
    assert!(clients.is_stored(digest).await);
    server.stop().await;
}

#[tokio::test]
async fn batch_write_refuses_frames_that_carry_extra_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(1000, 3);
    let digest = Digest::of(&blob);
    let cases = tampered(&blob);
    let blobs = cases
        .iter()
        .map(|(_, frame)| v1::batch_write_request::Blob {
            digest: Some(digest.to_wire()),
            compression: Compression::Zstd as i32,
            data: frame.clone(),
        })
        .collect();
    let reply = clients.cas.clone().batch_write(v1::BatchWriteRequest { blobs }).await.unwrap().into_inner();
    for ((what, _), result) in cases.iter().zip(&reply.results) {
        let status = result.status.as_ref().unwrap();
        assert_eq!(status.code, Code::InvalidArgument as i32, "{what}: {}", status.message);
    }
    assert_nothing_stored(&clients, digest).await;
    server.stop().await;
}

#[tokio::test]
async fn a_frame_far_larger_than_its_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    // Valid zstd, no extra frame: raw blocks of a few bytes each, so the frame is many times
    // the size of what it holds (a fair encoder never goes beyond zstd's compress bound).
    let blob = noise(4 << 10, 4);
    let mut frame = Vec::new();
    frame.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header: single segment, 2-byte content size (value - 256).
    frame.push(0b0110_0000);
    frame.extend_from_slice(&((blob.len() - 256) as u16).to_le_bytes());
    let pieces: Vec<&[u8]> = blob.chunks(1).collect();
    for (i, piece) in pieces.iter().enumerate() {
        // A raw block of one byte; the last one marked last.
        let header = ((piece.len() as u32) << 3) | u32::from(i + 1 == pieces.len());
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(piece);
    }
    assert_eq!(zstd::bulk::decompress(&frame, blob.len()).unwrap(), blob, "a valid frame");
    let err = clients.write_as(Digest::of(&blob), vec![Bytes::from(frame)]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("bound"), "{}", err.message());
    assert_nothing_stored(&clients, Digest::of(&blob)).await;
    server.stop().await;
}

/// A zstd frame of 1 MiB of zeros is about 40 bytes: sent one to a message, such frames were
/// a run of tiny HTTP/2 DATA frames, and past h2's budget for them the receiving side ended
/// the whole connection (a runner agent's lease stream and its other tenants' calls with it).
/// A zero-filled output, as a binary with a large zeroed array links to, went neither up nor
/// down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_of_zeros_goes_up_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let client = cached_client::Client::connect(&format!("http://{}", server.addr), &Default::default())
        .await
        .unwrap();
    let zeros = dir.path().join("zeros");
    std::fs::File::create(&zeros).unwrap().set_len(512 << 20).unwrap();
    let digests = cached_client::transfer::upload_files(&client, std::slice::from_ref(&zeros), 1)
        .await
        .expect("the upload of zeros");
    let back = dir.path().join("back");
    cached_client::transfer::download_to_file(&client, digests[0], &back)
        .await
        .expect("the download of zeros");
    assert_eq!(std::fs::metadata(&back).unwrap().len(), 512 << 20);
    server.stop().await;
}
