//! Go action entries: (namespace, ActionID) → {OutputID, size, digest, time}. An entry is only
//! a hit while its blob is stored; an entry whose blob was evicted is removed when a lookup
//! finds it, and by housekeeping, which walks the entries a slice per round (most evicted
//! actions are never asked for again, and their entries would otherwise pile up). An
//! entry is stored only if its blob hashes (SHA-256) to its OutputID, as Go names outputs: a
//! client that records a wrong one would otherwise make every reader refuse the body, and
//! refusals count toward the readers' circuit breakers. That check is a lookup: the store
//! records every blob's SHA-256 while it verifies the upload, so a Put never reads a blob.
//!
//! Entries point at blobs but are not blobs: eviction under `max_size` never takes one whose
//! blob stays, and a writer (a pull request's CI token in its namespace, a job's lease) may
//! record entries without end, a few hundred bytes each, all pointing at one blob it keeps
//! stored. So they have a bound of their own, `max_go_entries`, all namespaces together:
//! beyond it the oldest puts of the namespaces holding the most are forgotten (by each Put
//! past it, and by housekeeping), never a new one refused. A writer that floods the action
//! cache pushes out its own namespace's oldest entries first; it cannot fill the disk.
//!
//! A stored entry is synced before Put answers (RocksDB groups concurrent synced writes into
//! one WAL sync). Its blob was committed earlier in the same WAL, so the sync makes the blob
//! durable too: after a power cut an entry never survives without its blob. A blob can still
//! go later (eviction, a lost unsynced eviction or upload); a lookup then finds the entry
//! dangling, answers a miss and removes it.

mod queues;
mod rocks;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use proto::{ActionId, Digest, INLINE_BODY_MAX, OutputId};

pub use self::rocks::RocksGoEntries;
use crate::error::{Error, Result};
use crate::stats::Stats;
use crate::store::{BlobInfo, FreeSpace, SharedStore};

const ENTRY_VERSION: u8 = 1;
const ENTRY_LEN: usize = 1 + 32 + 8 + 32 + 8;
const MAX_NAMESPACE_LEN: usize = 256;
/// The namespace of requests that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoEntry {
    pub output_id: OutputId,
    pub digest: Digest,
    pub time_unix_nanos: i64,
}

impl GoEntry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = ENTRY_VERSION;
        out[1..33].copy_from_slice(&self.output_id.0);
        out[33..41].copy_from_slice(&self.digest.size.to_be_bytes());
        out[41..73].copy_from_slice(&self.digest.hash);
        out[73..81].copy_from_slice(&self.time_unix_nanos.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != ENTRY_LEN || bytes[0] != ENTRY_VERSION {
            return Err(Error::Corrupt(format!("Go action entry of {} bytes", bytes.len())));
        }
        let array = |range: std::ops::Range<usize>| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[range]);
            out
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[33..41]);
        let size = u64::from_be_bytes(word);
        word.copy_from_slice(&bytes[73..81]);
        Ok(Self {
            output_id: OutputId(array(1..33)),
            digest: Digest { hash: array(41..73), size },
            time_unix_nanos: i64::from_be_bytes(word),
        })
    }
}

/// A found entry, with its body when it is small enough to travel inline (one zstd frame).
#[derive(Debug, Clone)]
pub struct GoHit {
    pub entry: GoEntry,
    pub inline_body: Option<Bytes>,
}

/// What the store holds of a hit's body, and its bytes when the reply carries them.
struct Body {
    stored: BlobInfo,
    inline: Option<Bytes>,
}

/// Whether a body of `size` bytes travels inline in a reply with `budget` bytes left for them.
#[derive(Debug, PartialEq, Eq)]
enum Inlining {
    /// Too large for one frame, or empty: read with Cas.Read.
    Never,
    /// However it compressed: a stored frame is never larger than zstd's bound for its bytes.
    Certain,
    /// Only if it compressed well enough.
    IfStoredFits,
}

fn inlining(size: u64, budget: u64) -> Inlining {
    if !(1..=INLINE_BODY_MAX).contains(&size) {
        return Inlining::Never;
    }
    match zstd::zstd_safe::compress_bound(size as usize) as u64 <= budget {
        true => Inlining::Certain,
        false => Inlining::IfStoredFits,
    }
}

