//! What the registry's records may take: `max_registry_records` bytes of blob links,
//! manifests (with their referrer entries) and tags in all, the oldest written forgotten first.
//!
//! Blob bytes are CAS blobs, within `max_size`; the records naming them are not. A `cas-write`
//! token may push manifests of up to 4 MiB by digest and link one blob into as many
//! repositories of its namespace as it likes, and an `ac-write` token may add tags without end:
//! without a bound of their own, records filled the disk to its floor (or the database), and
//! every tenant's pushes were refused. So every record a push adds also adds an order row
//! (`records::Recorded`), and past the bound the oldest rows go with what they name, until a
//! sixteenth of it is free: a forgotten manifest takes its tags and referrer entry along, and
//! pulling it is a 404, as pulling an evicted blob is. A push is never refused for it.
//!
//! The bound is shared fairly among namespaces: what goes is the oldest of the namespaces that
//! hold the most, each cut down to one level, the highest that brings the total under the
//! target (a namespace below it loses nothing). Oldest first over all namespaces let one
//! tenant's flood of 4 MiB manifests push out every other namespace's images, tags and
//! signatures with a few dozen requests; now a flood pushes out the flooder's own records
//! first.
//!
//! The bytes, in all and by namespace, are summed from the rows at the first push after start
//! and after every sixteenth of the bound pushed here (with PostgreSQL the other replicas push
//! too), and counted as pushes add them in between. A record deleted otherwise stays counted
//! until its row goes: the count is never below what is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::records::{OrderRow, Recorded, RegistryRecords};
use crate::error::Result;
use crate::shares::fair_excess;
use crate::stats::Stats;

/// Rows read, and forgotten, at a time.
const PAGE: usize = 1000;

pub(super) struct RecordBound {
    max: u64,
    /// Bytes of the records, as last summed plus what was pushed and forgotten since.
    bytes: AtomicU64,
    /// Bytes pushed here since the rows were last summed; starts past due.
    since_total: AtomicU64,
    /// Whether records written before there were rows have theirs.
    ordered: AtomicBool,
    forgetting: AtomicBool,
    /// Bytes by namespace, counted as `bytes` is.
    namespaces: Mutex<HashMap<String, u64>>,
    stats: Arc<Stats>,
}

impl RecordBound {
    pub(super) fn new(max: u64, stats: Arc<Stats>) -> Self {
        Self {
            max,
            bytes: AtomicU64::new(0),
            since_total: AtomicU64::new(u64::MAX / 2),
            ordered: AtomicBool::new(false),
            forgetting: AtomicBool::new(false),
            namespaces: Mutex::default(),
            stats,
        }
    }

    /// Counts `bytes` of records a push to `namespace` just added and forgets past the bound.
    /// Blocking. Upkeep: a failure is logged, never the push's.
    pub(super) fn count(&self, records: &dyn RegistryRecords, namespace: &str, bytes: u64) {
        if let Err(err) = self.count_and_forget(records, namespace, bytes) {
            tracing::warn!(error = %err, "keeping the registry's records to max_registry_records failed");
        }
    }

    fn count_and_forget(&self, records: &dyn RegistryRecords, namespace: &str, bytes: u64) -> Result<()> {
        self.add(bytes);
        if bytes > 0 {
            *self.namespaces().entry(namespace.to_owned()).or_default() += bytes;
        }
        let since = self.since_total.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        if since >= self.max / 16 {
            self.total(records)?;
        }
        if self.bytes.load(Ordering::Relaxed) <= self.max || self.forgetting.swap(true, Ordering::Acquire) {
            return Ok(());
        }
        let result = self.forget_down_to(records, self.max - self.max / 16);
        self.forgetting.store(false, Ordering::Release);
        result
    }

    fn namespaces(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        self.stats.registry_record_bytes.store(total, Ordering::Relaxed);
    }

