//! The response side of slow clients. Once a response stream hands hyper a frame, hyper asks
//! for the next one only when the client has opened its flow-control window again; a client
//! that stops reading therefore freezes the stream, and whatever produces it (a `Cas.Read`
//! holds a stream slot, a blocking thread and its buffered frames) waits with it. Nothing
//! polls a frozen stream, so each connection with open streams has a watchdog task that looks
//! at their clocks and closes the connection when one has waited on its client longer than the
//! connection's [`Pace`] allows: closing it is what frees everything the stream held.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::Frame;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::io::ConnState;
use super::{Connections, Pace};

/// The open response streams of one connection.
#[derive(Default)]
pub(crate) struct Streams {
    next: u64,
    clocks: HashMap<u64, Arc<Clock>>,
    watchdog: bool,
    pub(super) closed: bool,
}

/// How long one response stream has waited on its client.
#[derive(Debug)]
struct Clock {
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    /// Since when the stream's next frame waits for the client to take the last one.
    waiting_since: Option<Instant>,
    /// Earlier waits, together.
    waited: Duration,
    bytes: u64,
}

impl Clock {
    fn new() -> Self {
        // hyper polls a new response at once unless the client's window is already shut.
        let state = ClockState { waiting_since: Some(Instant::now()), waited: Duration::ZERO, bytes: 0 };
        Self { state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// hyper asks for the next frame: the client took the last one.
    fn stop_waiting(&self) {
        let mut state = self.lock();
        if let Some(since) = state.waiting_since.take() {
            state.waited += since.elapsed();
        }
    }

    /// A frame of `bytes` went to hyper; the next waits until the client makes room.
    fn handed_out(&self, bytes: u64) {
        let mut state = self.lock();
        state.bytes += bytes;
        state.waiting_since = Some(Instant::now());
    }

    fn overdue(&self, pace: &Pace, now: Instant) -> Option<String> {
        let state = self.lock();
        let since = state.waiting_since?;
        pace.overdue(state.waited, now.saturating_duration_since(since), state.bytes)
    }
}

/// A stream's place on its connection's watch, given up when the stream ends.
struct Watched {
    conn: Arc<ConnState>,
    id: u64,
    clock: Arc<Clock>,
}

impl Watched {
    fn start(connections: &Arc<Connections>, conn: Arc<ConnState>) -> Self {
        let clock = Arc::new(Clock::new());
        let id = {
            let mut streams = conn.streams();
            let id = streams.next;
            streams.next += 1;
            streams.clocks.insert(id, Arc::clone(&clock));
            if !std::mem::replace(&mut streams.watchdog, true) {
                // Ends once the connection closes or has no stream left to watch.
                crate::task::spawn("stream watchdog", watchdog(Arc::clone(connections), Arc::clone(&conn)))
                    .detach();
            }
            id
        };
        Self { conn, id, clock }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.conn.streams().clocks.remove(&self.id);
    }
}

/// How often a connection's streams are looked at: a stall is seen within a quarter of
/// `idle_timeout` (at most a second) of its deadline.
fn tick(pace: &Pace) -> Duration {
    (pace.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Watches `conn`'s streams while it has any; closes the connection when one is overdue.
async fn watchdog(connections: Arc<Connections>, conn: Arc<ConnState>) {
    let pace = connections.limits.pace;
    loop {
        tokio::time::sleep(tick(&pace)).await;
        let now = Instant::now();
        let overdue = {
            let mut streams = conn.streams();
            if streams.closed || streams.clocks.is_empty() {
                streams.watchdog = false;
                return;
            }
            streams.clocks.values().find_map(|clock| clock.overdue(&pace, now))
        };
        if let Some(why) = overdue {
            connections.cut.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(peer = %conn.peer, "closing a connection whose client stopped reading a response: {why}");
            conn.kill();
            conn.streams().watchdog = false;
            return;
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body on its connection's watch.
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        watched: Option<Watched>,
    }
}

impl<B: http_body::Body> http_body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(watched) = this.watched.as_ref() {
            watched.clock.stop_waiting();
        }
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if !frame.is_trailers() => {
                let bytes = frame.data_ref().map_or(0, |data| bytes::Buf::remaining(data) as u64);
                if let Some(watched) = this.watched.as_ref() {
                    watched.clock.handed_out(bytes);
                }
            }
            // Trailers, the end, or an error: nothing more will wait on the client.
            Poll::Ready(_) => *this.watched = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Tower layer that puts every response on its connection's watch (installed first in
/// `lib::run`, so refused calls are watched too).
#[derive(Clone)]
pub struct WatchLayer {
    connections: Arc<Connections>,
}

impl WatchLayer {
    pub fn new(connections: Arc<Connections>) -> Self {
        Self { connections }
    }
}

impl<S> tower::Layer<S> for WatchLayer {
    type Service = Watch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Watch { inner, connections: Arc::clone(&self.connections) }
    }
}

#[derive(Clone)]
pub struct Watch<S> {
    inner: S,
    connections: Arc<Connections>,
}

/// The peer of the connection a request came on.
fn peer<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref))
        .and_then(TcpConnectInfo::remote_addr)
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Watch<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<WatchedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let conn = peer(&request).and_then(|peer| self.connections.state_of(peer));
        let connections = Arc::clone(&self.connections);
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let watched = conn.map(|conn| Watched::start(&connections, conn));
            Ok(response.map(|inner| WatchedBody { inner, watched }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_counts_only_time_spent_waiting_on_the_client() {
        let pace = Pace { idle: Duration::from_millis(50), min_rate: 0 };
        let clock = Clock::new();
        clock.stop_waiting();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(clock.overdue(&pace, Instant::now()), None, "the server's own time does not count");
        clock.handed_out(100);
        assert_eq!(clock.overdue(&pace, Instant::now()), None);
        std::thread::sleep(Duration::from_millis(80));
        let why = clock.overdue(&pace, Instant::now()).expect("the client took nothing for 80 ms");
        assert!(why.contains("idle_timeout"), "{why}");
    }
}
