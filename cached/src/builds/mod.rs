//! The whole-build cache: build keys → outputs, the nearest earlier manifest of each target,
//! and an event log of every lookup, miss cause and record.
//!
//! Three ordered tables ([`Table`], kept by a [`BuildRecords`]; in RocksDB, the column
//! families `build_entries`, `build_index` and `build_events` of `crate::db`):
//! - entries: namespace · key → the recorded outputs and build duration. An entry is a
//!   hit only while every output blob is stored; one whose blob was evicted is removed when
//!   found, and answers a miss. One whose blob the shared tier was not asked about (see
//!   `shared::presence`) answers a miss and stays.
//! - index: namespace · module · package · GOOS/GOARCH · time · key → manifest. The
//!   last [`MAX_PER_TARGET`] builds of each target; older ones go, with their entries.
//! - order: time · hash of the index key → size and index key, one per recorded build, so
//!   that entries and index together keep to `max_build_records`, the oldest forgotten first
//!   (`retention`). Nothing is recorded while the disk is below its free-space floor.
//! - events: namespace · time · sequence · target hash → event. Bounded by
//!   [`RETENTION`], [`MAX_EVENTS_PER_NAMESPACE`], [`MAX_EVENTS_PER_TARGET`], the size of each
//!   event ([`MAX_EVENT_BYTES`]) and of the whole log (`max_build_history`), and the disk's
//!   free-space floor: lookups, which only need `read`, append to it. `Stats` windows and
//!   `Explain` read it.
//!
//! This module looks builds up and records them; `keys` is the byte layout above, `manifest`
//! compares manifests, `explain` says why a lookup missed, `events` keeps the log and sums it up,
//! `retention` keeps the recorded builds to their bound, `records` is where the tables are kept
//! and `rocks` keeps them in RocksDB.

mod counters;
mod events;
mod explain;
mod keys;
pub mod manifest;
mod pg;
mod records;
mod retention;
mod rocks;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use counters::{BuildCounters, BuildNamespaceCounters};
use keys::{decode, encode, entry_key, index_tail, target_prefix};
use proto::Digest;
use proto::v1;

pub use self::pg::PgBuildRecords;
pub use self::records::{BuildRecords, Change, Rows, Table};
pub use self::rocks::RocksBuildRecords;
use crate::error::{Error, Result};
use crate::shared::Presence;
use crate::store::{FreeSpace, SharedStore};

/// Builds of one target kept for comparison (and their entries).
pub const MAX_PER_TARGET: usize = 32;
/// Events older than this are dropped.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Events kept per namespace, newest first.
pub const MAX_EVENTS_PER_NAMESPACE: usize = 10_000;
/// Events kept per target of a namespace, newest first: a loop over one target cannot push
/// every other target's history out.
pub const MAX_EVENTS_PER_TARGET: usize = 1_000;
/// The most one stored event takes: a miss's changes beyond it are counted, not kept (the
/// lookup's own answer still lists them).
pub const MAX_EVENT_BYTES: usize = 24 << 10;
/// The event log is pruned after this many appends (and at start-up).
const PRUNE_EVERY: u64 = 1024;
const MAX_OUTPUTS: usize = 10_000;
const MAX_FIELD_LEN: usize = 4096;
const DEFAULT_TOP: usize = 10;

/// What the event log may take: `max_bytes` in all (`max_build_history`); what recorded builds
/// may take: `max_record_bytes` (`max_build_records`); and neither anything while `space` is
/// below its floor.
pub struct History {
    pub max_bytes: u64,
    pub max_record_bytes: u64,
    pub space: Arc<FreeSpace>,
}

pub struct Builds {
    records: Arc<dyn BuildRecords>,
    store: SharedStore,
    counters: Arc<BuildCounters>,
    history: History,
    /// Orders events within one millisecond; starts at the wall clock so restarts never reuse it.
    sequence: AtomicU64,
    appended: AtomicU64,
    /// Bytes of keys and values in the event log, as of the last prune plus appends since.
    history_bytes: AtomicU64,
    pruning: AtomicBool,
    /// `max_build_records`.
    max_record_bytes: u64,
    /// Bytes of the recorded builds, as last summed plus what was recorded and dropped since.
    record_bytes: AtomicU64,
    /// Bytes recorded here since they were last summed.
    recorded_since_total: AtomicU64,
    /// `record_bytes` by namespace, kept as it is.
    namespace_record_bytes: Mutex<std::collections::HashMap<String, u64>>,
    /// Whether the oldest records are being forgotten now.
    forgetting: AtomicBool,
    warned_floor: Mutex<Option<Instant>>,
    /// Explain and Stats calls reading the log now ([`HISTORY_SCANS`]).
    scans: Arc<tokio::sync::Semaphore>,
    /// Tokens with an Explain or Stats call reading or waiting to read the log.
    scanning: Arc<Mutex<HashSet<String>>>,
    /// Misses being explained now (`explain::Explaining`).
    explaining: explain::Explaining,
}

