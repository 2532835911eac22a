//! Why a build missed: the nearest earlier build of the same target (else of the same package)
//! and what differs in its manifest, worked out at lookup time and kept with the miss event;
//! `Explain` finds that event again by key or target.

use std::sync::Arc;

use proto::v1;

use super::keys::{decode, index_tail, package_prefix, prefix_end, target_prefix};
use super::{Builds, Table, hex, manifest};
use crate::error::{Error, Result};

/// What a miss was compared with (`MissExplanation.basis`).
const BASIS_SAME_TARGET: &str = "same_target";
const BASIS_SAME_PACKAGE: &str = "same_package";
const BASIS_FIRST: &str = "first_build";
const BASIS_EVICTED: &str = "evicted";
const BASIS_NOT_EXPLAINED: &str = "not_explained";
/// The cause a miss counts when nothing was built before.
const CAUSE_FIRST: &str = "first build";
const CAUSE_EVICTED: &str = "outputs evicted";
/// Earlier builds one miss explanation compares with at most, newest first within each target.
/// A lookup needs only `read`, and one naming a target never recorded falls back to every
/// target of its package: client-named platforms, 32 builds each, manifests of up to ~8 MB.
const MAX_EXPLAIN_CANDIDATES: usize = 64;
/// Manifest bytes one miss explanation reads at most. The manifest that crosses it is still
/// compared, so a package with a kept build is never explained as a first build.
const MAX_EXPLAIN_BYTES: usize = 64 << 20;

/// Misses explained at once, per core. A lookup needs only `read` and its explanation may read
/// and compare [`MAX_EXPLAIN_BYTES`] of manifests: without a bound, one token's concurrent
/// lookups could take every core. A miss past it is answered unexplained, at once, rather than
/// held up: the build it belongs to is waiting.
const EXPLAINING_PER_CORE: usize = 2;

/// The misses being explained now: a place each, never waited for.
pub(super) struct Explaining(Arc<tokio::sync::Semaphore>);

impl Default for Explaining {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self(Arc::new(tokio::sync::Semaphore::new(EXPLAINING_PER_CORE * cores.max(2))))
    }
}

impl Explaining {
    /// A place to explain one miss, if one is free.
    fn enter(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.0.try_acquire().ok()
    }
}

/// The causes a miss adds to its namespace's counts: none for one left unexplained, which says
/// how busy the server was (perhaps with another tenant's lookups), not why the build missed.
pub(super) fn counted_causes(explanation: &v1::MissExplanation) -> &[String] {
    if explanation.basis == BASIS_NOT_EXPLAINED { &[] } else { &explanation.causes }
}

/// A miss whose entry is recorded but whose outputs could not be confirmed just now (the
/// shared tier was not asked): not explained, and no cause the namespace's misses count.
pub(super) fn unconfirmed() -> v1::MissExplanation {
    v1::MissExplanation {
        basis: BASIS_NOT_EXPLAINED.to_owned(),
        causes: vec!["not explained: the server could not confirm the outputs are stored; retry".to_owned()],
        ..Default::default()
    }
}

/// What one explanation may still read.
struct Budget {
    candidates: usize,
    bytes: usize,
}

