//! Go entries in RocksDB: `go_actions` holds namespace · NUL · ActionID → entry, and
//! `go_order` every put in the order it was made, sequence (u64 BE) · namespace · NUL ·
//! ActionID → the entry put, so the oldest can be forgotten once there are more than
//! `max_entries` (`max_go_entries`).
//!
//! Every put adds a row under a sequence of its own, and only the forgetting (one at a time)
//! takes rows away, so the rows counted are those from the front (the first not yet taken) to
//! the next sequence: no counter is written, and none can drift. A row whose entry was put
//! again since, removed (its blob gone) or purged stays counted until the front reaches it;
//! it then removes nothing. The count is therefore never below the entries stored: holding it
//! to `max_entries` bounds them, whatever a writer does (many actions pointing at one blob,
//! one action put again and again, many namespaces).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use proto::ActionId;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{EntrySlice, GoEntry, GoEntryStore};
use crate::db::{CF_COUNTERS, CF_GO_ACTIONS, CF_GO_ORDER, cf};
use crate::error::{Error, Result};

/// Rows removed per write while forgetting.
const FORGET_BATCH: usize = 10_000;
/// Marks (in `counters`) that every entry has its row in `go_order`: entries stored before
/// there was an order get rows once, when the store first opens with one.
const ORDER_MARKER: &[u8] = b"go_order";

pub struct RocksGoEntries {
    db: Arc<DB>,
    max_entries: u64,
    order: Mutex<Order>,
    /// Held while forgetting: one at a time, so each row is taken (and uncounted) once.
    forgetting: Mutex<()>,
}

#[derive(Debug, Default)]
struct Order {
    /// The sequence the next put gets.
    next: u64,
    /// Every row before it has been taken: the rows counted are `front..next`.
    front: u64,
    /// Puts given a sequence whose write has not landed: forgetting stops before the first,
    /// so no row lands behind the front.
    in_flight: BTreeSet<u64>,
}

impl RocksGoEntries {
    /// The entries in `db`, at most about `max_entries` of them (at least 1). Entries stored
    /// before `go_order` existed are given their rows first (once).
    pub fn open(db: Arc<DB>, max_entries: u64) -> Result<Self> {
        index_unordered_entries(&db)?;
        let rows = cf(&db, CF_GO_ORDER)?;
        let first = db.iterator_cf(rows, IteratorMode::Start).next().transpose()?;
        let last = db.iterator_cf(rows, IteratorMode::End).next().transpose()?;
        let front = first.map(|(key, _)| sequence(&key)).transpose()?.unwrap_or(0);
        let next = last.map(|(key, _)| sequence(&key).map(|seq| seq + 1)).transpose()?.unwrap_or(front);
        let order = Order { next, front, in_flight: BTreeSet::new() };
        Ok(Self { db, max_entries: max_entries.max(1), order: Mutex::new(order), forgetting: Mutex::new(()) })
    }

    fn order(&self) -> MutexGuard<'_, Order> {
        self.order.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry_key(namespace: &str, action_id: &ActionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(namespace.len() + 33);
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key.extend_from_slice(&action_id.0);
    key
}

fn row_key(sequence: u64, entry_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + entry_key.len());
    key.extend_from_slice(&sequence.to_be_bytes());
    key.extend_from_slice(entry_key);
    key
}

fn sequence(row_key: &[u8]) -> Result<u64> {
    row_key
        .first_chunk::<8>()
        .map(|bytes| u64::from_be_bytes(*bytes))
        .ok_or_else(|| Error::Corrupt(format!("a Go entry order row of {} bytes", row_key.len())))
}