/// Explain and Stats calls that may read the event log at once. Each reads up to the whole log
/// (`max_build_history`) an event at a time, and a `read` token may call them as often as its
/// rate limit allows: the rest wait their turn instead of all reading at once. One token has
/// one call reading or waiting at a time (another is refused, to retry), so one tenant's
/// calls cannot queue ahead of every other's.
const HISTORY_SCANS: usize = 4;

/// How long a token refused a second history scan is asked to wait.
const SCAN_RETRY: Duration = Duration::from_secs(1);

/// A turn to read the event log: the server's slot, and the caller token's one turn.
pub(crate) struct ScanSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _turn: Option<TokenTurn>,
    /// The caller's blocking thread for the scan, taken before the slot.
    thread: Option<crate::task::ReservedThread>,
}

impl ScanSlot {
    /// Runs the scan `work` on the thread reserved for it, holding the slot to its end.
    fn run<R: Send + 'static>(
        mut self,
        name: &'static str,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> crate::task::Task<R> {
        let thread = self.thread.take().expect("a scan slot runs one scan");
        crate::task::spawn_blocking_reserved(name, thread, move || {
            let _slot = self;
            work()
        })
    }
}

/// A token's turn at the event log, given back when dropped.
struct TokenTurn {
    scanning: Arc<Mutex<HashSet<String>>>,
    token: String,
}

impl Drop for TokenTurn {
    fn drop(&mut self) {
        self.scanning.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.token);
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Checks a target's fields (no control characters, bounded) and a namespace-like field.
pub fn check_target(target: &v1::BuildTarget) -> Result<()> {
    for (name, value) in [
        ("module", &target.module),
        ("package", &target.package),
        ("goos", &target.goos),
        ("goarch", &target.goarch),
    ] {
        if value.len() > MAX_FIELD_LEN || value.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "build target {name} must be at most {MAX_FIELD_LEN} bytes of printable text"
            )));
        }
    }
    if target.package.is_empty() || target.goos.is_empty() || target.goarch.is_empty() {
        return Err(Error::invalid("a build target needs a package, GOOS and GOARCH"));
    }
    Ok(())
}

/// Checks `key` against the manifest it claims to be the key of.
pub fn check_key(key: &[u8], manifest: &v1::BuildManifest) -> Result<[u8; 32]> {
    manifest::check(manifest)?;
    let expected = manifest::key(manifest);
    if key != expected {
        return Err(Error::invalid(format!(
            "build key {} is not the key of its manifest ({}); see docs/build-keys.md",
            hex(key),
            hex(&expected)
        )));
    }
    Ok(expected)
}

