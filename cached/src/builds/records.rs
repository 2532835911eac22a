//! Where the whole-build cache keeps its records: three ordered tables of byte keys (the
//! layout is `keys`'), so that a prefix selects a namespace, a package or a target and a walk
//! in key order visits builds and events by age. Any store with ordered keys and atomic
//! batches can hold them; RocksDB does (`rocks`).

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// namespace · build key → the recorded outputs and build duration.
    Entries,
    /// namespace · module · package · GOOS/GOARCH · time · build key → manifest.
    Index,
    /// namespace · time · sequence · target hash → event.
    Events,
    /// time · hash of the index key → size and index key of a recorded build (`retention`).
    Order,
}

/// One change of a batch.
#[derive(Debug)]
pub enum Change {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
    /// Every key from the first up to (not including) the second.
    DeleteRange(Table, Vec<u8>, Vec<u8>),
}

/// Rows (key, value) in key order.
pub type Rows<'a> = Box<dyn Iterator<Item = Result<(Box<[u8]>, Box<[u8]>)>> + 'a>;

/// The whole-build records. Every method blocks: call it from a blocking task.
pub trait BuildRecords: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `changes` at once: all of them or none.
    fn write(&self, changes: Vec<Change>) -> Result<()>;

    /// The rows from `from` on: forward, or with `reverse` from the last key at or before it
    /// down to the first.
    fn scan(&self, table: Table, from: &[u8], reverse: bool) -> Result<Rows<'_>>;

    /// Removes every record of `namespace` in every table; returns how many entries it had.
    fn purge_namespace(&self, namespace: &str) -> Result<u64>;
}
