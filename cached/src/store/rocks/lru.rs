//! Approximate LRU eviction. Reads note access times in memory; they reach RocksDB in batches
//! (`flush_access_times`), so a read never costs a write. Eviction walks the `lru` column
//! family oldest first.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use rocksdb::{IteratorMode, WriteBatch};

use super::{RocksStore, StoreTotals};
use crate::db::{CF_BLOBS, CF_LRU, cf};
use crate::error::Result;
use crate::store::keys::{BlobKey, lru_key, u64_be};

/// Blobs evicted per write batch: bounds the batch size and the time the commit lock is held.
const EVICTION_BATCH: usize = 512;

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Access times noted since the last flush.
#[derive(Default)]
pub(super) struct AccessLog {
    touched: DashMap<BlobKey, u64>,
}

impl AccessLog {
    pub(super) fn touch(&self, key: BlobKey) {
        self.touched.insert(key, now_ms());
    }

    pub(super) fn drain(&self) -> Vec<(BlobKey, u64)> {
        let keys: Vec<BlobKey> = self.touched.iter().map(|entry| *entry.key()).collect();
        keys.into_iter().filter_map(|key| self.touched.remove(&key)).collect()
    }
}

impl RocksStore {
    /// Writes the access times noted in memory to the `lru` index.
    pub fn flush_access_times(&self) -> Result<()> {
        let totals = self.inner.lock_totals();
        self.flush_access_times_locked(&totals)
    }

    /// Like `flush_access_times`, for a caller that holds the totals lock.
    fn flush_access_times_locked(&self, _locked: &StoreTotals) -> Result<()> {
        let inner = &self.inner;
        let touched = inner.access_log.drain();
        if touched.is_empty() {
            return Ok(());
        }
        let db = &inner.db;
        let (blobs, lru) = (cf(db, CF_BLOBS)?, cf(db, CF_LRU)?);
        let mut batch = WriteBatch::default();
        for (key, atime_ms) in touched {
            let Some(mut meta) = inner.meta(&key)? else { continue };
            if meta.atime_ms >= atime_ms {
                continue;
            }
            batch.delete_cf(lru, lru_key(meta.atime_ms, &key));
            batch.put_cf(lru, lru_key(atime_ms, &key), []);
            meta.atime_ms = atime_ms;
            batch.put_cf(blobs, key.as_bytes(), meta.encode());
        }
        db.write(batch)?;
        Ok(())
    }

    /// Housekeeping run periodically: persist access times, and evict down to the low
    /// watermark once the high one was crossed.
    pub fn maintain(&self) -> Result<()> {
        let inner = &self.inner;
        let mut totals = inner.lock_totals();
        self.flush_access_times_locked(&totals)?;
        if inner.over_high_watermark.swap(false, Ordering::Relaxed)
            && totals.stored_bytes > inner.budget.high_bytes
        {
            self.evict_locked(&mut totals, inner.budget.low_bytes)?;
        }
        Ok(())
    }

    /// Evicts least recently used blobs storing about `bytes`; returns the (blobs, bytes)
    /// evicted.
    pub fn evict_bytes(&self, bytes: u64) -> Result<(u64, u64)> {
        let mut totals = self.inner.lock_totals();
        let target = totals.stored_bytes.saturating_sub(bytes);
        self.evict_locked(&mut totals, target)
    }

    /// Evicts least recently used blobs until at most `target` bytes are stored; returns the
    /// (blobs, bytes) evicted. The caller holds the totals lock.
    pub(super) fn evict_locked(&self, totals: &mut StoreTotals, target: u64) -> Result<(u64, u64)> {
        // Reads since the last flush must count, or a blob just used could go first.
        self.flush_access_times_locked(totals)?;
        let inner = &self.inner;
        let db = &inner.db;
        let (blobs, lru) = (cf(db, CF_BLOBS)?, cf(db, CF_LRU)?);
        let (mut evicted_blobs, mut evicted_bytes) = (0u64, 0u64);
        while totals.stored_bytes > target {
            let mut batch = WriteBatch::default();
            let mut next = *totals;
            let mut in_batch = 0;
            for item in db.iterator_cf(lru, IteratorMode::Start) {
                if next.stored_bytes <= target || in_batch == EVICTION_BATCH {
                    break;
                }
                let (lru_entry, _) = item?;
                batch.delete_cf(lru, &lru_entry);
                in_batch += 1;
                let key = BlobKey::from_bytes(&lru_entry[8..])?;
                let Some(meta) = inner.meta(&key)? else { continue };
                // An entry older than the blob's recorded access time is stale; the current
                // one is further along the index.
                if meta.atime_ms != u64_be(&lru_entry) {
                    continue;
                }
                batch.delete_cf(blobs, key.as_bytes());
                inner.delete_chunks(&mut batch, meta.upload_id, proto::frames::frame_count(meta.size))?;
                next.remove(&meta);
                evicted_blobs += 1;
                evicted_bytes += meta.stored_bytes;
            }
            if in_batch == 0 {
                break;
            }
            inner.put_totals(&mut batch, &next)?;
            db.write(batch)?;
            *totals = next;
        }
        inner.evicted_blobs.fetch_add(evicted_blobs, Ordering::Relaxed);
        inner.evicted_bytes.fetch_add(evicted_bytes, Ordering::Relaxed);
        if evicted_blobs > 0 {
            tracing::info!(evicted_blobs, evicted_bytes, stored_bytes = totals.stored_bytes, "evicted");
        }
        Ok((evicted_blobs, evicted_bytes))
    }
}
