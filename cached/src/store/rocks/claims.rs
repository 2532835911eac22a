//! Claims on blobs another owner holds. A blob is charged to the owner that stored it first
//! ([`super::owners`]), and content is often predictable (a public base layer, a cosign
//! signature's payload, a reproducible Go output): a tenant could store another's next blob
//! first and then flood its own account until eviction took it, though the other tenant's
//! tags, entries and records name it. So every owner that later stores, links or records a
//! blob it does not hold claims it, and eviction from the holder's account passes the blob to
//! a claimant, charged to it from then on, instead of deleting it. Only the last holder's
//! share, or the last resort of eviction, deletes a blob.
//!
//! A claim lasts while the blob does: one that reads the blob daily may never store it again
//! (a tag pulled, a Go entry hit). A claimant that has gone (a finished pull request) gets the
//! blob only to lose it to the next eviction, which takes the blobs of owners nobody used for a
//! day first, and passes it on again to another claimant. Claims are bounded by the owners
//! (tokens and tenants' lease shares) times the blobs they name; a blob's claims go with it.

use std::collections::HashSet;
use std::sync::Arc;

use proto::Digest;
use rocksdb::WriteBatch;

use super::lru::now_ms;
use super::owners::{Change, Ledger, current_owner};
use super::{Inner, RocksStore, live};
use crate::db::{CF_BLOBS, CF_CLAIMS, CF_LRU, cf};
use crate::error::{Error, Result};
use crate::store::keys::{BlobKey, BlobMeta, UNATTRIBUTED, lru_key, u64_be};

const CLAIM_VERSION: u8 = 1;
const CLAIM_KEY_LEN: usize = 33 + 8;
/// A claim older than this is written again when its owner claims the blob again: the time it
/// carries is the blob's last use by the claimant when it passes to it.
const RENEW_AFTER_MS: u64 = 60 * 60 * 1000;

fn claim_key(blob: &BlobKey, owner: u64) -> [u8; CLAIM_KEY_LEN] {
    let mut key = [0u8; CLAIM_KEY_LEN];
    key[..33].copy_from_slice(blob.as_bytes());
    key[33..].copy_from_slice(&owner.to_be_bytes());
    key
}

fn encode_claim(name: &str, claimed_ms: u64) -> Vec<u8> {
    let mut value = vec![CLAIM_VERSION];
    value.extend_from_slice(&claimed_ms.to_be_bytes());
    value.extend_from_slice(name.as_bytes());
    value
}

/// When the claim was made, and by whom.
fn decode_claim(value: &[u8]) -> Result<(u64, Arc<str>)> {
    match value.split_first() {
        Some((&CLAIM_VERSION, rest)) if rest.len() >= 8 => {
            Ok((u64_be(rest), Arc::from(String::from_utf8_lossy(&rest[8..]).as_ref())))
        }
        _ => Err(Error::Corrupt(format!("blob claim of {} bytes", value.len()))),
    }
}

/// A claimant a blob passes to.
pub(super) struct Claimant {
    pub owner: u64,
    pub name: Arc<str>,
    /// When it claimed the blob last, milliseconds since the Unix epoch.
    pub claimed_ms: u64,
}

impl RocksStore {
    /// Notes the current caller's claim on each of `digests` held by another owner. Blobs not
    /// held, the caller's own and claims noted lately cost a read and nothing else. A claim is
    /// worth keeping, not a reason to fail the call that makes it: one that cannot be written
    /// is logged.
    pub(super) fn claim_for_caller(&self, digests: &[Digest]) {
        let inner = &self.inner;
        logged(inner.unclaimed(digests).and_then(|unclaimed| match unclaimed {
            Some(unclaimed) => inner.write_claims(&inner.lock_ledger(), unclaimed),
            None => Ok(()),
        }));
    }
}

