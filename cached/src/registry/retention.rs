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
//! Two kinds of record share the bound. Loose records: blob links and manifests pushed by
//! digest that no tag, referrer or manifest these reach names (`records::OrderRow::loose`),
//! among them the blobs of every push under way, linked before the manifest that names them.
//! Kept records: what a tag or a signature reaches. Only `ac-write` tags and signs, so a token
//! with `cas-write` alone, which may push 4 MiB of loose records a request into any namespace
//! it writes, must push out loose records only: when its flood counted with the rest, it
//! forgot a namespace's tagged images and signatures, in effect deleting tags, which needs
//! `admin`. And a tenant tagging without end must push out kept records only: when loose
//! records went first whatever their number, a flood of tagged manifests took every other
//! namespace's images pushed by digest and broke their pushes under way. So kept records may
//! take the target but for a reserve of a quarter for loose ones (or what loose ones hold,
//! if less); kept ones go only beyond that, and loose ones only beyond what kept ones leave.
//!
//! Each kind is shared fairly among namespaces: what goes is the oldest of the namespaces
//! that hold the most of it, each cut down to one level, the highest that frees enough (a
//! namespace below it loses nothing). Oldest first over all namespaces let one tenant's flood
//! of 4 MiB manifests push out every other namespace's images, tags and signatures with a few
//! dozen requests; now a flood pushes out the flooder's own records first. A row is forgotten
//! only while it is as the walk read it (`RegistryRecords::forget`): a tagged push that made
//! it kept meanwhile, or a push that used it, keeps what it names.
//!
//! The bytes are summed from the rows, by namespace, loose and kept apart, at the first push
//! after start, after every sixteenth of the bound pushed here (with PostgreSQL the other
//! replicas push too) and before forgetting, and counted as pushes add them in between. A
//! record deleted otherwise stays counted until its row goes: the count is never below what
//! is stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::records::{OrderRow, Recorded, RegistryRecords};
use crate::error::Result;
use crate::shares::fair_excess;
use crate::stats::Stats;

/// Rows read, and forgotten, at a time.
const PAGE: usize = 1000;
/// Loose records keep this fraction of the target (`1 / LOOSE_RESERVE`) from kept ones.
const LOOSE_RESERVE: u64 = 4;

pub(super) struct RecordBound {
    max: u64,
    /// Bytes of the records, as last summed plus what was pushed and forgotten since.
    bytes: AtomicU64,
    /// Bytes pushed here since the rows were last summed; starts past due.
    since_total: AtomicU64,
    /// Whether records written before there were rows have theirs.
    ordered: AtomicBool,
    /// Whether a push is summing or forgetting: one at a time does.
    upkeep: AtomicBool,
    stats: Arc<Stats>,
}

/// Bytes of the rows by namespace, as summed from them.
#[derive(Debug, Default)]
struct Held {
    loose: HashMap<String, u64>,
    kept: HashMap<String, u64>,
}

impl RecordBound {
    pub(super) fn new(max: u64, stats: Arc<Stats>) -> Self {
        Self {
            max,
            bytes: AtomicU64::new(0),
            since_total: AtomicU64::new(u64::MAX / 2),
            ordered: AtomicBool::new(false),
            upkeep: AtomicBool::new(false),
            stats,
        }
    }

    /// Counts `bytes` of records a push just added and forgets past the bound. Blocking.
    /// Upkeep: a failure is logged, never the push's.
    pub(super) fn count(&self, records: &dyn RegistryRecords, bytes: u64) {
        if let Err(err) = self.count_and_forget(records, bytes) {
            tracing::warn!(error = %err, "keeping the registry's records to max_registry_records failed");
        }
    }

    fn count_and_forget(&self, records: &dyn RegistryRecords, bytes: u64) -> Result<()> {
        self.add(bytes);
        let since = self.since_total.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        let over = self.bytes.load(Ordering::Relaxed) > self.max;
        if (since < self.max / 16 && !over) || self.upkeep.swap(true, Ordering::Acquire) {
            return Ok(());
        }
        let result = self.total(records).and_then(|held| {
            if self.bytes.load(Ordering::Relaxed) <= self.max {
                return Ok(());
            }
            self.forget_down_to(records, &held, self.max - self.max / 16)
        });
        self.upkeep.store(false, Ordering::Release);
        result
    }

    fn add(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        self.stats.registry_record_bytes.store(total, Ordering::Relaxed);
    }

