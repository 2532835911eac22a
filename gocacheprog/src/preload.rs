//! Session preload: a fresh runner fetches, in the background, what the last run of the same go
//! command used, so the go command's lookups find it on local disk instead of each waiting for
//! a round trip on the build's critical path.
//!
//! At start the bridge reads the session lists for its keys ([`super::session`]): its own go
//! command line's, and the one every go command with its subcommand shares, which it walks
//! only when its own has not been written yet. It walks the list in
//! order (the order the last session used the actions, close to the order this one will ask):
//! a few `GoCache.GetMany` batches at a time on a connection of their own (small bodies come
//! inline), bodies too large to inline through a few `Cas.Read`s. Every body is verified
//! (BLAKE3 = the entry's digest) before it lands in the local tier, exactly as a lookup's would be.
//!
//! The go command comes first: an action it asks for while its batch is in flight joins that
//! fetch (the tiers' singleflight); one not yet claimed is fetched for it at once, and the
//! preload then skips it. Bounded by bytes (`--preload-max`), by the list's length, and by
//! usefulness: when the go command mostly asks for actions the list does not hold, the list
//! is stale and the preload stops. It also stops when the go command closes the session.
//!
//! When a warm ([`super::warm`]) is landing the list into the same local tier, the bridge walks
//! nothing while it runs (its lookups join the warm's fetches instead, [`super::warm_link`]),
//! and walks what is left once the warm is gone: killed, or done, when nothing is left.
//!
//! On close the session writes back what it used to both lists (merged with what each held)
//! unless that is what a list already said.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cached_client::task::AbortOnDrop;
use proto::ActionId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::counters::{Counters, add, bump};
use super::flights::{Claim, Flights, PreloadOutcome};
use super::landing::{Found, new_decoder};
use super::remote::{RemoteError, RemoteTier};
use super::session::{self, Keys, Record, Recorder};
use super::warm_link::WarmLink;

/// Actions per GetMany.
const BATCH_ITEMS: usize = 64;
/// Bytes (by the list's size hints) per GetMany: a batch's reply arrives in a few
/// milliseconds, so a lookup that joins it does not wait long.
const BATCH_BYTES: u64 = 4 << 20;
/// GetMany requests in flight at once.
const BATCHES: usize = 2;
/// Batches being written to the local tier at once (one blocking thread each).
const STORES: usize = 2;
/// Cas.Read downloads of large bodies at once.
const READS: usize = 3;
/// The go command's lookups seen before the list's usefulness is judged.
const JUDGE_AFTER: u64 = 64;

/// Bounds on the preload's concurrent work, shared by its batches.
#[derive(Clone)]
struct Slots {
    stores: Arc<Semaphore>,
    reads: Arc<Semaphore>,
}

/// Bytes the preload may still land. The list's size hints pace the walk; each body is
/// charged its real size (the entry's) before it lands: a list's writer chooses its hints, and
/// hints that understate took the preload past `--preload-max` and the local tier's half.
struct Budget(AtomicU64);

impl Budget {
    fn left(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, or nothing and false when fewer are left.
    fn take(&self, bytes: u64) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(bytes)).is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Settles a body taken at its `hint` that is `actual` bytes: false, and the budget spent,
    /// when the difference does not fit.
    fn settle(&self, hint: u64, actual: u64) -> bool {
        if actual <= hint {
            self.give_back(hint - actual);
            return true;
        }
        if self.take(actual - hint) {
            return true;
        }
        self.0.store(0, Ordering::Relaxed);
        false
    }
}

pub struct Preload {
    keys: Keys,
    budget: Budget,
    /// Whether the list is written back on close (not for read-only sessions).
    write: bool,
    /// The lists as read; unset until cached answered, and never set if it could not, so a
    /// list this session never saw is not overwritten.
    previous: OnceLock<Lists>,
    listed: OnceLock<HashSet<ActionId>>,
    /// Preloaded actions the go command has not asked for yet.
    stored: Mutex<HashSet<ActionId>>,
    /// The go command's lookups, and how many of them the list held.
    asked: AtomicU64,
    asked_listed: AtomicU64,
    task: Mutex<Option<AbortOnDrop<()>>>,
    counters: Arc<Counters>,
    pub recorder: Recorder,
}

impl Preload {
    pub fn new(keys: Keys, max_bytes: u64, write: bool, counters: Arc<Counters>) -> Self {
        Self {
            keys,
            budget: Budget(AtomicU64::new(max_bytes)),
            write,
            previous: OnceLock::new(),
            listed: OnceLock::new(),
            stored: Mutex::new(HashSet::new()),
            asked: AtomicU64::new(0),
            asked_listed: AtomicU64::new(0),
            task: Mutex::new(None),
            counters,
            recorder: Recorder::default(),
        }
    }