/// Gives every stored entry a row, unless that was done: the first open of a store written
/// before the order existed. Cut off by a crash, it is done again from the start; an entry
/// with two rows is counted twice until the older goes.
fn index_unordered_entries(db: &DB) -> Result<()> {
    let counters = cf(db, CF_COUNTERS)?;
    if db.get_pinned_cf(counters, ORDER_MARKER)?.is_some() {
        return Ok(());
    }
    let (actions, rows) = (cf(db, CF_GO_ACTIONS)?, cf(db, CF_GO_ORDER)?);
    let first = match db.iterator_cf(rows, IteratorMode::End).next().transpose()? {
        Some((key, _)) => sequence(&key)? + 1,
        None => 0,
    };
    let mut batch = WriteBatch::default();
    let mut indexed = 0u64;
    for (item, sequence) in db.iterator_cf(actions, IteratorMode::Start).zip(first..) {
        let (key, value) = item?;
        batch.put_cf(rows, row_key(sequence, &key), value);
        indexed += 1;
        if batch.len() >= FORGET_BATCH {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(counters, ORDER_MARKER, [1]);
    db.write(batch)?;
    if indexed > 0 {
        tracing::info!(entries = indexed, "Go entries stored before max_go_entries now count against it");
    }
    Ok(())
}

impl GoEntryStore for RocksGoEntries {
    fn get(&self, namespace: &str, action_id: &ActionId) -> Result<Option<GoEntry>> {
        let actions = cf(&self.db, CF_GO_ACTIONS)?;
        self.db
            .get_pinned_cf(actions, entry_key(namespace, action_id))?
            .map(|bytes| GoEntry::decode(&bytes))
            .transpose()
    }

    fn put_synced(&self, namespace: &str, action_id: &ActionId, entry: &GoEntry) -> Result<()> {
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        let (actions, rows) = (cf(&self.db, CF_GO_ACTIONS)?, cf(&self.db, CF_GO_ORDER)?);
        let key = entry_key(namespace, action_id);
        let value = entry.encode();
        let sequence = {
            let mut order = self.order();
            let sequence = order.next;
            order.next += 1;
            order.in_flight.insert(sequence);
            sequence
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(actions, &key, value);
        batch.put_cf(rows, row_key(sequence, &key), value);
        let written = self.db.write_opt(batch, &synced);
        // A put that failed leaves a gap in the sequences, counted until the front passes it.
        self.order().in_flight.remove(&sequence);
        written?;
        Ok(())
    }

    fn remove(&self, namespace: &str, action_id: &ActionId) -> Result<()> {
        self.db.delete_cf(cf(&self.db, CF_GO_ACTIONS)?, entry_key(namespace, action_id))?;
        Ok(())
    }

    fn slice(&self, from: &[u8], limit: usize) -> Result<EntrySlice> {
        let actions = cf(&self.db, CF_GO_ACTIONS)?;
        let mut slice = EntrySlice::default();
        for item in self.db.iterator_cf(actions, IteratorMode::From(from, Direction::Forward)).take(limit) {
            let (key, value) = item?;
            slice.looked += 1;
            // An entry this version cannot read is left to the lookup that finds it.
            if let Ok(entry) = GoEntry::decode(&value) {
                slice.entries.push((key.to_vec(), entry));
            }
            slice.last = Some(key.to_vec());
        }
        Ok(slice)
    }

    fn remove_keys(&self, keys: &[Vec<u8>]) -> Result<()> {
        let actions = cf(&self.db, CF_GO_ACTIONS)?;
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.delete_cf(actions, key);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// The entries go at once; their rows stay counted until the front reaches them.
    fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        crate::db::purge_namespace(&self.db, CF_GO_ACTIONS, &[], namespace)
    }

    fn count(&self) -> u64 {
        let order = self.order();
        order.next - order.front
    }

    fn forget_oldest(&self, limit: usize) -> Result<u64> {
        let _turn = match self.forgetting.try_lock() {
            Ok(turn) => turn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Someone is forgetting already; what is over the bound is theirs.
            Err(TryLockError::WouldBlock) => return Ok(0),
        };
        let (actions, rows) = (cf(&self.db, CF_GO_ACTIONS)?, cf(&self.db, CF_GO_ORDER)?);
        let mut forgotten = 0;
        let mut taken = 0;
        while taken < limit {
            let (over, front, horizon) = {
                let order = self.order();
                let horizon = order.in_flight.first().copied().unwrap_or(order.next);
                ((order.next - order.front).saturating_sub(self.max_entries), order.front, horizon)
            };
            let want = over.min((limit - taken) as u64).min(FORGET_BATCH as u64) as usize;
            if want == 0 {
                break;
            }
            let mut batch = WriteBatch::default();
            let mut new_front = front;
            let from = front.to_be_bytes();
            for item in self.db.iterator_cf(rows, IteratorMode::From(&from, Direction::Forward)).take(want) {
                let (key, recorded) = item?;
                let sequence = sequence(&key)?;
                if sequence >= horizon {
                    break;
                }
                // Only the entry this row put: one put again since has a newer row.
                let entry_key = &key[8..];
                if self.db.get_pinned_cf(actions, entry_key)?.is_some_and(|stored| *stored == *recorded) {
                    batch.delete_cf(actions, entry_key);
                    forgotten += 1;
                }
                batch.delete_cf(rows, &key);
                new_front = sequence + 1;
                taken += 1;
            }
            if new_front == front {
                // Every row left is of a put still landing (or there is none).
                break;
            }
            // Not synced: rows a power cut brings back are taken again.
            self.db.write(batch)?;
            let mut order = self.order();
            order.front = order.front.max(new_front);
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
pub(super) fn put_for_tests(db: &DB, namespace: &str, action_id: &ActionId, entry: &GoEntry) {
    db.put_cf(cf(db, CF_GO_ACTIONS).unwrap(), entry_key(namespace, action_id), entry.encode()).unwrap();
}

#[cfg(test)]
mod tests {
    use proto::{Digest, OutputId};

    use super::*;

    fn entry(time: i64) -> GoEntry {
        GoEntry { output_id: OutputId([1; 32]), digest: Digest::of(b"one blob"), time_unix_nanos: time }
    }

    fn action(n: u32) -> ActionId {
        let mut id = [0; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        ActionId(id)
    }

    fn stored(entries: &RocksGoEntries, namespace: &str, n: u32) -> bool {
        entries.get(namespace, &action(n)).unwrap().is_some()
    }

    #[test]
    fn the_oldest_puts_are_forgotten_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let entries = RocksGoEntries::open(Arc::clone(&db), 10).unwrap();
        for n in 0..25 {
            entries.put_synced("pr", &action(n), &entry(n.into())).unwrap();
        }
        assert_eq!(entries.count(), 25);
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 15);
        assert_eq!(entries.count(), 10);
        assert!((0..15).all(|n| !stored(&entries, "pr", n)));
        assert!((15..25).all(|n| stored(&entries, "pr", n)));
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 0, "within the bound");

        // Reopened, the count is where it was.
        drop(entries);
        let entries = RocksGoEntries::open(db, 10).unwrap();
        assert_eq!(entries.count(), 10);
    }

    /// One action put again and again counts once per put: the count bounds what is stored
    /// however it was put, and an old row never takes an entry put again since.
    #[test]
    fn an_entry_put_again_is_kept_by_its_newest_put() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let entries = RocksGoEntries::open(db, 3).unwrap();
        entries.put_synced("main", &action(1), &entry(1)).unwrap();
        for time in 0..5 {
            entries.put_synced("pr", &action(9), &entry(time)).unwrap();
        }
        entries.put_synced("pr", &action(1), &entry(1)).unwrap();
        // main's entry is the oldest put; pr's action 9 survives its four older rows.
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 1);
        assert!(!stored(&entries, "main", 1));
        assert_eq!(entries.get("pr", &action(9)).unwrap(), Some(entry(4)));
        assert!(stored(&entries, "pr", 1));
        assert_eq!(entries.count(), 3);
    }

    #[test]
    fn entries_stored_before_the_order_are_counted_once_opened() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        for n in 0..5 {
            put_for_tests(&db, "old", &action(n), &entry(1));
        }
        let entries = RocksGoEntries::open(Arc::clone(&db), 2).unwrap();
        assert_eq!(entries.count(), 5);
        entries.put_synced("new", &action(7), &entry(2)).unwrap();
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 4);
        assert!(stored(&entries, "new", 7));
        // Indexed once: a second open finds the marker and adds no rows.
        drop(entries);
        assert_eq!(RocksGoEntries::open(db, 2).unwrap().count(), 2);
    }

    #[test]
    fn forgetting_stops_at_a_put_still_landing() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let entries = RocksGoEntries::open(db, 1).unwrap();
        for n in 0..3 {
            entries.put_synced("ns", &action(n), &entry(1)).unwrap();
        }
        // As if the put of sequence 1 had not landed yet.
        entries.order().in_flight.insert(1);
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 1);
        assert!(!stored(&entries, "ns", 0) && stored(&entries, "ns", 1));
        entries.order().in_flight.clear();
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 1);
        assert!(stored(&entries, "ns", 2) && !stored(&entries, "ns", 1));
    }
}
