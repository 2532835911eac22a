//! Connections: how many a peer may open, how long one may take to start, and how long its
//! streams may wait on the client. Every gRPC connection comes through here ([`incoming_tcp`],
//! `tls::incoming`), so none can hold a slot of the server by doing nothing:
//!
//! - a peer (an IPv4 address, an IPv6 /64) holds at most `max_connections_per_peer`
//!   connections and `max_handshakes_per_peer` TLS handshakes, and all peers together at most
//!   `max_connections` (many addresses, an IPv6 /48 say, must not exhaust the open-file
//!   limit); the excess is closed at accept;
//! - a connection must finish its TLS handshake, and then send the HTTP/2 preface, within
//!   `handshake_timeout` each ([`io::Conn`]);
//! - a response stream whose client takes nothing for `idle_timeout`, or reads slower than
//!   `min_transfer_rate` once that grace is spent, gets its connection closed ([`watch`]):
//!   HTTP/2 offers no other way to end a stream the server is blocked writing to. Request
//!   streams are held to the same pace by `auth::idle`.

mod io;
pub mod watch;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};

pub use io::Conn;
use io::ConnState;
pub use watch::WatchLayer;

use crate::config::Limits;

/// How long a stream may wait on its client: each wait at most `idle`, and all waits together
/// at most `idle` plus what the bytes moved so far earn at `min_rate` bytes per second (0: no
/// minimum rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub idle: Duration,
    pub min_rate: u64,
}

impl Pace {
    /// How long the next wait may last, after `waited` in earlier waits and `bytes` moved.
    pub fn allowance(&self, waited: Duration, bytes: u64) -> Duration {
        if self.min_rate == 0 {
            return self.idle;
        }
        let earned = self.idle.saturating_add(Duration::from_secs_f64(bytes as f64 / self.min_rate as f64));
        self.idle.min(earned.saturating_sub(waited))
    }

    /// Why a wait of `current` after `waited` and `bytes` is over its allowance, if it is.
    pub fn overdue(&self, waited: Duration, current: Duration, bytes: u64) -> Option<String> {
        if current < self.allowance(waited, bytes) {
            return None;
        }
        Some(if current >= self.idle {
            format!("nothing moved for {} (idle_timeout)", humantime::format_duration(self.idle))
        } else {
            format!(
                "{bytes} bytes in {} of waiting, under min_transfer_rate ({} bytes/s)",
                humantime::format_duration(round_ms(waited + current)),
                self.min_rate
            )
        })
    }
}

fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

/// The connection limits of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub total: usize,
    pub per_peer: usize,
    pub handshakes_per_peer: usize,
    pub handshake_timeout: Duration,
    pub pace: Pace,
}

impl From<&Limits> for ConnLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            total: limits.max_connections,
            per_peer: limits.max_connections_per_peer,
            handshakes_per_peer: limits.max_handshakes_per_peer,
            handshake_timeout: limits.handshake_timeout,
            pace: Pace { idle: limits.idle_timeout, min_rate: limits.min_transfer_rate },
        }
    }
}

/// A peer as the caps count it: an IPv4 address, or the /64 of an IPv6 one (a host gets a
/// whole /64, so its addresses are one peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    pub(crate) fn of(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from(ip.to_bits() & !u128::from(u64::MAX)))),
            },
            v4 => Self(v4),
        }
    }
}

#[derive(Debug, Default)]
struct PeerUse {
    connections: usize,
    handshakes: usize,
}

/// What the peers of one listener hold.
#[derive(Debug, Default)]
struct Held {
    by_peer: HashMap<PeerKey, PeerUse>,
    connections: usize,
}

