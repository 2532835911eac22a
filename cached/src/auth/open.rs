//! Health and reflection streams need no token (probes and `grpcurl list` must work without
//! one), so no token's rate limit or revocation ever ends them, and a `Health/Watch` the server
//! has nothing more to say on stays open as long as its client likes. What they may hold is
//! therefore capped here: [`PER_PEER`] open-service streams per client address (an IPv6 /64
//! counts as one, as for connections) and [`TOTAL`] in all. `Health/Check` is unary and needs
//! no slot, so probes answer even while the caps are reached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http_body::Frame;

use crate::conn::PeerKey;
use crate::error::Error;

/// Open-service streams one client address may hold: a client that watches health holds one
/// per connection, and reflection tools one at a time.
pub const PER_PEER: usize = 16;
/// Open-service streams all clients together may hold (a few KiB each).
pub const TOTAL: usize = 1024;

#[derive(Default)]
struct Held {
    by_peer: HashMap<Option<PeerKey>, usize>,
    total: usize,
}

/// The open-service streams of one listener, by client address.
#[derive(Default)]
pub(super) struct OpenStreams {
    held: Mutex<Held>,
}

impl OpenStreams {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more stream of `peer`, or the refusal that names the cap it is at.
    pub(super) fn open(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<OpenSlot, Error> {
        let key = peer.map(PeerKey::of);
        let mut held = self.held();
        if held.total >= TOTAL {
            return Err(refusal(format!("the server already serves {TOTAL} such streams in all")));
        }
        let used = held.by_peer.entry(key).or_default();
        if *used >= PER_PEER {
            return Err(refusal(format!("this client address already holds {PER_PEER} of them")));
        }
        *used += 1;
        held.total += 1;
        Ok(OpenSlot { streams: Arc::clone(self), key })
    }

    fn close(&self, key: Option<PeerKey>) {
        let mut held = self.held();
        held.total = held.total.saturating_sub(1);
        if let Some(used) = held.by_peer.get_mut(&key) {
            *used = used.saturating_sub(1);
            if *used == 0 {
                held.by_peer.remove(&key);
            }
        }
    }
}

fn refusal(why: String) -> Error {
    Error::ResourceExhausted(format!(
        "too many health-watch and reflection streams without a token: {why}; close some, or \
         probe with grpc.health.v1.Health/Check, which is never refused this way"
    ))
}

/// One open-service stream's place, given back when its response body is dropped.
pub(super) struct OpenSlot {
    streams: Arc<OpenStreams>,
    key: Option<PeerKey>,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.streams.close(self.key);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its stream's slot (any guard that gives it back when
    /// dropped) for as long as the stream lasts.
    pub(super) struct Holding<B, S> {
        #[pin]
        inner: B,
        slot: S,
    }
}

impl<B, S> Holding<B, S> {
    pub(super) fn new(inner: B, slot: S) -> Self {
        Self { inner, slot }
    }
}

impl<B: http_body::Body, S> http_body::Body for Holding<B, S> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_and_all_together_are_capped_and_slots_come_back() {
        let streams = Arc::new(OpenStreams::default());
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let same_host: SocketAddr = "10.0.0.1:2000".parse().unwrap();
        let mut slots: Vec<OpenSlot> = (0..PER_PEER).map(|_| streams.open(Some(a)).unwrap()).collect();
        let Err(err) = streams.open(Some(same_host)) else { panic!("over the per-address cap") };
        assert!(err.to_string().contains("Health/Check"), "{err}");
        slots.pop();
        slots.push(streams.open(Some(same_host)).expect("a slot came back"));
        for n in 0..TOTAL - PER_PEER {
            let peer = SocketAddr::from(([10, 1, (n / 256) as u8, n as u8], 1));
            slots.push(streams.open(Some(peer)).unwrap());
        }
        assert!(streams.open(Some("10.9.9.9:1".parse().unwrap())).is_err(), "over the total");
        drop(slots);
        assert_eq!(streams.held().total, 0);
        assert!(streams.held().by_peer.is_empty());
    }
}
