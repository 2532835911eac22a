//! Operator actions on the stored records.

use rocksdb::DB;

use crate::db::{CF_BUILD_ENTRIES, CF_BUILD_EVENTS, CF_BUILD_INDEX, CF_GO_ACTIONS, cf};
use crate::error::Result;

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub go_entries: u64,
    pub build_records: u64,
}

/// Removes every Go action entry and whole-build record (with its index and history) of
/// `namespace`. Every such key starts with the namespace and a NUL, and namespaces hold no
/// control characters, so `namespace\0 .. namespace\x01` is exactly one namespace's range.
/// Blocking: call it off the async runtime.
pub fn purge_namespace(db: &DB, namespace: &str) -> Result<Purged> {
    let from = [namespace.as_bytes(), b"\0"].concat();
    let to = [namespace.as_bytes(), b"\x01"].concat();
    let mut counts = [0; 2];
    for (count, name) in counts.iter_mut().zip([CF_GO_ACTIONS, CF_BUILD_ENTRIES]) {
        let mut keys = db.raw_iterator_cf(cf(db, name)?);
        keys.seek(&from);
        while keys.key().is_some_and(|key| key < to.as_slice()) {
            *count += 1;
            keys.next();
        }
        keys.status()?;
    }
    // Counted first, then removed by range: an entry written in between goes too, uncounted.
    for name in [CF_GO_ACTIONS, CF_BUILD_ENTRIES, CF_BUILD_INDEX, CF_BUILD_EVENTS] {
        db.delete_range_cf(cf(db, name)?, &from, &to)?;
    }
    Ok(Purged { go_entries: counts[0], build_records: counts[1] })
}