/// Checks a namespace and returns the one to use. Namespaces are opaque keys, but they read
/// as paths in token patterns, logs and listings: `pr-1/../main` (which a `pr-1/*` token
/// matches) would read as `main` there, so dot segments, empty ones and spaces at either end
/// are refused.
pub fn namespace(name: &str) -> Result<&str> {
    if name.is_empty() {
        return Ok(DEFAULT_NAMESPACE);
    }
    let printable = name.len() <= MAX_NAMESPACE_LEN && !name.chars().any(|c| c.is_control());
    let plain_segments = name.split('/').all(|segment| !matches!(segment, "" | "." | ".."));
    if !printable || !plain_segments || name.trim() != name {
        return Err(Error::invalid(format!(
            "namespace {name:?} must be at most {MAX_NAMESPACE_LEN} bytes of printable text, without \
             spaces at either end, in `/`-separated parts none of which is empty, `.` or `..`"
        )));
    }
    Ok(name)
}

/// Where Go entries are kept. Every method blocks: call it from a blocking task.
pub trait GoEntryStore: Send + Sync + 'static {
    fn get(&self, namespace: &str, action_id: &ActionId) -> Result<Option<GoEntry>>;

    /// Stores `entry`, durably before it returns: the client is told it is stored.
    fn put_synced(&self, namespace: &str, action_id: &ActionId, entry: &GoEntry) -> Result<()>;

    fn remove(&self, namespace: &str, action_id: &ActionId) -> Result<()>;

    /// Up to `limit` entries of every namespace from the position `from` on (empty: the
    /// first), in the store's order, for a sweep that walks them all a slice at a time.
    fn slice(&self, from: &[u8], limit: usize) -> Result<EntrySlice>;

    /// Removes the entries at positions a `slice` returned.
    fn remove_keys(&self, positions: &[Vec<u8>]) -> Result<()>;

    /// Removes every entry of `namespace`; returns about how many there were.
    fn purge_namespace(&self, namespace: &str) -> Result<u64>;

    /// What counts against the store's bound: at least the entries it holds (puts since
    /// removed or put again may count until they are forgotten).
    fn count(&self) -> u64;

    /// Forgets the oldest puts beyond the store's bound, at most `limit` of them; returns how
    /// many entries went. Returns at once when another call is forgetting.
    fn forget_oldest(&self, limit: usize) -> Result<u64>;
}

/// Oldest puts a Put or a lookup forgets beyond the bound before it answers: more than the one
/// it added, so the count comes back to the bound even after housekeeping skipped a round.
const FORGET_PER_CALL: usize = 64;
/// Oldest puts housekeeping forgets per round: a few seconds of work at most, however far a
/// lowered `max_go_entries` left the count above it.
pub const FORGET_PER_ROUND: usize = 1_000_000;

/// A slice of stored entries: each readable one with its position, how many were looked at,
/// and the position of the last one.
#[derive(Debug, Default)]
pub struct EntrySlice {
    pub entries: Vec<(Vec<u8>, GoEntry)>,
    pub looked: usize,
    pub last: Option<Vec<u8>>,
}

pub struct GoCache {
    entries: Arc<dyn GoEntryStore>,
    store: SharedStore,
    stats: Arc<Stats>,
    /// Entries are not blobs eviction could give back: none is stored below the floor.
    space: Arc<FreeSpace>,
}

impl GoCache {
    pub fn new(
        entries: Arc<dyn GoEntryStore>,
        store: SharedStore,
        stats: Arc<Stats>,
        space: Arc<FreeSpace>,
    ) -> Arc<Self> {
        Arc::new(Self { entries, store, stats, space })
    }