impl Inner {
    /// [`RocksStore::claim_for_caller`], for a caller that holds the ledger's lock.
    pub(super) fn claim_locked(&self, ledger: &Ledger, digests: &[Digest]) {
        logged(self.unclaimed(digests).and_then(|unclaimed| match unclaimed {
            Some(unclaimed) => self.write_claims(ledger, unclaimed),
            None => Ok(()),
        }));
    }
}

fn logged(claimed: Result<()>) {
    if let Err(err) = claimed {
        tracing::warn!(error = %err, "could not note a claim on blobs another owner holds");
    }
}

/// What the current caller has yet to claim: who it is and which blobs.
pub(super) struct Unclaimed {
    owner: u64,
    name: String,
    blobs: Vec<(Digest, BlobKey)>,
}

impl Inner {
    /// The blobs of `digests` another owner holds that the current caller has not claimed
    /// lately; `None` when there are none (or the caller is the server itself).
    pub(super) fn unclaimed(&self, digests: &[Digest]) -> Result<Option<Unclaimed>> {
        let (name, owner) = current_owner();
        if owner == UNATTRIBUTED || digests.is_empty() {
            return Ok(None);
        }
        let others = self.held_by_others(digests, owner)?;
        if others.is_empty() {
            return Ok(None);
        }
        let db = &self.db;
        let claim_keys: Vec<[u8; CLAIM_KEY_LEN]> =
            others.iter().map(|(_, key)| claim_key(key, owner)).collect();
        let claimed = db.batched_multi_get_cf(cf(db, CF_CLAIMS)?, claim_keys.iter(), false);
        let renew_before = now_ms().saturating_sub(RENEW_AFTER_MS);
        let mut blobs = Vec::new();
        for (other, claim) in others.into_iter().zip(claimed) {
            let fresh = match claim? {
                Some(value) => decode_claim(&value).is_ok_and(|(claimed_ms, _)| claimed_ms >= renew_before),
                None => false,
            };
            if !fresh {
                blobs.push(other);
            }
        }
        Ok((!blobs.is_empty()).then_some(Unclaimed { owner, name, blobs }))
    }

    /// The blobs of `digests` held, by an owner other than `owner`, each once.
    fn held_by_others(&self, digests: &[Digest], owner: u64) -> Result<Vec<(Digest, BlobKey)>> {
        let db = &self.db;
        let mut seen = HashSet::new();
        let unique: Vec<(Digest, BlobKey)> = digests
            .iter()
            .map(|digest| (*digest, BlobKey::blake3(digest)))
            .filter(|(_, key)| seen.insert(*key))
            .collect();
        let metas =
            db.batched_multi_get_cf(cf(db, CF_BLOBS)?, unique.iter().map(|(_, key)| key.as_bytes()), false);
        let mut others = Vec::new();
        for ((digest, key), meta) in unique.into_iter().zip(metas) {
            let Some(meta) = meta? else { continue };
            let meta = BlobMeta::decode(&meta)?;
            if meta.owner != owner && live(&meta, &digest).is_some() {
                others.push((digest, key));
            }
        }
        Ok(others)
    }