impl Builds {
    /// Compares with the nearest earlier build: of the kept builds of the same target (else of
    /// the same package on any platform), the one that differs in the fewest components, the
    /// latest of those; among the builds read within [`MAX_EXPLAIN_CANDIDATES`] and
    /// [`MAX_EXPLAIN_BYTES`], the newest first.
    pub(super) fn explain_miss(
        &self,
        namespace: &str,
        target: &v1::BuildTarget,
        key: &[u8; 32],
        manifest: &v1::BuildManifest,
        evicted: bool,
    ) -> Result<v1::MissExplanation> {
        let Some(_slot) = self.explaining.enter() else {
            return Ok(v1::MissExplanation {
                basis: BASIS_NOT_EXPLAINED.to_owned(),
                causes: vec!["not explained: the server was explaining many other misses".to_owned()],
                ..Default::default()
            });
        };
        let budget = &mut Budget { candidates: MAX_EXPLAIN_CANDIDATES, bytes: MAX_EXPLAIN_BYTES };
        let nearest = match self.nearest(&target_prefix(namespace, target), manifest, budget)? {
            Some(found) => Some((BASIS_SAME_TARGET, found)),
            None => self
                .nearest(&package_prefix(namespace, target), manifest, budget)?
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
        // Manifests recorded before displays were redacted on arrival may still quote one.
        for change in &mut changes {
            for value in [&mut change.before, &mut change.after] {
                if !value.is_empty() {
                    *value = crate::redact::text(value);
                }
            }
        }
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
    /// among equals), with the difference: of those `budget` leaves to read, newest first within
    /// each target.
    fn nearest(
        &self,
        prefix: &[u8],
        manifest: &v1::BuildManifest,
        budget: &mut Budget,
    ) -> Result<Option<(Vec<u8>, Vec<v1::ComponentChange>)>> {
        let mut best: Option<(usize, i64, Vec<u8>, Vec<v1::ComponentChange>)> = None;
        let end = prefix_end(prefix);
        for item in self.records.scan(Table::Index, &end, true)? {
            let (key, value) = item?;
            // The scan starts at the last key at or before `end`, which may be past the prefix.
            if *key >= *end {
                continue;
            }
            if !key.starts_with(prefix) || budget.candidates == 0 || budget.bytes == 0 {
                break;
            }
            budget.candidates -= 1;
            budget.bytes = budget.bytes.saturating_sub(value.len());
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

    pub async fn explain(
        self: &Arc<Self>,
        namespace: String,
        query: String,
    ) -> Result<Option<v1::BuildEvent>> {
        let this = Arc::clone(self);
        let scan = self.scan_slot().await?;
        scan.run("build explain", move || this.explain_blocking(&namespace, &query)).await?
    }

    fn explain_blocking(&self, namespace: &str, query: &str) -> Result<Option<v1::BuildEvent>> {
        let query = query.trim();
        if query.is_empty() {
            return Err(Error::invalid("explain needs a build key or a target"));
        }
        let is_key = query.len() >= 8 && query.len() <= 64 && query.chars().all(|c| c.is_ascii_hexdigit());
        let key_prefix = is_key.then(|| query.to_ascii_lowercase());
        let matches_target = target_query(query);
        // One pass over the log, keeping only the latest miss of each kind of match: the log
        // may hold tens of MiB.
        let mut keys = std::collections::BTreeSet::new();
        let (mut by_key, mut by_target) = (None, None);
        self.for_each_event(namespace, 0, |event| {
            if event.kind != "miss" {
                return;
            }
            let key_matches = key_prefix.as_ref().is_some_and(|prefix| hex(&event.key).starts_with(prefix));
            if key_matches {
                keys.insert(event.key.clone());
            }
            match (key_matches, matches_target(&event)) {
                (true, true) => (by_key, by_target) = (Some(event.clone()), Some(event)),
                (true, false) => by_key = Some(event),
                (false, true) => by_target = Some(event),
                (false, false) => {}
            }
        })?;
        if let Some(prefix) = key_prefix
            && keys.len() > 1
        {
            return Err(Error::invalid(format!(
                "key prefix {prefix} matches {} builds; give more digits",
                keys.len()
            )));
        }
        Ok(by_key.or(by_target))
    }
}

/// Whether a miss is of the target `query` names: a package import path (or its last
/// elements), optionally followed by ` GOOS/GOARCH` or `@GOOS/GOARCH`.
fn target_query(query: &str) -> impl Fn(&v1::BuildEvent) -> bool + '_ {
    let (package, platform) = match query.rsplit_once([' ', '@']) {
        Some((package, platform)) if platform.contains('/') && !platform.contains('.') => {
            (package.trim(), Some(platform.trim()))
        }
        _ => (query, None),
    };
    let package = package.trim_start_matches("./");
    move |event: &v1::BuildEvent| {
        let Some(target) = &event.target else { return false };
        let package_matches = target.package.split(' ').any(|p| {
            p == package
                || p.ends_with(&format!("/{package}"))
                || format!("{}/{}", target.module, package) == p
        }) || target.package == package;
        let platform_matches =
            platform.is_none_or(|platform| platform == format!("{}/{}", target.goos, target.goarch));
        package_matches && platform_matches
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use proto::Digest;
    use proto::v1::BuildRecordRequest;

    use super::*;
    use crate::builds::records::{BuildRecords, Change, Rows};
    use crate::builds::{History, RocksBuildRecords};
    use crate::store::{BlobStore, FreeSpace};

    /// The records in RocksDB, counting the index rows and manifest bytes scans hand out.
    struct Counting {
        inner: RocksBuildRecords,
        rows: AtomicUsize,
        bytes: AtomicUsize,
    }

    impl BuildRecords for Counting {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(table, key)
        }

        fn write(&self, changes: Vec<Change>) -> Result<()> {
            self.inner.write(changes)
        }

        fn scan(&self, table: Table, from: &[u8], reverse: bool) -> Result<Rows<'_>> {
            let rows = self.inner.scan(table, from, reverse)?;
            if table != Table::Index {
                return Ok(rows);
            }
            Ok(Box::new(rows.inspect(|row| {
                if let Ok((_, value)) = row {
                    self.rows.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(value.len(), Ordering::Relaxed);
                }
            })))
        }

        fn purge_namespace(&self, namespace: &str) -> Result<u64> {
            self.inner.purge_namespace(namespace)
        }
    }

    fn target(goos: &str) -> v1::BuildTarget {
        v1::BuildTarget {
            module: "example.com/m".into(),
            package: "./cmd/app".into(),
            goos: goos.into(),
            goarch: "amd64".into(),
        }
    }

    /// A manifest of `files` source files of about 1 KiB each, `build` telling builds apart.
    fn manifest(build: usize, files: usize) -> v1::BuildManifest {
        let components = (0..files)
            .map(|file| v1::ManifestComponent {
                name: format!("file.cmd/app/f{file}.go"),
                hash: blake3::hash(format!("{build}/{file}").as_bytes()).as_bytes().to_vec().into(),
                display: "x".repeat(1000),
            })
            .collect();
        v1::BuildManifest { version: manifest::MANIFEST_VERSION, components }
    }

    /// One token reads the history one call at a time: a second call of the same token is
    /// refused (to retry) instead of queueing ahead of other tenants'; other tokens, and the
    /// callers of a server without tokens, wait their turn as before.
    #[tokio::test]
    async fn a_token_has_one_turn_at_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let (builds, _) = recorded(dir.path(), 1, 1);
        let as_token = |token: &str| Some(Arc::from(token));
        let first = crate::caller::scope(as_token("pr"), builds.scan_slot()).await.unwrap();
        let Err(err) = crate::caller::scope(as_token("pr"), builds.scan_slot()).await else {
            panic!("a second turn for the same token")
        };
        assert!(err.to_string().contains("retry once it is answered"), "{err}");
        let other = crate::caller::scope(as_token("main"), builds.scan_slot()).await.unwrap();
        let anonymous = builds.scan_slot().await.unwrap();
        drop(first);
        let again = crate::caller::scope(as_token("pr"), builds.scan_slot()).await.unwrap();
        drop((other, anonymous, again));
    }

    /// Tokens whose thread shares are all busy wait for a thread before they take one of the
    /// server's few history scan slots, so another token's Stats is answered meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_waiting_for_a_thread_holds_no_scan_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (builds, _) = recorded(dir.path(), 1, 1);
        let shares = crate::caller::ThreadShares::new(1);
        let mut busy = Vec::new();
        let mut waiting = Vec::new();
        for tenant in 0..crate::builds::HISTORY_SCANS + 1 {
            let caller = shares.caller(&format!("pr-{tenant}"));
            busy.push(caller.threads().unwrap().clone().try_acquire_owned().unwrap());
            let builds = Arc::clone(&builds);
            let stats =
                async move { builds.stats(None, Box::new(|_| true), Duration::ZERO, 0).await.map(|_| ()) };
            waiting.push(crate::task::spawn("busy tenant", crate::caller::scope_caller(Some(caller), stats)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let main = crate::caller::scope_caller(
            Some(shares.caller("main")),
            builds.stats(None, Box::new(|_| true), Duration::ZERO, 0),
        );
        let answered = tokio::time::timeout(Duration::from_secs(10), main).await;
        assert!(answered.expect("main waited behind tenants waiting for threads").is_ok());
        drop(busy);
        for stats in waiting {
            stats.await.unwrap().unwrap();
        }
    }

    /// Builds over counting records, with `builds` builds of `files` files recorded in `ci`,
    /// spread over 20 platforms of one package.
    fn recorded(dir: &std::path::Path, builds_count: usize, files: usize) -> (Arc<Builds>, Arc<Counting>) {
        let (db, rocks) = crate::store::open_for_tests(dir);
        let output = Digest::of(b"binary");
        let mut writer = rocks.write(&output).unwrap();
        writer.put_frame(bytes::Bytes::from(zstd::encode_all(&b"binary"[..], 1).unwrap())).unwrap();
        writer.record_sha256([0; 32]);
        writer.commit().unwrap();
        let space = Arc::new(FreeSpace::new(dir.to_owned(), 0));
        let history = History { max_bytes: 1 << 30, max_record_bytes: 1 << 40, space };
        let records = Arc::new(Counting {
            inner: RocksBuildRecords::new(db),
            rows: Default::default(),
            bytes: Default::default(),
        });
        let builds = Builds::new(records.clone(), Arc::new(rocks), Arc::default(), history).unwrap();
        for build in 0..builds_count {
            let manifest = manifest(build, files);
            let key = manifest::key(&manifest);
            let request = BuildRecordRequest {
                namespace: "ci".into(),
                target: Some(target(&format!("os{}", build % 20))),
                key: key.to_vec().into(),
                manifest: Some(manifest),
                outputs: vec![v1::BuildOutput {
                    path: "app".into(),
                    digest: Some(output.to_wire()),
                    mode: 0o755,
                }],
                build_duration_ms: 1,
            };
            builds.record_blocking("ci", request, &key).unwrap();
        }
        records.rows.store(0, Ordering::Relaxed);
        records.bytes.store(0, Ordering::Relaxed);
        (builds, records)
    }

    #[test]
    fn a_miss_on_a_new_platform_reads_a_bounded_part_of_its_package() {
        let dir = tempfile::tempdir().unwrap();
        // 80 builds of ~1.2 MB: 20 platforms of one package, 4 builds each.
        let files = 1200;
        let (builds, records) = recorded(dir.path(), 80, files);
        let manifest = manifest(1000, files);
        let key = manifest::key(&manifest);
        let response = builds.lookup_blocking("ci", &target("never-seen"), &key, &manifest).unwrap();
        let explanation = response.explanation.unwrap();
        assert_eq!(explanation.basis, BASIS_SAME_PACKAGE);
        assert_eq!(explanation.nearest_target.unwrap().package, "./cmd/app");
        // Every file differs from every earlier build: what it says of the one it compared holds.
        assert_eq!(explanation.changes.len() + explanation.changes_omitted as usize, files);

        let (rows, bytes) = (records.rows.load(Ordering::Relaxed), records.bytes.load(Ordering::Relaxed));
        let one = encode_len(&manifest);
        // The budget, the manifest that crosses it and the rows just past the package's.
        assert!(bytes <= MAX_EXPLAIN_BYTES + 2 * one, "{bytes} manifest bytes read");
        assert!(rows <= MAX_EXPLAIN_CANDIDATES + 2, "{rows} manifests read");
    }

    fn encode_len(manifest: &v1::BuildManifest) -> usize {
        super::super::keys::encode(manifest).len()
    }

    #[test]
    fn a_miss_past_the_explanations_running_is_answered_unexplained_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let (builds, records) = recorded(dir.path(), 4, 10);
        let busy: Vec<_> = std::iter::from_fn(|| builds.explaining.enter()).collect();
        assert_eq!(builds.explaining.0.available_permits(), 0, "{} places taken", busy.len());
        let manifest = manifest(1000, 10);
        let key = manifest::key(&manifest);
        let miss = builds.lookup_blocking("ci", &target("os1"), &key, &manifest).unwrap();
        let explanation = miss.explanation.unwrap();
        assert!(!miss.hit);
        assert_eq!(explanation.basis, BASIS_NOT_EXPLAINED, "{:?}", explanation.causes);
        assert_eq!(records.rows.load(Ordering::Relaxed), 0, "no earlier manifest was read");
        assert!(counted_causes(&explanation).is_empty(), "busy is no cause of the namespace's misses");
        drop(busy);
        let miss = builds.lookup_blocking("ci", &target("os1"), &key, &manifest).unwrap();
        assert_eq!(miss.explanation.unwrap().basis, BASIS_SAME_TARGET, "a free place explains again");
    }
}
