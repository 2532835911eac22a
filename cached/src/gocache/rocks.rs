//! Go entries in RocksDB: `go_actions` holds namespace · NUL · ActionID → entry, and
//! `go_queue` every put in the order it was made within its namespace, namespace · NUL ·
//! number (u64 BE, the namespace's own) · ActionID → the entry put, so the oldest can be
//! forgotten once there are more than `max_entries` (`max_go_entries`).
//!
//! The bound is shared fairly among namespaces: past it, what goes is the oldest puts of the
//! namespaces holding the most, each cut down to one level ([`Queues::cuts`]); a namespace
//! below that level loses nothing. With one order over all namespaces, a writer of its own
//! namespace (a pull request's token) flooding entries pushed every other namespace's out;
//! now a flood pushes out the flooder's own first.
//!
//! Every put adds a row under a number of its own, and only the forgetting (one at a time)
//! takes rows away, so the rows a namespace has counted are those from its front (the first
//! not yet taken) to its next number, read back from its first and last row when the store
//! opens: no counter is written, and none can drift. A row whose entry was put again since,
//! removed (its blob gone) or purged stays counted until the front reaches it; it then removes
//! nothing. The count is therefore never below the entries stored: holding it to
//! `max_entries` bounds them, whatever a writer does (many actions pointing at one blob, one
//! action put again and again, many namespaces).
//!
//! Stores written before the order was by namespace kept one order over all namespaces in
//! `go_order`; its rows move into `go_queue`, oldest first, when the store opens.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use proto::ActionId;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::queues::{Cut, Queues};
use super::{EntrySlice, GoEntry, GoEntryStore};
use crate::db::{CF_COUNTERS, CF_GO_ACTIONS, CF_GO_ORDER, CF_GO_QUEUE, cf};
use crate::error::{Error, Result};

/// Rows removed per write while forgetting, and moved per write when opening.
const FORGET_BATCH: usize = 10_000;
/// Marks (in `counters`) that every entry has its row: entries stored before there was an
/// order get rows once, when the store first opens with one.
const ORDER_MARKER: &[u8] = b"go_order";
const ACTION_LEN: usize = 32;

pub struct RocksGoEntries {
    db: Arc<DB>,
    max_entries: u64,
    queues: Mutex<Queues>,
    /// Held while forgetting or purging: one at a time, so each row is taken (and uncounted)
    /// once.
    forgetting: Mutex<()>,
}

