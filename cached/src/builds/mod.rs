//! The whole-build cache: build keys → outputs, the nearest earlier manifest of each target,
//! and an event log of every lookup, miss cause and record.
//!
//! Three column families (`crate::db`):
//! - `build_entries`: namespace · key → the recorded outputs and build duration. An entry is a
//!   hit only while every output blob is stored; one whose blob was evicted is removed when
//!   found, and answers a miss.
//! - `build_index`: namespace · module · package · GOOS/GOARCH · time · key → manifest. The
//!   last [`MAX_PER_TARGET`] builds of each target; older ones go, with their entries.
//! - `build_events`: namespace · time · sequence → event. Bounded by [`RETENTION`] and
//!   [`MAX_EVENTS_PER_NAMESPACE`]; `Stats` windows and `Explain` read it.

mod counters;
mod keys;
pub mod manifest;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use counters::{BuildCounters, BuildNamespaceCounters};
use keys::{decode, encode, entry_key, event_prefix, index_tail, package_prefix, prefix_end, target_prefix};
use proto::Digest;
use proto::v1;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::db::{CF_BUILD_ENTRIES, CF_BUILD_EVENTS, CF_BUILD_INDEX, cf};
use crate::error::{Error, Result};
use crate::store::SharedStore;

/// Builds of one target kept for comparison (and their entries).
pub const MAX_PER_TARGET: usize = 32;
/// Events older than this are dropped.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Events kept per namespace, newest first.
pub const MAX_EVENTS_PER_NAMESPACE: usize = 10_000;
/// The event log is pruned after this many appends (and at start-up).
const PRUNE_EVERY: u64 = 1024;
const MAX_OUTPUTS: usize = 10_000;
const MAX_FIELD_LEN: usize = 4096;
const DEFAULT_TOP: usize = 10;

pub const BASIS_SAME_TARGET: &str = "same_target";
pub const BASIS_SAME_PACKAGE: &str = "same_package";
pub const BASIS_FIRST: &str = "first_build";
pub const BASIS_EVICTED: &str = "evicted";
/// The cause a miss counts when nothing was built before.
pub const CAUSE_FIRST: &str = "first build";
pub const CAUSE_EVICTED: &str = "outputs evicted";