/// The manifest with credentials in its readable values redacted: displays are kept for
/// explanations and stored with every build, and a client may show a proxy URL or a flag
/// there. The key covers names and hashes only, so it stays the same.
pub fn redact_displays(mut manifest: v1::BuildManifest) -> v1::BuildManifest {
    for component in &mut manifest.components {
        if !component.display.is_empty() {
            component.display = crate::redact::text(&component.display);
        }
    }
    manifest
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn outputs_size(outputs: &[v1::BuildOutput]) -> u64 {
    outputs.iter().map(|o| o.digest.as_ref().map_or(0, |d| d.size_bytes)).sum()
}

impl Builds {
    /// A turn to read the event log, held until the read is over.
    async fn scan_slot(&self) -> Result<ScanSlot> {
        let turn = match crate::caller::current_owner()
            .filter(|owner| crate::auth::Grant::has_own_limits(owner))
        {
            Some(token) => {
                if !self.scanning.lock().unwrap_or_else(PoisonError::into_inner).insert(token.to_string()) {
                    return Err(Error::Busy {
                        message: format!(
                            "{} already has a Builds.Explain or Builds.Stats call reading the build \
                             history; retry once it is answered",
                            crate::auth::Grant::describe_budget(&token)
                        ),
                        retry_after: SCAN_RETRY,
                    });
                }
                Some(TokenTurn { scanning: Arc::clone(&self.scanning), token: token.to_string() })
            }
            None => None,
        };
        // The caller's thread first: one whose share is busy must not hold one of the server's
        // few scan slots while it waits for a thread.
        let thread = crate::task::reserve_thread().await;
        let permit = Arc::clone(&self.scans)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the build history's scan slots were closed".to_owned()))?;
        Ok(ScanSlot { _permit: permit, _turn: turn, thread: Some(thread) })
    }

    pub fn new(
        records: Arc<dyn BuildRecords>,
        store: SharedStore,
        counters: Arc<BuildCounters>,
        history: History,
    ) -> Result<Arc<Self>> {
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let this = Arc::new(Self {
            records,
            store,
            counters,
            sequence: AtomicU64::new(start),
            appended: AtomicU64::new(0),
            history_bytes: AtomicU64::new(0),
            pruning: AtomicBool::new(false),
            max_record_bytes: history.max_record_bytes,
            record_bytes: AtomicU64::new(0),
            recorded_since_total: AtomicU64::new(0),
            namespace_record_bytes: Mutex::default(),
            forgetting: AtomicBool::new(false),
            warned_floor: Mutex::new(None),
            scans: Arc::new(tokio::sync::Semaphore::new(HISTORY_SCANS)),
            scanning: Arc::default(),
            explaining: explain::Explaining::default(),
            history,
        });
        this.prune_events(now_ms())?;
        this.open_records()?;
        Ok(this)
    }

    pub async fn lookup(
        self: &Arc<Self>,
        namespace: String,
        target: v1::BuildTarget,
        key: [u8; 32],
        manifest: v1::BuildManifest,
    ) -> Result<v1::BuildLookupResponse> {
        let this = Arc::clone(self);
        crate::task::spawn_blocking("build lookup", move || {
            this.lookup_blocking(&namespace, &target, &key, &manifest)
        })
        .await?
    }

    fn lookup_blocking(
        &self,
        namespace: &str,
        target: &v1::BuildTarget,
        key: &[u8; 32],
        manifest: &v1::BuildManifest,
    ) -> Result<v1::BuildLookupResponse> {
        let now = now_ms();
        let (mut evicted, mut unconfirmed) = (false, false);
        if let Some(entry) = self.entry(namespace, key)? {
            let stored = self.outputs_stored(&entry.outputs)?;
            if stored == Presence::Held {
                let bytes = outputs_size(&entry.outputs);
                let counters = self.counters.namespace(namespace);
                counters.hits.fetch_add(1, Ordering::Relaxed);
                counters.bytes_served.fetch_add(bytes, Ordering::Relaxed);
                counters.time_saved_ms.fetch_add(entry.build_duration_ms, Ordering::Relaxed);
                self.append(&v1::BuildEvent {
                    kind: "hit".to_owned(),
                    namespace: namespace.to_owned(),
                    target: Some(target.clone()),
                    key: key.to_vec().into(),
                    time_unix_ms: now,
                    bytes,
                    duration_ms: entry.build_duration_ms,
                    explanation: None,
                })?;
                return Ok(v1::BuildLookupResponse {
                    hit: true,
                    outputs: entry.outputs,
                    build_duration_ms: entry.build_duration_ms,
                    explanation: None,
                });
            }
            if stored == Presence::Absent {
                // Never a dangling hit: the entry goes, the lookup is a miss.
                self.records.write(vec![Change::Delete(Table::Entries, entry_key(namespace, key))])?;
                self.counters.entries_dropped.fetch_add(1, Ordering::Relaxed);
                evicted = true;
            } else {
                // Every replica reads the entry: only proof its outputs are gone may drop it,
                // not a caller's spent lookups nor this replica's trouble with the bucket.
                unconfirmed = true;
            }
        }
        let explanation = match unconfirmed {
            true => explain::unconfirmed(),
            false => self.explain_miss(namespace, target, key, manifest, evicted)?,
        };
        self.counters.miss(namespace, explain::counted_causes(&explanation));
        self.append(&v1::BuildEvent {
            kind: "miss".to_owned(),
            namespace: namespace.to_owned(),
            target: Some(target.clone()),
            key: key.to_vec().into(),
            time_unix_ms: now,
            bytes: 0,
            duration_ms: 0,
            explanation: Some(explanation.clone()),
        })?;
        Ok(v1::BuildLookupResponse {
            hit: false,
            outputs: Vec::new(),
            build_duration_ms: 0,
            explanation: Some(explanation),
        })
    }

    fn entry(&self, namespace: &str, key: &[u8; 32]) -> Result<Option<v1::BuildRecordRequest>> {
        match self.records.get(Table::Entries, &entry_key(namespace, key))? {
            Some(bytes) => Ok(Some(decode(&bytes, "build entry")?)),
            None => Ok(None),
        }
    }

    /// Whether every output blob is stored: the worst of their answers. One held here is
    /// opened, which marks it as used for eviction; one that is not is asked about, not copied
    /// here (a client's reads copy what they need).
    fn outputs_stored(&self, outputs: &[v1::BuildOutput]) -> Result<Presence> {
        let digests = outputs
            .iter()
            .map(|output| Digest::from_wire(output.digest.as_ref()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for (digest, here) in digests.iter().zip(self.store.contains_locally(&digests)?) {
            if here {
                self.store.read(digest, 0)?;
            }
        }
        let answers = crate::shared::presence(self.store.as_ref(), &digests)?;
        Ok(answers.into_iter().max().unwrap_or(Presence::Held))
    }

    pub async fn record(
        self: &Arc<Self>,
        namespace: String,
        request: v1::BuildRecordRequest,
        key: [u8; 32],
    ) -> Result<()> {
        let this = Arc::clone(self);
        crate::task::spawn_blocking("build record", move || this.record_blocking(&namespace, request, &key))
            .await?
    }

    fn record_blocking(
        &self,
        namespace: &str,
        mut request: v1::BuildRecordRequest,
        key: &[u8; 32],
    ) -> Result<()> {
        if request.outputs.len() > MAX_OUTPUTS {
            return Err(Error::invalid(format!("a build records at most {MAX_OUTPUTS} outputs")));
        }
        let mut digests = Vec::with_capacity(request.outputs.len());
        for output in &request.outputs {
            if output.path.is_empty() || output.path.len() > MAX_FIELD_LEN || output.path.contains('\0') {
                return Err(Error::invalid(format!("output path {:?} is not allowed", output.path)));
            }
            digests.push(Digest::from_wire(output.digest.as_ref())?);
        }
        for (digest, stored) in digests.iter().zip(self.store.contains(&digests)?) {
            if !stored {
                return Err(Error::FailedPrecondition(format!(
                    "the output blob {digest} is not in the CAS; upload the outputs before recording the build"
                )));
            }
        }
        // Records are bounded (`retention`), but RocksDB's WAL and memtables behind them are
        // written first: not below the floor RocksDB needs.
        self.history.space.recheck()?;
        self.store.claim(&digests);
        let target = request.target.clone().unwrap_or_default();
        let manifest = request.manifest.take().unwrap_or_default();
        let now = now_ms();
        let mut index_key = target_prefix(namespace, &target);
        index_key.extend_from_slice(&now.to_be_bytes());
        index_key.extend_from_slice(key);
        let mut changes = vec![
            Change::Put(Table::Entries, entry_key(namespace, key), encode(&request)),
            Change::Put(Table::Index, index_key.clone(), encode(&manifest)),
        ];
        let size = retention::record_size(&changes);
        changes.push(Change::Put(
            Table::Order,
            retention::order_key(&index_key),
            retention::order_value(size, &index_key),
        ));
        self.records.write(changes)?;
        self.prune_target(namespace, &target)?;
        self.count_record(namespace, size)?;
        let bytes = outputs_size(&request.outputs);
        let counters = self.counters.namespace(namespace);
        counters.records.fetch_add(1, Ordering::Relaxed);
        counters.bytes_stored.fetch_add(bytes, Ordering::Relaxed);
        self.append(&v1::BuildEvent {
            kind: "record".to_owned(),
            namespace: namespace.to_owned(),
            target: Some(target),
            key: key.to_vec().into(),
            time_unix_ms: now,
            bytes,
            duration_ms: request.build_duration_ms,
            explanation: None,
        })
    }

    /// Keeps the newest `MAX_PER_TARGET` builds of a target; entries of dropped keys go too.
    fn prune_target(&self, namespace: &str, target: &v1::BuildTarget) -> Result<()> {
        let prefix = target_prefix(namespace, target);
        let mut found: Vec<(Vec<u8>, [u8; 32])> = Vec::new();
        for item in self.records.scan(Table::Index, &prefix, false)? {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Some((_, build_key)) = index_tail(&key) {
                found.push((key.to_vec(), build_key));
            }
        }
        if found.len() <= MAX_PER_TARGET {
            return Ok(());
        }
        // Keys sort by time within a target: the first ones are the oldest.
        let (old, kept) = found.split_at(found.len() - MAX_PER_TARGET);
        let mut changes = Vec::new();
        let old_keys: Vec<Vec<u8>> = old.iter().map(|(index_key, _)| index_key.clone()).collect();
        self.uncount_rows(&old_keys, &mut changes)?;
        for (index_key, build_key) in old {
            changes.push(Change::Delete(Table::Index, index_key.clone()));
            if !kept.iter().any(|(_, k)| k == build_key) {
                changes.push(Change::Delete(Table::Entries, entry_key(namespace, build_key)));
            }
        }
        self.records.write(changes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::testing::{Replica, SharedBucket, as_token, put, spend_lookups};

    fn target() -> v1::BuildTarget {
        v1::BuildTarget {
            module: "example.com/app".into(),
            package: "./cmd/app".into(),
            goos: "linux".into(),
            goarch: "amd64".into(),
        }
    }

    /// A build of `target()` with `output`, and its key.
    fn build(output: Digest) -> (v1::BuildRecordRequest, v1::BuildManifest, [u8; 32]) {
        let manifest = v1::BuildManifest::default();
        let key = manifest::key(&manifest);
        let request = v1::BuildRecordRequest {
            namespace: "main".into(),
            target: Some(target()),
            key: key.to_vec().into(),
            manifest: Some(manifest.clone()),
            outputs: vec![v1::BuildOutput {
                path: "app".into(),
                digest: Some(output.to_wire()),
                mode: 0o755,
            }],
            build_duration_ms: 1,
        };
        (request, manifest, key)
    }

    /// Builds on `replica` over `records`, which every replica reads (PostgreSQL in production).
    fn builds_on(replica: &Replica, records: &Arc<dyn BuildRecords>) -> Arc<Builds> {
        let space = Arc::new(FreeSpace::new(std::env::temp_dir(), 0));
        let history = History { max_bytes: 1 << 30, max_record_bytes: 1 << 40, space };
        Builds::new(Arc::clone(records), Arc::clone(&replica.store), Arc::default(), history).unwrap()
    }

    /// A read-only token that spent its own lookups on replica B looks up another namespace's
    /// build there, whose output B does not hold: a miss for it, and the record every replica
    /// reads stays.
    #[test]
    fn a_lookup_that_may_not_ask_the_bucket_leaves_the_record() {
        let shared = SharedBucket::new();
        let (a, b) = (shared.replica(), shared.replica());
        let records: Arc<dyn BuildRecords> = Arc::new(RocksBuildRecords::new(Arc::clone(&a.db)));
        let (on_a, on_b) = (builds_on(&a, &records), builds_on(&b, &records));
        let (request, manifest, key) = build(put(a.store.as_ref(), b"the victim's binary"));
        as_token("victim", || on_a.record_blocking("main", request, &key)).unwrap();

        spend_lookups(&b, "observer");
        let observed =
            as_token("observer", || on_b.lookup_blocking("main", &target(), &key, &manifest)).unwrap();
        assert!(!observed.hit);
        assert_ne!(observed.explanation.unwrap().basis, "evicted", "nothing said the outputs were gone");

        assert!(records.get(Table::Entries, &entry_key("main", &key)).unwrap().is_some(), "the record went");
        let victim = as_token("victim", || on_a.lookup_blocking("main", &target(), &key, &manifest)).unwrap();
        assert!(victim.hit, "the victim's lookup through A missed");
        assert!(on_b.lookup_blocking("main", &target(), &key, &manifest).unwrap().hit, "B may ask again");
        assert_eq!(on_b.counters.entries_dropped.load(Ordering::Relaxed), 0);
    }

    /// An output the bucket says it does not have is gone for every replica: its record goes.
    #[test]
    fn a_lookup_the_bucket_says_is_gone_drops_the_record() {
        let shared = SharedBucket::new();
        let (a, b) = (shared.replica(), shared.replica());
        let records: Arc<dyn BuildRecords> = Arc::new(RocksBuildRecords::new(Arc::clone(&a.db)));
        let (on_a, on_b) = (builds_on(&a, &records), builds_on(&b, &records));
        // Stored on A's disk alone, as before A had a shared tier.
        let (request, manifest, key) = build(put(&crate::store::Verified::new(a.rocks.clone()), b"local"));
        on_a.record_blocking("main", request, &key).unwrap();

        let missed = on_b.lookup_blocking("main", &target(), &key, &manifest).unwrap();
        assert!(!missed.hit);
        assert_eq!(missed.explanation.unwrap().basis, "evicted");
        assert!(records.get(Table::Entries, &entry_key("main", &key)).unwrap().is_none());
        assert_eq!(on_b.counters.entries_dropped.load(Ordering::Relaxed), 1);
    }
}
