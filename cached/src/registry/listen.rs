//! The registry's listener, held to the limits gRPC connections are ([`crate::conn`]): a peer
//! holds at most `max_connections_per_peer` connections and `max_handshakes_per_peer` TLS
//! handshakes; a handshake, and then each request's headers, must arrive within
//! `handshake_timeout`; a connection whose peer neither sends nor takes a byte for
//! `idle_timeout` while hyper waits on it is closed; and a response (a blob download) whose
//! client takes it slower than `min_transfer_rate` once `idle_timeout` of waiting on it is
//! spent is cut off, by the same [`Pace`] `conn::watch` holds gRPC responses to. Without
//! these, a client that opens connections and trickles (or stops, or reads a byte now and
//! then) would hold the server's sockets, memory and stream slots (`max_concurrent_streams`)
//! for ever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::conn::{Connections, Pace, PeerSlot};
use crate::tls::Tls;

/// The address of the peer of a registry connection, plain or TLS.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer(pub SocketAddr);

/// How the listener serves each connection.
struct Serving {
    app: Router,
    tls: Option<Arc<Tls>>,
    connections: Arc<Connections>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the requests in progress
/// finish (the caller bounds how long).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Tls>>,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let serving = Arc::new(Serving { app, tls, connections });
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = serving.connections.accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let Some((stream, peer, slot)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (serving, watcher) = (Arc::clone(&serving), graceful.watcher());
        // Bounded by the limits above: the handshake and headers by handshake_timeout, every
        // wait on the peer by idle_timeout, a response by min_transfer_rate.
        crate::task::spawn("registry connection", async move {
            let _slot: PeerSlot = slot;
            serving.connection(stream, peer, watcher).await;
        })
        .detach();
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

impl Serving {
    async fn connection(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let Some(tls) = &self.tls else {
            return self.http(stream, peer, watcher).await;
        };
        let Some(handshake) = self.connections.admit_handshake(peer) else { return };
        let timeout = self.connections.limits().handshake_timeout;
        let accepted = tokio::time::timeout(timeout, tls.http1_acceptor().accept(stream)).await;
        drop(handshake);
        match accepted {
            Ok(Ok(stream)) => self.http(stream, peer, watcher).await,
            Ok(Err(err)) => tracing::info!(%peer, error = %err, "registry TLS handshake failed"),
            Err(_) => tracing::info!(%peer, "registry TLS handshake timed out"),
        }
    }

    async fn http<T>(&self, io: T, peer: SocketAddr, watcher: Watcher)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let limits = self.connections.limits();
        let app = self.app.clone().layer(axum::Extension(ConnectInfo(Peer(peer))));
        let io = Stalls::new(io, limits.pace, peer);
        // HTTP/1 answers one request at a time: a new one means the last response was sent, and
        // the next is held to the pace on its own (a connection that took one blob fast earns
        // nothing to spend on the next).
        let new_response = Arc::clone(&io.waits.sent.restart);
        let app = TowerToHyperService::new(app);
        let service = hyper::service::service_fn(move |request| {
            new_response.store(true, Ordering::Release);
            hyper::service::Service::call(&app, request)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout)
            // Otherwise hyper reads (to notice a close) while a handler works on a request
            // whose body it has read, and a handler slower than idle_timeout would look like
            // a client that stopped sending.
            .half_close(true)
            .serve_connection(TokioIo::new(io), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, error = %err, "registry connection ended");
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that fails once it has waited `idle` on its peer with no byte moving either
    /// way (hyper may wait to read, for the next request or a close, all through a long
    /// download, which is progress all the same), or once the response it writes has waited
    /// on its client longer than the [`Pace`] allows: each wait at most `idle`, all of them
    /// together at most `idle` plus what the bytes taken earn at `min_rate`. Only time spent
    /// with a write blocked (the client not taking bytes) counts, not time the handler spends
    /// producing them. Failing the connection drops the response, and with it the stream
    /// slot, reader and buffered frames it held.
    struct Stalls<T> {
        #[pin]
        inner: T,
        waits: Waits,
    }
}

impl<T> Stalls<T> {
    fn new(inner: T, pace: Pace, peer: SocketAddr) -> Self {
        let sent = Sent {
            restart: Arc::new(AtomicBool::new(false)),
            waiting_since: None,
            waited: Duration::ZERO,
            bytes: 0,
        };
        Self { inner, waits: Waits { pace, peer, read: None, write: None, sent } }
    }
}

/// The deadlines of a pending read and a pending write.
struct Waits {
    pace: Pace,
    peer: SocketAddr,
    read: Option<Pin<Box<Sleep>>>,
    write: Option<Pin<Box<Sleep>>>,
    sent: Sent,
}

/// How long the current response has waited on its client, as `conn::watch` clocks a gRPC
/// response stream.
struct Sent {
    /// Set when a request arrives: the response to it starts a clock of its own.
    restart: Arc<AtomicBool>,
    /// Since when a write waits for the client to take bytes.
    waiting_since: Option<Instant>,
    /// Earlier waits of this response, together.
    waited: Duration,
    /// Bytes of this response written.
    bytes: u64,
}

impl Waits {
    /// Bytes moved: the read's wait starts over. Polling the moved deadline registers this
    /// task again, so it wakes even if the read is not polled before then.
    fn moved(&mut self, cx: &mut Context<'_>) {
        if let Some(sleep) = &mut self.read {
            sleep.as_mut().reset(Instant::now() + self.pace.idle);
            let _ = sleep.as_mut().poll(cx);
        }
    }

    /// `poll` of a read, or a timeout error once it has waited `idle` since bytes last moved
    /// either way. `moved` says whether a ready `poll` moved any.
    fn read<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
        moved: bool,
    ) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.read = None;
            if moved {
                self.moved(cx);
            }
            return poll;
        }
        let idle = self.pace.idle;
        let sleep = self.read.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer moved nothing for {} (idle_timeout)", humantime::format_duration(idle)),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `poll` of a write (or flush) that wrote `written` bytes if ready, or a timeout error
    /// once the response has waited on its client longer than the pace allows. Bytes the
    /// peer sends meanwhile do not count: a client that stops reading must not keep its
    /// response alive by trickling bytes the other way.
    fn write<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
        written: u64,
    ) -> Poll<io::Result<R>> {
        let sent = &mut self.sent;
        if sent.restart.swap(false, Ordering::AcqRel) {
            sent.waited = Duration::ZERO;
            sent.bytes = 0;
            sent.waiting_since = sent.waiting_since.map(|_| Instant::now());
            self.write = None;
        }
        if poll.is_ready() {
            if let Some(since) = sent.waiting_since.take() {
                sent.waited += since.elapsed();
            }
            sent.bytes += written;
            self.write = None;
            if written > 0 {
                self.moved(cx);
            }
            return poll;
        }
        let since = *sent.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + self.pace.allowance(sent.waited, sent.bytes);
        let sleep = self.write.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let why = self
                    .pace
                    .overdue(sent.waited, since.elapsed(), sent.bytes)
                    .unwrap_or_else(|| "it took the response too slowly".to_owned());
                tracing::info!(peer = %self.peer, "closing a registry connection whose client stopped reading a response: {why}");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client stopped taking the response: {why}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Stalls<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        this.waits.read(cx, poll, moved)
    }
}