impl RocksGoEntries {
    /// The entries in `db`, at most about `max_entries` of them (at least 1). Entries stored
    /// before there was an order are given their rows first (once), and rows of the order over
    /// all namespaces are moved to their namespace's.
    pub fn open(db: Arc<DB>, max_entries: u64) -> Result<Self> {
        let mut queues = read_queues(&db)?;
        index_unordered_entries(&db, &mut queues)?;
        move_rows_of_one_order(&db, &mut queues)?;
        Ok(Self {
            db,
            max_entries: max_entries.max(1),
            queues: Mutex::new(queues),
            forgetting: Mutex::new(()),
        })
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the oldest rows `cut` names; returns the entries forgotten and where the
    /// namespace's front moves. Rows missing below the horizon (failed or purged puts) are
    /// passed over.
    fn take(&self, cut: &Cut) -> Result<(u64, u64)> {
        let (actions, rows) = (cf(&self.db, CF_GO_ACTIONS)?, cf(&self.db, CF_GO_QUEUE)?);
        let prefix = namespace_prefix(&cut.namespace);
        let mut walk = self.db.raw_iterator_cf(rows);
        walk.seek(row_key(&prefix, cut.front, &[]));
        let (mut batch, mut forgotten, mut front) = (WriteBatch::default(), 0, cut.front);
        let want = cut.want.min(FORGET_BATCH as u64);
        while front - cut.front < want {
            let Some((key, recorded)) = walk.item() else {
                front = cut.horizon;
                break;
            };
            let number = match key.strip_prefix(prefix.as_slice()) {
                Some(rest) => split_number(rest)?.0,
                None => u64::MAX,
            };
            if number >= cut.horizon {
                // Nothing of this namespace has landed between the front and the horizon.
                front = cut.horizon;
                break;
            }
            // Only the entry this row put: one put again since has a newer row.
            let entry_key = entry_key_of_row(&prefix, key)?;
            if self.db.get_pinned_cf(actions, &entry_key)?.is_some_and(|stored| *stored == *recorded) {
                batch.delete_cf(actions, &entry_key);
                forgotten += 1;
            }
            batch.delete_cf(rows, key);
            front = number + 1;
            walk.next();
        }
        walk.status()?;
        // Not synced: rows a power cut brings back are taken again.
        self.db.write(batch)?;
        Ok((forgotten, front))
    }
}

fn namespace_prefix(namespace: &str) -> Vec<u8> {
    [namespace.as_bytes(), b"\0"].concat()
}

fn entry_key(namespace: &str, action_id: &ActionId) -> Vec<u8> {
    [namespace.as_bytes(), b"\0", &action_id.0].concat()
}

fn row_key(prefix: &[u8], number: u64, action: &[u8]) -> Vec<u8> {
    [prefix, &number.to_be_bytes(), action].concat()
}

/// A row's number and action, from what follows its namespace prefix.
fn split_number(rest: &[u8]) -> Result<(u64, &[u8])> {
    match rest.split_first_chunk::<8>() {
        Some((number, action)) if action.len() == ACTION_LEN => Ok((u64::from_be_bytes(*number), action)),
        _ => Err(Error::Corrupt(format!("a Go entry order row ending in {} bytes", rest.len()))),
    }
}

/// A row's namespace prefix (namespace · NUL), number and action.
fn split_row(key: &[u8]) -> Result<(&[u8], u64, &[u8])> {
    let end = key.iter().position(|byte| *byte == 0).map(|at| at + 1);
    let Some((prefix, rest)) = end.map(|end| key.split_at(end)) else {
        return Err(Error::Corrupt(format!(
            "a Go entry order row of {} bytes without a namespace",
            key.len()
        )));
    };
    let (number, action) = split_number(rest)?;
    Ok((prefix, number, action))
}

fn entry_key_of_row(prefix: &[u8], row: &[u8]) -> Result<Vec<u8>> {
    let (_, action) = split_number(&row[prefix.len()..])?;
    Ok([prefix, action].concat())
}

/// The namespace of a key's prefix (namespace · NUL).
fn namespace_of(prefix: &[u8]) -> Result<String> {
    prefix.strip_suffix(b"\0").and_then(|name| String::from_utf8(name.to_vec()).ok()).ok_or_else(|| {
        Error::Corrupt(format!("a Go entry key's namespace {:?}", String::from_utf8_lossy(prefix)))
    })
}

/// Each namespace's first and last row: one seek to each end of every namespace.
fn read_queues(db: &DB) -> Result<Queues> {
    let mut queues = Queues::default();
    let mut walk = db.raw_iterator_cf(cf(db, CF_GO_QUEUE)?);
    walk.seek_to_first();
    while let Some(first) = walk.key() {
        let (prefix, front, _) = split_row(first)?;
        let prefix = prefix.to_vec();
        let past = [&prefix[..prefix.len() - 1], b"\x01"].concat();
        walk.seek_for_prev(&past);
        let last = walk.key().map(split_row).transpose()?.map_or(front, |(_, number, _)| number);
        queues.found(namespace_of(&prefix)?, front, last);
        walk.seek(&past);
    }
    walk.status()?;
    Ok(queues)
}

/// Gives every stored entry a row, unless that was done: the first open of a store written
/// before the order existed. Cut off by a crash, it is done again from the start; an entry
/// with two rows is counted twice until the older goes.
fn index_unordered_entries(db: &DB, queues: &mut Queues) -> Result<()> {
    let counters = cf(db, CF_COUNTERS)?;
    if db.get_pinned_cf(counters, ORDER_MARKER)?.is_some() {
        return Ok(());
    }
    let (actions, rows) = (cf(db, CF_GO_ACTIONS)?, cf(db, CF_GO_QUEUE)?);
    let mut batch = WriteBatch::default();
    let mut indexed = 0u64;
    for item in db.iterator_cf(actions, IteratorMode::Start) {
        let (key, value) = item?;
        let prefix_len = key.len().saturating_sub(ACTION_LEN);
        let (prefix, action) = key.split_at(prefix_len);
        let number = queues.number(&namespace_of(prefix)?, false);
        batch.put_cf(rows, row_key(prefix, number, action), value);
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

/// Moves the rows of the one order over all namespaces (number · namespace · NUL · ActionID),
/// oldest first, to the end of their namespace's. Each write moves a batch whole, so a crash
/// leaves the rest to the next open, still in order.
fn move_rows_of_one_order(db: &DB, queues: &mut Queues) -> Result<()> {
    let (old, rows) = (cf(db, CF_GO_ORDER)?, cf(db, CF_GO_QUEUE)?);
    let mut batch = WriteBatch::default();
    let mut moved = 0u64;
    for item in db.iterator_cf(old, IteratorMode::Start) {
        let (key, value) = item?;
        let entry_key = key
            .get(8..)
            .filter(|rest| rest.len() > ACTION_LEN)
            .ok_or_else(|| Error::Corrupt(format!("a Go entry order row of {} bytes", key.len())))?;
        let (prefix, action) = entry_key.split_at(entry_key.len() - ACTION_LEN);
        let number = queues.number(&namespace_of(prefix)?, false);
        batch.put_cf(rows, row_key(prefix, number, action), value);
        batch.delete_cf(old, &key);
        moved += 1;
        if batch.len() >= 2 * FORGET_BATCH {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    db.write(batch)?;
    if moved > 0 {
        tracing::info!(rows = moved, "Go entry order rows moved to their namespace's order");
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
        let (actions, rows) = (cf(&self.db, CF_GO_ACTIONS)?, cf(&self.db, CF_GO_QUEUE)?);
        let value = entry.encode();
        let number = self.queues().number(namespace, true);
        let mut batch = WriteBatch::default();
        batch.put_cf(actions, entry_key(namespace, action_id), value);
        batch.put_cf(rows, row_key(&namespace_prefix(namespace), number, &action_id.0), value);
        let written = self.db.write_opt(batch, &synced);
        // A put that failed leaves a gap in the numbers, counted until the front passes it.
        self.queues().landed(namespace, number);
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

    /// The entries and their rows go at once; rows of puts still landing stay counted until
    /// the front passes them.
    fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        let _turn = self.forgetting.lock().unwrap_or_else(PoisonError::into_inner);
        let purged = crate::db::purge_namespace(&self.db, CF_GO_ACTIONS, &[CF_GO_QUEUE], namespace)?;
        let mut queues = self.queues();
        if let Some(horizon) = queues.horizon(namespace) {
            queues.advance(namespace, horizon);
        }
        Ok(purged)
    }

    fn count(&self) -> u64 {
        self.queues().counted()
    }

    fn forget_oldest(&self, limit: usize) -> Result<u64> {
        let _turn = match self.forgetting.try_lock() {
            Ok(turn) => turn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Someone is forgetting already; what is over the bound is theirs.
            Err(TryLockError::WouldBlock) => return Ok(0),
        };
        let (mut forgotten, mut taken) = (0, 0);
        let limit = limit as u64;
        while taken < limit {
            let cuts = self.queues().cuts(self.max_entries, limit - taken);
            let mut advanced = 0;
            for cut in cuts {
                let (gone, front) = self.take(&cut)?;
                forgotten += gone;
                advanced += self.queues().advance(&cut.namespace, front);
            }
            if advanced == 0 {
                // Every row left over the bound is of a put still landing (or there is none).
                break;
            }
            taken += advanced;
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
        for time in 0..5 {
            entries.put_synced("pr", &action(9), &entry(time)).unwrap();
        }
        entries.put_synced("pr", &action(1), &entry(1)).unwrap();
        entries.put_synced("pr", &action(2), &entry(1)).unwrap();
        // The four older rows of action 9 go, and forget nothing.
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 0);
        assert_eq!(entries.get("pr", &action(9)).unwrap(), Some(entry(4)));
        assert!(stored(&entries, "pr", 1) && stored(&entries, "pr", 2));
        assert_eq!(entries.count(), 3);
        entries.put_synced("pr", &action(3), &entry(1)).unwrap();
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 1);
        assert!(!stored(&entries, "pr", 9));
    }

    /// A writer of its own namespace floods entries: the bound takes the flood's oldest, not
    /// what other namespaces recorded before it, and it still does after a restart.
    #[test]
    fn a_flood_in_one_namespace_forgets_its_own_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let entries = RocksGoEntries::open(Arc::clone(&db), 10).unwrap();
        for n in 0..4 {
            entries.put_synced("main", &action(n), &entry(1)).unwrap();
        }
        for n in 0..20 {
            entries.put_synced("pr-1", &action(n), &entry(1)).unwrap();
        }
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 14);
        assert!((0..4).all(|n| stored(&entries, "main", n)), "main lost entries to pr-1's flood");
        assert!((0..14).all(|n| !stored(&entries, "pr-1", n)));
        assert!((14..20).all(|n| stored(&entries, "pr-1", n)));

        drop(entries);
        let entries = RocksGoEntries::open(db, 10).unwrap();
        assert_eq!(entries.count(), 10);
        for n in 20..30 {
            entries.put_synced("pr-1", &action(n), &entry(1)).unwrap();
        }
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 10);
        assert!((0..4).all(|n| stored(&entries, "main", n)), "reopened, main lost entries");
        assert_eq!(entries.queues().namespace_counted("pr-1"), 6);
    }

    #[test]
    fn a_purged_namespace_stops_counting() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let entries = RocksGoEntries::open(Arc::clone(&db), 100).unwrap();
        for n in 0..5 {
            entries.put_synced("pr-1", &action(n), &entry(1)).unwrap();
            entries.put_synced("main", &action(n), &entry(1)).unwrap();
        }
        assert_eq!(entries.purge_namespace("pr-1").unwrap(), 5);
        assert_eq!(entries.count(), 5);
        drop(entries);
        assert_eq!(RocksGoEntries::open(db, 100).unwrap().count(), 5, "rows of the purge are left");
    }