    /// Looks up `ids`, in order. Bodies come inline while their stored bytes fit in
    /// `inline_budget`, which is charged before a body is read, and only those are opened
    /// (with a shared tier, copied here); the others are only confirmed stored: a request costs
    /// at most what its reply may carry. An id asked twice is refused: it would cost twice and
    /// return nothing new.
    pub async fn get_many(
        self: &Arc<Self>,
        namespace: String,
        ids: Vec<ActionId>,
        inline_budget: u64,
    ) -> Result<Vec<Option<GoHit>>> {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if let Some(id) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(Error::invalid(format!(
                "action {id} is asked for more than once in one request; ask for each action once"
            )));
        }
        let this = Arc::clone(self);
        crate::task::spawn_blocking("go cache get", move || {
            let counters = this.stats.namespace(&namespace);
            let mut budget = inline_budget;
            let hits = ids
                .iter()
                .map(|id| {
                    let hit = this.lookup(&namespace, id, &mut budget)?;
                    let counter = if hit.is_some() { &counters.go_hits } else { &counters.go_misses };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok(hit)
                })
                .collect::<Result<Vec<_>>>();
            // With a shared tier, a lookup copies the entries it finds in the bucket.
            this.forget_after_call();
            hits
        })
        .await?
    }

    /// What a call that may have added entries forgets: a few of the oldest beyond the bound.
    /// That is upkeep: its failure is logged, never the call's.
    fn forget_after_call(&self) {
        if let Err(err) = self.forget_oldest(FORGET_PER_CALL) {
            tracing::warn!(error = %err, "forgetting the oldest Go entries failed");
        }
    }

    /// Forgets the oldest entries beyond `max_go_entries`, at most `limit`; how many went.
    pub fn forget_oldest(&self, limit: usize) -> Result<u64> {
        let forgotten = self.entries.forget_oldest(limit)?;
        self.stats.go_entries_forgotten.fetch_add(forgotten, Ordering::Relaxed);
        self.stats.go_entries.store(self.entries.count(), Ordering::Relaxed);
        Ok(forgotten)
    }

    fn lookup(
        &self,
        namespace: &str,
        action_id: &ActionId,
        inline_budget: &mut u64,
    ) -> Result<Option<GoHit>> {
        let Some(entry) = self.entries.get(namespace, action_id)? else {
            return Ok(None);
        };
        // A blob gone, or with a shared tier one the bucket was not asked about (the caller's
        // lookups spent, the bucket down): a miss either way, and the entry goes from here
        // (with a shared tier only this replica's copy; the bucket keeps its own).
        let Some(body) = self.body(&entry, inline_budget)? else {
            return self.drop_entry(namespace, action_id);
        };
        // Put checked this, but an entry can come back wrong from the disk or a bucket, and
        // the bridge files a body under its OutputID where every namespace of a runner finds
        // it: a wrong one is dropped like a dangling one, never answered.
        if body.stored.sha256 != entry.output_id.0 {
            tracing::warn!(namespace, action = %action_id, digest = %entry.digest, "Go entry whose OutputID is not its blob's SHA-256 dropped");
            return self.drop_entry(namespace, action_id);
        }
        Ok(Some(GoHit { entry, inline_body: body.inline }))
    }

    fn drop_entry(&self, namespace: &str, action_id: &ActionId) -> Result<Option<GoHit>> {
        self.entries.remove(namespace, action_id)?;
        self.stats.go_entries_dropped.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// What the store holds of `entry`'s body, with its bytes when the reply carries them;
    /// `None` when it is not stored. With a shared tier, opening a body this replica lacks
    /// copies all of it from the bucket: only a body the reply carries is opened, so a request
    /// costs this replica's disk at most what its reply may carry. The others are confirmed.
    fn body(&self, entry: &GoEntry, inline_budget: &mut u64) -> Result<Option<Body>> {
        match inlining(entry.digest.size, *inline_budget) {
            Inlining::Never => self.confirm(entry),
            Inlining::Certain => self.open(entry, inline_budget),
            Inlining::IfStoredFits => self.open_if_fits(entry, inline_budget),
        }
    }

    /// Confirms the body is stored without opening it: from its metadata here, else from the
    /// bucket's object (a stat, no copy). One held here is marked used, as opening it would.
    fn confirm(&self, entry: &GoEntry) -> Result<Option<Body>> {
        let Some(stored) = self.store.stat(&[entry.digest])?.pop().flatten() else {
            return Ok(None);
        };
        self.store.mark_used(&[entry.digest])?;
        Ok(Some(Body { stored, inline: None }))
    }

    /// Opens the body and carries it when its stored bytes fit `inline_budget`, which is
    /// charged before the bytes are read; a body of another OutputID is not carried.
    fn open(&self, entry: &GoEntry, inline_budget: &mut u64) -> Result<Option<Body>> {
        let Some(mut frames) = self.store.read(&entry.digest, 0)? else {
            return Ok(None);
        };
        let stored = *frames.info();
        let carried = stored.stored_bytes <= *inline_budget && stored.sha256 == entry.output_id.0;
        let inline = match carried {
            true => {
                *inline_budget -= stored.stored_bytes;
                frames.next().transpose()?
            }
            false => None,
        };
        Ok(Some(Body { stored, inline }))
    }

    /// How well the body compressed decides whether it fits: its metadata says, and only one
    /// that fits is opened.
    fn open_if_fits(&self, entry: &GoEntry, inline_budget: &mut u64) -> Result<Option<Body>> {
        let Some(confirmed) = self.confirm(entry)? else { return Ok(None) };
        let stored = confirmed.stored;
        if stored.stored_bytes > *inline_budget || stored.sha256 != entry.output_id.0 {
            return Ok(Some(confirmed));
        }
        // One that cannot be opened now after all (no room here to copy it, the caller's
        // lookups spent) is still stored, as its metadata just said: a hit that does not carry it.
        Ok(Some(self.open(entry, inline_budget)?.unwrap_or(confirmed)))
    }

    pub async fn put(self: &Arc<Self>, namespace: String, action_id: ActionId, entry: GoEntry) -> Result<()> {
        let this = Arc::clone(self);
        crate::task::spawn_blocking("go cache put", move || {
            let Some(blob) = this.store.stat(&[entry.digest])?.pop().flatten() else {
                return Err(Error::FailedPrecondition(format!(
                    "the entry's blob {} is not in the CAS; upload it (Cas.Write or BatchWrite) before recording the entry",
                    entry.digest
                )));
            };
            let actual = OutputId(blob.sha256);
            if actual != entry.output_id {
                return Err(Error::invalid(format!(
                    "the entry's blob {} hashes (SHA-256) to {actual}, not to its OutputID {}; \
                     Go names an output by the SHA-256 of its bytes",
                    entry.digest, entry.output_id
                )));
            }
            // The entries are bounded, but RocksDB's WAL and memtables behind them are written
            // first: not below the floor RocksDB needs.
            this.space.recheck()?;
            this.store.claim(&[entry.digest]);
            this.entries.put_synced(&namespace, &action_id, &entry)?;
            this.stats.namespace(&namespace).go_puts.fetch_add(1, Ordering::Relaxed);
            this.forget_after_call();
            Ok(())
        })
        .await?
    }

    /// Drops entries whose blob is gone from this machine (with a shared tier, a lookup finds
    /// the entry in the bucket again), looking at up to `limit` entries from `cursor` on
    /// (the key to start at; empty: the first). Moves `cursor` past them, back to the start
    /// after the last entry. Returns how many it dropped.
    pub fn sweep_dangling(&self, cursor: &mut Vec<u8>, limit: usize) -> Result<u64> {
        let slice = self.entries.slice(cursor, limit)?;
        let digests: Vec<Digest> = slice.entries.iter().map(|(_, entry)| entry.digest).collect();
        let gone: Vec<Vec<u8>> = slice
            .entries
            .into_iter()
            .zip(self.store.contains_locally(&digests)?)
            .filter_map(|((position, _), stored)| (!stored).then_some(position))
            .collect();
        let dropped = gone.len() as u64;
        if dropped > 0 {
            self.entries.remove_keys(&gone)?;
            self.stats.go_entries_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        cursor.clear();
        if let Some(last) = slice.last.filter(|_| slice.looked == limit) {
            cursor.extend_from_slice(&last);
            cursor.push(0); // The smallest position after this one.
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobStore;

    #[test]
    fn entry_round_trips() {
        let entry =
            GoEntry { output_id: OutputId([3; 32]), digest: Digest::of(b"body"), time_unix_nanos: -5 };
        assert_eq!(GoEntry::decode(&entry.encode()).unwrap(), entry);
    }

    #[test]
    fn the_dangling_sweep_walks_every_entry_a_slice_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (db, rocks) = crate::store::open_for_tests(dir.path());
        let stats = Arc::new(Stats::default());
        let store: SharedStore = Arc::new(rocks);
        // The empty blob is stored; the others never were.
        let mut writer = store.write(&Digest::of(b"")).unwrap();
        writer.record_sha256([0; 32]);
        writer.commit().unwrap();
        let space = Arc::new(FreeSpace::new(dir.path().to_owned(), 0));
        let entries = RocksGoEntries::open(Arc::clone(&db), u64::MAX).unwrap();
        let cache = GoCache::new(Arc::new(entries), store, Arc::clone(&stats), space);
        for (action, body) in [(1u8, &b"gone"[..]), (2, b""), (3, b"gone too")] {
            let entry =
                GoEntry { output_id: OutputId([0; 32]), digest: Digest::of(body), time_unix_nanos: 1 };
            rocks::put_for_tests(&db, "ns", &ActionId([action; 32]), &entry);
        }
        let mut cursor = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..4 {
            dropped.push(cache.sweep_dangling(&mut cursor, 1).unwrap());
        }
        assert_eq!(dropped, [1, 0, 1, 0], "one entry per round, then back to the start");
        assert!(cursor.is_empty());
        assert_eq!(stats.go_entries_dropped.load(Ordering::Relaxed), 2);
        assert!(cache.lookup("ns", &ActionId([2; 32]), &mut 0).unwrap().is_some());
        assert_eq!(cache.sweep_dangling(&mut cursor, 10).unwrap(), 0);
    }

    #[test]
    fn an_entry_whose_output_id_is_not_its_blobs_is_dropped_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (db, rocks) = crate::store::open_for_tests(dir.path());
        let stats = Arc::new(Stats::default());
        let store: SharedStore = Arc::new(rocks);
        let body = b"compiled package";
        let mut writer = store.write(&Digest::of(body)).unwrap();
        writer.put_frame(proto::frames::FrameEncoder::new(1).unwrap().encode(body).unwrap().into()).unwrap();
        writer.record_sha256([7; 32]);
        writer.commit().unwrap();
        let space = Arc::new(FreeSpace::new(dir.path().to_owned(), 0));
        let entries = RocksGoEntries::open(Arc::clone(&db), u64::MAX).unwrap();
        let cache = GoCache::new(Arc::new(entries), store, Arc::clone(&stats), space);
        for (action, output) in [(1u8, [7; 32]), (2, [9; 32])] {
            let entry = GoEntry { output_id: OutputId(output), digest: Digest::of(body), time_unix_nanos: 1 };
            rocks::put_for_tests(&db, "ns", &ActionId([action; 32]), &entry);
        }
        assert!(cache.lookup("ns", &ActionId([1; 32]), &mut 0).unwrap().is_some());
        assert!(cache.lookup("ns", &ActionId([2; 32]), &mut 0).unwrap().is_none());
        assert_eq!(stats.go_entries_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(cache.sweep_dangling(&mut Vec::new(), 10).unwrap(), 0, "the wrong entry is gone");
    }

    /// `len` bytes zstd cannot compress, different for each seed.
    fn noise(seed: u8, len: usize) -> Vec<u8> {
        let mut state = u64::from(seed) + 1;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    }

    /// The Go cache of `replica`, with an entry in namespace "ns" for each body (action n for
    /// the n-th), as a lookup finds them once it copied them from the bucket.
    fn cache_with_entries(replica: &crate::shared::testing::Replica, bodies: &[Digest]) -> Arc<GoCache> {
        let entries = RocksGoEntries::open(Arc::clone(&replica.db), u64::MAX).unwrap();
        let space = Arc::new(FreeSpace::new(std::env::temp_dir(), 0));
        let cache = GoCache::new(Arc::new(entries), Arc::clone(&replica.store), Arc::default(), space);
        let infos = replica.store.stat(bodies).unwrap();
        for (action, (digest, info)) in bodies.iter().zip(infos).enumerate() {
            let output_id = OutputId(info.unwrap().sha256);
            let entry = GoEntry { output_id, digest: *digest, time_unix_nanos: 1 };
            rocks::put_for_tests(&replica.db, "ns", &ActionId([action as u8; 32]), &entry);
        }
        cache
    }

    /// A GetMany of entries whose bodies this replica lacks: every body was copied whole from
    /// the bucket to be opened, carried or not, so one request naming many large entries
    /// pulled GiBs into a replica and pushed other tenants' blobs out of its disk, though its
    /// reply carried only metadata. Only the bodies the reply carries are copied.
    #[test]
    fn a_get_many_fills_only_the_bodies_its_reply_carries() {
        use crate::shared::testing::{SharedBucket, put};
        let bucket = SharedBucket::new();
        let (writer, reader) = (bucket.replica(), bucket.replica());
        let bodies: Vec<Digest> =
            (0..10).map(|seed| put(writer.store.as_ref(), &noise(seed, 256 << 10))).collect();
        let cache = cache_with_entries(&reader, &bodies);
        let ids = (0..bodies.len()).map(|action| ActionId([action as u8; 32])).collect();

        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let hits = runtime.block_on(cache.get_many("ns".into(), ids, 600 << 10)).unwrap();
        assert!(hits.iter().all(Option::is_some), "every body is in the bucket: {hits:?}");
        let carried = hits.iter().flatten().filter(|hit| hit.inline_body.is_some()).count();
        assert_eq!(carried, 2, "the reply has room for two bodies");
        let filled = reader.rocks.contains(&bodies).unwrap().into_iter().filter(|held| *held).count();
        assert_eq!(filled, 2, "bodies the reply did not carry were copied from the bucket");
    }

    /// A hit that does not carry its body still marks it used, as opening it did: the bodies
    /// builds ask for stay, and the others are evicted first.
    #[test]
    fn a_hit_not_carried_marks_its_body_used() {
        let bucket = crate::shared::testing::SharedBucket::new();
        let replica = bucket.replica();
        let asked = crate::shared::testing::put(replica.store.as_ref(), &noise(1, 4 << 10));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let other = crate::shared::testing::put(replica.store.as_ref(), &noise(2, 4 << 10));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cache = cache_with_entries(&replica, &[asked]);

        let hit = cache.lookup("ns", &ActionId([0; 32]), &mut 0).unwrap().expect("a hit");
        assert!(hit.inline_body.is_none());
        assert_eq!(replica.rocks.evict_bytes(1).unwrap().0, 1);
        assert_eq!(replica.rocks.contains(&[asked, other]).unwrap(), [true, false]);
    }

    #[test]
    fn inlining_is_certain_only_when_any_stored_frame_fits() {
        let bound = zstd::zstd_safe::compress_bound(1000) as u64;
        assert_eq!(inlining(0, u64::MAX), Inlining::Never);
        assert_eq!(inlining(INLINE_BODY_MAX + 1, u64::MAX), Inlining::Never);
        assert_eq!(inlining(1000, bound), Inlining::Certain);
        assert_eq!(inlining(1000, bound - 1), Inlining::IfStoredFits);
        assert_eq!(inlining(1000, 0), Inlining::IfStoredFits);
    }

    #[test]
    fn namespaces_are_checked() {
        assert_eq!(namespace("").unwrap(), DEFAULT_NAMESPACE);
        assert_eq!(namespace("team/main").unwrap(), "team/main");
        assert!(namespace("a\0b").is_err());
        assert!(namespace(&"x".repeat(300)).is_err());
        // A `pr-1/*` token matches these; logs and listings would read `main`.
        for read_as_another in
            ["pr-1/../main", "pr-1/x/../../main", "pr-1/./x", "pr-1//x", "/main", "pr-1/x ", " pr-1/x"]
        {
            assert!(namespace(read_as_another).is_err(), "{read_as_another:?}");
        }
        assert_eq!(namespace("pr-1/linux amd64").unwrap(), "pr-1/linux amd64");
    }
}
