//! What recorded builds may take: `max_build_records` bytes of entries and manifests in all,
//! the oldest recorded forgotten first.
//!
//! A record is not a blob: eviction under `max_size` takes its outputs, never its entry or its
//! manifest, and [`MAX_PER_TARGET`](super::MAX_PER_TARGET) bounds the builds of one target, not
//! the targets. A writer of a namespace (a pull request's token, a job's lease) names any
//! module, package and platform it likes, and each record may carry a manifest as large as a
//! message: without a bound of their own, records filled the disk to its floor.
//!
//! Every record also writes a row in the order table: time (ms, i64 BE) · the first 16 bytes of
//! the BLAKE3 of its index key → its size (u64 BE) · its index key. (Records of one
//! millisecond are forgotten in any order among themselves.) The row's key follows from
//! the index key, so whoever drops an index row (a target's pruning) drops its row too, and
//! giving old records their rows again is harmless. The bytes counted are the rows' sizes,
//! summed when the builds open and again after every sixteenth of the bound recorded here
//! (with a shared database, other replicas record too), and kept up to date in between, in all
//! and by namespace. Past the bound, rows go, with their index row and, unless a kept build of
//! the same target has the same key, their entry, until a sixteenth of the bound is free: the
//! oldest of the namespaces holding the most, each cut down to its fair share by tenant, then
//! namespace ([`crate::shares::fair_excess`]), so a namespace that floods records (any module,
//! package and platform it likes), or a pull request spreading them over namespaces of its
//! pattern, pushes out its own, not every other tenant's. An entry removed
//! otherwise (its outputs evicted, its namespace purged) stays counted until its row goes: the
//! count is never below what is stored.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::keys::{entry_key, index_tail};
use super::{Builds, Change, Table};
use crate::error::Result;

/// An order row's key: time and 16 bytes of hash.
const ORDER_KEY_LEN: usize = 24;
/// Marks (in the order table, after every row) that every index row has its order row: builds
/// recorded before the order existed get theirs once.
const ORDER_MARKER: &[u8] = b"order v1";
/// Changes written at once while forgetting or giving rows.
const BATCH: usize = 3000;

/// The order row's key of a build's index key.
pub(super) fn order_key(index_key: &[u8]) -> Vec<u8> {
    let time = index_tail(index_key).map_or(0, |(time, _)| time);
    let mut key = Vec::with_capacity(ORDER_KEY_LEN);
    key.extend_from_slice(&time.to_be_bytes());
    key.extend_from_slice(&blake3::hash(index_key).as_bytes()[..16]);
    key
}

pub(super) fn order_value(size: u64, index_key: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + index_key.len());
    value.extend_from_slice(&size.to_be_bytes());
    value.extend_from_slice(index_key);
    value
}

/// An order row's size and index key.
fn parse_order(value: &[u8]) -> Option<(u64, &[u8])> {
    let (size, index_key) = value.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*size), index_key))
}

/// Changes of one write while forgetting, and the bytes they free by namespace.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    freed: HashMap<String, u64>,
}

/// The namespace an index key belongs to (its first field).
fn namespace_of(index_key: &[u8]) -> String {
    let end = index_key.iter().position(|b| *b == 0).unwrap_or(index_key.len());
    String::from_utf8_lossy(&index_key[..end]).into_owned()
}

/// What one recorded build takes: its entry and its index row, keys and values.
pub(super) fn record_size(changes: &[Change]) -> u64 {
    changes
        .iter()
        .map(|change| match change {
            Change::Put(Table::Entries | Table::Index, key, value) => (key.len() + value.len()) as u64,
            _ => 0,
        })
        .sum()
}

impl Builds {
    /// At open: gives builds recorded before the order their rows (once), sums the rows and
    /// forgets the oldest beyond the bound.
    pub(super) fn open_records(&self) -> Result<()> {
        if self.records.get(Table::Order, ORDER_MARKER)?.is_none() {
            self.give_rows()?;
        }
        self.total_records()?;
        self.forget_oldest_records()
    }

    /// An order row for every index row, sized by the index row and its entry.
    fn give_rows(&self) -> Result<()> {
        let mut changes = Vec::new();
        let mut given = 0u64;
        for item in self.records.scan(Table::Index, &[], false)? {
            let (index_key, manifest) = item?;
            let Some((_, key)) = index_tail(&index_key) else { continue };
            let Some(split) = index_key.iter().position(|b| *b == 0) else { continue };
            let namespace = String::from_utf8_lossy(&index_key[..split]);
            let entry = entry_key(&namespace, &key);
            let entry_size =
                self.records.get(Table::Entries, &entry)?.map_or(0, |value| entry.len() + value.len());
            let size = (index_key.len() + manifest.len() + entry_size) as u64;
            changes.push(Change::Put(Table::Order, order_key(&index_key), order_value(size, &index_key)));
            given += 1;
            if changes.len() >= BATCH {
                self.records.write(std::mem::take(&mut changes))?;
            }
        }
        changes.push(Change::Put(Table::Order, ORDER_MARKER.to_vec(), Vec::new()));
        self.records.write(changes)?;
        if given > 0 {
            tracing::info!(builds = given, "builds recorded before max_build_records now count against it");
        }
        Ok(())
    }