pub struct Builds {
    db: Arc<DB>,
    store: SharedStore,
    counters: Arc<BuildCounters>,
    /// Orders events within one millisecond; starts at the wall clock so restarts never reuse it.
    sequence: AtomicU64,
    appended: AtomicU64,
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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn outputs_size(outputs: &[v1::BuildOutput]) -> u64 {
    outputs.iter().map(|o| o.digest.as_ref().map_or(0, |d| d.size_bytes)).sum()
}

impl Builds {
    pub fn new(db: Arc<DB>, store: SharedStore, counters: Arc<BuildCounters>) -> Result<Arc<Self>> {
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let this = Arc::new(Self {
            db,
            store,
            counters,
            sequence: AtomicU64::new(start),
            appended: AtomicU64::new(0),
        });
        this.prune_events(now_ms())?;
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
        tokio::task::spawn_blocking(move || this.lookup_blocking(&namespace, &target, &key, &manifest))
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
        let mut evicted = false;
        if let Some(entry) = self.entry(namespace, key)? {
            if self.outputs_stored(&entry.outputs)? {
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
            // Never a dangling hit: the entry goes, the lookup is a miss.
            self.db.delete_cf(cf(&self.db, CF_BUILD_ENTRIES)?, entry_key(namespace, key))?;
            self.counters.entries_dropped.fetch_add(1, Ordering::Relaxed);
            evicted = true;
        }
        let explanation = self.explain_miss(namespace, target, key, manifest, evicted)?;
        self.counters.miss(namespace, &explanation.causes);
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
        let entries = cf(&self.db, CF_BUILD_ENTRIES)?;
        match self.db.get_pinned_cf(entries, entry_key(namespace, key))? {
            Some(bytes) => Ok(Some(decode(&bytes, "build entry")?)),
            None => Ok(None),
        }
    }

    /// Whether every output blob is stored; opening each also marks it as used for eviction.
    fn outputs_stored(&self, outputs: &[v1::BuildOutput]) -> Result<bool> {
        for output in outputs {
            let digest = Digest::from_wire(output.digest.as_ref())?;
            if self.store.read(&digest, 0)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Compares with the nearest earlier build: of the kept builds of the same target (else of
    /// the same package on any platform), the one that differs in the fewest components, the
    /// latest of those.
    fn explain_miss(
        &self,
        namespace: &str,
        target: &v1::BuildTarget,
        key: &[u8; 32],
        manifest: &v1::BuildManifest,
        evicted: bool,
    ) -> Result<v1::MissExplanation> {
        let nearest = match self.nearest(&target_prefix(namespace, target), manifest)? {
            Some(found) => Some((BASIS_SAME_TARGET, found)),
            None => self
                .nearest(&package_prefix(namespace, target), manifest)?
                .map(|found| (BASIS_SAME_PACKAGE, found)),
        };
        let Some((basis, (index_key, mut changes))) = nearest else {
            return Ok(v1::MissExplanation {
                basis: (if evicted { BASIS_EVICTED } else { BASIS_FIRST }).to_owned(),
                causes: vec![(if evicted { CAUSE_EVICTED } else { CAUSE_FIRST }).to_owned()],
                ..Default::default()
            });
        };
        let (time, nearest_key) =
            index_tail(&index_key).ok_or_else(|| Error::Corrupt("build index key".into()))?;
        let nearest_target = self.target_of(namespace, &index_key);
        let (basis, causes) = if evicted || changes.is_empty() || &nearest_key == key {
            (BASIS_EVICTED, vec![CAUSE_EVICTED.to_owned()])
        } else {
            (basis, manifest::causes(&changes))
        };
        let omitted = changes.len().saturating_sub(manifest::MAX_STORED_CHANGES);
        changes.truncate(manifest::MAX_STORED_CHANGES);
        Ok(v1::MissExplanation {
            basis: basis.to_owned(),
            nearest_key: nearest_key.to_vec().into(),
            nearest_target,
            nearest_time_unix_ms: time,
            changes,
            causes,
            changes_omitted: omitted as u32,
        })
    }

    /// The index entry under `prefix` whose manifest differs least from `manifest` (the latest
    /// among equals), with the difference.
    fn nearest(
        &self,
        prefix: &[u8],
        manifest: &v1::BuildManifest,
    ) -> Result<Option<(Vec<u8>, Vec<v1::ComponentChange>)>> {
        let index = cf(&self.db, CF_BUILD_INDEX)?;
        let mut best: Option<(usize, i64, Vec<u8>, Vec<v1::ComponentChange>)> = None;
        for item in self.db.iterator_cf(index, IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let Some((time, _)) = index_tail(&key) else { continue };
            let earlier: v1::BuildManifest = decode(&value, "build manifest")?;
            let changes = manifest::diff(&earlier, manifest);
            let better = best.as_ref().is_none_or(|(count, best_time, ..)| {
                changes.len() < *count || changes.len() == *count && time >= *best_time
            });
            if better {
                best = Some((changes.len(), time, key.to_vec(), changes));
            }
        }
        Ok(best.map(|(_, _, key, changes)| (key, changes)))
    }

    /// The target an index key belongs to (its fields, before the time and key).
    fn target_of(&self, namespace: &str, index_key: &[u8]) -> Option<v1::BuildTarget> {
        let body = index_key.get(namespace.len() + 1..index_key.len().checked_sub(40)?)?;
        let fields: Vec<&str> = body.split(|b| *b == 0).filter_map(|f| std::str::from_utf8(f).ok()).collect();
        let [module, package, platform, ..] = fields.as_slice() else { return None };
        let (goos, goarch) = platform.split_once('/')?;
        Some(v1::BuildTarget {
            module: (*module).to_owned(),
            package: (*package).to_owned(),
            goos: goos.to_owned(),
            goarch: goarch.to_owned(),
        })
    }

    pub async fn record(
        self: &Arc<Self>,
        namespace: String,
        request: v1::BuildRecordRequest,
        key: [u8; 32],
    ) -> Result<()> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.record_blocking(&namespace, request, &key)).await?
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
        let target = request.target.clone().unwrap_or_default();
        let manifest = request.manifest.take().unwrap_or_default();
        let now = now_ms();
        let mut index_key = target_prefix(namespace, &target);
        index_key.extend_from_slice(&now.to_be_bytes());
        index_key.extend_from_slice(key);
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_BUILD_ENTRIES)?, entry_key(namespace, key), encode(&request));
        batch.put_cf(cf(&self.db, CF_BUILD_INDEX)?, &index_key, encode(&manifest));
        self.db.write(batch)?;
        self.prune_target(namespace, &target)?;
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
        let index = cf(&self.db, CF_BUILD_INDEX)?;
        let prefix = target_prefix(namespace, target);
        let mut found: Vec<(Vec<u8>, [u8; 32])> = Vec::new();
        for item in self.db.iterator_cf(index, IteratorMode::From(&prefix, Direction::Forward)) {
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
        let mut batch = WriteBatch::default();
        let entries = cf(&self.db, CF_BUILD_ENTRIES)?;
        for (index_key, build_key) in old {
            batch.delete_cf(index, index_key);
            if !kept.iter().any(|(_, k)| k == build_key) {
                batch.delete_cf(entries, entry_key(namespace, build_key));
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    fn append(&self, event: &v1::BuildEvent) -> Result<()> {
        let mut key = event_prefix(&event.namespace);
        key.extend_from_slice(&event.time_unix_ms.to_be_bytes());
        key.extend_from_slice(&self.sequence.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        self.db.put_cf(cf(&self.db, CF_BUILD_EVENTS)?, key, encode(event))?;
        if self.appended.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune_events(event.time_unix_ms)?;
        }
        Ok(())
    }

    /// Drops events past the retention time and beyond the per-namespace cap.
    fn prune_events(&self, now: i64) -> Result<()> {
        let events = cf(&self.db, CF_BUILD_EVENTS)?;
        let cutoff = now - RETENTION.as_millis() as i64;
        let mut per_namespace: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        let mut batch = WriteBatch::default();
        for item in self.db.iterator_cf(events, IteratorMode::Start) {
            let (key, _) = item?;
            let Some(split) = key.iter().position(|b| *b == 0) else { continue };
            let time =
                key.get(split + 1..split + 9).and_then(|t| t.try_into().ok()).map_or(0, i64::from_be_bytes);
            if time < cutoff {
                batch.delete_cf(events, &key);
            } else {
                per_namespace.entry(key[..split].to_vec()).or_default().push(key.to_vec());
            }
        }
        for keys in per_namespace.values() {
            for key in keys.iter().take(keys.len().saturating_sub(MAX_EVENTS_PER_NAMESPACE)) {
                batch.delete_cf(events, key);
            }
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(())
    }

    /// The events of `namespace` from `since_ms` on, oldest first.
    fn events(&self, namespace: &str, since_ms: i64) -> Result<Vec<v1::BuildEvent>> {
        let events = cf(&self.db, CF_BUILD_EVENTS)?;
        let prefix = event_prefix(namespace);
        let mut start = prefix.clone();
        start.extend_from_slice(&since_ms.max(0).to_be_bytes());
        let mut out = Vec::new();
        for item in self.db.iterator_cf(events, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(decode(&value, "build event")?);
        }
        Ok(out)
    }

    /// Every namespace that has events.
    fn event_namespaces(&self) -> Result<Vec<String>> {
        let events = cf(&self.db, CF_BUILD_EVENTS)?;
        let mut out = Vec::new();
        let mut iter = self.db.raw_iterator_cf(events);
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let Some(split) = key.iter().position(|b| *b == 0) else { break };
            let prefix = key[..=split].to_vec();
            out.push(String::from_utf8_lossy(&key[..split]).into_owned());
            iter.seek(prefix_end(&prefix));
        }
        iter.status()?;
        Ok(out)
    }

    pub async fn explain(
        self: &Arc<Self>,
        namespace: String,
        query: String,
    ) -> Result<Option<v1::BuildEvent>> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.explain_blocking(&namespace, &query)).await?
    }

    fn explain_blocking(&self, namespace: &str, query: &str) -> Result<Option<v1::BuildEvent>> {
        let query = query.trim();
        if query.is_empty() {
            return Err(Error::invalid("explain needs a build key or a target"));
        }
        let misses: Vec<v1::BuildEvent> =
            self.events(namespace, 0)?.into_iter().filter(|e| e.kind == "miss").collect();
        let is_key = query.len() >= 8 && query.len() <= 64 && query.chars().all(|c| c.is_ascii_hexdigit());
        if is_key {
            let query = query.to_ascii_lowercase();
            let matching: Vec<&v1::BuildEvent> =
                misses.iter().filter(|e| hex(&e.key).starts_with(&query)).collect();
            let distinct: std::collections::BTreeSet<&[u8]> =
                matching.iter().map(|e| e.key.as_ref()).collect();
            if distinct.len() > 1 {
                return Err(Error::invalid(format!(
                    "key prefix {query} matches {} builds; give more digits",
                    distinct.len()
                )));
            }
            if let Some(event) = matching.last() {
                return Ok(Some((*event).clone()));
            }
        }
        let (package, platform) = match query.rsplit_once([' ', '@']) {
            Some((package, platform)) if platform.contains('/') && !platform.contains('.') => {
                (package.trim(), Some(platform.trim()))
            }
            _ => (query, None),
        };
        let package = package.trim_start_matches("./");
        let matches = |event: &v1::BuildEvent| {
            let Some(target) = &event.target else { return false };
            let package_matches = target.package.split(' ').any(|p| {
                p == package
                    || p.ends_with(&format!("/{package}"))
                    || format!("{}/{}", target.module, package) == p
            }) || target.package == package;
            let platform_matches =
                platform.is_none_or(|platform| platform == format!("{}/{}", target.goos, target.goarch));
            package_matches && platform_matches
        };
        Ok(misses.into_iter().rev().find(matches))
    }

    pub async fn stats(
        self: &Arc<Self>,
        namespace: Option<String>,
        allowed: Box<dyn Fn(&str) -> bool + Send>,
        since: Duration,
        top: usize,
    ) -> Result<v1::BuildStatsResponse> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let since_ms = if since.is_zero() { 0 } else { now - since.as_millis() as i64 };
            let namespaces = match namespace {
                Some(namespace) => vec![namespace],
                None => this.event_namespaces()?.into_iter().filter(|ns| allowed(ns)).collect(),
            };
            let top = if top == 0 { DEFAULT_TOP } else { top };
            let mut out = Vec::new();
            for namespace in namespaces {
                let events = this.events(&namespace, since_ms)?;
                out.push(summarize(namespace, &events, top));
            }
            Ok(v1::BuildStatsResponse {
                since_seconds: since.as_secs(),
                namespaces: out,
                oldest_event_unix_ms: now - RETENTION.as_millis() as i64,
            })
        })
        .await?
    }
}