    fn subtract(&self, namespace: &str, bytes: u64) {
        if let Some(held) = self.namespaces().get_mut(namespace) {
            *held = held.saturating_sub(bytes);
        }
        let update = |total: u64| Some(total.saturating_sub(bytes));
        let before = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, update).unwrap_or(0);
        self.stats.registry_record_bytes.store(before.saturating_sub(bytes), Ordering::Relaxed);
    }

    /// Sums the rows (giving rows to records written before there were any, once).
    fn total(&self, records: &dyn RegistryRecords) -> Result<()> {
        if !self.ordered.load(Ordering::Relaxed) {
            records.give_order_rows()?;
            self.ordered.store(true, Ordering::Relaxed);
        }
        let (mut total, mut after) = (0u64, None);
        let mut namespaces = HashMap::new();
        loop {
            let rows = records.oldest(after.as_deref(), PAGE)?;
            for row in &rows {
                total += row.size;
                *namespaces.entry(namespace_of(row).to_owned()).or_default() += row.size;
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE => after = Some(last.key.clone()),
                _ => break,
            }
        }
        *self.namespaces() = namespaces;
        self.bytes.store(total, Ordering::Relaxed);
        self.since_total.store(0, Ordering::Relaxed);
        self.stats.registry_record_bytes.store(total, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets records until they take `target` bytes or less: the oldest of each namespace
    /// above its fair share ([`fair_excess`]), down to it. One walk over the rows, oldest first.
    fn forget_down_to(&self, records: &dyn RegistryRecords, target: u64) -> Result<()> {
        let mut excess: HashMap<String, u64> = {
            let namespaces = self.namespaces();
            fair_excess(namespaces.iter().map(|(ns, bytes)| (ns.as_str(), *bytes)), target)
        };
        let (mut forgotten, mut freed, mut after) = (0, 0, None);
        // Enough is freed once the total is down to the target, whatever each namespace's
        // share said (replicas sharing a database forget too).
        let needed = self.bytes.load(Ordering::Relaxed).saturating_sub(target);
        while !excess.is_empty() && freed < needed {
            let rows = records.oldest(after.as_deref(), PAGE)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            let full_page = rows.len() == PAGE;
            let (mut taken, mut taking) = (Vec::new(), freed);
            for row in rows {
                if taking >= needed {
                    break;
                }
                // A row whose record cannot be read names nothing any namespace keeps.
                let namespace = namespace_of(&row).to_owned();
                let over = excess.get_mut(&namespace);
                if row.recorded.is_some() && over.is_none() {
                    continue;
                }
                if let Some(over) = over {
                    *over = over.saturating_sub(row.size);
                    if *over == 0 {
                        excess.remove(&namespace);
                    }
                }
                taking += row.size;
                taken.push(row);
            }
            forgotten += records.forget(&taken)?;
            for row in &taken {
                freed += row.size;
                self.subtract(namespace_of(row), row.size);
            }
            if !full_page {
                break;
            }
        }
        self.stats.registry_records_forgotten.fetch_add(forgotten, Ordering::Relaxed);
        if freed > 0 {
            tracing::info!(
                records = forgotten,
                bytes = freed,
                "forgot the oldest registry records of the namespaces holding the most, beyond max_registry_records"
            );
        }
        Ok(())
    }
}

/// The namespace a row's record lives in ("" for an unreadable one).
fn namespace_of(row: &OrderRow) -> &str {
    match &row.recorded {
        Some(Recorded::Blob { repo, .. } | Recorded::Manifest { repo, .. } | Recorded::Tag { repo, .. }) => {
            repo.namespace()
        }
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proto::Digest;

    use super::*;
    use crate::registry::records::{ManifestPut, ManifestWrite, Recorded, StoredManifest};
    use crate::registry::{Repository, RocksRegistry, Sha256Digest};

    fn open(dir: &std::path::Path) -> RocksRegistry {
        RocksRegistry::new(crate::db::open(dir).unwrap())
    }

    fn push(
        records: &RocksRegistry,
        bound: &RecordBound,
        repo: &Repository,
        n: u32,
        tag: Option<&str>,
    ) -> Sha256Digest {
        let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(1000));
        let manifest = StoredManifest { media_type: "m".to_owned(), bytes: Bytes::from(body) };
        let digest = Sha256Digest::of(&manifest.bytes);
        let write = ManifestWrite { digest, manifest: &manifest, tag, referrer: None };
        let ManifestPut::Stored { counted } = records.put_manifest(repo, write).unwrap() else { panic!() };
        bound.count(records, repo.namespace(), counted);
        digest
    }

    #[test]
    fn the_oldest_records_are_forgotten_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let stats = Arc::new(Stats::default());
        let bound = RecordBound::new(64 << 10, Arc::clone(&stats));
        let repo = Repository::parse("pr-1/app").unwrap();
        let digests: Vec<Sha256Digest> = (0..200).map(|n| push(&records, &bound, &repo, n, None)).collect();
        let total = bound.bytes.load(Ordering::Relaxed);
        assert!(total <= 64 << 10 && total > 32 << 10, "{total}");
        assert_eq!(records.manifest(&repo, &digests[0]).unwrap(), None, "the oldest is still stored");
        assert!(records.manifest(&repo, &digests[199]).unwrap().is_some(), "the newest was forgotten");
        let forgotten = stats.registry_records_forgotten.load(Ordering::Relaxed);
        let kept = digests.iter().filter(|d| records.manifest(&repo, d).unwrap().is_some()).count() as u64;
        assert_eq!(kept + forgotten, 200);

        // Summed again from the rows, the count is the same.
        bound.total(&records).unwrap();
        assert_eq!(bound.bytes.load(Ordering::Relaxed), total);
    }

    /// One namespace's flood of manifests pushed out every other namespace's images, tags and
    /// signatures, oldest first over all: now the namespaces holding the most lose their
    /// oldest first, and one below the fair level loses nothing.
    #[test]
    fn a_flood_in_one_namespace_forgets_its_own_records_first() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let bound = RecordBound::new(64 << 10, Arc::new(Stats::default()));
        let (main, evil) = (Repository::parse("main/app").unwrap(), Repository::parse("evil/junk").unwrap());
        let kept: Vec<Sha256Digest> =
            (0..10).map(|n| push(&records, &bound, &main, n, Some(&format!("v{n}")))).collect();
        let flood: Vec<Sha256Digest> = (10..400).map(|n| push(&records, &bound, &evil, n, None)).collect();
        for (n, digest) in kept.iter().enumerate() {
            assert!(records.manifest(&main, digest).unwrap().is_some(), "main's manifest {n} was forgotten");
            assert_eq!(records.tag(&main, &format!("v{n}")).unwrap(), Some(*digest));
        }
        assert_eq!(records.manifest(&evil, &flood[0]).unwrap(), None, "the flood's oldest is still stored");
        assert!(records.manifest(&evil, &flood[389]).unwrap().is_some());
        assert!(bound.bytes.load(Ordering::Relaxed) <= 64 << 10);
    }

    /// One blob linked into ever more repositories of a namespace, one tag moved again and again:
    /// each link and each move counts, and a moved tag is kept by its newest move.
    #[test]
    fn links_and_tags_count_and_a_moved_tag_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let bound = RecordBound::new(64 << 10, Arc::new(Stats::default()));
        let main = Repository::parse("main/app").unwrap();
        let first = push(&records, &bound, &main, 0, Some("latest"));
        let (sha, blob) = (Sha256Digest::of(b"layer"), Digest::of(b"layer"));
        assert!(records.link_blob(&main, &sha, &blob).unwrap() > 0);
        assert_eq!(records.link_blob(&main, &sha, &blob).unwrap(), 0, "a link there already counts again");
        for n in 0..400 {
            let repo = Repository::parse(&format!("main/copy{n}")).unwrap();
            let counted = records.link_blob(&repo, &sha, &blob).unwrap();
            bound.count(&records, repo.namespace(), counted);
        }
        // Moved after the links: the tag's first row is among the oldest.
        let moved = push(&records, &bound, &main, 1, Some("latest"));
        for n in 2..22 {
            push(&records, &bound, &Repository::parse("main/other").unwrap(), n, None);
        }
        assert!(bound.bytes.load(Ordering::Relaxed) <= 64 << 10);
        assert_eq!(records.blob(&main, &sha).unwrap(), None, "the oldest link is still stored");
        assert_eq!(records.manifest(&main, &first).unwrap(), None);
        assert_eq!(records.tag(&main, "latest").unwrap(), Some(moved), "the moved tag was forgotten");
    }

    /// A layer every image names is linked once, early: pushes that use it keep it, and only
    /// what nothing used lately is forgotten.
    #[test]
    fn a_record_in_use_is_not_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let bound = RecordBound::new(64 << 10, Arc::new(Stats::default()));
        let repo = Repository::parse("main/app").unwrap();
        let (base, unused) = (Sha256Digest::of(b"base"), Sha256Digest::of(b"unused"));
        for sha256 in [base, unused] {
            let counted = records.link_blob(&repo, &sha256, &Digest::of(sha256.0.as_slice())).unwrap();
            bound.count(&records, repo.namespace(), counted);
        }
        for n in 0..200 {
            records.touch(&[Recorded::Blob { repo: repo.clone(), sha256: base }]).unwrap();
            push(&records, &bound, &repo, n, None);
        }
        assert!(records.blob(&repo, &base).unwrap().is_some(), "the layer in use was forgotten");
        assert_eq!(records.blob(&repo, &unused).unwrap(), None);
        assert_eq!(
            records
                .oldest(None, 1000)
                .unwrap()
                .iter()
                .filter(|row| row.recorded == Some(Recorded::Blob { repo: repo.clone(), sha256: base }))
                .count(),
            1,
            "one row per record"
        );
    }

    #[test]
    fn records_written_before_the_rows_get_theirs_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::parse("main/app").unwrap();
        {
            let records = open(dir.path());
            let bound = RecordBound::new(1 << 30, Arc::new(Stats::default()));
            for n in 0..5 {
                push(&records, &bound, &repo, n, Some(&format!("t{n}")));
            }
            // As an older version left them: no rows.
            let rows: Vec<Vec<u8>> =
                records.oldest(None, 100).unwrap().into_iter().map(|row| row.key).collect();
            records.delete_order_rows(&rows).unwrap();
            records.delete_order_rows(&[super::super::records::ORDER_MARKER.to_vec()]).unwrap();
        }
        let records = open(dir.path());
        let bound = RecordBound::new(1 << 30, Arc::new(Stats::default()));
        bound.total(&records).unwrap();
        assert_eq!(records.oldest(None, 100).unwrap().len(), 10, "a row per manifest and per tag");
        let total = bound.bytes.load(Ordering::Relaxed);
        assert!(total > 5 * 1000, "{total}");
        records.give_order_rows().unwrap();
        assert_eq!(records.oldest(None, 100).unwrap().len(), 10);
    }
}