/// Every connection of one listener, by peer.
pub struct Connections {
    limits: ConnLimits,
    peers: Mutex<Held>,
    /// Open connections by the peer's address and port, for the stream watch.
    open: DashMap<SocketAddr, Arc<ConnState>>,
    refused: AtomicU64,
    cut: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

/// Refusals are logged at most this often: a flood must not become a flood of log lines.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

impl Connections {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            peers: Mutex::new(Held::default()),
            open: DashMap::new(),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            warned: Mutex::new(None),
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Connections refused at accept since start-up (a peer over its caps).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because a stream's client stopped reading or writing.
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Held> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection slot for `peer`, or `None` when it holds `max_connections_per_peer`.
    /// Accepts the next connection and admits it within its peer's cap; None when accepting
    /// failed (after a pause, so a lack of file descriptors does not spin) or the peer is over
    /// its cap (the connection is then closed).
    pub async fn accept(
        self: &Arc<Self>,
        listener: &TcpListener,
    ) -> Option<(TcpStream, SocketAddr, PeerSlot)> {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        };
        let slot = self.admit(peer)?;
        Some((stream, peer, slot))
    }

    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<PeerSlot> {
        let key = PeerKey::of(peer);
        let mut held = self.peers();
        if held.connections >= self.limits.total {
            drop(held);
            self.refuse(peer, "max_connections", self.limits.total);
            return None;
        }
        let used = held.by_peer.entry(key).or_default();
        if used.connections >= self.limits.per_peer {
            drop(held);
            self.refuse(peer, "max_connections_per_peer", self.limits.per_peer);
            return None;
        }
        used.connections += 1;
        held.connections += 1;
        Some(PeerSlot { connections: Arc::clone(self), key, handshake: false })
    }

    /// A TLS handshake slot for `peer`, or `None` when it has `max_handshakes_per_peer` running.
    pub fn admit_handshake(self: &Arc<Self>, peer: SocketAddr) -> Option<PeerSlot> {
        let key = PeerKey::of(peer);
        let mut held = self.peers();
        let used = held.by_peer.entry(key).or_default();
        if used.handshakes >= self.limits.handshakes_per_peer {
            drop(held);
            self.refuse(peer, "max_handshakes_per_peer", self.limits.handshakes_per_peer);
            return None;
        }
        used.handshakes += 1;
        Some(PeerSlot { connections: Arc::clone(self), key, handshake: true })
    }

    fn release(&self, key: PeerKey, handshake: bool) {
        let mut held = self.peers();
        if !handshake {
            held.connections = held.connections.saturating_sub(1);
        }
        if let Some(used) = held.by_peer.get_mut(&key) {
            let count = if handshake { &mut used.handshakes } else { &mut used.connections };
            *count = count.saturating_sub(1);
            if used.connections == 0 && used.handshakes == 0 {
                held.by_peer.remove(&key);
            }
        }
    }

    fn refuse(&self, peer: SocketAddr, setting: &str, limit: usize) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(%peer, limit, "refused a connection: the peer is at {setting} (logged once per {WARN_EVERY:?})");
        }
    }

    /// `io`, holding `slot`, as a connection tonic may serve.
    pub fn wrap<T>(self: &Arc<Self>, io: T, peer: SocketAddr, slot: PeerSlot) -> Conn<T> {
        let state = Arc::new(ConnState::new(peer));
        self.open.insert(peer, Arc::clone(&state));
        Conn::new(io, state, slot, self.limits.handshake_timeout)
    }

    fn closed(&self, peer: SocketAddr, state: &Arc<ConnState>) {
        self.open.remove_if(&peer, |_, open| Arc::ptr_eq(open, state));
    }

    /// The open connection whose peer is `peer`.
    fn state_of(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        self.open.get(&peer).map(|state| Arc::clone(&state))
    }
}

/// A peer's connection (or handshake) slot, given back when dropped.
pub struct PeerSlot {
    connections: Arc<Connections>,
    key: PeerKey,
    handshake: bool,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.connections.release(self.key, self.handshake);
    }
}

