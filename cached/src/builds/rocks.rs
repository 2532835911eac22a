//! The whole-build records in RocksDB: one column family per table.

use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::records::{BuildRecords, Change, Rows, Table};
use crate::db::{CF_BUILD_ENTRIES, CF_BUILD_EVENTS, CF_BUILD_INDEX, CF_BUILD_ORDER, cf};
use crate::error::Result;

pub struct RocksBuildRecords {
    db: Arc<DB>,
}

impl RocksBuildRecords {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn cf(&self, table: Table) -> Result<&rocksdb::ColumnFamily> {
        cf(&self.db, column_family(table))
    }
}

fn column_family(table: Table) -> &'static str {
    match table {
        Table::Entries => CF_BUILD_ENTRIES,
        Table::Index => CF_BUILD_INDEX,
        Table::Events => CF_BUILD_EVENTS,
        Table::Order => CF_BUILD_ORDER,
    }
}

impl BuildRecords for RocksBuildRecords {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(table)?, key)?)
    }

    fn write(&self, changes: Vec<Change>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for change in changes {
            match change {
                Change::Put(table, key, value) => batch.put_cf(self.cf(table)?, key, value),
                Change::Delete(table, key) => batch.delete_cf(self.cf(table)?, key),
                Change::DeleteRange(table, from, to) => batch.delete_range_cf(self.cf(table)?, from, to),
            }
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(())
    }

    fn scan(&self, table: Table, from: &[u8], reverse: bool) -> Result<Rows<'_>> {
        let direction = if reverse { Direction::Reverse } else { Direction::Forward };
        let rows = self.db.iterator_cf(self.cf(table)?, IteratorMode::From(from, direction));
        Ok(Box::new(rows.map(|row| row.map_err(Into::into))))
    }

    /// The namespace's order rows stay, counted until the oldest go (they are keyed by time).
    fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        crate::db::purge_namespace(&self.db, CF_BUILD_ENTRIES, &[CF_BUILD_INDEX, CF_BUILD_EVENTS], namespace)
    }
}
