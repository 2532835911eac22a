//! Whom each stored blob is charged to. Blobs are content-addressed and shared by everyone, so
//! the store charges a blob to the caller that stored it first ([`crate::caller::Caller::owner`]:
//! a token, or the share of one tenant's leases) and evicts from the owners holding more than a
//! fair share of the budget first, each its least recently used blobs. By access order alone, a
//! token that may write blobs (a pull request's `cas-write`) could push every other tenant's
//! Go cache bodies and registry layers out of the store with a flood of its own.
//!
//! A blob keeps its owner: storing it again (another caller's upload of the same bytes) does
//! not move it, so a caller cannot take another's blobs onto its own account and then flood
//! them out; it claims it instead ([`super::claims`]), and the blob passes to a claimant when
//! its owner's share would evict it. Reads by anyone keep it recently used within its owner's
//! blobs.

use std::collections::HashMap;
use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::StoreTotals;
use crate::db::{CF_BLOBS, CF_COUNTERS, CF_LRU, cf};
use crate::error::{Error, Result};
use crate::store::keys::{BlobKey, BlobMeta, UNATTRIBUTED, UNOWNED_LRU_KEY_LEN, lru_key, owner_id, u64_be};

/// Where an owner's account is kept in `counters`: this prefix and the owner (u64 BE) →
/// [`ACCOUNT_VERSION`], stored bytes (u64 BE), the owner's name.
const ACCOUNT_PREFIX: &[u8] = b"store-owner/";
const ACCOUNT_VERSION: u8 = 1;
/// Written once every blob stored before there were owners is charged to [`UNATTRIBUTED`] and
/// listed under it in the access order.
const ATTRIBUTED_KEY: &[u8] = b"store-owners-attributed";
/// Access order entries rewritten per batch when blobs of an earlier version are attributed.
const ATTRIBUTE_BATCH: usize = 10_000;

/// One owner's account: the stored bytes of the blobs charged to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub name: Arc<str>,
    pub stored_bytes: u64,
}

/// What the store holds, in all and per owner: kept exact by writing it in the same batch as
/// every change to the blobs it counts ([`Change`]).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub totals: StoreTotals,
    pub owners: HashMap<u64, Account>,
}

/// What one batch changes in the [`Ledger`]: written with the batch ([`Ledger::put`]) and
/// applied once it is ([`Ledger::apply`]).
#[derive(Debug)]
pub(crate) struct Change {
    /// The totals once the batch is written.
    pub totals: StoreTotals,
    /// Stored bytes added to (or taken from) owners, with the name of an owner new to the ledger.
    owners: Vec<(u64, i128, Option<Arc<str>>)>,
}

impl Change {
    pub(super) fn add(&mut self, meta: &BlobMeta, owner_name: &str) {
        self.totals.add(meta);
        self.owners.push((meta.owner, i128::from(meta.stored_bytes), Some(Arc::from(owner_name))));
    }

    pub(super) fn remove(&mut self, meta: &BlobMeta) {
        self.totals.remove(meta);
        self.owners.push((meta.owner, -i128::from(meta.stored_bytes), None));
    }
}

impl Ledger {
    /// An empty change to the ledger as it is now.
    pub(super) fn change(&self) -> Change {
        Change { totals: self.totals, owners: Vec::new() }
    }

    /// What `owner` holds once `change` is written.
    pub(super) fn held_after(&self, change: &Change, owner: u64) -> u64 {
        let held = self.owners.get(&owner).map_or(0, |account| account.stored_bytes);
        let pending: i128 =
            change.owners.iter().filter(|(changed, _, _)| *changed == owner).map(|(_, delta, _)| delta).sum();
        u64::try_from((i128::from(held) + pending).max(0)).unwrap_or(u64::MAX)
    }

    /// The accounts `change` leaves: each owner it touches, with its stored bytes.
    fn accounts_after(&self, change: &Change) -> HashMap<u64, Account> {
        let mut after: HashMap<u64, Account> = HashMap::new();
        for (owner, delta, name) in &change.owners {
            let account = after.entry(*owner).or_insert_with(|| match self.owners.get(owner) {
                Some(account) => account.clone(),
                None => Account { name: Arc::from(""), stored_bytes: 0 },
            });
            if let Some(name) = name.as_ref().filter(|_| account.name.is_empty()) {
                account.name = Arc::clone(name);
            }
            let bytes = i128::from(account.stored_bytes) + delta;
            account.stored_bytes = u64::try_from(bytes.max(0)).unwrap_or(u64::MAX);
        }
        after
    }

