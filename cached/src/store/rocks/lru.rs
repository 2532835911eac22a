//! Approximate LRU eviction, by owner. Reads note access times in memory; they reach RocksDB in
//! batches (`flush_access_times`), so a read never costs a write. Eviction takes from the owners
//! above their fair share of the budget ([`super::owners`]), walking each one's part of the
//! `lru` column family oldest first.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::RocksStore;
use super::owners::Ledger;
use crate::db::{CF_BLOBS, CF_LRU, cf};
use crate::error::Result;
use crate::store::keys::{BlobKey, LRU_KEY_LEN, lru_key, u64_be};

/// Blobs evicted per write batch: bounds the batch size and the time the commit lock is held.
const EVICTION_BATCH: usize = 512;

/// Rounds of fair-share eviction in which a blob another owner claimed passes to it.
const HAND_OVER_ROUNDS: usize = 16;

/// How long a blob may go unused before eviction takes it ahead of any owner's fair share.
pub(super) const IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

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
        let ledger = self.inner.lock_ledger();
        self.flush_access_times_locked(&ledger)
    }

    /// Like `flush_access_times`, for a caller that holds the ledger's lock.
    fn flush_access_times_locked(&self, _locked: &Ledger) -> Result<()> {
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
            batch.delete_cf(lru, lru_key(meta.owner, meta.atime_ms, &key));
            batch.put_cf(lru, lru_key(meta.owner, atime_ms, &key), []);
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
        let mut ledger = inner.lock_ledger();
        self.flush_access_times_locked(&ledger)?;
        if inner.over_high_watermark.swap(false, Ordering::Relaxed)
            && ledger.totals.stored_bytes > inner.budget.high_bytes
        {
            self.evict_locked(&mut ledger, inner.budget.low_bytes)?;
        }
        Ok(())
    }

    /// Evicts blobs storing about `bytes`, as eviction under the budget would; returns the
    /// (blobs, bytes) evicted.
    pub fn evict_bytes(&self, bytes: u64) -> Result<(u64, u64)> {
        let mut ledger = self.inner.lock_ledger();
        let target = ledger.totals.stored_bytes.saturating_sub(bytes);
        self.evict_locked(&mut ledger, target)
    }

    /// Evicts blobs until at most `target` bytes are stored. The blobs of owners none of whose
    /// blobs anyone stored or read for [`IDLE_AFTER`] go first, the longest idle owner first:
    /// an owner that stopped (a finished pull request) keeps no claim on the store. Then, from
    /// each owner above its fair share of `target`, its least recently used blobs until it is
    /// down to that share; an owner in use keeps what is below the level, however old. Should
    /// the accounts not add up to what is stored, the rest goes from any owner. Returns the
    /// (blobs, bytes) evicted. The caller holds the ledger's lock.
    pub(super) fn evict_locked(&self, ledger: &mut Ledger, target: u64) -> Result<(u64, u64)> {
        // Reads since the last flush must count, or a blob just used could go first.
        self.flush_access_times_locked(ledger)?;
        let mut evicted = Evicted::default();
        let idle_before = now_ms().saturating_sub(self.inner.idle_after_ms);
        for owner in self.idle_owners(ledger, idle_before)? {
            let pass = Pass { owner: Some(owner), until: u64::MAX, hand_over: true };
            self.evict_logged(
                ledger,
                &pass,
                target,
                &mut evicted,
                "evicted the blobs of an owner nobody used for a day",
            )?;
        }
        // A blob handed over counts on its claimant's account from then on, which may take that
        // one above the level: the shares are worked out again until the store is down to the
        // target. Each round deletes blobs or uses up claims, so the rounds end; one that does
        // neither leaves no owner above the level. Past HAND_OVER_ROUNDS owners lose blobs as
        // they did before claims, which bounds the time the lock is held whatever the claims.
        for round in 0.. {
            if ledger.totals.stored_bytes <= target {
                break;
            }
            let (shed, hand_over) = (evicted.shed(), round < HAND_OVER_ROUNDS);
            for (owner, excess) in ledger.excess_over(target) {
                let pass =
                    Pass { owner: Some(owner), until: evicted.shed().saturating_add(excess), hand_over };
                self.evict_logged(
                    ledger,
                    &pass,
                    target,
                    &mut evicted,
                    "evicted the blobs of an owner above its share",
                )?;
            }
            if evicted.shed() == shed {
                break;
            }
        }
        let before = evicted.bytes;
        self.evict_from(
            ledger,
            &Pass { owner: None, until: u64::MAX, hand_over: false },
            target,
            &mut evicted,
        )?;
        if evicted.bytes > before {
            tracing::warn!(evicted_bytes = evicted.bytes - before, "evicted blobs the owner accounts missed");
        }
        let inner = &self.inner;
        inner.evicted_blobs.fetch_add(evicted.blobs, Ordering::Relaxed);
        inner.evicted_bytes.fetch_add(evicted.bytes, Ordering::Relaxed);
        if evicted.blobs > 0 || evicted.handed_bytes > 0 {
            tracing::info!(
                evicted_blobs = evicted.blobs,
                evicted_bytes = evicted.bytes,
                handed_over_bytes = evicted.handed_bytes,
                stored_bytes = ledger.totals.stored_bytes,
                "evicted"
            );
        }
        Ok((evicted.blobs, evicted.bytes))
    }

    /// `evict_from` for one owner, logging what it took from it and what passed to claimants.
    fn evict_logged(
        &self,
        ledger: &mut Ledger,
        pass: &Pass,
        target: u64,
        evicted: &mut Evicted,
        message: &'static str,
    ) -> Result<()> {
        let (bytes, handed) = (evicted.bytes, evicted.handed_bytes);
        let owner = pass.owner.map(|owner| ledger.name_of(owner).to_owned()).unwrap_or_default();
        self.evict_from(ledger, pass, target, evicted)?;
        if evicted.bytes > bytes || evicted.handed_bytes > handed {
            tracing::info!(
                owner,
                evicted_bytes = evicted.bytes - bytes,
                handed_over_bytes = evicted.handed_bytes - handed,
                "{message}"
            );
        }
        Ok(())
    }

    /// The owners whose most recently used blob was last used before `idle_before`, the longest
    /// idle first.
    fn idle_owners(&self, ledger: &Ledger, idle_before: u64) -> Result<Vec<u64>> {
        let db = &self.inner.db;
        let mut entries = db.raw_iterator_cf(cf(db, CF_LRU)?);
        let mut idle = Vec::new();
        for owner in ledger.owners.keys() {
            let prefix = owner.to_be_bytes();
            let mut past_prefix = prefix.to_vec();
            past_prefix.resize(LRU_KEY_LEN, 0xff);
            entries.seek_for_prev(&past_prefix);
            if let Some(newest) =
                entries.key().filter(|key| key.starts_with(&prefix) && key.len() == LRU_KEY_LEN)
            {
                let used = u64_be(&newest[8..]);
                if used < idle_before {
                    idle.push((used, *owner));
                }
            }
        }
        entries.status()?;
        idle.sort_unstable();
        Ok(idle.into_iter().map(|(_, owner)| owner).collect())
    }

    /// Evicts the least recently used blobs of `pass.owner` (of anyone: `None`) until
    /// `evicted` reaches `pass.until` bytes or at most `target` bytes are stored.
    fn evict_from(&self, ledger: &mut Ledger, pass: &Pass, target: u64, evicted: &mut Evicted) -> Result<()> {
        let inner = &self.inner;
        let db = &inner.db;
        let lru = cf(db, CF_LRU)?;
        let prefix = pass.owner.map(u64::to_be_bytes);
        let done = |stored: u64, evicted: &Evicted| stored <= target || evicted.shed() >= pass.until;
        while !done(ledger.totals.stored_bytes, evicted) {
            let mut batch = WriteBatch::default();
            let mut change = ledger.change();
            let mut in_batch = 0;
            let from = match &prefix {
                Some(prefix) => IteratorMode::From(prefix, Direction::Forward),
                None => IteratorMode::Start,
            };
            for item in db.iterator_cf(lru, from) {
                if done(change.totals.stored_bytes, evicted) || in_batch == EVICTION_BATCH {
                    break;
                }
                let (lru_entry, _) = item?;
                if prefix.is_some_and(|prefix| !lru_entry.starts_with(&prefix)) {
                    break;
                }
                batch.delete_cf(lru, &lru_entry);
                in_batch += 1;
                if lru_entry.len() != LRU_KEY_LEN {
                    continue;
                }
                let key = BlobKey::from_bytes(&lru_entry[16..])?;
                let Some(meta) = inner.meta(&key)? else { continue };
                // An entry older than the blob's recorded access time is stale; the current
                // one is further along the index.
                if lru_key(meta.owner, meta.atime_ms, &key)[..] != lru_entry[..] {
                    continue;
                }
                let successor = match pass.hand_over {
                    true => inner.successor(ledger, &change, &key, &meta)?,
                    false => None,
                };
                if let Some(claimant) = successor {
                    inner.hand_over(&mut batch, &key, &meta, &claimant, &mut change)?;
                    evicted.handed_bytes += meta.stored_bytes;
                    continue;
                }
                inner.delete_blob(&mut batch, &key, &meta, &mut change)?;
                evicted.blobs += 1;
                evicted.bytes += meta.stored_bytes;
            }
            if in_batch == 0 {
                break;
            }
            ledger.put(db, &mut batch, &change)?;
            db.write(batch)?;
            ledger.apply(change);
        }
        Ok(())
    }
}

/// One walk of the access order: whose blobs, until how many bytes they shed, and whether a
/// blob another owner claimed passes to it rather than going ([`super::claims`]).
struct Pass {
    owner: Option<u64>,
    until: u64,
    hand_over: bool,
}

/// What an eviction took, and what it handed to claimants.
#[derive(Default)]
struct Evicted {
    blobs: u64,
    bytes: u64,
    handed_bytes: u64,
}

impl Evicted {
    /// What the owners walked lost: deleted or handed over.
    fn shed(&self) -> u64 {
        self.bytes + self.handed_bytes
    }
}
