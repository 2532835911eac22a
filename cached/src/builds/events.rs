//! The event log: one event per lookup (hit or miss, with the miss's explanation) and per
//! record, per namespace in time order. `Stats` windows and `Explain` read it.
//!
//! A lookup needs only a `read` token, so what the log keeps is bounded however it is called:
//! each event is cut to [`MAX_EVENT_BYTES`]; pruning keeps [`MAX_EVENTS_PER_NAMESPACE`] per
//! namespace, [`MAX_EVENTS_PER_TARGET`] per target and [`RETENTION`] of time, then drops the
//! oldest events of every namespace until the whole log fits `max_build_history`; and
//! nothing is appended while the disk is below its free-space floor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use proto::v1;

use super::keys::{decode, encode, event_prefix, prefix_end, target_digest, target_hash};
use super::{
    Builds, Change, DEFAULT_TOP, MAX_EVENT_BYTES, MAX_EVENTS_PER_NAMESPACE, MAX_EVENTS_PER_TARGET,
    PRUNE_EVERY, RETENTION, Table, now_ms,
};
use crate::error::Result;

/// The most top causes and targets one Stats call returns: each target may be 16 KiB.
const MAX_TOP: usize = 100;
/// How often a skipped append (disk below its floor) is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Builds {
    /// Appends `event` to its namespace's log, cut to size; below the disk's free-space floor
    /// it is dropped instead (stats and explanations lose it, the lookup is answered anyway).
    pub(super) fn append(&self, event: &v1::BuildEvent) -> Result<()> {
        if self.below_floor() {
            return Ok(());
        }
        let Some(value) = fit(event) else {
            tracing::debug!(namespace = %event.namespace, "build event too large to keep, even cut down");
            return Ok(());
        };
        let mut key = event_prefix(&event.namespace);
        key.extend_from_slice(&event.time_unix_ms.to_be_bytes());
        key.extend_from_slice(&self.sequence.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        key.extend_from_slice(&target_hash(event.target.as_ref()).to_be_bytes());
        let size = (key.len() + value.len()) as u64;
        self.records.write(vec![Change::Put(Table::Events, key, value)])?;
        let total = self.history_bytes.fetch_add(size, Ordering::Relaxed) + size;
        let appended = self.appended.fetch_add(1, Ordering::Relaxed) + 1;
        let over = total > self.history.max_bytes + self.history.max_bytes / 16;
        if over || appended.is_multiple_of(PRUNE_EVERY) {
            self.prune_events(event.time_unix_ms)?;
        }
        Ok(())
    }

    /// Whether the data directory's disk is below its floor; says so at most once a minute.
    fn below_floor(&self) -> bool {
        let space = &self.history.space;
        let floor = space.floor();
        let Some(free) = (floor > 0).then(|| space.available().ok()).flatten() else { return false };
        if free >= floor {
            return false;
        }
        let mut warned = self.warned_floor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(
                free,
                min_free_space = floor,
                "disk below min_free_space: whole-build events are not recorded"
            );
        }
        true
    }

    /// Drops events past the retention time and beyond the per-namespace and per-target caps,
    /// then the oldest until the log fits `max_build_history`. One pass at a time.
    pub(super) fn prune_events(&self, now: i64) -> Result<()> {
        if self.pruning.swap(true, Ordering::Acquire) {
            return Ok(());
        }
        let result = self.prune_all(now);
        self.pruning.store(false, Ordering::Release);
        result
    }

    /// One walk over the whole log, and deletes only of what goes: each event past a cap, and
    /// for the size cap one range per namespace over its fair share (by tenant, then namespace:
    /// [`crate::shares::fair_excess`]), its oldest events. A `read` token's lookups log misses
    /// in namespaces it chooses, so one oldest-first cut over all of them would let it wipe
    /// every other tenant's history. A pass never deletes more ranges than events it drops,
    /// however many namespaces there are (a namespace is a name any client may pick), and a
    /// namespace with nothing to drop costs it no delete.
    fn prune_all(&self, now: i64) -> Result<()> {
        let cutoff = now - RETENTION.as_millis() as i64;
        let mut changes = Vec::new();
        // Each namespace with events kept, with the (time, bytes) of each, newest first.
        let mut walked: Vec<NamespaceKept> = Vec::new();
        let mut namespace = NamespaceWalk::default();
        // From the log's last key down: namespace after namespace, each newest first, so what
        // goes past a cap is the oldest.
        for item in self.records.scan(Table::Events, &[u8::MAX], true)? {
            let (key, value) = item?;
            let Some(split) = key.iter().position(|b| *b == 0) else { continue };
            let (prefix, tail) = key.split_at(split + 1);
            if prefix != namespace.prefix.as_slice() {
                namespace.finish(&mut walked);
                namespace = NamespaceWalk { prefix: prefix.to_vec(), ..NamespaceWalk::default() };
            }
            let time = tail.get(..8).and_then(|t| t.try_into().ok()).map_or(0, i64::from_be_bytes);
            // Events logged before keys named their target are held to the other caps only.
            let target = tail.get(16..24).and_then(|t| t.try_into().ok()).map(u64::from_be_bytes);
            let seen = target.map(|target| namespace.per_target.entry(target).or_default());
            let target_full = seen.as_ref().is_some_and(|seen| **seen >= MAX_EVENTS_PER_TARGET);
            if time < cutoff || namespace.kept.len() >= MAX_EVENTS_PER_NAMESPACE || target_full {
                changes.push(Change::Delete(Table::Events, key.to_vec()));
                continue;
            }
            if let Some(seen) = seen {
                *seen += 1;
            }
            namespace.kept.push((time, (key.len() + value.len()) as u64));
        }
        namespace.finish(&mut walked);
        let kept_bytes = cut_to_fair_shares(&walked, self.history.max_bytes, &mut changes);
        self.records.write(changes)?;
        self.history_bytes.store(kept_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Hands `visit` the events of `namespace` from `since_ms` on, oldest first, one at a time:
    /// a `read` token can fill a namespace's log with tens of MiB of misses, so no reader holds
    /// all of it.
    pub(super) fn for_each_event(
        &self,
        namespace: &str,
        since_ms: i64,
        mut visit: impl FnMut(v1::BuildEvent),
    ) -> Result<()> {
        let prefix = event_prefix(namespace);
        let mut start = prefix.clone();
        start.extend_from_slice(&since_ms.max(0).to_be_bytes());
        for item in self.records.scan(Table::Events, &start, false)? {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            visit(decode(&value, "build event")?);
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn events(&self, namespace: &str, since_ms: i64) -> Result<Vec<v1::BuildEvent>> {
        let mut out = Vec::new();
        self.for_each_event(namespace, since_ms, |event| out.push(event))?;
        Ok(out)
    }

    /// Every namespace that has events.
    fn event_namespaces(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        // One seek per namespace: past each one's events straight to the next namespace.
        while let Some(row) = self.records.scan(Table::Events, &from, false)?.next() {
            let (key, _) = row?;
            let Some(split) = key.iter().position(|b| *b == 0) else { break };
            out.push(String::from_utf8_lossy(&key[..split]).into_owned());
            from = prefix_end(&key[..=split]);
        }
        Ok(out)
    }

    pub async fn stats(
        self: &Arc<Self>,
        namespace: Option<String>,
        allowed: Box<dyn Fn(&str) -> bool + Send>,
        since: Duration,
        top: usize,
    ) -> Result<v1::BuildStatsResponse> {
        let this = Arc::clone(self);
        let scan = self.scan_slot().await?;
        scan.run("build stats", move || {
            let now = now_ms();
            let since_ms = if since.is_zero() { 0 } else { now - since.as_millis() as i64 };
            let namespaces = match namespace {
                Some(namespace) => vec![namespace],
                None => this.event_namespaces()?.into_iter().filter(|ns| allowed(ns)).collect(),
            };
            let top = if top == 0 { DEFAULT_TOP } else { top.min(MAX_TOP) };
            let mut out = Vec::new();
            for namespace in namespaces {
                out.push(this.summarize(namespace, since_ms, top)?);
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

/// One namespace's events as a prune walks them, newest first.
#[derive(Default)]
struct NamespaceWalk {
    /// Its events' key prefix (the namespace and a NUL).
    prefix: Vec<u8>,
    per_target: HashMap<u64, usize>,
    /// (time, bytes) of the events kept so far, newest first.
    kept: Vec<(i64, u64)>,
}

/// A namespace's events kept past the count caps: its key prefix, and (time, bytes) of each,
/// newest first.
type NamespaceKept = (Vec<u8>, Vec<(i64, u64)>);

impl NamespaceWalk {
    /// Adds the namespace to `walked`, if it keeps any event.
    fn finish(&mut self, walked: &mut Vec<NamespaceKept>) {
        if !self.kept.is_empty() {
            walked.push((std::mem::take(&mut self.prefix), std::mem::take(&mut self.kept)));
        }
    }
}

/// Adds to `changes` the deletes that bring `walked` down to `max_bytes`: the oldest events past
/// their namespace's fair share, oldest first over all such namespaces, so among namespaces
/// equally over (many holding one event each) the oldest still go first. One range delete per
/// namespace that loses events. Returns the bytes kept.
fn cut_to_fair_shares(walked: &[NamespaceKept], max_bytes: u64, changes: &mut Vec<Change>) -> u64 {
    let held: Vec<(String, u64)> = walked
        .iter()
        .map(|(prefix, kept)| {
            let name = String::from_utf8_lossy(&prefix[..prefix.len() - 1]).into_owned();
            (name, kept.iter().map(|(_, bytes)| bytes).sum())
        })
        .collect();
    let total: u64 = held.iter().map(|(_, bytes)| bytes).sum();
    if total <= max_bytes {
        return total;
    }
    let excess =
        crate::shares::fair_excess(held.iter().map(|(name, bytes)| (name.as_str(), *bytes)), max_bytes);
    // (time, namespace, bytes) of each event past its namespace's share.
    let mut past: Vec<(i64, usize, u64)> = Vec::new();
    for (at, ((_, kept), (name, _))) in walked.iter().zip(&held).enumerate() {
        let Some(&over) = excess.get(name) else { continue };
        let mut taken = 0;
        for &(time, bytes) in kept.iter().rev() {
            if taken >= over {
                break;
            }
            taken += bytes;
            past.push((time, at, bytes));
        }
    }
    past.sort_unstable();
    // Each losing namespace loses its events before this time.
    let mut cut_before: HashMap<usize, i64> = HashMap::new();
    let mut freed = 0;
    for (time, at, bytes) in past {
        if freed >= total - max_bytes {
            break;
        }
        freed += bytes;
        cut_before.insert(at, time.saturating_add(1));
    }
    let mut kept_bytes = total;
    for (at, before) in cut_before {
        let (prefix, kept) = &walked[at];
        kept_bytes -= kept.iter().filter(|(time, _)| *time < before).map(|(_, bytes)| bytes).sum::<u64>();
        let mut end = prefix.clone();
        end.extend_from_slice(&before.to_be_bytes());
        changes.push(Change::DeleteRange(Table::Events, prefix.clone(), end));
    }
    kept_bytes
}

/// The event as stored: encoded within [`MAX_EVENT_BYTES`], its explanation's displayed values
/// shortened and its changes cut (counted in `changes_omitted`) as far as needed. `None` when
/// even the event without changes is too large.
fn fit(event: &v1::BuildEvent) -> Option<Vec<u8>> {
    if event.encoded_len() < MAX_EVENT_BYTES {
        return Some(encode(event));
    }
    let mut event = event.clone();
    if let Some(explanation) = &mut event.explanation {
        for change in &mut explanation.changes {
            for value in [&mut change.before, &mut change.after] {
                proto::text::cut_marked(value, 128);
            }
            proto::text::cut_marked(&mut change.name, 512);
        }
        while event.encoded_len() >= MAX_EVENT_BYTES {
            let explanation = event.explanation.as_mut().expect("checked above");
            if explanation.changes.pop().is_none() {
                break;
            }
            explanation.changes_omitted += 1;
        }
    }
    (event.encoded_len() < MAX_EVENT_BYTES).then(|| encode(&event))
}

impl Builds {
    /// The stats of `namespace` from `since_ms` on, in two passes over its log: the first
    /// counts, naming missed targets only by digest (a target may be 16 KiB); the second keeps
    /// the `top` most missed whole.
    fn summarize(&self, namespace: String, since_ms: i64, top: usize) -> Result<v1::BuildNamespaceStats> {
        let mut stats = v1::BuildNamespaceStats { namespace, ..Default::default() };
        let mut causes: HashMap<String, u64> = HashMap::new();
        let mut misses_by_target: HashMap<[u8; 32], u64> = HashMap::new();
        self.for_each_event(&stats.namespace.clone(), since_ms, |event| match event.kind.as_str() {
            "hit" => {
                stats.hits += 1;
                stats.bytes_served += event.bytes;
                stats.time_saved_ms += event.duration_ms;
            }
            "miss" => {
                stats.misses += 1;
                for cause in event.explanation.map(|e| e.causes).unwrap_or_default() {
                    *causes.entry(cause).or_default() += 1;
                }
                *misses_by_target.entry(target_digest(event.target.as_ref())).or_default() += 1;
            }
            "record" => {
                stats.records += 1;
                stats.bytes_stored += event.bytes;
            }
            _ => {}
        })?;
        stats.lookups = stats.hits + stats.misses;
        let mut causes: Vec<(String, u64)> = causes.into_iter().collect();
        causes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        stats.top_miss_causes =
            causes.into_iter().take(top).map(|(cause, count)| v1::CauseCount { cause, count }).collect();
        if !misses_by_target.is_empty() {
            stats.top_missed_targets = self.top_missed(&stats.namespace, since_ms, &misses_by_target, top)?;
        }
        Ok(stats)
    }

    /// The `top` targets of `counts` (misses by target digest), most missed first, then in
    /// the order of their fields; only those are ever held whole.
    fn top_missed(
        &self,
        namespace: &str,
        since_ms: i64,
        counts: &HashMap<[u8; 32], u64>,
        top: usize,
    ) -> Result<Vec<v1::TargetCount>> {
        type Ranked = (std::cmp::Reverse<u64>, (String, String, String, String));
        let mut best: std::collections::BTreeSet<Ranked> = std::collections::BTreeSet::new();
        let mut seen: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
        self.for_each_event(namespace, since_ms, |event| {
            let digest = target_digest(event.target.as_ref());
            // A target first missed after the counting pass has no count and is left out.
            let Some(&count) = counts.get(&digest) else { return };
            if event.kind != "miss" || !seen.insert(digest) {
                return;
            }
            if best.len() == top && best.last().is_some_and(|worst| worst.0.0 > count) {
                return;
            }
            let t = event.target.unwrap_or_default();
            best.insert((std::cmp::Reverse(count), (t.module, t.package, t.goos, t.goarch)));
            if best.len() > top {
                best.pop_last();
            }
        })?;
        Ok(best
            .into_iter()
            .map(|(std::cmp::Reverse(count), (module, package, goos, goarch))| v1::TargetCount {
                target: Some(v1::BuildTarget { module, package, goos, goarch }),
                count,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::History;
    use crate::store::FreeSpace;

    fn open(dir: &std::path::Path, max_bytes: u64) -> Arc<Builds> {
        open_counting(dir, max_bytes).0
    }

    /// As `open`, with records that count the range deletes of every batch written.
    fn open_counting(dir: &std::path::Path, max_bytes: u64) -> (Arc<Builds>, Arc<Counting>) {
        let (db, rocks) = crate::store::open_for_tests(dir);
        let space = Arc::new(FreeSpace::new(dir.to_owned(), 0));
        let history = History { max_bytes, max_record_bytes: 1 << 30, space };
        let inner = crate::builds::RocksBuildRecords::new(db);
        let records = Arc::new(Counting { inner, batches: std::sync::Mutex::default() });
        let builds =
            Builds::new(Arc::clone(&records) as _, Arc::new(rocks), Arc::default(), history).unwrap();
        (builds, records)
    }

    /// Per batch written: its range deletes, and how many of them held no key.
    struct Counting {
        inner: crate::builds::RocksBuildRecords,
        batches: std::sync::Mutex<Vec<(usize, usize)>>,
    }

    impl crate::builds::BuildRecords for Counting {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(table, key)
        }

        fn write(&self, changes: Vec<Change>) -> Result<()> {
            let (mut ranges, mut empty) = (0, 0);
            for change in &changes {
                if let Change::DeleteRange(table, from, to) = change {
                    ranges += 1;
                    let first = self.inner.scan(*table, from, false)?.next().transpose()?;
                    if first.is_none_or(|(key, _)| key.as_ref() >= to.as_slice()) {
                        empty += 1;
                    }
                }
            }
            self.batches.lock().unwrap().push((ranges, empty));
            self.inner.write(changes)
        }

        fn scan(&self, table: Table, from: &[u8], reverse: bool) -> Result<crate::builds::Rows<'_>> {
            self.inner.scan(table, from, reverse)
        }

        fn purge_namespace(&self, namespace: &str) -> Result<u64> {
            self.inner.purge_namespace(namespace)
        }
    }

    fn event(namespace: &str, time: i64, package: &str) -> v1::BuildEvent {
        v1::BuildEvent {
            kind: "hit".into(),
            namespace: namespace.into(),
            time_unix_ms: time,
            target: Some(v1::BuildTarget { package: package.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn count(builds: &Builds, namespace: &str) -> usize {
        builds.events(namespace, 0).unwrap().len()
    }

    #[test]
    fn the_event_log_is_bounded_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let builds = open(dir.path(), 1 << 30);
        let now = now_ms();
        for i in 0..MAX_EVENTS_PER_NAMESPACE + 10 {
            let package = format!("p{}", i % 20);
            builds.append(&event("busy", now - 1000 + (i as i64 % 1000), &package)).unwrap();
        }
        builds.append(&event("old", now - RETENTION.as_millis() as i64 - 1, "p")).unwrap();
        builds.append(&event("quiet", now, "p")).unwrap();
        builds.prune_events(now).unwrap();
        assert_eq!(count(&builds, "busy"), MAX_EVENTS_PER_NAMESPACE);
        assert_eq!(count(&builds, "old"), 0);
        assert_eq!(count(&builds, "quiet"), 1);
        assert_eq!(builds.event_namespaces().unwrap(), ["busy", "quiet"]);
    }

    #[test]
    fn one_target_cannot_push_the_others_out() {
        let dir = tempfile::tempdir().unwrap();
        let builds = open(dir.path(), 1 << 30);
        let now = now_ms();
        builds.append(&event("ci", now - 5000, "quiet")).unwrap();
        for i in 0..MAX_EVENTS_PER_TARGET + 100 {
            builds.append(&event("ci", now - 4000 + i as i64, "loop")).unwrap();
        }
        builds.prune_events(now).unwrap();
        let events = builds.events("ci", 0).unwrap();
        assert_eq!(events.len(), MAX_EVENTS_PER_TARGET + 1);
        assert_eq!(events[0].target.as_ref().unwrap().package, "quiet");
    }

    /// Namespaces holding alike (one event each, of one size) are all over their share once the
    /// log is full: the oldest of them go first.
    #[test]
    fn the_whole_log_keeps_to_its_size_dropping_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 64 << 10;
        let builds = open(dir.path(), max_bytes);
        let now = now_ms();
        for i in 0..3000i64 {
            builds.append(&event(&format!("ns-{i:04}"), now - 3000 + i, "p")).unwrap();
        }
        builds.prune_events(now).unwrap();
        let namespaces = builds.event_namespaces().unwrap();
        let total = builds.history_bytes.load(Ordering::Relaxed);
        assert!(total <= max_bytes && total > max_bytes / 2, "{total} bytes kept");
        assert!(
            namespaces.len() < 3000 && namespaces.contains(&"ns-2999".to_owned()),
            "{}",
            namespaces.len()
        );
        assert!(!namespaces.contains(&"ns-0000".to_owned()), "the oldest go first");
    }

    /// A `read` token's lookups log misses in any namespace of its pattern: the log's size cap
    /// took the oldest events over all namespaces, so a flood of newer misses wiped every other
    /// tenant's history (`cachectl explain`, build stats). Now the tenants over their share lose
    /// their own.
    #[test]
    fn a_flood_of_misses_cannot_push_other_tenants_history_out() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 64 << 10;
        let builds = open(dir.path(), max_bytes);
        let now = now_ms();
        for i in 0..20i64 {
            builds.append(&event("main", now - 10_000 + i, &format!("pkg{i}"))).unwrap();
        }
        for i in 0..3000i64 {
            let namespace = format!("pr-1/ns{}", i % 30);
            builds.append(&event(&namespace, now - 5000 + i, &format!("p{i}"))).unwrap();
        }
        builds.prune_events(now).unwrap();
        assert_eq!(count(&builds, "main"), 20, "main's history went");
        let total = builds.history_bytes.load(Ordering::Relaxed);
        assert!(total <= max_bytes && total > max_bytes / 2, "{total} bytes kept");
    }

    /// Namespaces are client-named: a prune must not cost a delete per namespace, only per
    /// namespace that loses events, and still keep every namespace to the caps.
    #[test]
    fn a_prune_deletes_only_where_events_go_however_many_namespaces_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 64 << 10;
        let (builds, records) = open_counting(dir.path(), max_bytes);
        let now = now_ms();
        // Old events in 2,000 namespaces, then a burst in one that pushes the log past its size.
        for i in 0..2000i64 {
            builds.append(&event(&format!("ns-{i:04}"), now - 10_000 + i, "p")).unwrap();
        }
        builds.prune_events(now).unwrap();
        let before = builds.event_namespaces().unwrap().len();
        records.batches.lock().unwrap().clear();
        for i in 0..100i64 {
            builds.append(&event("busy", now - 1000 + i, &format!("p{i}"))).unwrap();
        }
        builds.prune_events(now).unwrap();
        let batches = records.batches.lock().unwrap().clone();
        let ranges: usize = batches.iter().map(|(ranges, _)| ranges).sum();
        let empty: usize = batches.iter().map(|(_, empty)| empty).sum();
        let after = builds.event_namespaces().unwrap();
        let dropped = before + 1 - after.len();
        assert!(before > 1000 && dropped > 0, "{before} namespaces, {dropped} emptied");
        assert_eq!(empty, 0, "{ranges} range deletes, {empty} of them of nothing, over {before} namespaces");
        // Each namespace emptied took one range, the busy one at most one a prune (its oldest, if
        // it was over its share); the rest lost nothing and cost nothing.
        let busy_ranges = if count(&builds, "busy") < 100 { batches.len() } else { 0 };
        assert!(
            ranges >= dropped && ranges <= dropped + busy_ranges,
            "{ranges} range deletes for {dropped} namespaces emptied in {} prunes",
            batches.len()
        );
        let total = builds.history_bytes.load(Ordering::Relaxed);
        assert!(total <= max_bytes, "{total} bytes kept");
        assert!(!after.contains(&"ns-0000".to_owned()) && after.contains(&"ns-1999".to_owned()));
    }

    #[test]
    fn a_huge_explanation_is_cut_to_size_and_counted() {
        let change = |i: usize| v1::ComponentChange {
            name: format!("file.{i}.go{}", "x".repeat(900)),
            kind: "changed".into(),
            before: "b".repeat(1000),
            after: "a".repeat(1000),
        };
        let mut miss = event("ci", 1, "p");
        miss.explanation =
            Some(v1::MissExplanation { changes: (0..1000).map(change).collect(), ..Default::default() });
        let stored = fit(&miss).expect("an event without changes fits");
        assert!(stored.len() <= MAX_EVENT_BYTES, "{} bytes", stored.len());
        let back: v1::BuildEvent = decode(&stored, "event").unwrap();
        let explanation = back.explanation.unwrap();
        assert_eq!(explanation.changes.len() as u32 + explanation.changes_omitted, 1000);
        assert!(explanation.changes[0].before.len() <= 128 && explanation.changes[0].before.ends_with('…'));
        let small = event("ci", 1, "p");
        assert_eq!(fit(&small).unwrap(), encode(&small));
    }
}