    /// Adds what `change` leaves to `batch`: the totals, and the accounts it touches (an empty
    /// one goes).
    pub(super) fn put(&self, db: &DB, batch: &mut WriteBatch, change: &Change) -> Result<()> {
        let counters = cf(db, CF_COUNTERS)?;
        batch.put_cf(counters, super::TOTALS_KEY, change.totals.encode());
        for (owner, account) in self.accounts_after(change) {
            if account.stored_bytes > 0 {
                batch.put_cf(counters, account_key(owner), encode_account(&account));
            } else {
                batch.delete_cf(counters, account_key(owner));
            }
        }
        Ok(())
    }

    /// Takes in `change`, whose batch was written.
    pub(super) fn apply(&mut self, change: Change) {
        for (owner, account) in self.accounts_after(&change) {
            if account.stored_bytes > 0 {
                self.owners.insert(owner, account);
            } else {
                self.owners.remove(&owner);
            }
        }
        self.totals = change.totals;
    }

    /// What each owner above its fair share of `target` must give up, most first.
    pub(super) fn excess_over(&self, target: u64) -> Vec<(u64, u64)> {
        let level =
            crate::shares::fair_level(self.owners.values().map(|account| account.stored_bytes), target);
        let mut excess: Vec<(u64, u64)> = self
            .owners
            .iter()
            .filter(|(_, account)| account.stored_bytes > level)
            .map(|(owner, account)| (*owner, account.stored_bytes - level))
            .collect();
        excess.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        excess
    }

    /// The name of `owner`, for logs.
    pub(super) fn name_of(&self, owner: u64) -> &str {
        self.owners.get(&owner).map_or("", |account| &account.name)
    }

    /// The ledger as stored, charging blobs of earlier versions to [`UNATTRIBUTED`] first. Should
    /// the accounts not add up to the totals, both are counted again from the blobs.
    pub(super) fn load(db: &DB, totals: StoreTotals) -> Result<Self> {
        attribute_earlier_blobs(db, &totals)?;
        let counters = cf(db, CF_COUNTERS)?;
        let mut owners = HashMap::new();
        for item in db.iterator_cf(counters, IteratorMode::From(ACCOUNT_PREFIX, Direction::Forward)) {
            let (key, value) = item?;
            let Some(owner) = key.strip_prefix(ACCOUNT_PREFIX) else { break };
            if owner.len() != 8 {
                return Err(Error::Corrupt(format!("store owner key of {} bytes", key.len())));
            }
            owners.insert(u64_be(owner), decode_account(&value)?);
        }
        let mut ledger = Self { totals, owners };
        let accounted: u64 = ledger.owners.values().map(|account| account.stored_bytes).sum();
        if accounted != totals.stored_bytes {
            tracing::warn!(
                accounted,
                stored_bytes = totals.stored_bytes,
                "the store's owner accounts do not add up to what it holds; counting them again"
            );
            ledger.count_again(db)?;
        }
        Ok(ledger)
    }

    /// Sets the totals, and every account, to what the blobs stored add up to.
    fn count_again(&mut self, db: &DB) -> Result<()> {
        let mut counted: HashMap<u64, u64> = HashMap::new();
        let mut totals = StoreTotals::default();
        for item in db.iterator_cf(cf(db, CF_BLOBS)?, IteratorMode::Start) {
            let (_, value) = item?;
            let meta = BlobMeta::decode(&value)?;
            *counted.entry(meta.owner).or_default() += meta.stored_bytes;
            totals.add(&meta);
        }
        let counters = cf(db, CF_COUNTERS)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(counters, super::TOTALS_KEY, totals.encode());
        self.totals = totals;
        for owner in self.owners.keys() {
            batch.delete_cf(counters, account_key(*owner));
        }
        let names = std::mem::take(&mut self.owners);
        for (owner, stored_bytes) in counted {
            let name =
                names.get(&owner).map_or_else(|| Arc::from(format!("{owner:016x}")), |a| Arc::clone(&a.name));
            let account = Account { name, stored_bytes };
            batch.put_cf(counters, account_key(owner), encode_account(&account));
            self.owners.insert(owner, account);
        }
        db.write(batch)?;
        Ok(())
    }
}

/// The name a caller's blobs are charged to, and its owner id (empty, [`UNATTRIBUTED`], for
/// the server's own work).
pub(super) fn current_owner() -> (String, u64) {
    let name = crate::caller::current_caller().map(|caller| caller.owner().to_owned()).unwrap_or_default();
    let owner = owner_id(&name);
    (name, owner)
}

fn account_key(owner: u64) -> Vec<u8> {
    let mut key = ACCOUNT_PREFIX.to_vec();
    key.extend_from_slice(&owner.to_be_bytes());
    key
}

fn encode_account(account: &Account) -> Vec<u8> {
    let mut out = vec![ACCOUNT_VERSION];
    out.extend_from_slice(&account.stored_bytes.to_be_bytes());
    out.extend_from_slice(account.name.as_bytes());
    out
}

