//! Slow and greedy clients against the live server: a connection that never sends the HTTP/2
//! preface is closed, a peer gets at most its share of connections while others are served, a
//! `Cas.Read` client that stops reading is cut off and its stream slot freed, and an upload
//! that trickles is cut off at the minimum transfer rate.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, data, header, noise};
use futures::StreamExt;
use proto::Digest;
use proto::v1::{self, Compression};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A TCP connection to `server` from `local` (any address of 127.0.0.0/8 is this host).
async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closes `stream` (end of stream or an error) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // The server's own SETTINGS frame, if it got that far: keep waiting.
            Ok(Ok(_)) => {}
        }
    }
}

async fn channel_from(local: &str, server: &Server) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .local_address(Some(local.parse::<IpAddr>().unwrap()))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn stats_from(local: &str, server: &Server) -> Result<(), String> {
    let channel = channel_from(local, server).await.map_err(|err| format!("{err:?}"))?;
    let mut stats = v1::stats_client::StatsClient::new(channel);
    stats.get(v1::StatsRequest {}).await.map(drop).map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn a_connection_that_never_sends_the_preface_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("handshake_timeout", "1s")]).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(15)).await, "the silent connection is still open");
    eprintln!("closed after {:?}", started.elapsed());
    stats_from("127.0.0.1", &server).await.expect("a client that speaks is served");
    server.stop().await;
}

#[tokio::test]
async fn a_peer_over_its_connection_cap_is_refused_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("max_connections_per_peer", "3"), ("handshake_timeout", "60s")];
    let server = Server::start(dir.path(), &settings).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", server.addr).await);
    }
    // Give the server the moment it needs to accept all three.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect_from("127.0.0.1", server.addr).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await, "a fourth connection from one peer");
    stats_from("127.0.0.2", &server).await.expect("another peer is served");
    assert!(stats_from("127.0.0.1", &server).await.is_err(), "the full peer gets no new connection");

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = stats_from("127.0.0.1", &server).await {
        assert!(Instant::now() < deadline, "a freed slot is never given back: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = server.metrics().await;
    assert!(!metrics.contains("cached_connections_refused_total 0\n"), "refusals are counted:\n{metrics}");
    // Connections still waiting for their preface would hold up a graceful stop.
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn a_cas_read_client_that_stops_reading_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("max_concurrent_streams", "1"), ("idle_timeout", "1s")];
    let server = Server::start(dir.path(), &settings).await;
    // Larger than the client's flow-control window and the server's buffers together.
    let blob = noise(32 << 20, 5);
    let digest = server.clients().await.write(&blob).await;
    let read = |digest: Digest| v1::ReadRequest {
        digest: Some(digest.to_wire()),
        offset: 0,
        limit: 0,
        accept: Compression::Zstd as i32,
    };

    let stalled_channel = channel_from("127.0.0.1", &server).await.unwrap();
    let mut stalled_cas = v1::cas_client::CasClient::new(stalled_channel).max_decoding_message_size(64 << 20);
    let mut stalled = stalled_cas.read(read(digest)).await.unwrap().into_inner();
    stalled.message().await.unwrap().expect("a first message");
    // Now it reads nothing more, while the server has the whole blob to send.

    let started = Instant::now();
    loop {
        let clients = server.clients().await;
        match clients.read(digest, 0, 0, Compression::Zstd).await {
            Ok(bytes) => {
                assert!(bytes == blob, "the next reader gets the blob");
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the stalled reader still holds the only stream slot: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    eprintln!("slot free after {:?}", started.elapsed());
    let mut rest = 0usize;
    let outcome = loop {
        match stalled.next().await {
            Some(Ok(message)) => rest += message.data.len(),
            Some(Err(status)) => break Err(status),
            None => break Ok(()),
        }
    };
    assert!(outcome.is_err(), "the stalled reader was cut off, not served on ({rest} more bytes)");
    assert!(server.metrics().await.contains("cached_connections_cut_total 1"));
    server.stop().await;
}

#[tokio::test]
async fn an_upload_that_trickles_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("idle_timeout", "1s"), ("min_transfer_rate", "1MiB")];
    let server = Server::start(dir.path(), &settings).await;
    let clients = server.clients().await;
    let piece = Bytes::from_static(b"0123456789");
    let content: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * 30).collect();
    let digest = Digest::of(&content);

    let (sender, receiver) = mpsc::channel(4);
    let mut cas = clients.cas.clone();
    let upload = cached::task::spawn("upload", async move { cas.write(ReceiverStream::new(receiver)).await });
    sender.send(header(digest, Compression::Identity)).await.unwrap();
    let started = Instant::now();
    // Each gap is well under idle_timeout, the average far under min_transfer_rate.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if upload.is_finished() || sender.send(data(piece.clone())).await.is_err() {
            break;
        }
    }
    let cut_after = started.elapsed();
    drop(sender);
    let err = upload.await.unwrap().expect_err("a trickle is cut off");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("min_transfer_rate"), "{}", err.message());
    assert!(cut_after < Duration::from_secs(8), "cut off after {cut_after:?}");
    assert!(!clients.is_stored(digest).await);
    server.stop().await;
}