    fn subtract(&self, bytes: u64) {
        let update = |total: u64| Some(total.saturating_sub(bytes));
        let before = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, update).unwrap_or(0);
        self.stats.registry_record_bytes.store(before.saturating_sub(bytes), Ordering::Relaxed);
    }

    /// Sums the rows (giving rows to records written before there were any, once).
    fn total(&self, records: &dyn RegistryRecords) -> Result<Held> {
        if !self.ordered.load(Ordering::Relaxed) {
            records.give_order_rows()?;
            self.ordered.store(true, Ordering::Relaxed);
        }
        let (mut total, mut after, mut held) = (0u64, None, Held::default());
        loop {
            let rows = records.oldest(after.as_deref(), PAGE)?;
            for row in &rows {
                total += row.size;
                let kind = if row.loose { &mut held.loose } else { &mut held.kept };
                *kind.entry(namespace_of(row).to_owned()).or_default() += row.size;
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE => after = Some(last.key.clone()),
                _ => break,
            }
        }
        self.bytes.store(total, Ordering::Relaxed);
        self.since_total.store(0, Ordering::Relaxed);
        self.stats.registry_record_bytes.store(total, Ordering::Relaxed);
        Ok(held)
    }

    /// Forgets records until they take `target` bytes or less: kept ones beyond what the
    /// loose ones' reserve leaves them, then loose ones, each kind of the namespaces above
    /// their fair share of it ([`fair_excess`]), down to it; kept ones again if loose ones
    /// could not free enough.
    fn forget_down_to(&self, records: &dyn RegistryRecords, held: &Held, target: u64) -> Result<()> {
        // Enough is freed once the total is down to the target, whatever each namespace's
        // share said (replicas sharing a database forget too).
        let needed = self.bytes.load(Ordering::Relaxed).saturating_sub(target);
        let (kept, loose) = (total(&held.kept), total(&held.loose));
        let kept_room = target.saturating_sub(loose.min(target / LOOSE_RESERVE));
        let kept_needed = kept.saturating_sub(kept_room).min(needed);
        let (mut forgotten, mut freed) = self.forget_fairly(records, false, &held.kept, kept_needed)?;
        if freed < needed {
            let (more, bytes) = self.forget_fairly(records, true, &held.loose, needed - freed)?;
            (forgotten, freed) = (forgotten + more, freed + bytes);
        }
        if freed < needed {
            let (more, bytes) = self.forget_fairly(records, false, &held.kept, needed - freed)?;
            (forgotten, freed) = (forgotten + more, freed + bytes);
        }
        self.stats.registry_records_forgotten.fetch_add(forgotten, Ordering::Relaxed);
        if freed > 0 {
            tracing::info!(
                records = forgotten,
                bytes = freed,
                "forgot the oldest registry records of the namespaces holding the most, beyond \
                 max_registry_records"
            );
        }
        Ok(())
    }

    /// Forgets `needed` bytes of the rows that are `loose` (or kept), of the namespaces
    /// holding more than their fair share of `held`, the bytes of that kind by namespace.
    fn forget_fairly(
        &self,
        records: &dyn RegistryRecords,
        loose: bool,
        held: &HashMap<String, u64>,
        needed: u64,
    ) -> Result<(u64, u64)> {
        if needed == 0 {
            return Ok((0, 0));
        }
        let target = total(held).saturating_sub(needed);
        let mut excess =
            fair_excess(held.iter().map(|(namespace, bytes)| (namespace.as_str(), *bytes)), target);
        self.forget_of_kind(records, loose, &mut excess, needed)
    }

    /// Forgets `needed` bytes of the rows that are `loose` (or kept), the oldest of the
    /// namespaces with `excess` left, in one walk over the rows, oldest first, taking what it
    /// forgets off their excess. Returns the records forgotten and the bytes freed.
    fn forget_of_kind(
        &self,
        records: &dyn RegistryRecords,
        loose: bool,
        excess: &mut HashMap<String, u64>,
        needed: u64,
    ) -> Result<(u64, u64)> {
        let (mut forgotten, mut freed, mut after) = (0, 0, None);
        while !excess.is_empty() && freed < needed {
            let rows = records.oldest(after.as_deref(), PAGE)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            let full_page = rows.len() == PAGE;
            let (mut taken, mut taking) = (Vec::new(), freed);
            for row in rows.into_iter().filter(|row| row.loose == loose) {
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
            // Rows a push changed since they were read stay, and free nothing.
            let gone = records.forget(&taken)?;
            (forgotten, freed) = (forgotten + gone.records, freed + gone.bytes);
            self.subtract(gone.bytes);
            if !full_page {
                break;
            }
        }
        Ok((forgotten, freed))
    }
}