fn decode_account(bytes: &[u8]) -> Result<Account> {
    match bytes.split_first() {
        Some((&ACCOUNT_VERSION, rest)) if rest.len() >= 8 => Ok(Account {
            stored_bytes: u64_be(rest),
            name: Arc::from(String::from_utf8_lossy(&rest[8..]).as_ref()),
        }),
        _ => Err(Error::Corrupt(format!("store owner account of {} bytes", bytes.len()))),
    }
}

/// Lists the blobs of a store written before there were owners under [`UNATTRIBUTED`] in the
/// access order and charges their bytes to it, once. A start cut off halfway leaves entries of
/// both layouts, and the next start rewrites those left.
fn attribute_earlier_blobs(db: &DB, totals: &StoreTotals) -> Result<()> {
    let counters = cf(db, CF_COUNTERS)?;
    if db.get_cf(counters, ATTRIBUTED_KEY)?.is_some() {
        return Ok(());
    }
    let lru = cf(db, CF_LRU)?;
    let mut batch = WriteBatch::default();
    let mut rewritten = 0u64;
    for item in db.iterator_cf(lru, IteratorMode::Start) {
        let (entry, _) = item?;
        if entry.len() != UNOWNED_LRU_KEY_LEN {
            continue;
        }
        let key = BlobKey::from_bytes(&entry[8..])?;
        batch.delete_cf(lru, &entry);
        batch.put_cf(lru, lru_key(UNATTRIBUTED, u64_be(&entry), &key), []);
        rewritten += 1;
        if batch.len() >= 2 * ATTRIBUTE_BATCH {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    // Nothing was charged to anyone before: every stored byte is the unattributed owner's.
    let earlier = Account { name: Arc::from(""), stored_bytes: totals.stored_bytes };
    if earlier.stored_bytes > 0 {
        batch.put_cf(counters, account_key(UNATTRIBUTED), encode_account(&earlier));
    }
    batch.put_cf(counters, ATTRIBUTED_KEY, []);
    db.write(batch)?;
    if rewritten > 0 {
        tracing::info!(blobs = rewritten, "charged the blobs stored before owners to no owner");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::Digest;

    use super::*;
    use crate::store::Committed;
    use crate::store::rocks::testing::{blob, held, store_as};
    use crate::store::rocks::{Budget, RocksStore};

    #[test]
    fn a_flood_of_one_owner_evicts_its_own_blobs_not_anothers() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        // Room for 50 blobs; eviction takes the store down to 40.
        let store = RocksStore::open(Arc::clone(&db), Budget::new(50 * 4096, 0.9, 0.8)).unwrap();
        let main: Vec<Vec<u8>> = (0..10).map(|i| blob("main", i)).collect();
        for data in &main {
            store_as(&store, "main", data);
        }
        // The pull request stores one of main's blobs again: it stays charged to main.
        assert_eq!(store_as(&store, "pr-1", &main[0]), Committed::AlreadyPresent);
        for i in 0..200 {
            store_as(&store, "pr-1", &blob("pr-1", i));
            store.maintain().unwrap();
        }
        let kept = main.iter().filter(|data| held(&store, data)).count();
        assert_eq!(kept, 10, "main's blobs are below its share and stay, however old");
        assert!(held(&store, &blob("pr-1", 199)) && !held(&store, &blob("pr-1", 0)));
        assert!(store.totals().stored_bytes <= 50 * 4096);

        let ledger = store.inner.lock_ledger();
        let account = |name: &str| ledger.owners[&owner_id(name)].stored_bytes;
        assert_eq!(account("main"), 10 * 4096);
        assert_eq!(account("main") + account("pr-1"), ledger.totals.stored_bytes);
        drop(ledger);
        // What is charged is persisted with the blobs.
        drop(store);
        let reopened = RocksStore::open(db, Budget::new(50 * 4096, 0.9, 0.8)).unwrap();
        assert_eq!(reopened.inner.lock_ledger().owners[&owner_id("main")].stored_bytes, 10 * 4096);
    }

    #[test]
    fn owners_above_their_share_lose_their_oldest_down_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let store = RocksStore::open(db, Budget::new(1 << 30, 0.9, 0.8)).unwrap();
        for (owner, count) in [("a", 30), ("b", 20), ("c", 5)] {
            for i in 0..count {
                store_as(&store, owner, &blob(owner, i));
            }
        }
        // 55 blobs, down by 25: a fair share of 30 blobs' bytes is 12.5 each beyond c's 5.
        let (blobs, _) = store.evict_bytes(25 * 4096).unwrap();
        assert!((25..=27).contains(&blobs), "{blobs}");
        let count = |owner: &str, of: usize| (0..of).filter(|i| held(&store, &blob(owner, *i))).count();
        assert_eq!(count("c", 5), 5);
        assert!((12..=13).contains(&count("a", 30)) && (12..=13).contains(&count("b", 20)));
        assert!(held(&store, &blob("a", 29)) && !held(&store, &blob("a", 0)), "oldest first");
    }

    #[test]
    fn owners_nobody_used_for_a_while_go_before_any_owners_share() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let idle_after = std::time::Duration::from_millis(300);
        let store = RocksStore::open_idle_after(db, Budget::new(1 << 30, 0.9, 0.8), idle_after).unwrap();
        // Five finished pull requests, four blobs each, that nobody uses any more.
        for pr in 0..5 {
            for i in 0..4 {
                store_as(&store, &format!("pr-{pr}"), &blob(&format!("pr-{pr}"), i));
            }
        }
        for i in 0..20 {
            store_as(&store, "main", &blob("main", i));
        }
        std::thread::sleep(idle_after * 2);
        // Main is still in use; its older blobs are its own to lose, to its share only.
        store_as(&store, "main", &blob("main", 20));
        for i in 0..20 {
            store_as(&store, "flood", &blob("flood", i));
        }
        // 61 blobs down to 31: the pull requests' 20 first, then main and the flood to one level.
        store.evict_bytes(30 * 4096).unwrap();
        let count = |owner: &str, of: usize| (0..of).filter(|i| held(&store, &blob(owner, *i))).count();
        assert_eq!((0..5).map(|pr| count(&format!("pr-{pr}"), 4)).sum::<usize>(), 0);
        let main = count("main", 21);
        assert!((15..=16).contains(&main), "main kept {main}: a flood took its older blobs");
        assert!((15..=16).contains(&count("flood", 20)));
        assert_eq!(store.totals().stored_bytes, 31 * 4096);
    }

    #[test]
    fn accounts_that_do_not_add_up_are_counted_again_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let store = RocksStore::open(Arc::clone(&db), Budget::new(1 << 30, 0.9, 0.8)).unwrap();
        store_as(&store, "main", &blob("main", 0));
        store_as(&store, "pr-1", &blob("pr-1", 0));
        drop(store);
        db.delete_cf(cf(&db, CF_COUNTERS).unwrap(), account_key(owner_id("pr-1"))).unwrap();
        let store = RocksStore::open(db, Budget::new(1 << 30, 0.9, 0.8)).unwrap();
        let ledger = store.inner.lock_ledger();
        assert_eq!(ledger.owners[&owner_id("pr-1")].stored_bytes, 4096);
        assert_eq!(&*ledger.owners[&owner_id("main")].name, "main");
    }

    #[test]
    fn blobs_stored_before_owners_are_charged_to_no_owner_and_still_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let store = RocksStore::open(Arc::clone(&db), Budget::new(1 << 30, 0.9, 0.8)).unwrap();
        let earlier: Vec<Vec<u8>> = (0..3).map(|i| blob("earlier", i)).collect();
        for data in &earlier {
            store_as(&store, "", data);
        }
        drop(store);
        // Rewrite them as an earlier version left them: version 2 metadata, access order keyed
        // by time alone, no accounts.
        let (blobs, lru, counters) =
            (cf(&db, CF_BLOBS).unwrap(), cf(&db, CF_LRU).unwrap(), cf(&db, CF_COUNTERS).unwrap());
        for data in &earlier {
            let key = BlobKey::blake3(&Digest::of(data));
            let meta = BlobMeta::decode(&db.get_cf(blobs, key.as_bytes()).unwrap().unwrap()).unwrap();
            let mut v2 = meta.encode();
            v2.truncate(v2.len() - 8);
            v2[0] = 2;
            db.put_cf(blobs, key.as_bytes(), v2).unwrap();
            db.delete_cf(lru, lru_key(UNATTRIBUTED, meta.atime_ms, &key)).unwrap();
            let mut unowned = meta.atime_ms.to_be_bytes().to_vec();
            unowned.extend_from_slice(key.as_bytes());
            db.put_cf(lru, unowned, []).unwrap();
        }
        db.delete_cf(counters, ATTRIBUTED_KEY).unwrap();
        db.delete_cf(counters, account_key(UNATTRIBUTED)).unwrap();

        let store = RocksStore::open(Arc::clone(&db), Budget::new(1 << 30, 0.9, 0.8)).unwrap();
        assert_eq!(store.inner.lock_ledger().owners[&UNATTRIBUTED].stored_bytes, 3 * 4096);
        store_as(&store, "main", &blob("main", 0));
        assert_eq!(store.evict_bytes(3 * 4096).unwrap(), (3, 3 * 4096), "the earlier blobs go first");
        assert!(earlier.iter().all(|data| !held(&store, data)) && held(&store, &blob("main", 0)));
        let entries: Vec<usize> =
            db.iterator_cf(lru, IteratorMode::Start).map(|item| item.unwrap().0.len()).collect();
        assert_eq!(entries, [crate::store::keys::LRU_KEY_LEN]);
    }
}
