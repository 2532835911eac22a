//! Slow and greedy clients against the live registry listener, held to the same limits as
//! gRPC's: a request whose headers never end is closed, a peer gets at most its share of
//! connections while others are served, and an upload whose client stops sending is cut off.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn registry(dir: &std::path::Path, settings: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut all = vec![("registry_listen", "127.0.0.1:0")];
    all.extend_from_slice(settings);
    let server = Server::start(dir, &all).await;
    let addr = server.registry_addr.expect("the registry listens");
    (server, addr)
}

/// A TCP connection to `server` from `local` (any address of 127.0.0.0/8 is this host).
async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closes `stream` (end of stream or an error) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response (a 408, say) before the close: keep waiting for the close.
            Ok(Ok(n)) => eprintln!("received {:?}", String::from_utf8_lossy(&buf[..n])),
        }
    }
}

/// The status line of `GET /v2/` on a new connection from `local`.
async fn version_check_from(local: &str, server: SocketAddr) -> String {
    let mut stream = connect_from(local, server).await;
    stream.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "no response to GET /v2/ from {local}");
    String::from_utf8_lossy(&response).lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_request_whose_headers_never_end_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = registry(dir.path(), &[("handshake_timeout", "1s")]).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n").await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(15)).await, "the unfinished request is still open");
    eprintln!("closed after {:?}", started.elapsed());
    assert_eq!(version_check_from("127.0.0.1", addr).await, "HTTP/1.1 200 OK");
    server.stop().await;
}

#[tokio::test]
async fn a_peer_over_its_connection_cap_is_refused_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("max_connections_per_peer", "3"), ("handshake_timeout", "60s")];
    let (server, addr) = registry(dir.path(), &settings).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    // Give the server the moment it needs to accept all three.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = connect_from("127.0.0.1", addr).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await, "a fourth connection was kept");
    assert_eq!(version_check_from("127.0.0.2", addr).await, "HTTP/1.1 200 OK", "another peer is served");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version_check_from("127.0.0.1", addr).await, "HTTP/1.1 200 OK", "slots come back");
    server.stop().await;
}

#[tokio::test]
async fn an_upload_whose_client_stops_sending_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = registry(dir.path(), &[("idle_timeout", "2s")]).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let digest = format!("sha256:{}", "0".repeat(64));
    let head = format!(
        "POST /v2/team/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: registry\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&[7u8; 4096]).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(20)).await, "the stalled upload is still open");
    eprintln!("closed after {:?}", started.elapsed());
    assert_eq!(version_check_from("127.0.0.1", addr).await, "HTTP/1.1 200 OK");
    server.stop().await;
}