    /// Writes the claims of `unclaimed` on the blobs still held by others. The caller holds the
    /// ledger's lock, so no claim outlives a blob eviction deletes meanwhile.
    pub(super) fn write_claims(&self, _locked: &Ledger, unclaimed: Unclaimed) -> Result<()> {
        let digests: Vec<Digest> = unclaimed.blobs.iter().map(|(digest, _)| *digest).collect();
        let still = self.held_by_others(&digests, unclaimed.owner)?;
        let claims = cf(&self.db, CF_CLAIMS)?;
        let (mut batch, now) = (WriteBatch::default(), now_ms());
        for (_, key) in still {
            batch.put_cf(claims, claim_key(&key, unclaimed.owner), encode_claim(&unclaimed.name, now));
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Every claim on the blob under `key`.
    fn claims_on(&self, key: &BlobKey) -> Result<Vec<Claimant>> {
        let db = &self.db;
        let prefix = key.as_bytes();
        let mut claimants = Vec::new();
        for item in db.prefix_iterator_cf(cf(db, CF_CLAIMS)?, prefix) {
            let (claim, value) = item?;
            if !claim.starts_with(prefix) {
                break;
            }
            if claim.len() != CLAIM_KEY_LEN {
                return Err(Error::Corrupt(format!("blob claim key of {} bytes", claim.len())));
            }
            let (claimed_ms, name) = decode_claim(&value)?;
            claimants.push(Claimant { owner: u64_be(&claim[33..]), name, claimed_ms });
        }
        Ok(claimants)
    }

    /// The claimant the blob under `key` passes to when `meta.owner` loses it: the one holding
    /// the least, whose share it is likeliest to fit in (when it does not fit that one's, it
    /// fits no claimant's). Holdings count the blobs the batch in progress (`change`) hands
    /// over already.
    pub(super) fn successor(
        &self,
        ledger: &Ledger,
        change: &Change,
        key: &BlobKey,
        meta: &BlobMeta,
    ) -> Result<Option<Claimant>> {
        let held = |owner: u64| ledger.held_after(change, owner);
        Ok(self
            .claims_on(key)?
            .into_iter()
            .filter(|claimant| claimant.owner != meta.owner)
            .min_by_key(|claimant| (held(claimant.owner), claimant.owner)))
    }

    /// Adds the passing of a blob from its holder to `claimant` to `batch`, as `change`: the
    /// access order entry of the holder is the caller's to delete.
    pub(super) fn hand_over(
        &self,
        batch: &mut WriteBatch,
        key: &BlobKey,
        meta: &BlobMeta,
        claimant: &Claimant,
        change: &mut Change,
    ) -> Result<()> {
        let db = &self.db;
        // Used as late as the claimant last claimed it: a blob stored long before by the owner
        // that loses it is not the first its claimant loses.
        let moved =
            BlobMeta { owner: claimant.owner, atime_ms: meta.atime_ms.max(claimant.claimed_ms), ..*meta };
        batch.put_cf(cf(db, CF_BLOBS)?, key.as_bytes(), moved.encode());
        batch.put_cf(cf(db, CF_LRU)?, lru_key(claimant.owner, moved.atime_ms, key), []);
        batch.delete_cf(cf(db, CF_CLAIMS)?, claim_key(key, claimant.owner));
        change.remove(meta);
        change.add(&moved, &claimant.name);
        Ok(())
    }

    /// Adds the deletion of every claim on the blob under `key` to `batch`.
    pub(super) fn delete_claims(&self, batch: &mut WriteBatch, key: &BlobKey) -> Result<()> {
        let claims = cf(&self.db, CF_CLAIMS)?;
        let prefix = key.as_bytes();
        for item in self.db.prefix_iterator_cf(claims, prefix) {
            let (claim, _) = item?;
            if !claim.starts_with(prefix) {
                break;
            }
            batch.delete_cf(claims, claim);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proto::Digest;

    use super::*;
    use crate::store::keys::owner_id;
    use crate::store::rocks::testing::{blob, held, store_as};
    use crate::store::rocks::{Budget, RocksStore};
    use crate::store::{BlobStore, Committed};

    fn account(store: &RocksStore, name: &str) -> u64 {
        store.inner.lock_ledger().owners.get(&owner_id(name)).map_or(0, |account| account.stored_bytes)
    }

    fn flood(store: &RocksStore, owner: &str, blobs: usize) {
        for i in 0..blobs {
            store_as(store, owner, &blob(owner, i));
            store.maintain().unwrap();
        }
    }

    /// A tenant that stores another's predictable blob first (a signature's payload, a public
    /// layer) and then floods its own account must not take it out from under the other.
    #[test]
    fn a_blob_stored_first_by_a_flooder_passes_to_the_owner_that_stored_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        // Room for 50 blobs; eviction takes the store down to 40.
        let store = RocksStore::open(db, Budget::new(50 * 4096, 0.9, 0.8)).unwrap();
        let payload = blob("main's signature", 0);
        store_as(&store, "pr-1", &payload);
        assert_eq!(store_as(&store, "main", &payload), Committed::AlreadyPresent);
        for i in 0..10 {
            store_as(&store, "main", &blob("main", i));
        }
        flood(&store, "pr-1", 200);
        assert!(held(&store, &payload), "the flood took a blob main stored");
        assert_eq!(account(&store, "main"), 11 * 4096, "main holds it on its own account now");
        assert!(!held(&store, &blob("pr-1", 0)), "the flood went on losing its own blobs");
        let ledger = store.inner.lock_ledger();
        let accounted: u64 = ledger.owners.values().map(|account| account.stored_bytes).sum();
        assert_eq!(accounted, ledger.totals.stored_bytes);
    }

    /// A claim keeps passing the blob however long ago it was made: a tenant that pulls its tag
    /// every day never stores its layers again (an audit: a claim that lapsed after a day let a
    /// flood made a day later take the layer). A claimant that has gone gets the blob only to
    /// lose it to the next eviction, which takes the blobs of owners nobody used first.
    #[test]
    fn a_claim_older_than_the_idle_time_still_passes_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let idle_after = std::time::Duration::from_millis(300);
        let store = RocksStore::open_idle_after(db, Budget::new(1 << 30, 0.9, 0.8), idle_after).unwrap();
        let layer = blob("main's layer", 0);
        store_as(&store, "pr-1", &layer);
        crate::caller::run_as(Some(Arc::from("main")), || store.claim(&[Digest::of(&layer)]));
        std::thread::sleep(idle_after * 2);
        for i in 0..20 {
            store_as(&store, "pr-1", &blob("pr-1", i));
        }
        store.evict_bytes(10 * 4096).unwrap();
        assert!(held(&store, &layer), "a claim made before the idle time passed nothing");
        assert_eq!(account(&store, "main"), 4096);
        // Main has not used it since: it is the first to go now.
        store.evict_bytes(4096).unwrap();
        assert!(!held(&store, &layer));
    }

    /// A caller that only names the blob (a registry link, a Go entry, a build record, a client
    /// that found it present and skipped its upload) claims it as an upload would.
    #[test]
    fn a_claim_keeps_a_blob_through_its_holders_flood_and_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let store = RocksStore::open(Arc::clone(&db), Budget::new(50 * 4096, 0.9, 0.8)).unwrap();
        let layer = blob("base layer", 0);
        store_as(&store, "pr-1", &layer);
        let digest = Digest::of(&layer);
        crate::caller::run_as(Some(Arc::from("pr-1")), || store.claim(&[digest]));
        crate::caller::run_as(Some(Arc::from("main")), || store.claim(&[digest, digest]));
        let key = BlobKey::blake3(&digest);
        let claimants: Vec<u64> =
            store.inner.claims_on(&key).unwrap().iter().map(|claim| claim.owner).collect();
        assert_eq!(claimants, [owner_id("main")], "the holder's own claim is not noted");

        flood(&store, "pr-1", 200);
        assert!(held(&store, &layer));
        assert!(store.inner.claims_on(&key).unwrap().is_empty(), "the claim was used up passing it on");
        assert_eq!(account(&store, "main"), 4096, "main holds it now");
        // A claim on it, then its removal (found corrupt), leave nothing behind.
        crate::caller::run_as(Some(Arc::from("pr-1")), || store.claim(&[digest]));
        let claimants: Vec<u64> =
            store.inner.claims_on(&key).unwrap().iter().map(|claim| claim.owner).collect();
        assert_eq!(claimants, [owner_id("pr-1")]);
        store.remove(&digest).unwrap();
        assert!(store.inner.claims_on(&key).unwrap().is_empty(), "a blob's claims go with it");
        let claims = db.iterator_cf(cf(&db, CF_CLAIMS).unwrap(), rocksdb::IteratorMode::Start).count();
        assert_eq!(claims, 0);
    }
}
