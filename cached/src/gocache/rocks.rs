//! Go entries in RocksDB's `go_actions` column family: namespace · NUL · ActionID → entry.

use std::sync::Arc;

use proto::ActionId;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{EntrySlice, GoEntry, GoEntryStore};
use crate::db::{CF_GO_ACTIONS, cf};
use crate::error::Result;

pub struct RocksGoEntries {
    db: Arc<DB>,
}

impl RocksGoEntries {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }
}

fn entry_key(namespace: &str, action_id: &ActionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(namespace.len() + 33);
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key.extend_from_slice(&action_id.0);
    key
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
        let actions = cf(&self.db, CF_GO_ACTIONS)?;
        self.db.put_cf_opt(actions, entry_key(namespace, action_id), entry.encode(), &synced)?;
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

    fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        crate::db::purge_namespace(&self.db, CF_GO_ACTIONS, &[], namespace)
    }
}

#[cfg(test)]
pub(super) fn put_for_tests(db: &DB, namespace: &str, action_id: &ActionId, entry: &GoEntry) {
    db.put_cf(cf(db, CF_GO_ACTIONS).unwrap(), entry_key(namespace, action_id), entry.encode()).unwrap();
}
