//! One token's unary requests may hold only its share of the server's memory while they are
//! received: calls that each send most of a large message and then nothing would otherwise
//! hold gigabytes until `request_timeout`, whatever the token's rate limit.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::Server;
use common::tokens::{as_token, secret_of, tokens_file};
use http_body::Frame;
use proto::Digest;
use proto::v1;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tower::ServiceExt;

/// A request body that sends what it is given and then waits.
struct Trickle(mpsc::Receiver<Bytes>);

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|bytes| bytes.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A FindMissing call of `token`, held open until the returned task is dropped: it says its
/// message is 16 MB long, sends `sent` bytes of it and then nothing. With the gRPC status it
/// was answered with, if one came within a second.
async fn held_call(channel: &Channel, token: &str, sent: usize) -> (Held, Option<String>) {
    let (sender, receiver) = mpsc::channel(4);
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&16_000_000u32.to_be_bytes());
    sender.send(Bytes::from(prefix)).await.unwrap();
    sender.send(Bytes::from(vec![0u8; sent])).await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri("/cached.v1.Cas/FindMissing")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", secret_of(token)))
        .body(tonic::body::Body::new(Trickle(receiver)))
        .unwrap();
    let (answered, mut answer) = mpsc::channel(1);
    let call = channel.clone().oneshot(request);
    let task = cached::task::spawn("held call", async move {
        if let Ok(response) = call.await {
            let _ = answered.send(status_of(response.headers())).await;
        }
        // Held: the response's body is never read.
        std::future::pending::<()>().await;
    });
    let status = tokio::time::timeout(Duration::from_secs(1), answer.recv()).await.ok().flatten();
    (Held { _sender: sender, _task: task }, status)
}

/// The gRPC status in a response's headers, and whether it says when to retry.
fn status_of(headers: &http::HeaderMap) -> String {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let mut status = header("grpc-status").unwrap_or_else(|| "(none in the headers)".to_owned());
    if header(proto::RETRY_AFTER_MS).is_some() {
        status.push_str(", retry after");
    }
    status
}

/// A call held open (its body's sender, and the task awaiting its answer).
struct Held {
    _sender: mpsc::Sender<Bytes>,
    _task: cached::task::Task<()>,
}

#[tokio::test]
async fn a_token_holds_only_its_share_of_request_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &["pr", "main"], "read,cas-write");
    let settings = [("tokens_file", tokens.as_str()), ("max_request_bytes_per_token", "8MiB")];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();

    let mut held = Vec::new();
    for _ in 0..3 {
        let (sender, status) = held_call(&channel, "pr", 2 << 20).await;
        assert_eq!(status, None, "a call within the share is received");
        held.push(sender);
    }
    // A fourth would hold more than 8 MiB: it is answered at once, and told to retry.
    let (fourth, status) = held_call(&channel, "pr", 3 << 20).await;
    assert_eq!(status.as_deref(), Some("8, retry after"), "RESOURCE_EXHAUSTED, to retry");

    // Another token's calls go on meanwhile.
    let mut cas = v1::cas_client::CasClient::new(channel.clone());
    let request = v1::FindMissingRequest { digests: vec![Digest::of(b"x").to_wire()] };
    cas.find_missing(as_token(request, "main")).await.expect("another token is served");
    // The held bytes come back when the calls end.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (again, status) = held_call(&channel, "pr", 3 << 20).await;
    assert_eq!(status, None, "the share came back");
    drop((again, fourth, channel));
    server.stop().await;
}
