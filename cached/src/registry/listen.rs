//! The registry's listener, held to the limits gRPC connections are ([`crate::conn`]): a peer
//! holds at most `max_connections_per_peer` connections and `max_handshakes_per_peer` TLS
//! handshakes; a handshake, and then each request's headers, must arrive within
//! `handshake_timeout`; and a connection whose peer neither sends nor takes a byte for
//! `idle_timeout` while hyper waits on it is closed. Without these, a client that opens
//! connections and trickles (or stops) would hold the server's sockets and memory for ever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::conn::{Connections, PeerSlot};
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
        // wait on the peer by idle_timeout.
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
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout)
            // Otherwise hyper reads (to notice a close) while a handler works on a request
            // whose body it has read, and a handler slower than idle_timeout would look like
            // a client that stopped sending.
            .half_close(true)
            .serve_connection(TokioIo::new(Stalls::new(io, limits.pace.idle)), TowerToHyperService::new(app));
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, error = %err, "registry connection ended");
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that fails once it has waited `idle` on its peer with no byte moving either
    /// way: hyper may wait to read (for the next request, or a close) all through a long
    /// download, which is progress all the same.
    struct Stalls<T> {
        #[pin]
        inner: T,
        waits: Waits,
    }
}

impl<T> Stalls<T> {
    fn new(inner: T, idle: Duration) -> Self {
        Self { inner, waits: Waits { idle, read: None, write: None } }
    }
}

/// The deadlines of a pending read and a pending write.
struct Waits {
    idle: Duration,
    read: Option<Pin<Box<Sleep>>>,
    write: Option<Pin<Box<Sleep>>>,
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

impl Waits {
    fn of(&mut self, direction: Direction) -> &mut Option<Pin<Box<Sleep>>> {
        match direction {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        }
    }

    /// Bytes moved: every wait starts over. Polling the moved deadline registers this task
    /// again, so it wakes even if the direction that armed it is not polled before then.
    fn moved(&mut self, cx: &mut Context<'_>) {
        let deadline = tokio::time::Instant::now() + self.idle;
        for sleep in [&mut self.read, &mut self.write].into_iter().flatten() {
            sleep.as_mut().reset(deadline);
            let _ = sleep.as_mut().poll(cx);
        }
    }

    /// `poll` of `direction`, or a timeout error once it has waited `idle` since bytes last
    /// moved. `moved` says whether a ready `poll` moved any.
    fn within<R>(
        &mut self,
        direction: Direction,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
        moved: bool,
    ) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            *self.of(direction) = None;
            if moved {
                self.moved(cx);
            }
            return poll;
        }
        let idle = self.idle;
        let sleep = self.of(direction).get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer moved nothing for {} (idle_timeout)", humantime::format_duration(idle)),
            ))),
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
        this.waits.within(Direction::Read, cx, poll, moved)
    }
}

impl<T: AsyncWrite> AsyncWrite for Stalls<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        let moved = matches!(poll, Poll::Ready(Ok(written)) if written > 0);
        this.waits.within(Direction::Write, cx, poll, moved)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        this.waits.within(Direction::Write, cx, poll, false)
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
        let mut stalls = Stalls::new(server, Duration::from_millis(300));
        let mut client = client;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        stalls.read_exact(&mut buf).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = stalls.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }
}
