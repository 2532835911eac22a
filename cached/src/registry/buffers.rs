//! Memory that manifest and referrers bodies hold while they are received or sent. A manifest
//! is read whole before it is checked (up to 4 MiB), and a stored one or a referrers index is
//! sent from memory; a caller that sends or takes those bytes slowly on many connections would
//! otherwise hold up to 4 MiB per connection (`max_connections` is 16384). So the bytes in
//! flight are bounded in all ([`MAX_BUFFERED`]) and per token (a quarter of it, as upload
//! sessions are): past either, the request is refused with 429 and a `Retry-After`, and
//! other tokens keep their room. Callers without tokens are one party, held to the total only.
//! Pushes and pulls have a pool each, so bodies pushed slowly never keep pulls waiting; a
//! pushed body takes room as its bytes arrive, not as its `Content-Length` declares, and the
//! pushes to one namespace hold at most half the pool, whatever their tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;

use super::errors::{Code, RegistryError, RegistryResult};
use crate::auth::Grant;

/// The most bytes of manifest and referrers bodies held in memory at once.
pub(super) const MAX_BUFFERED: u64 = 256 << 20;
/// The most of them one token holds.
const MAX_BUFFERED_PER_TOKEN: u64 = MAX_BUFFERED / 4;
/// The most of them one namespace's repositories hold, all tokens together: several tokens of
/// one tenant must not take the whole pool.
const MAX_BUFFERED_PER_NAMESPACE: u64 = MAX_BUFFERED / 2;
/// The wait a refused caller is asked to make: bodies held are sent or read within seconds.
const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Default)]
struct Held {
    total: u64,
    per_token: HashMap<String, u64>,
    per_namespace: HashMap<String, u64>,
}

pub(super) struct BodyBuffers {
    total_cap: u64,
    token_cap: u64,
    namespace_cap: u64,
    held: Mutex<Held>,
}

impl BodyBuffers {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self::with_caps(MAX_BUFFERED, MAX_BUFFERED_PER_TOKEN, MAX_BUFFERED_PER_NAMESPACE))
    }

    fn with_caps(total_cap: u64, token_cap: u64, namespace_cap: u64) -> Self {
        Self { total_cap, token_cap, namespace_cap, held: Mutex::default() }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Room for `bytes` of `token`'s body, given back when the reservation is dropped, or the
    /// refusal that says which bound was reached.
    /// `namespace`: the namespace whose share the body counts against too, for bodies that
    /// namespace's writers send (pushes); a pull counts against its reader's token only, as
    /// any reader of a namespace could otherwise take that namespace's room.
    pub(super) fn reserve(
        self: &Arc<Self>,
        token: &str,
        namespace: Option<&str>,
        bytes: u64,
    ) -> RegistryResult<BodyReservation> {
        let token = Grant::has_own_limits(token).then(|| token.to_owned());
        let namespace = namespace.map(str::to_owned);
        self.take(token.as_deref(), namespace.as_deref(), bytes)?;
        Ok(BodyReservation { buffers: Arc::clone(self), token, namespace, bytes })
    }

    /// Counts `bytes` against the total, `namespace`'s share and `token`'s (none: not that
    /// share).
    fn take(&self, token: Option<&str>, namespace: Option<&str>, bytes: u64) -> RegistryResult<()> {
        let mut held = self.held();
        let in_namespace = namespace.and_then(|ns| held.per_namespace.get(ns).copied()).unwrap_or(0);
        if let Some(namespace) = namespace
            && in_namespace + bytes > self.namespace_cap
        {
            return Err(refusal(format!(
                "namespace `{namespace}` already has {} KiB of manifest bodies being pushed, the \
                 most one namespace holds ({} MiB); retry once its other pushes have finished",
                in_namespace >> 10,
                self.namespace_cap >> 20
            )));
        }
        if held.total + bytes > self.total_cap {
            return Err(refusal(format!(
                "the registry already holds {} MiB of manifest bodies in flight, its most; retry \
                 shortly",
                self.total_cap >> 20
            )));
        }
        if let Some(token) = token {
            let used = held.per_token.get(token).copied().unwrap_or(0);
            if used + bytes > self.token_cap {
                return Err(refusal(format!(
                    "{} already has {} KiB of manifest bodies in flight, the most one \
                     token holds ({} MiB); retry once its other pushes and pulls have finished",
                    crate::auth::Grant::describe_budget(token),
                    used >> 10,
                    self.token_cap >> 20
                )));
            }
            *held.per_token.entry(token.to_owned()).or_default() += bytes;
        }
        if let Some(namespace) = namespace {
            *held.per_namespace.entry(namespace.to_owned()).or_default() += bytes;
        }
        held.total += bytes;
        Ok(())
    }

    fn release(&self, token: Option<&str>, namespace: Option<&str>, bytes: u64) {
        let mut held = self.held();
        held.total = held.total.saturating_sub(bytes);
        if let Some(namespace) = namespace
            && let Some(used) = held.per_namespace.get_mut(namespace)
        {
            *used = used.saturating_sub(bytes);
            if *used == 0 {
                held.per_namespace.remove(namespace);
            }
        }
        if let Some(token) = token
            && let Some(used) = held.per_token.get_mut(token)
        {
            *used = used.saturating_sub(bytes);
            if *used == 0 {
                held.per_token.remove(token);
            }
        }
    }
}

