//! One accepted connection as tonic reads and writes it: it gives its peer's slot back when it
//! closes, fails once `handshake_timeout` passes without the 24-byte HTTP/2 preface (hyper would
//! wait for it for ever), and fails at once when the stream watch kills it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::PeerSlot;
use super::watch::Streams;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// What the stream watch shares with the connection it may kill.
pub(crate) struct ConnState {
    pub(super) peer: SocketAddr,
    killed: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
    pub(super) streams: Mutex<Streams>,
}

impl ConnState {
    pub(super) fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            killed: AtomicBool::new(false),
            read: AtomicWaker::new(),
            write: AtomicWaker::new(),
            streams: Mutex::new(Streams::default()),
        }
    }

    /// Makes the connection's next read and write fail, and wakes it so that happens now.
    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.read.wake();
        self.write.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    pub(super) fn streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pin_project_lite::pin_project! {
    pub struct Conn<T> {
        #[pin]
        inner: T,
        state: Arc<ConnState>,
        preface: Option<Pin<Box<Sleep>>>,
        preface_left: usize,
        handshake_timeout: Duration,
        slot: PeerSlot,
    }

    impl<T> PinnedDrop for Conn<T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.state.streams().closed = true;
            this.slot.connections.closed(this.state.peer, this.state);
        }
    }
}

impl<T> Conn<T> {
    pub(super) fn new(inner: T, state: Arc<ConnState>, slot: PeerSlot, handshake_timeout: Duration) -> Self {
        Self {
            inner,
            state,
            preface: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
            preface_left: PREFACE_LEN,
            handshake_timeout,
            slot,
        }
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by cached: a stream's client stalled")
}

impl<T: AsyncRead> AsyncRead for Conn<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.state.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                *this.preface_left = this.preface_left.saturating_sub(buf.filled().len() - before);
                if *this.preface_left == 0 {
                    *this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                // Registered before the check, so a kill after it still wakes this task.
                this.state.read.register(cx.waker());
                if this.state.is_killed() {
                    return Poll::Ready(Err(killed()));
                }
                match this.preface.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no HTTP/2 preface within {} (handshake_timeout)",
                            humantime::format_duration(*this.handshake_timeout)
                        ),
                    ))),
                    _ => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite> Conn<T> {
    /// Runs a write-side poll unless the connection was killed, and makes a kill wake it.
    fn write_side<R>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let this = self.project();
        if this.state.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        match poll(this.inner, cx) {
            Poll::Pending => {
                this.state.write.register(cx.waker());
                if this.state.is_killed() { Poll::Ready(Err(killed())) } else { Poll::Pending }
            }
            ready => ready,
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for Conn<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_side(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_side(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_side(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Conn<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