    /// Rows of the one order over all namespaces that earlier versions kept move to their
    /// namespace's, oldest first, and count as they did.
    #[test]
    fn rows_of_the_order_over_all_namespaces_move_to_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        db.put_cf(cf(&db, CF_COUNTERS).unwrap(), ORDER_MARKER, [1]).unwrap();
        let old = cf(&db, CF_GO_ORDER).unwrap();
        for (sequence, (namespace, n)) in
            [("main", 0), ("pr-1", 0), ("pr-1", 1), ("main", 1), ("pr-1", 2)].into_iter().enumerate()
        {
            put_for_tests(&db, namespace, &action(n), &entry(1));
            let key = [&(sequence as u64).to_be_bytes()[..], &entry_key(namespace, &action(n))].concat();
            db.put_cf(old, key, entry(1).encode()).unwrap();
        }
        let entries = RocksGoEntries::open(Arc::clone(&db), 3).unwrap();
        assert_eq!(entries.count(), 5);
        assert!(db.iterator_cf(old, IteratorMode::Start).next().is_none(), "rows left in go_order");
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 2);
        assert!(stored(&entries, "main", 0) && stored(&entries, "main", 1));
        assert!(!stored(&entries, "pr-1", 0) && !stored(&entries, "pr-1", 1) && stored(&entries, "pr-1", 2));
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
        // As if the put numbered 1 had not landed yet.
        entries.queues().hold_in_flight("ns", 1);
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 1);
        assert!(!stored(&entries, "ns", 0) && stored(&entries, "ns", 1));
        entries.queues().landed("ns", 1);
        assert_eq!(entries.forget_oldest(usize::MAX).unwrap(), 1);
        assert!(stored(&entries, "ns", 2) && !stored(&entries, "ns", 1));
    }
}