/// The plain TCP connections `listener` accepts, each within its peer's cap, with
/// TCP_NODELAY (without it, small replies wait for delayed ACKs: ~40 ms per round trip).
pub fn incoming_tcp(
    listener: TcpListener,
    connections: Arc<Connections>,
) -> impl Stream<Item = std::io::Result<Conn<TcpStream>>> {
    futures::stream::unfold((listener, connections), |(listener, connections)| async move {
        loop {
            let Some((stream, peer, slot)) = connections.accept(&listener).await else { continue };
            let _ = stream.set_nodelay(true);
            let conn = connections.wrap(stream, peer, slot);
            return Some((Ok(conn), (listener, connections)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_peer: usize, handshakes_per_peer: usize) -> ConnLimits {
        ConnLimits {
            total: usize::MAX,
            per_peer,
            handshakes_per_peer,
            handshake_timeout: Duration::from_secs(1),
            pace: Pace { idle: Duration::from_secs(1), min_rate: 0 },
        }
    }

    #[test]
    fn each_peer_has_its_own_caps_and_gets_slots_back() {
        let connections = Connections::new(limits(2, 1));
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let first = connections.admit(a).unwrap();
        let _second = connections.admit(a).unwrap();
        assert!(connections.admit(a).is_none(), "a third from the same peer");
        assert!(connections.admit(b).is_some(), "another peer is not affected");
        let handshake = connections.admit_handshake(a).unwrap();
        assert!(connections.admit_handshake(a).is_none());
        drop((first, handshake));
        assert!(connections.admit(a).is_some() && connections.admit_handshake(a).is_some());
        assert_eq!(connections.refused(), 2);
    }

    #[test]
    fn all_peers_together_stay_under_the_listeners_cap() {
        let connections = Connections::new(ConnLimits { total: 3, ..limits(2, 1) });
        let peer = |n: u8| SocketAddr::from(([10, 0, 0, n], 1000));
        let first = connections.admit(peer(1)).unwrap();
        let _held = [connections.admit(peer(1)).unwrap(), connections.admit(peer(2)).unwrap()];
        assert!(connections.admit(peer(3)).is_none(), "a fourth connection, from a new peer");
        assert!(connections.admit_handshake(peer(3)).is_some(), "handshakes hold no connection slot");
        drop(first);
        assert!(connections.admit(peer(3)).is_some(), "the slot came back");
        assert_eq!(connections.refused(), 1);
    }

    #[test]
    fn an_ipv6_host_is_one_peer_and_mapped_ipv4_is_ipv4() {
        let key = |addr: &str| PeerKey::of(addr.parse().unwrap());
        assert_eq!(key("[2001:db8:1:2:aaaa::1]:1"), key("[2001:db8:1:2:bbbb::2]:2"));
        assert_ne!(key("[2001:db8:1:2::1]:1"), key("[2001:db8:1:3::1]:1"));
        assert_eq!(key("[::ffff:10.0.0.1]:1"), key("10.0.0.1:2"));
    }

    #[test]
    fn a_pace_allows_idle_per_wait_and_a_minimum_rate_overall() {
        let idle = Duration::from_secs(10);
        let pace = Pace { idle, min_rate: 1000 };
        assert_eq!(pace.allowance(Duration::ZERO, 0), idle);
        // 5,000 bytes earned 5 s beyond the grace; 12 s were spent waiting already.
        assert_eq!(pace.allowance(Duration::from_secs(12), 5000), Duration::from_secs(3));
        assert_eq!(pace.allowance(Duration::from_secs(30), 5000), Duration::ZERO);
        let why = pace.overdue(Duration::from_secs(12), Duration::from_secs(4), 5000).unwrap();
        assert!(why.contains("min_transfer_rate"), "{why}");
        let why = pace.overdue(Duration::ZERO, Duration::from_secs(11), 1 << 30).unwrap();
        assert!(why.contains("idle_timeout"), "{why}");
        let unlimited = Pace { idle, min_rate: 0 };
        assert_eq!(unlimited.allowance(Duration::from_secs(1000), 0), idle);
    }
}
