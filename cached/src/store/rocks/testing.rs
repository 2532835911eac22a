//! Helpers for the unit tests of the store's accounts: blobs stored as one owner's calls.

use std::sync::Arc;

use bytes::Bytes;
use proto::Digest;

use super::RocksStore;
use crate::store::{BlobStore, Committed};

/// Stores `data` as if `owner`'s call had uploaded it.
pub(crate) fn store_as(store: &RocksStore, owner: &str, data: &[u8]) -> Committed {
    crate::caller::run_as(Some(Arc::from(owner)), || {
        let mut writer = store.write(&Digest::of(data)).unwrap();
        writer.put_frame(Bytes::copy_from_slice(data)).unwrap();
        writer.record_sha256([7; 32]);
        writer.commit().unwrap()
    })
}

/// The `i`th blob of `owner`, 4096 bytes.
pub(crate) fn blob(owner: &str, i: usize) -> Vec<u8> {
    let mut data = format!("{owner} blob {i} ").into_bytes();
    data.resize(4096, b'.');
    data
}

pub(crate) fn held(store: &RocksStore, data: &[u8]) -> bool {
    store.stat(&[Digest::of(data)]).unwrap()[0].is_some()
}