fn summarize(namespace: String, events: &[v1::BuildEvent], top: usize) -> v1::BuildNamespaceStats {
    let mut stats = v1::BuildNamespaceStats { namespace, ..Default::default() };
    let mut causes: HashMap<String, u64> = HashMap::new();
    let mut targets: HashMap<(String, String, String, String), u64> = HashMap::new();
    for event in events {
        match event.kind.as_str() {
            "hit" => {
                stats.hits += 1;
                stats.bytes_served += event.bytes;
                stats.time_saved_ms += event.duration_ms;
            }
            "miss" => {
                stats.misses += 1;
                for cause in event.explanation.as_ref().map(|e| e.causes.as_slice()).unwrap_or_default() {
                    *causes.entry(cause.clone()).or_default() += 1;
                }
                let t = event.target.clone().unwrap_or_default();
                *targets.entry((t.module, t.package, t.goos, t.goarch)).or_default() += 1;
            }
            "record" => {
                stats.records += 1;
                stats.bytes_stored += event.bytes;
            }
            _ => {}
        }
    }
    stats.lookups = stats.hits + stats.misses;
    let mut causes: Vec<(String, u64)> = causes.into_iter().collect();
    causes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    stats.top_miss_causes =
        causes.into_iter().take(top).map(|(cause, count)| v1::CauseCount { cause, count }).collect();
    let mut targets: Vec<_> = targets.into_iter().collect();
    targets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    stats.top_missed_targets = targets
        .into_iter()
        .take(top)
        .map(|((module, package, goos, goarch), count)| v1::TargetCount {
            target: Some(v1::BuildTarget { module, package, goos, goarch }),
            count,
        })
        .collect();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RocksStore;

    fn open(dir: &std::path::Path) -> Arc<Builds> {
        let db = crate::db::open(dir).unwrap();
        let config =
            crate::config::Config::load(&std::collections::BTreeMap::new(), None, &|_| None).unwrap();
        let rocks = RocksStore::open(Arc::clone(&db), crate::store::rocks_budget(&config)).unwrap();
        Builds::new(db, Arc::new(rocks), Arc::default()).unwrap()
    }

    fn event(namespace: &str, time: i64) -> v1::BuildEvent {
        v1::BuildEvent {
            kind: "hit".into(),
            namespace: namespace.into(),
            time_unix_ms: time,
            ..Default::default()
        }
    }

    fn count(builds: &Builds, namespace: &str) -> usize {
        builds.events(namespace, 0).unwrap().len()
    }

    #[test]
    fn the_event_log_is_bounded_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let builds = open(dir.path());
        let now = now_ms();
        for i in 0..MAX_EVENTS_PER_NAMESPACE + 10 {
            builds.append(&event("busy", now - 1000 + (i as i64 % 1000))).unwrap();
        }
        builds.append(&event("old", now - RETENTION.as_millis() as i64 - 1)).unwrap();
        builds.append(&event("quiet", now)).unwrap();
        builds.prune_events(now).unwrap();
        assert_eq!(count(&builds, "busy"), MAX_EVENTS_PER_NAMESPACE);
        assert_eq!(count(&builds, "old"), 0);
        assert_eq!(count(&builds, "quiet"), 1);
        assert_eq!(builds.event_namespaces().unwrap(), ["busy", "quiet"]);
    }
}
