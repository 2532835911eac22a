//! Operator actions on the stored records.

use crate::builds::BuildRecords;
use crate::error::Result;
use crate::gocache::GoEntryStore;

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub go_entries: u64,
    pub build_records: u64,
}

/// Removes every Go action entry and whole-build record (with its index and history) of
/// `namespace`. Blocking: call it off the async runtime.
pub fn purge_namespace(go: &dyn GoEntryStore, builds: &dyn BuildRecords, namespace: &str) -> Result<Purged> {
    Ok(Purged {
        go_entries: go.purge_namespace(namespace)?,
        build_records: builds.purge_namespace(namespace)?,
    })
}