    /// Sums the order rows: what the recorded builds take, as every replica recorded them.
    fn total_records(&self) -> Result<()> {
        let mut total = 0u64;
        let mut namespaces: HashMap<String, u64> = HashMap::new();
        for item in self.records.scan(Table::Order, &[], false)? {
            let (key, value) = item?;
            if key.len() == ORDER_KEY_LEN
                && let Some((size, index_key)) = parse_order(&value)
            {
                total += size;
                *namespaces.entry(namespace_of(index_key)).or_default() += size;
            }
        }
        *self.namespace_record_bytes() = namespaces;
        self.record_bytes.store(total, Ordering::Relaxed);
        self.recorded_since_total.store(0, Ordering::Relaxed);
        self.counters.record_bytes.store(total, Ordering::Relaxed);
        Ok(())
    }

    fn namespace_record_bytes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.namespace_record_bytes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a build just recorded in `namespace` (`size` bytes); past the bound, forgets.
    pub(super) fn count_record(&self, namespace: &str, size: u64) -> Result<()> {
        *self.namespace_record_bytes().entry(namespace.to_owned()).or_default() += size;
        let total = self.record_bytes.fetch_add(size, Ordering::Relaxed) + size;
        self.counters.record_bytes.store(total, Ordering::Relaxed);
        let since = self.recorded_since_total.fetch_add(size, Ordering::Relaxed) + size;
        if since >= self.max_record_bytes / 16 {
            self.total_records()?;
        }
        self.forget_oldest_records()
    }

    /// Uncounts the order rows of index rows about to go (a target's oldest builds), and adds
    /// their removal to `changes`.
    pub(super) fn uncount_rows(&self, index_keys: &[Vec<u8>], changes: &mut Vec<Change>) -> Result<()> {
        let mut freed = 0;
        for index_key in index_keys {
            let key = order_key(index_key);
            if let Some(value) = self.records.get(Table::Order, &key)? {
                let size = parse_order(&value).map_or(0, |(size, _)| size);
                self.uncount_namespace(&namespace_of(index_key), size);
                freed += size;
                changes.push(Change::Delete(Table::Order, key));
            }
        }
        self.uncount(freed);
        Ok(())
    }

    fn uncount_namespace(&self, namespace: &str, bytes: u64) {
        if let Some(held) = self.namespace_record_bytes().get_mut(namespace) {
            *held = held.saturating_sub(bytes);
        }
    }

