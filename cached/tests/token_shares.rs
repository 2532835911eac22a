//! One token may hold only its share of the server-wide upload and stream pools: a tenant that
//! opens every upload slot (a few bytes each, then nothing, within `idle_timeout`) would
//! otherwise refuse every other tenant's uploads.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::tokens::{as_token, tokens_file};
use common::{Server, data, header, noise};
use proto::Digest;
use proto::v1::cas_client::CasClient;
use proto::v1::{self, Compression};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// An upload that sends its header and then holds its slot until `sender` is dropped.
async fn held_upload(
    cas: &CasClient<Channel>,
    token: &str,
    seed: u8,
) -> (mpsc::Sender<v1::WriteRequest>, cached::task::Task<Result<v1::WriteResponse, tonic::Status>>) {
    held_upload_with(cas, token, Digest::of(&[seed])).await
}

/// An upload of `digest` that sends its header and then what is sent on the returned sender.
async fn held_upload_with(
    cas: &CasClient<Channel>,
    token: &str,
    digest: Digest,
) -> (mpsc::Sender<v1::WriteRequest>, cached::task::Task<Result<v1::WriteResponse, tonic::Status>>) {
    let (sender, receiver) = mpsc::channel(4);
    sender.send(header(digest, Compression::Identity)).await.unwrap();
    let (mut cas, request) = (cas.clone(), as_token(ReceiverStream::new(receiver), token));
    let task =
        cached::task::spawn("held upload", async move { cas.write(request).await.map(|r| r.into_inner()) });
    // The call is admitted (and its slots taken) once its headers reach the server.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (sender, task)
}

async fn upload(cas: &CasClient<Channel>, token: &str, bytes: &[u8]) -> Result<Digest, tonic::Status> {
    let digest = Digest::of(bytes);
    let mut messages = vec![header(digest, Compression::Identity)];
    messages.extend(bytes.chunks(1 << 20).map(|piece| data(Bytes::copy_from_slice(piece))));
    cas.clone().write(as_token(futures::stream::iter(messages), token)).await?;
    Ok(digest)
}

#[tokio::test]
async fn a_token_holds_only_its_share_of_uploads_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &["pr", "main"], "read,cas-write");
    let settings = [
        ("tokens_file", tokens.as_str()),
        ("max_uploads_per_token", "2"),
        ("max_streams_per_token", "3"),
        ("idle_timeout", "30s"),
    ];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let cas = server.clients().await.cas;

    let first = held_upload(&cas, "pr", 1).await;
    let second = held_upload(&cas, "pr", 2).await;
    let err = upload(&cas, "pr", b"a third upload").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_uploads_per_token") && err.message().contains("`pr`"), "{err:?}");
    // A share comes back: the refusal says when to try again, so clients retry rather than stop.
    assert!(err.metadata().get(proto::RETRY_AFTER_MS).is_some(), "{err:?}");
    upload(&cas, "main", b"another tenant's upload").await.expect("main has its own share");

    // Reads count against the token's streams: two uploads and one unread download fill three.
    let large = upload(&cas, "main", &common::noise(16 << 20, 3)).await.unwrap();
    let read = |token: &str| {
        let request = v1::ReadRequest { digest: Some(large.to_wire()), ..Default::default() };
        let mut cas = cas.clone();
        let request = as_token(request, token);
        async move { cas.read(request).await.map(tonic::Response::into_inner) }
    };
    let unread = read("pr").await.expect("a third stream");
    let err = read("pr").await.map(drop).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_streams_per_token"), "{err:?}");
    drop(read("main").await.expect("main reads"));

    // Slots come back when the calls end.
    drop((first.0, second.0, unread));
    // Their streams ended without a byte of their blobs.
    assert!(first.1.await.unwrap().is_err() && second.1.await.unwrap().is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    upload(&cas, "pr", b"after the others ended").await.expect("the share came back");
    drop(read("pr").await.expect("a stream again"));
    server.stop().await;
}

/// Per-token caps alone let two tokens hold the whole pool (here 4 + 2 of 6 uploads), and a
/// third tenant was refused until they let go: a token growing what it holds now leaves room
/// for a token that holds none.
#[tokio::test]
async fn a_few_tokens_cannot_hold_the_whole_upload_pool() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &["pr-1", "pr-2", "main"], "read,cas-write");
    let settings = [
        ("tokens_file", tokens.as_str()),
        ("max_concurrent_uploads", "6"),
        ("max_uploads_per_token", "4"),
        ("idle_timeout", "30s"),
    ];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let cas = server.clients().await.cas;
    let mut held = Vec::new();
    for (token, seed) in [("pr-1", 10u8), ("pr-2", 20)] {
        for n in 0..4 {
            let (sender, task) = held_upload(&cas, token, seed + n).await;
            if task.is_finished() {
                let err = task.await.unwrap().unwrap_err();
                assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
                break;
            }
            held.push((sender, task));
        }
    }
    upload(&cas, "main", b"a tenant that holds no upload").await.expect("room left for main");
    let err = upload(&cas, "pr-2", b"one more").await.unwrap_err();
    assert!(err.message().contains("the rest of max_concurrent_uploads is kept"), "{err:?}");
    drop(held);
    server.stop().await;
}

/// An upload's written bytes sit on the disk until it commits, where eviction cannot reach
/// them: one token's unfinished uploads may hold only its share (`max_upload_bytes_per_token`),
/// or uploads held open would keep the disk below its floor for every tenant.
#[tokio::test]
async fn a_tokens_unfinished_uploads_hold_only_its_share_of_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &["pr", "main"], "read,cas-write");
    let settings =
        [("tokens_file", tokens.as_str()), ("max_upload_bytes_per_token", "4MiB"), ("idle_timeout", "30s")];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let cas = server.clients().await.cas;

    // 3 MiB written of an 8 MiB blob, then nothing.
    let blob = noise(8 << 20, 1);
    let (held, task) = held_upload_of(&cas, "pr", &blob, 3).await;
    let err = upload(&cas, "pr", &noise(2 << 20, 2)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_upload_bytes_per_token"), "{err:?}");
    upload(&cas, "main", &noise(2 << 20, 3)).await.expect("another token has its own share");
    drop((held, task));
    tokio::time::sleep(Duration::from_millis(300)).await;
    upload(&cas, "pr", &noise(2 << 20, 2)).await.expect("the share came back");
    server.stop().await;
}

/// An upload of `blob` that sends its first `pieces` MiB and then holds on.
async fn held_upload_of(
    cas: &CasClient<Channel>,
    token: &str,
    blob: &[u8],
    pieces: usize,
) -> (mpsc::Sender<v1::WriteRequest>, cached::task::Task<Result<v1::WriteResponse, tonic::Status>>) {
    let (sender, task) = held_upload_with(cas, token, Digest::of(blob)).await;
    for piece in blob.chunks(1 << 20).take(pieces) {
        sender.send(data(Bytes::copy_from_slice(piece))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    (sender, task)
}