fn refusal(message: String) -> RegistryError {
    RegistryError::new(Code::TooManyRequests, message)
        .with_header(http::header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())
}

/// Bytes of one body, counted until it is dropped.
pub(super) struct BodyReservation {
    buffers: Arc<BodyBuffers>,
    /// The token whose share it counts against; `None` for callers without tokens.
    token: Option<String>,
    namespace: Option<String>,
    bytes: u64,
}

impl BodyReservation {
    /// Takes `bytes` more of the same share, or the refusal that says which bound was reached.
    pub(super) fn grow(&mut self, bytes: u64) -> RegistryResult<()> {
        self.buffers.take(self.token.as_deref(), self.namespace.as_deref(), bytes)?;
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        self.buffers.release(self.token.as_deref(), self.namespace.as_deref(), self.bytes);
    }
}

/// Bytes of a held body handed to the connection at a time: it takes the next piece only once
/// it has room, so the reservation lasts until the last piece is taken, not the first.
const PIECE: usize = 64 << 10;

/// A response body of `bytes` that holds `reservation` until it has been sent or dropped.
pub(super) fn held_body(bytes: impl Into<bytes::Bytes>, reservation: BodyReservation) -> axum::body::Body {
    let bytes: bytes::Bytes = bytes.into();
    let pieces: Vec<bytes::Bytes> =
        (0..bytes.len()).step_by(PIECE).map(|at| bytes.slice(at..(at + PIECE).min(bytes.len()))).collect();
    let stream = futures::stream::iter(pieces).map(move |piece| {
        let _held = &reservation;
        Ok::<_, std::convert::Infallible>(piece)
    });
    axum::body::Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_its_share_and_others_keep_theirs() {
        let buffers = Arc::new(BodyBuffers::with_caps(100, 40, 100));
        let first = buffers.reserve("flood", Some("ns"), 30).unwrap();
        let refused = buffers.reserve("flood", Some("ns"), 11).err().expect("past the token's share");
        assert_eq!(refused.code, Code::TooManyRequests);
        assert!(refused.message.contains("token `flood`"), "{refused}");
        assert!(refused.headers.iter().any(|(name, _)| name == http::header::RETRY_AFTER));
        let other = buffers.reserve("ci", Some("ns"), 40).expect("another token has its own share");
        drop(first);
        let again = buffers.reserve("flood", Some("ns"), 40).expect("the share came back");
        drop((other, again));
        let held = buffers.held();
        assert_eq!((held.total, held.per_token.len(), held.per_namespace.len()), (0, 0, 0));
    }

    /// Tokens of one namespace together hold at most its share: several tokens of one tenant
    /// (an audit used four) do not take the whole pool from everyone else.
    #[test]
    fn a_namespace_holds_its_share_whatever_its_tokens() {
        let buffers = Arc::new(BodyBuffers::with_caps(100, 40, 50));
        let held: Vec<_> =
            (0..2).map(|i| buffers.reserve(&format!("evil{i}"), Some("evil"), 25).unwrap()).collect();
        let refused = buffers.reserve("evil2", Some("evil"), 1).err().expect("past the namespace's share");
        assert!(refused.message.contains("namespace `evil`"), "{refused}");
        buffers.reserve("ci", Some("main"), 40).expect("another namespace has its own share");
        drop(held);
    }

    #[test]
    fn the_total_bounds_every_caller_together() {
        let buffers = Arc::new(BodyBuffers::with_caps(100, 40, 1000));
        let held: Vec<_> =
            (0..5).map(|i| buffers.reserve(&format!("t{i}"), Some("ns"), 20).unwrap()).collect();
        let refused = buffers.reserve("t9", Some("ns"), 1).err().expect("past the total");
        assert!(refused.message.contains("in flight, its most"), "{refused}");
        drop(held);
        let anonymous = buffers.reserve(Grant::ANONYMOUS, Some("ns"), 100).expect("no share without tokens");
        assert!(buffers.reserve(Grant::ANONYMOUS, Some("ns"), 1).is_err(), "but the total still holds");
        drop(anonymous);
    }
}