    fn uncount(&self, bytes: u64) {
        let previous = self
            .record_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| Some(total.saturating_sub(bytes)))
            .unwrap_or(0);
        self.counters.record_bytes.store(previous.saturating_sub(bytes), Ordering::Relaxed);
    }

    /// Past the bound, forgets the oldest recorded builds until a sixteenth of it is free. One
    /// pass at a time.
    fn forget_oldest_records(&self) -> Result<()> {
        if self.record_bytes.load(Ordering::Relaxed) <= self.max_record_bytes
            || self.forgetting.swap(true, Ordering::Acquire)
        {
            return Ok(());
        }
        let result = self.forget_records_down_to(self.max_record_bytes - self.max_record_bytes / 16);
        self.forgetting.store(false, Ordering::Release);
        result
    }

    fn forget_records_down_to(&self, target: u64) -> Result<()> {
        let mut batch = Batch::default();
        let (mut freed, mut forgotten) = (0u64, 0u64);
        // Index rows this pass removes: a build they kept no longer keeps its entry.
        let mut gone: HashSet<Vec<u8>> = HashSet::new();
        let mut excess: HashMap<String, u64> = {
            let held = self.namespace_record_bytes();
            crate::shares::fair_excess(held.iter().map(|(ns, bytes)| (ns.as_str(), *bytes)), target)
        };
        // Enough is freed once the total is down to the target, whatever each namespace's
        // share said (replicas sharing a database forget too).
        let needed = self.record_bytes.load(Ordering::Relaxed).saturating_sub(target);
        for item in self.records.scan(Table::Order, &[], false)? {
            if excess.is_empty() || freed >= needed {
                break;
            }
            let (key, value) = item?;
            if key.len() != ORDER_KEY_LEN {
                continue;
            }
            let Some((size, index_key)) = parse_order(&value) else {
                batch.changes.push(Change::Delete(Table::Order, key.to_vec()));
                continue;
            };
            let namespace = namespace_of(index_key);
            let Some(over) = excess.get_mut(&namespace) else { continue };
            *over = over.saturating_sub(size);
            if *over == 0 {
                excess.remove(&namespace);
            }
            batch.changes.push(Change::Delete(Table::Order, key.to_vec()));
            *batch.freed.entry(namespace).or_default() += size;
            freed += size;
            batch.changes.push(Change::Delete(Table::Index, index_key.to_vec()));
            gone.insert(index_key.to_vec());
            if let Some(entry) = self.entry_left_behind(index_key, &gone)? {
                batch.changes.push(Change::Delete(Table::Entries, entry));
            }
            forgotten += 1;
            if batch.changes.len() >= BATCH {
                self.write_batch(std::mem::take(&mut batch))?;
            }
        }
        self.write_batch(batch)?;
        self.counters.records_forgotten.fetch_add(forgotten, Ordering::Relaxed);
        if forgotten > 0 {
            tracing::info!(
                builds = forgotten,
                bytes = freed,
                "forgot the oldest recorded builds of the namespaces holding the most, beyond max_build_records"
            );
        }
        Ok(())
    }

    /// Writes `batch` and only then uncounts what it freed, in all and by namespace: a failed
    /// write leaves both counts as they were.
    fn write_batch(&self, batch: Batch) -> Result<()> {
        self.records.write(batch.changes)?;
        for (namespace, bytes) in &batch.freed {
            self.uncount_namespace(namespace, *bytes);
        }
        self.uncount(batch.freed.values().sum());
        Ok(())
    }

    /// The entry key of the build `index_key` recorded, unless another index row of its target
    /// not in `gone` has the same build key (recorded again since).
    fn entry_left_behind(&self, index_key: &[u8], gone: &HashSet<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let Some((_, key)) = index_tail(index_key) else { return Ok(None) };
        let Some(split) = index_key.iter().position(|b| *b == 0) else { return Ok(None) };
        let target = &index_key[..index_key.len() - 40];
        for item in self.records.scan(Table::Index, target, false)? {
            let (other, _) = item?;
            if !other.starts_with(target) {
                break;
            }
            if other.len() == index_key.len()
                && !gone.contains(other.as_ref())
                && index_tail(&other).is_some_and(|(_, other_key)| other_key == key)
            {
                return Ok(None);
            }
        }
        Ok(Some(entry_key(&String::from_utf8_lossy(&index_key[..split]), &key)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::v1;
    use proto::{Digest, v1::BuildRecordRequest};

    use super::*;
    use crate::builds::{History, manifest};
    use crate::store::{BlobStore, FreeSpace};

    /// Builds over a fresh store holding one output blob, their records bounded by `max`.
    fn open(dir: &std::path::Path, max: u64) -> (Arc<Builds>, Digest) {
        let (db, rocks) = crate::store::open_for_tests(dir);
        let output = Digest::of(b"binary");
        let mut writer = rocks.write(&output).unwrap();
        writer.put_frame(bytes::Bytes::from(zstd::encode_all(&b"binary"[..], 1).unwrap())).unwrap();
        writer.record_sha256([0; 32]);
        writer.commit().unwrap();
        let space = Arc::new(FreeSpace::new(dir.to_owned(), 0));
        let history = History { max_bytes: 1 << 30, max_record_bytes: max, space };
        let records = Arc::new(crate::builds::RocksBuildRecords::new(db));
        (Builds::new(records, Arc::new(rocks), Arc::default(), history).unwrap(), output)
    }

    /// A build of package `package` whose manifest takes about `padding` bytes more.
    fn build(package: &str, source: &str, padding: usize, output: Digest) -> (BuildRecordRequest, [u8; 32]) {
        let components = vec![v1::ManifestComponent {
            name: format!("file.{package}/main.go"),
            hash: blake3::hash(source.as_bytes()).as_bytes().to_vec().into(),
            display: "x".repeat(padding),
        }];
        let manifest = v1::BuildManifest { version: manifest::MANIFEST_VERSION, components };
        let key = manifest::key(&manifest);
        let target = v1::BuildTarget {
            module: "example.com/m".into(),
            package: package.into(),
            goos: "linux".into(),
            goarch: "amd64".into(),
        };
        let request = BuildRecordRequest {
            namespace: "ci".into(),
            target: Some(target),
            key: key.to_vec().into(),
            manifest: Some(manifest),
            outputs: vec![v1::BuildOutput {
                path: package.into(),
                digest: Some(output.to_wire()),
                mode: 0o755,
            }],
            build_duration_ms: 1,
        };
        (request, key)
    }

    fn stored(builds: &Builds, key: &[u8; 32]) -> bool {
        builds.entry("ci", key).unwrap().is_some()
    }

    #[test]
    fn the_oldest_builds_are_forgotten_beyond_the_bound_with_their_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 << 10;
        let (builds, output) = open(dir.path(), max);
        let mut keys = Vec::new();
        for n in 0..100 {
            // Records of one millisecond go in any order: the first and the last have their own.
            if n == 1 || n == 99 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let (request, key) = build(&format!("p{n}"), "v1", 1000, output);
            builds.record_blocking("ci", request, &key).unwrap();
            keys.push(key);
        }
        let total = builds.record_bytes.load(Ordering::Relaxed);
        assert!(total <= max && total > max / 2, "{total} bytes counted");
        assert!(!stored(&builds, &keys[0]), "the oldest build is still recorded");
        assert!(stored(&builds, &keys[99]), "the newest build was forgotten");
        let forgotten = builds.counters.records_forgotten.load(Ordering::Relaxed);
        let kept = keys.iter().filter(|key| stored(&builds, key)).count() as u64;
        assert_eq!(kept + forgotten, 100);
        let manifests = builds.records.scan(Table::Index, &[], false).unwrap().count() as u64;
        assert_eq!(manifests, kept, "manifests of forgotten builds are still stored");

        // Summed again from the rows, the count is the same.
        let counted = builds.record_bytes.load(Ordering::Relaxed);
        builds.total_records().unwrap();
        assert_eq!(builds.record_bytes.load(Ordering::Relaxed), counted);
    }

    /// Oldest first over all namespaces, one namespace's flood of records pushed out every
    /// other tenant's builds: now the namespaces holding the most lose their oldest first.
    #[test]
    fn a_flood_in_one_namespace_forgets_its_own_builds_first() {
        let dir = tempfile::tempdir().unwrap();
        let (builds, output) = open(dir.path(), 64 << 10);
        let main: Vec<[u8; 32]> = (0..5)
            .map(|n| {
                let (mut request, key) = build(&format!("main{n}"), "v1", 1000, output);
                request.namespace = "main".into();
                builds.record_blocking("main", request, &key).unwrap();
                key
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let flood: Vec<[u8; 32]> = (0..200)
            .map(|n| {
                let (mut request, key) = build(&format!("junk{n}"), "v1", 1000, output);
                request.namespace = "evil".into();
                builds.record_blocking("evil", request, &key).unwrap();
                key
            })
            .collect();
        for key in &main {
            assert!(builds.entry("main", key).unwrap().is_some(), "a build of main was forgotten");
        }
        assert!(builds.entry("evil", &flood[0]).unwrap().is_none(), "the flood's oldest is still recorded");
        assert!(builds.entry("evil", &flood[199]).unwrap().is_some());
        assert!(builds.record_bytes.load(Ordering::Relaxed) <= 64 << 10);
    }

    /// A key recorded again keeps its entry when its older record is forgotten.
    #[test]
    fn a_build_recorded_again_keeps_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (builds, output) = open(dir.path(), 64 << 10);
        let (again, again_key) = build("again", "v1", 1000, output);
        builds.record_blocking("ci", again.clone(), &again_key).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        for n in 0..30 {
            let (request, key) = build(&format!("p{n}"), "v1", 1000, output);
            builds.record_blocking("ci", request, &key).unwrap();
        }
        // Records of one millisecond go in any order: the second record has its own.
        std::thread::sleep(std::time::Duration::from_millis(2));
        builds.record_blocking("ci", again, &again_key).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        for n in 30..60 {
            let (request, key) = build(&format!("p{n}"), "v1", 1000, output);
            builds.record_blocking("ci", request, &key).unwrap();
        }
        assert!(builds.counters.records_forgotten.load(Ordering::Relaxed) > 1);
        assert!(stored(&builds, &again_key), "forgetting its first record took the entry of its second");
    }

    /// Builds recorded before the order existed count once the builds open.
    #[test]
    fn builds_recorded_before_the_order_are_counted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (builds, output) = open(dir.path(), 1 << 30);
            for n in 0..10 {
                let (request, key) = build(&format!("p{n}"), "v1", 1000, output);
                builds.record_blocking("ci", request, &key).unwrap();
            }
            // As an older version left them: no order.
            let end = crate::builds::keys::prefix_end(&[0xff]);
            builds.records.write(vec![Change::DeleteRange(Table::Order, Vec::new(), end)]).unwrap();
        }
        let (builds, _) = open(dir.path(), 64 << 10);
        let total = builds.record_bytes.load(Ordering::Relaxed);
        assert!(total > 10_000 && total <= 64 << 10, "{total}");
        assert!(builds.records.get(Table::Order, ORDER_MARKER).unwrap().is_some());
    }
}
