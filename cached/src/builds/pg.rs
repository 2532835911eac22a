//! The whole-build records in PostgreSQL, shared by every replica so that `explain` and
//! `stats --since` answer the same through any of them: the three tables as one, keyed by
//! (table, key); `bytea` orders bytewise, as RocksDB does. The trait blocks (its callers run in
//! blocking tasks), so each call drives its query on the runtime it was made in.

use std::collections::VecDeque;

use tokio::runtime::Handle;

use super::records::{BuildRecords, Change, Rows, Table};
use crate::error::Result;
use crate::postgres::Database;

/// Rows one scan query reads; the next page is read when they are used up.
const PAGE: i64 = 256;

pub struct PgBuildRecords {
    db: Database,
    runtime: Handle,
}

impl PgBuildRecords {
    /// Call from within the runtime that will run its queries.
    pub fn new(db: Database) -> Self {
        Self { db, runtime: Handle::current() }
    }
}

fn table_id(table: Table) -> i16 {
    match table {
        Table::Entries => 0,
        Table::Index => 1,
        Table::Events => 2,
        Table::Order => 3,
    }
}

impl BuildRecords for PgBuildRecords {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT value FROM build_records WHERE tbl = $1 AND key = $2",
                    &[&table_id(table), &key],
                )
                .await?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn write(&self, changes: Vec<Change>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            for change in &changes {
                match change {
                    Change::Put(table, key, value) => {
                        tx.execute(
                            "INSERT INTO build_records (tbl, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                            &[&table_id(*table), key, value],
                        )
                        .await?
                    }
                    Change::Delete(table, key) => {
                        tx.execute(
                            "DELETE FROM build_records WHERE tbl = $1 AND key = $2",
                            &[&table_id(*table), key],
                        )
                        .await?
                    }
                    Change::DeleteRange(table, from, to) => {
                        tx.execute(
                            "DELETE FROM build_records WHERE tbl = $1 AND key >= $2 AND key < $3",
                            &[&table_id(*table), from, to],
                        )
                        .await?
                    }
                };
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn scan(&self, table: Table, from: &[u8], reverse: bool) -> Result<Rows<'_>> {
        let mut pages = Pages {
            records: self,
            table,
            reverse,
            next: Some(from.to_vec()),
            inclusive: true,
            rows: VecDeque::new(),
        };
        // The first page now, so that an unreachable database is an error of the scan itself.
        pages.fill()?;
        Ok(Box::new(pages))
    }

    fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        let from = [namespace.as_bytes(), b"\0"].concat();
        let to = [namespace.as_bytes(), b"\x01"].concat();
        self.runtime.block_on(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let entries = tx
                .execute("DELETE FROM build_records WHERE tbl = 0 AND key >= $1 AND key < $2", &[&from, &to])
                .await?;
            // The order rows (3) are keyed by time: they stay, counted until the oldest go.
            tx.execute(
                "DELETE FROM build_records WHERE tbl IN (1, 2) AND key >= $1 AND key < $2",
                &[&from, &to],
            )
            .await?;
            tx.commit().await?;
            Ok(entries)
        })
    }
}

/// A row as scans yield it: (key, value).
type Row = (Box<[u8]>, Box<[u8]>);

/// A scan, a page at a time.
struct Pages<'a> {
    records: &'a PgBuildRecords,
    table: Table,
    reverse: bool,
    /// Where the next page starts; `None` once the table is exhausted.
    next: Option<Vec<u8>>,
    /// Whether `next` itself belongs to the scan (only for the first page).
    inclusive: bool,
    rows: VecDeque<Row>,
}

impl Pages<'_> {
    fn fill(&mut self) -> Result<()> {
        let Some(from) = self.next.take() else { return Ok(()) };
        let sql = match (self.reverse, self.inclusive) {
            (false, true) => {
                "SELECT key, value FROM build_records WHERE tbl = $1 AND key >= $2 ORDER BY key LIMIT $3"
            }
            (false, false) => {
                "SELECT key, value FROM build_records WHERE tbl = $1 AND key > $2 ORDER BY key LIMIT $3"
            }
            (true, true) => {
                "SELECT key, value FROM build_records WHERE tbl = $1 AND key <= $2 ORDER BY key DESC LIMIT $3"
            }
            (true, false) => {
                "SELECT key, value FROM build_records WHERE tbl = $1 AND key < $2 ORDER BY key DESC LIMIT $3"
            }
        };
        let table = table_id(self.table);
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self.records.runtime.block_on(async {
            let client = self.records.db.client().await?;
            let rows = client.query(sql, &[&table, &from, &PAGE]).await?;
            Ok::<_, crate::error::Error>(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })?;
        self.inclusive = false;
        if rows.len() as i64 == PAGE {
            self.next = rows.last().map(|(key, _)| key.clone());
        }
        self.rows
            .extend(rows.into_iter().map(|(key, value)| (key.into_boxed_slice(), value.into_boxed_slice())));
        Ok(())
    }
}

impl Iterator for Pages<'_> {
    type Item = Result<(Box<[u8]>, Box<[u8]>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rows.is_empty()
            && let Err(err) = self.fill()
        {
            return Some(Err(err));
        }
        self.rows.pop_front().map(Ok)
    }
}