fn total(held: &HashMap<String, u64>) -> u64 {
    held.values().sum()
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
        bound.count(records, counted);
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

    /// A level per kind, and loose records first over all namespaces: a flood of tagged
    /// manifests took every other namespace's images pushed by digest and the blob links of
    /// its pushes under way. A namespace below the level of both kinds together loses nothing.
    #[test]
    fn a_flood_of_tagged_manifests_forgets_no_other_namespaces_loose_records() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let bound = RecordBound::new(64 << 10, Arc::new(Stats::default()));
        let (alice, evil) =
            (Repository::parse("alice/app").unwrap(), Repository::parse("evil/flood").unwrap());
        let by_digest: Vec<Sha256Digest> = (0..5).map(|n| push(&records, &bound, &alice, n, None)).collect();
        let (sha, blob) = (Sha256Digest::of(b"layer of a push under way"), Digest::of(b"layer"));
        bound.count(&records, records.link_blob(&alice, &sha, &blob).unwrap());
        let flood: Vec<Sha256Digest> =
            (5..400).map(|n| push(&records, &bound, &evil, n, Some(&format!("t{n}")))).collect();
        for (n, digest) in by_digest.iter().enumerate() {
            assert!(
                records.manifest(&alice, digest).unwrap().is_some(),
                "alice's manifest {n} was forgotten"
            );
        }
        assert!(records.blob(&alice, &sha).unwrap().is_some(), "the push under way lost its blob");
        assert_eq!(records.manifest(&evil, &flood[0]).unwrap(), None, "the flood's oldest is still stored");
        assert!(bound.bytes.load(Ordering::Relaxed) <= 64 << 10);
    }

    /// A loose flood spread over many namespaces, each below its share: with one level over
    /// both kinds, the namespace holding tags was the one above it and lost them.
    #[test]
    fn a_loose_flood_spread_over_namespaces_forgets_no_tagged_record() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let bound = RecordBound::new(64 << 10, Arc::new(Stats::default()));
        let main = Repository::parse("main/app").unwrap();
        let tagged: Vec<Sha256Digest> =
            (0..20).map(|n| push(&records, &bound, &main, n, Some(&format!("v{n}")))).collect();
        for n in 20..600 {
            let repo = Repository::parse(&format!("dev-{}/junk", n % 50)).unwrap();
            push(&records, &bound, &repo, n, None);
        }
        for (n, digest) in tagged.iter().enumerate() {
            assert_eq!(
                records.tag(&main, &format!("v{n}")).unwrap(),
                Some(*digest),
                "tag v{n} was forgotten"
            );
        }
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
            bound.count(&records, counted);
        }
        // Moved after the links: the tag's first row is among the oldest.
        let moved = push(&records, &bound, &main, 1, Some("latest"));
        for n in 2..22 {
            push(&records, &bound, &Repository::parse("main/other").unwrap(), n, None);
        }
        assert!(bound.bytes.load(Ordering::Relaxed) <= 64 << 10);
        assert_eq!(records.blob(&main, &sha).unwrap(), None, "the oldest link is still stored");
        // A tag reached it: it goes only once no loose record is left, however old.
        assert!(records.manifest(&main, &first).unwrap().is_some(), "a manifest a tag reached went first");
        assert_eq!(records.tag(&main, "latest").unwrap(), Some(moved), "the moved tag was forgotten");
    }

    /// Manifests pushed by digest (which `cas-write` may push) counted with the tagged ones,
    /// so a flood of them into the namespace made it forget its tagged images: kept records go
    /// only beyond the loose records' reserve, still within the bound.
    #[test]
    fn a_flood_of_loose_records_forgets_no_tagged_one() {
        let dir = tempfile::tempdir().unwrap();
        let records = open(dir.path());
        let bound = RecordBound::new(64 << 10, Arc::new(Stats::default()));
        let (app, junk) = (Repository::parse("main/app").unwrap(), Repository::parse("main/junk").unwrap());
        let tagged: Vec<Sha256Digest> =
            (0..10).map(|n| push(&records, &bound, &app, n, Some(&format!("v{n}")))).collect();
        let flood: Vec<Sha256Digest> = (10..400).map(|n| push(&records, &bound, &junk, n, None)).collect();
        for (n, digest) in tagged.iter().enumerate() {
            assert_eq!(records.tag(&app, &format!("v{n}")).unwrap(), Some(*digest), "tag v{n} was forgotten");
            assert!(records.manifest(&app, digest).unwrap().is_some(), "manifest v{n} was forgotten");
        }
        assert_eq!(records.manifest(&junk, &flood[0]).unwrap(), None);
        assert!(records.manifest(&junk, &flood[389]).unwrap().is_some());

        // Tags past the bound: the oldest tagged go, and loose records keep their reserve.
        let more: Vec<Sha256Digest> =
            (400..500).map(|n| push(&records, &bound, &app, n, Some(&format!("v{n}")))).collect();
        assert!(bound.bytes.load(Ordering::Relaxed) <= 64 << 10);
        let loose_left =
            flood.iter().filter(|digest| records.manifest(&junk, digest).unwrap().is_some()).count();
        assert!(loose_left > 0 && loose_left * 1000 <= (64 << 10) / 4, "{loose_left} loose manifests left");
        assert_eq!(records.tag(&app, "v0").unwrap(), None, "the oldest tag is still there");
        assert!(records.manifest(&app, &more[99]).unwrap().is_some());
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
            bound.count(&records, counted);
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
            records.delete_rows(&rows).unwrap();
            records.delete_rows(&[super::super::records::ORDER_MARKER.to_vec()]).unwrap();
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
