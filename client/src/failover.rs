//! Several cached replicas as one transport: `--server` (CACHED_ADDR) may list them separated
//! by commas. Calls go to one replica until a call cannot reach it (the connection is refused
//! or breaks before an answer); the calls after that go to the next one. The call that failed
//! is not repeated here: its caller sees the error and retries as it does against one server
//! (a lease stream reconnects, a completion is sent again), now to a replica that answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::transport::{Channel, Endpoint};

/// The addresses of a server list: `a,b,c`, blanks around each ignored.
pub fn servers(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|server| !server.is_empty()).collect()
}

#[derive(Clone)]
pub struct Failover {
    channels: Arc<[Channel]>,
    /// The replica calls go to now.
    current: Arc<AtomicUsize>,
}

impl Failover {
    pub fn single(channel: Channel) -> Self {
        Self { channels: Arc::from(vec![channel]), current: Arc::new(AtomicUsize::new(0)) }
    }

    /// Channels that connect on first use, to the first replica first.
    pub fn lazy(endpoints: &[Endpoint]) -> Self {
        let channels: Vec<Channel> = endpoints.iter().map(Endpoint::connect_lazy).collect();
        Self { channels: Arc::from(channels), current: Arc::new(AtomicUsize::new(0)) }
    }

    /// Connects to the first replica that answers (the others connect when they are needed);
    /// the reasons every replica was unreachable otherwise.
    pub async fn connect(endpoints: &[Endpoint]) -> Result<Self, String> {
        let mut reasons = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    let channels: Vec<Channel> = endpoints
                        .iter()
                        .enumerate()
                        .map(
                            |(other, endpoint)| {
                                if other == index { channel.clone() } else { endpoint.connect_lazy() }
                            },
                        )
                        .collect();
                    return Ok(Self {
                        channels: Arc::from(channels),
                        current: Arc::new(AtomicUsize::new(index)),
                    });
                }
                Err(err) => {
                    reasons.push(format!("{}: {}", endpoint.uri(), crate::connect::source_chain(&err)))
                }
            }
        }
        Err(reasons.join("; "))
    }

    /// How many replicas it knows.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies the channel it goes to.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        let mut channel = self.channels[index].clone();
        let (current, count) = (Arc::clone(&self.current), self.channels.len());
        Box::pin(async move {
            let result = match futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(err) => Err(err),
            };
            // Only a replica that could not be reached is left; an answer, even an error
            // status, says it is there.
            if result.is_err() && count > 1 {
                let next = (index + 1) % count;
                if current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    tracing::warn!(
                        next = next,
                        "a cached replica is unreachable; the next calls go to another"
                    );
                }
            }
            result.map(|response| response.map(Body::new)).map_err(Into::into)
        })
    }
}