impl<T: AsyncWrite> AsyncWrite for Stalls<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        let written = match poll {
            Poll::Ready(Ok(written)) => written as u64,
            _ => 0,
        };
        this.waits.write(cx, poll, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        this.waits.write(cx, poll, 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::conn::{ConnLimits, Pace};

    #[tokio::test]
    async fn a_handler_slower_than_idle_is_not_a_stalled_client() {
        let idle = Duration::from_millis(300);
        let limits = ConnLimits {
            total: 8,
            per_peer: 8,
            handshakes_per_peer: 8,
            handshake_timeout: Duration::from_secs(5),
            pace: Pace { idle, min_rate: 0 },
        };
        let slow = move || async move {
            tokio::time::sleep(idle * 4).await;
            "done"
        };
        let app = Router::new().route("/slow", axum::routing::get(slow));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = crate::task::spawn(
            "registry under test",
            serve(listener, app, None, Connections::new(limits), async {
                let _ = stopped.await;
            }),
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with("done"), "{response:?}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_connection_fails_once_nothing_moved_for_idle() {
        let (client, server) = tokio::io::duplex(64);
        let pace = Pace { idle: Duration::from_millis(300), min_rate: 0 };
        let mut stalls = Stalls::new(server, pace, "127.0.0.1:1".parse().unwrap());
        let mut client = client;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        stalls.read_exact(&mut buf).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = stalls.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_response_its_client_takes_slower_than_the_minimum_rate_fails() {
        let idle = Duration::from_millis(400);
        let pace = Pace { idle, min_rate: 64 << 10 };
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stalls = Stalls::new(server, pace, "127.0.0.1:1".parse().unwrap());
        // The client takes 1 KiB every 50 ms (20 KiB/s): never idle, a third of the rate.
        let reader = crate::task::spawn("slow reader", async move {
            let mut buf = [0u8; 1024];
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        let started = tokio::time::Instant::now();
        let chunk = [7u8; 4096];
        let err = loop {
            if let Err(err) = stalls.write_all(&chunk).await {
                break err;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the slow client was never cut off");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("min_transfer_rate"), "{err}");
        // The grace (idle) plus what ~20 KiB/s earns at 64 KiB/s: well under two seconds.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        drop(stalls);
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn each_response_is_held_to_the_pace_on_its_own() {
        let idle = Duration::from_millis(300);
        let pace = Pace { idle, min_rate: 1 << 20 };
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stalls = Stalls::new(server, pace, "127.0.0.1:1".parse().unwrap());
        // A first response taken fast earns credit (1 MiB is a second at the rate)...
        let fast = crate::task::spawn("fast reader", async move {
            let mut buf = vec![0u8; 1 << 20];
            client.read_exact(&mut buf).await.unwrap();
            client
        });
        stalls.write_all(&vec![1u8; 1 << 20]).await.unwrap();
        let mut client = fast.await.unwrap();
        // ...that the next one may not spend: a new request restarts the clock.
        stalls.waits.sent.restart.store(true, Ordering::Release);
        let started = tokio::time::Instant::now();
        let err = loop {
            if let Err(err) = stalls.write_all(&[2u8; 4096]).await {
                break err;
            }
            let mut buf = [0u8; 16];
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = client.read(&mut buf).await;
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    }
}
