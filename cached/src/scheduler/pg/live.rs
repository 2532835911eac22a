//! The leases this replica accepts cache credentials for, without a query per request: read
//! from the database every sweep, and changed at once by what this replica commits.
//!
//! A read takes a while, and what this replica commits meanwhile is newer than the rows it
//! returns: a lease granted here after the read began would be dropped by it (the build's
//! first cache calls refused), and one ended here (an expelled agent, a cancelled job) taken
//! back (its credential accepted again until the next sweep). So each local change is kept
//! with a sequence number until every read that began before it has been applied, and is
//! applied again on top of those reads.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use crate::auth::LeaseId;

#[derive(Default)]
pub(super) struct LeaseSet {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    leases: HashSet<LeaseId>,
    /// The last local change of each lease while reads are under way, and its number: one
    /// entry per lease, however many heartbeats extend it meanwhile.
    changes: HashMap<LeaseId, (u64, bool)>,
    next: u64,
    /// Sequence numbers at which reads under way began.
    reading: Vec<u64>,
}

/// A read of the live leases under way: apply it with [`LeaseSet::finish_read`]. Dropped
/// unfinished (the read failed, or its task was cancelled), it keeps no changes for itself.
#[must_use]
pub(super) struct Read<'a> {
    set: &'a LeaseSet,
    began: u64,
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        self.set.state.write().unwrap_or_else(PoisonError::into_inner).forget(self.began);
    }
}

impl LeaseSet {
    pub(super) fn contains(&self, lease: &LeaseId) -> bool {
        self.state.read().unwrap_or_else(PoisonError::into_inner).leases.contains(lease)
    }

    /// A change this replica committed.
    pub(super) fn set(&self, lease: LeaseId, live: bool) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        apply(&mut state.leases, &lease, live);
        if !state.reading.is_empty() {
            let seq = state.next;
            state.changes.insert(lease, (seq, live));
        }
        state.next += 1;
    }

    /// Call before the query whose rows go to [`LeaseSet::finish_read`].
    pub(super) fn begin_read(&self) -> Read<'_> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let began = state.next;
        state.reading.push(began);
        Read { set: self, began }
    }

    /// The rows of the read `read`, with every local change since it began on top.
    pub(super) fn finish_read(&self, read: Read<'_>, rows: HashSet<LeaseId>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let State { leases, changes, .. } = &mut *state;
        *leases = rows;
        for (lease, (_, live)) in changes.iter().filter(|(_, (seq, _))| *seq >= read.began) {
            apply(leases, lease, *live);
        }
        // `read` forgets itself once the lock is given back.
    }
}

impl State {
    /// The read that began at `began` is over: keep only changes a read under way needs.
    fn forget(&mut self, began: u64) {
        if let Some(at) = self.reading.iter().position(|seq| *seq == began) {
            self.reading.swap_remove(at);
        }
        let oldest = self.reading.iter().copied().min().unwrap_or(self.next);
        self.changes.retain(|_, (seq, _)| *seq >= oldest);
    }
}

fn apply(leases: &mut HashSet<LeaseId>, lease: &LeaseId, live: bool) {
    if live {
        leases.insert(lease.clone());
    } else {
        leases.remove(lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(attempt: u32) -> LeaseId {
        LeaseId { job_id: "job".into(), task: 0, attempt }
    }

    #[test]
    fn a_lease_granted_while_a_read_was_under_way_stays_live() {
        let live = LeaseSet::default();
        let read = live.begin_read();
        live.set(lease(1), true);
        live.finish_read(read, HashSet::new());
        assert!(live.contains(&lease(1)));
    }

    #[test]
    fn a_lease_ended_while_a_read_was_under_way_stays_ended() {
        let live = LeaseSet::default();
        live.set(lease(1), true);
        let read = live.begin_read();
        live.set(lease(1), false);
        live.finish_read(read, [lease(1)].into());
        assert!(!live.contains(&lease(1)));
    }

    #[test]
    fn a_read_that_began_after_a_change_has_the_last_word() {
        let live = LeaseSet::default();
        live.set(lease(1), true);
        let read = live.begin_read();
        live.finish_read(read, HashSet::new());
        assert!(!live.contains(&lease(1)), "expired elsewhere, as the read says");
    }

    #[test]
    fn overlapping_reads_each_keep_the_changes_made_since_they_began() {
        let live = LeaseSet::default();
        let first = live.begin_read();
        live.set(lease(1), true);
        let second = live.begin_read();
        live.set(lease(2), true);
        live.finish_read(second, [lease(1)].into());
        live.finish_read(first, HashSet::new());
        assert!(live.contains(&lease(1)) && live.contains(&lease(2)));
        assert!(live.state.read().unwrap().changes.is_empty(), "nothing kept once no read is under way");
    }

    #[test]
    fn a_read_dropped_unfinished_keeps_nothing_and_a_lease_changed_often_is_one_entry() {
        let live = LeaseSet::default();
        let read = live.begin_read();
        for _ in 0..1000 {
            live.set(lease(1), true);
        }
        assert_eq!(live.state.read().unwrap().changes.len(), 1);
        drop(read);
        let state = live.state.read().unwrap();
        assert!(state.changes.is_empty() && state.reading.is_empty());
        assert!(state.leases.contains(&lease(1)));
    }
}