    /// Starts preloading in the background, once `warm` is gone if there is one. Needs a tokio
    /// runtime.
    pub fn start(
        self: &Arc<Self>,
        flights: Arc<Flights>,
        remote: Arc<RemoteTier>,
        warm: Option<Arc<WarmLink>>,
    ) {
        let this = Arc::clone(self);
        let task = cached_client::task::spawn_guarded("preload", async move {
            this.run(flights, remote, warm.as_deref()).await;
        });
        *self.task.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(task);
    }

    /// Stops preloading (the go command is done asking). Downloads in progress are dropped;
    /// a body being written still lands whole or not at all.
    pub fn stop(&self) {
        drop(self.task.lock().unwrap_or_else(|poison| poison.into_inner()).take());
    }

    /// Notes one lookup of the go command, for judging the list.
    pub fn asked(&self, action_id: &ActionId) {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if self.listed.get().is_some_and(|listed| listed.contains(action_id)) {
            self.asked_listed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the preload brought this action in (and it was not asked for before).
    pub fn take(&self, action_id: &ActionId) -> bool {
        self.stored.lock().unwrap_or_else(|poison| poison.into_inner()).remove(action_id)
    }

    /// After enough lookups, fewer than one in four were listed: this list is not what this
    /// go command needs (the code changed a lot, or another command shares the key).
    fn is_stale(&self) -> bool {
        let asked = self.asked.load(Ordering::Relaxed);
        asked >= JUDGE_AFTER && self.asked_listed.load(Ordering::Relaxed) * 4 < asked
    }

    /// Reads the lists and walks the one that applies, once `warm` is gone if there is one;
    /// returns when the walk is over.
    pub async fn run(
        self: Arc<Self>,
        flights: Arc<Flights>,
        remote: Arc<RemoteTier>,
        warm: Option<&WarmLink>,
    ) {
        let exact = async {
            match self.keys.exact {
                Some(key) => remote.fetch_list(key).await,
                None => Ok(None),
            }
        };
        let (Ok(exact), Ok(shared)) = tokio::join!(exact, remote.fetch_list(self.keys.shared)) else {
            return;
        };
        let lists = self
            .previous
            .get_or_init(|| Lists { exact: exact.unwrap_or_default(), shared: shared.unwrap_or_default() });
        let list = if lists.exact.is_empty() { &lists.shared } else { &lists.exact };
        let _ = self.listed.set(list.iter().map(|record| record.action_id).collect());
        if let Some(warm) = warm {
            warm.gone().await;
        }
        let batches = Arc::new(Semaphore::new(BATCHES));
        let slots =
            Slots { stores: Arc::new(Semaphore::new(STORES)), reads: Arc::new(Semaphore::new(READS)) };
        let mut running = JoinSet::new();
        let mut next = 0;
        while next < list.len() && self.budget.left() > 0 {
            let Ok(permit) = Arc::clone(&batches).acquire_owned().await else { break };
            if self.is_stale() || !remote.breaker.allows() {
                break;
            }
            // Claimed only now, as the request goes out: until then the go command's own
            // lookup of an action fetches it directly, and the walk skips it.
            let mut claims = Vec::new();
            let mut bytes = 0;
            while next < list.len() && claims.len() < BATCH_ITEMS && bytes < BATCH_BYTES {
                let record = list[next];
                next += 1;
                if flights.disk().has_entry(&record.action_id) || !self.budget.take(record.size) {
                    continue;
                }
                match flights.claim(record.action_id) {
                    Some(claim) => {
                        bytes += record.size;
                        claims.push((claim, record.size));
                    }
                    None => self.budget.give_back(record.size),
                }
            }
            if claims.is_empty() {
                continue;
            }
            let (this, flights, remote, slots) =
                (Arc::clone(&self), Arc::clone(&flights), Arc::clone(&remote), slots.clone());
            running
                .spawn(async move { this.fetch_batch(flights, remote, claims, bytes, permit, slots).await });
        }
        while running.join_next().await.is_some() {}
    }

    async fn fetch_batch(
        self: Arc<Self>,
        flights: Arc<Flights>,
        remote: Arc<RemoteTier>,
        claims: Vec<(Claim, u64)>,
        bytes: u64,
        permit: OwnedSemaphorePermit,
        slots: Slots,
    ) {
        let ids: Vec<ActionId> = claims.iter().map(|(claim, _)| claim.action_id()).collect();
        let replies = match remote.get_many(&ids, bytes).await {
            Ok(replies) => replies,
            Err(_) => {
                // Whoever joined these fetches makes their own.
                claims.into_iter().for_each(|(claim, _)| flights.settle(claim, PreloadOutcome::Failed));
                return;
            }
        };
        let disk = Arc::clone(flights.disk());
        let (mut here, mut large) = (Vec::new(), Vec::new());
        for ((claim, hint), found) in claims.into_iter().zip(replies) {
            match found {
                None => {
                    self.budget.give_back(hint);
                    flights.settle(claim, PreloadOutcome::Missing);
                }
                // Past the budget at its real size: the go command fetches it if it asks.
                Some(found) if !self.budget.settle(hint, found.entry.size) => {
                    flights.settle(claim, PreloadOutcome::Failed);
                }
                Some(found) if found.is_here(&disk) => here.push((claim, found)),
                Some(found) => large.push((claim, found)),
            }
        }
        // The next GetMany goes out while this batch lands; taking the store slot first keeps
        // the replies held in memory to BATCHES + STORES.
        let Ok(store_slot) = Arc::clone(&slots.stores).acquire_owned().await else { return };
        drop(permit);
        // Everything that came inline is stored on one blocking thread, each action answered
        // as soon as it lands; the runtime threads stay free for the go command's lookups.
        let (this, flights_here, remote_here) =
            (Arc::clone(&self), Arc::clone(&flights), Arc::clone(&remote));
        let stored = cached_client::task::spawn_blocking("preload-store", move || {
            match new_decoder() {
                Ok(mut decoder) => {
                    for (claim, found) in here {
                        let result = found.store(flights_here.disk(), claim.action_id(), &mut decoder);
                        this.landed(&flights_here, &remote_here, claim, &found, result);
                    }
                }
                // Nothing lands; whoever waits fetches these the usual way.
                Err(_) => {
                    here.into_iter().for_each(|(claim, _)| flights_here.settle(claim, PreloadOutcome::Failed))
                }
            }
            drop(store_slot);
        });
        // Large bodies download meanwhile: they are the slowest to land.
        let downloads = large.into_iter().map(|(claim, found)| {
            let (this, flights, remote, reads) =
                (Arc::clone(&self), Arc::clone(&flights), Arc::clone(&remote), Arc::clone(&slots.reads));
            async move {
                let Ok(_slot) = reads.acquire_owned().await else { return };
                let result =
                    remote.download_bulk(Arc::clone(flights.disk()), claim.action_id(), &found).await;
                this.landed(&flights, &remote, claim, &found, result);
            }
        });
        let _ = tokio::join!(stored, futures::future::join_all(downloads));
    }

    /// Answers whoever waits for a preloaded action.
    fn landed(
        &self,
        flights: &Flights,
        remote: &RemoteTier,
        claim: Claim,
        found: &Found,
        result: Result<Option<PathBuf>, RemoteError>,
    ) {
        match result {
            // Evicted since the lookup, or not an entry to land.
            Ok(None) => flights.settle(claim, PreloadOutcome::Missing),
            Ok(Some(path)) => {
                self.stored.lock().unwrap_or_else(|poison| poison.into_inner()).insert(claim.action_id());
                let counters = &self.counters;
                bump(&counters.preloaded);
                add(&counters.bytes_down, found.entry.size);
                flights.settle(claim, PreloadOutcome::Found(found.entry, path));
            }
            // A body that is not what its entry says is never served: a miss.
            Err(err @ RemoteError::Corrupt(_)) => {
                remote.note_failure(&err);
                remote.report_if_corrupt(found.digest, &err);
                flights.settle(claim, PreloadOutcome::Missing);
            }
            Err(_) => flights.settle(claim, PreloadOutcome::Failed),
        }
    }

    /// Writes back what this session used to both lists, each merged with what it held,
    /// unless that changes nothing. Skipped when the lists could not be read or nothing was
    /// used.
    pub async fn save(&self, remote: &RemoteTier) {
        let Some(lists) = self.previous.get().filter(|_| self.write) else { return };
        if self.recorder.is_empty() {
            return;
        }
        let lists = [(self.keys.exact, &lists.exact), (Some(self.keys.shared), &lists.shared)];
        let writes = lists.into_iter().filter_map(|(key, previous)| {
            let merged = self.recorder.merge(previous)?;
            Some(remote.write_list(key?, session::encode(&merged)))
        });
        futures::future::join_all(writes).await;
    }
}

/// The session lists as cached had them (empty where there was none).
struct Lists {
    exact: Vec<Record>,
    shared: Vec<Record>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hints pace the walk; the real sizes are what the budget pays. A list whose hints say 0
    /// took the preload 36 MiB past a 1 MiB budget (audit): the first body that does not fit
    /// at its real size is not landed, and the walk stops.
    #[test]
    fn bodies_are_charged_their_real_size() {
        let budget = Budget(AtomicU64::new(1000));
        assert!(budget.take(0) && budget.settle(0, 600), "fits");
        assert_eq!(budget.left(), 400);
        assert!(budget.take(0));
        assert!(!budget.settle(0, 600), "600 bytes more do not fit in 400");
        assert_eq!(budget.left(), 0, "the walk stops");
        let honest = Budget(AtomicU64::new(1000));
        assert!(honest.take(500) && honest.settle(500, 100));
        assert_eq!(honest.left(), 900, "what a hint overstated comes back");
        assert!(!honest.take(901));
    }
}
