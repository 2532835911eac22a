//! The event log: one event per lookup (hit or miss, with the miss's explanation) and per
//! record, per namespace in time order, bounded by age and count. `Stats` windows and `Explain`
//! read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::v1;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::keys::{decode, encode, event_prefix, prefix_end};
use super::{Builds, DEFAULT_TOP, MAX_EVENTS_PER_NAMESPACE, PRUNE_EVERY, RETENTION, now_ms};
use crate::db::{CF_BUILD_EVENTS, cf};
use crate::error::Result;

impl Builds {
    pub(super) fn append(&self, event: &v1::BuildEvent) -> Result<()> {
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
    pub(super) fn prune_events(&self, now: i64) -> Result<()> {
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
    pub(super) fn events(&self, namespace: &str, since_ms: i64) -> Result<Vec<v1::BuildEvent>> {
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

    fn open(dir: &std::path::Path) -> Arc<Builds> {
        let (db, rocks) = crate::store::open_for_tests(dir);
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
