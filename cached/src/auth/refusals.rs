//! Refusals are audited, but a caller needs no token to be refused, and a log line per refusal
//! would let anyone fill the disk. Each client address (an IPv6 /64 counts as one) therefore
//! has the first refusal of each reason per [`LOG_EVERY`] logged; the rest are counted, and the
//! count goes out with its next line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::conn::PeerKey;

/// How often one address's refusals of one reason are logged, as for refused connections.
const LOG_EVERY: Duration = crate::conn::WARN_EVERY;
/// What every refusal line says of the ones it stands for.
pub(crate) const EVERY: &str = " (logged once per 10s per address and reason; `unlogged` counts the rest)";
/// The same for refusals counted by token ([`RefusalLog::admit_token`]).
pub(crate) const EVERY_PER_TOKEN: &str =
    " (logged once per 10s per token and reason; `unlogged` counts the rest)";
/// Addresses (and reasons) tracked at once. Past it, refusals from addresses not tracked yet
/// share one entry per reason, so a flood from many addresses stays a line per interval too.
const MAX_TRACKED: usize = 4096;

/// Who was refused: an address, or a token (where a refusal comes after the token was
/// checked, as the registry's scope and namespace refusals do).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Peer(PeerKey),
    Token(Box<str>),
}

/// Who was refused, as the log counts it: `None` for an address that did not parse, and for
/// callers that came while the table was full.
type Key = (Option<Who>, &'static str);

struct Entry {
    logged_at: Instant,
    unlogged: u64,
}

#[derive(Default)]
pub(crate) struct RefusalLog {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl RefusalLog {
    /// Whether a refusal of `peer` for `reason` is logged now; if so, how many refusals of the
    /// same kind went unlogged since its last line.
    pub(crate) fn admit(&self, peer: &str, reason: &'static str) -> Option<u64> {
        let peer = peer.parse::<SocketAddr>().ok().map(|addr| Who::Peer(PeerKey::of(addr)));
        self.admit_at(peer, reason, Instant::now())
    }

    /// [`Self::admit`] for a refusal of the token named `token`.
    pub(crate) fn admit_token(&self, token: &str, reason: &'static str) -> Option<u64> {
        self.admit_at(Some(Who::Token(token.into())), reason, Instant::now())
    }

    fn admit_at(&self, peer: Option<Who>, reason: &'static str, now: Instant) -> Option<u64> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (peer, reason);
        if !entries.contains_key(&key) && entries.len() >= MAX_TRACKED {
            entries.retain(|_, entry| now.saturating_duration_since(entry.logged_at) < LOG_EVERY);
            if entries.len() >= MAX_TRACKED {
                key = (None, reason);
            }
        }
        match entries.get_mut(&key) {
            Some(entry) if now.saturating_duration_since(entry.logged_at) < LOG_EVERY => {
                entry.unlogged += 1;
                None
            }
            Some(entry) => {
                entry.logged_at = now;
                Some(std::mem::take(&mut entry.unlogged))
            }
            None => {
                entries.insert(key, Entry { logged_at: now, unlogged: 0 });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Option<Who> {
        Some(Who::Peer(PeerKey::of(text.parse().unwrap())))
    }

    #[test]
    fn one_line_per_address_and_reason_per_interval_with_the_count_of_the_rest() {
        let log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.admit_at(peer("10.0.0.1:1"), "unknown token", start), Some(0));
        for port in 2..102 {
            let again = peer(&format!("10.0.0.1:{port}"));
            assert_eq!(log.admit_at(again, "unknown token", start), None, "another connection, same host");
        }
        assert_eq!(log.admit_at(peer("10.0.0.1:1"), "no token", start), Some(0), "another reason");
        assert_eq!(log.admit_at(peer("10.0.0.2:1"), "unknown token", start), Some(0), "another host");
        let later = start + LOG_EVERY;
        assert_eq!(log.admit_at(peer("10.0.0.1:1"), "unknown token", later), Some(100));
        assert_eq!(log.admit_at(peer("10.0.0.1:1"), "unknown token", later), None);
    }

    #[test]
    fn the_note_tells_the_interval() {
        for note in [EVERY, EVERY_PER_TOKEN] {
            assert!(note.contains(&format!("{}s", LOG_EVERY.as_secs())), "{note}");
        }
    }

    #[test]
    fn many_addresses_at_once_share_a_line() {
        let log = RefusalLog::default();
        let now = Instant::now();
        let logged = (0..MAX_TRACKED as u32 + 500)
            .filter(|n| {
                let addr = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + n), 1));
                log.admit_at(Some(Who::Peer(PeerKey::of(addr))), "unknown token", now).is_some()
            })
            .count();
        assert_eq!(logged, MAX_TRACKED + 1, "the overflow is logged once");
        assert!(log.entries.lock().unwrap().len() <= MAX_TRACKED + 1);
    }
}
