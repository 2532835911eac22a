//! Whether a store holds a blob, in three answers rather than two. The tiered store answers a
//! local miss it did not ask the bucket about (the caller's token over `max_shared_lookups`,
//! the breaker open, a failed request, no room to fill) as a miss, which is right for serving:
//! a client uploads or builds what it is told is missing. It is no proof the blob is gone, and
//! records every replica reads (whole-build entries, registry blob links) may only be dropped on
//! proof: otherwise whoever spent their own lookup budget, or whichever replica's link to the
//! bucket had trouble, would delete them for everyone.
//!
//! `BlobStore` answers held or not. Stores block on their caller's thread, so the tiered store
//! notes there which of its misses were not asked, and the decorators between it and the
//! services need no third answer.

use std::cell::RefCell;
use std::collections::HashSet;

use proto::Digest;

use crate::error::Result;
use crate::store::BlobStore;

/// Ordered from best to worst, so that the answer for several blobs is the worst of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Presence {
    /// Stored here or in the bucket.
    Held,
    /// Not stored here, and the bucket was not asked or did not answer: a miss for this call,
    /// not a reason to forget anything.
    Unknown,
    /// Stored nowhere: the local tier lacks it and the bucket said it has no (sound) object.
    Absent,
}

thread_local! {
    /// The digests whose local misses the bucket was not asked about, while someone listens.
    static UNASKED: RefCell<Option<HashSet<Digest>>> = const { RefCell::new(None) };
}

/// For each digest, whether `store` holds it. Without a shared tier, every miss is `Absent`.
pub fn presence(store: &dyn BlobStore, digests: &[Digest]) -> Result<Vec<Presence>> {
    let (held, unasked) = listening(|| store.contains(digests));
    Ok(digests
        .iter()
        .zip(held?)
        .map(|(digest, held)| match held {
            true => Presence::Held,
            false if unasked.contains(digest) => Presence::Unknown,
            false => Presence::Absent,
        })
        .collect())
}

/// Notes that the bucket was not asked about these local misses, for whoever listens.
pub(super) fn not_asked(digests: &[Digest]) {
    UNASKED.with_borrow_mut(|listening| {
        if let Some(unasked) = listening {
            unasked.extend(digests.iter().copied());
        }
    });
}

/// Runs `work` on this thread, with the misses it did not ask the bucket about.
fn listening<R>(work: impl FnOnce() -> R) -> (R, HashSet<Digest>) {
    /// Puts back whoever listened before, even when `work` panics: the pool reuses the thread.
    struct Restore(Option<HashSet<Digest>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            UNASKED.set(self.0.take());
        }
    }
    let mut restore = Restore(UNASKED.replace(Some(HashSet::new())));
    let result = work();
    let unasked = UNASKED.take().unwrap_or_default();
    if let Some(outer) = &mut restore.0 {
        outer.extend(unasked.iter().copied());
    }
    (result, unasked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_misses_noted_while_listening_are_unknown() {
        let (asked, unasked) = (Digest::of(b"asked"), Digest::of(b"unasked"));
        not_asked(&[asked]);
        let ((), noted) = listening(|| {
            let ((), inner) = listening(|| not_asked(&[unasked]));
            assert_eq!(inner, HashSet::from([unasked]));
        });
        assert_eq!(noted, HashSet::from([unasked]), "an inner listener passes its notes on");
        assert_eq!(UNASKED.take(), None, "nobody listens once the outer listener is done");
        assert!(Presence::Absent > Presence::Unknown && Presence::Unknown > Presence::Held);
    }
}
