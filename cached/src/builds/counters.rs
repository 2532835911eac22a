//! Whole-build counters since start-up, per namespace, for `/metrics`. The windowed numbers of
//! `cachectl stats` come from the persisted event log instead (`Builds::stats`).
//!
//! Namespaces are capped like the Go cache's (`crate::stats`), and miss causes are counted by
//! [`metric_cause`], a fixed set: a cause is named after a manifest component, which the
//! client names.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::stats::BoundedNames;

#[derive(Debug, Default)]
pub struct BuildNamespaceCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub records: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub time_saved_ms: AtomicU64,
    /// Misses by cause, keyed by [`metric_cause`].
    causes: DashMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct BuildCounters {
    namespaces: BoundedNames<BuildNamespaceCounters>,
    /// Build entries removed because an output blob had been evicted.
    pub entries_dropped: AtomicU64,
    /// Recorded builds forgotten, oldest first, beyond `max_build_records`.
    pub records_forgotten: AtomicU64,
    /// Bytes of the recorded builds counted against `max_build_records`.
    pub record_bytes: AtomicU64,
}

/// The causes `/metrics` names one by one: what `manifest::category` gives for the components
/// `cachectl go build` records, and the causes of a first build and of evicted outputs.
const METRIC_CAUSES: &[&str] = &[
    "first build",
    "outputs evicted",
    "go version",
    "GOOS",
    "GOARCH",
    "arch level",
    "CGO_ENABLED",
    "GOFLAGS",
    "GOEXPERIMENT",
    "GOFIPS140",
    "GO_EXTLINK_ENABLED",
    "PKG_CONFIG",
    "build tags",
    "go.mod",
    "go.sum",
    "go.work",
    "cgo flags",
    "C toolchain",
    "VCS stamp",
    "dependencies",
    "source files",
    "paths",
    "packages",
    "PGO profile",
    "-tags",
    "-trimpath",
    "-ldflags",
    "-gcflags",
    "-asmflags",
    "-buildmode",
    "-race",
    "-msan",
    "-asan",
    "-cover",
    "-covermode",
    "-coverpkg",
    "-buildvcs",
    "-mod",
    "-pgo",
];

/// The `cause` label of a miss cause: itself when it is one of [`METRIC_CAUSES`], else `other`.
fn metric_cause(cause: &str) -> &'static str {
    METRIC_CAUSES.iter().find(|known| **known == cause).copied().unwrap_or("other")
}

impl BuildCounters {
    /// Counters of one namespace, within [`BoundedNames`]' caps.
    pub fn namespace(&self, name: &str) -> Arc<BuildNamespaceCounters> {
        self.namespaces.entry(name)
    }

    pub fn miss(&self, namespace: &str, causes: &[String]) {
        let counters = self.namespace(namespace);
        counters.misses.fetch_add(1, Ordering::Relaxed);
        for cause in causes {
            *counters.causes.entry(metric_cause(cause)).or_default() += 1;
        }
    }

    /// Every namespace's counters, sorted by name.
    pub fn namespaces(&self) -> Vec<(String, Arc<BuildNamespaceCounters>)> {
        self.namespaces.sorted()
    }

    /// `(namespace, cause, misses)`, sorted.
    pub fn causes(&self) -> Vec<(String, &'static str, u64)> {
        let mut items = Vec::new();
        for (namespace, counters) in self.namespaces() {
            let causes: BTreeMap<&'static str, u64> =
                counters.causes.iter().map(|entry| (*entry.key(), *entry.value())).collect();
            items.extend(causes.into_iter().map(|(cause, count)| (namespace.clone(), cause, count)));
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_named_by_clients_share_one_label() {
        let counters = BuildCounters::default();
        counters.miss("main", &["GOOS".to_owned(), "-ldflags".to_owned()]);
        for i in 0..100 {
            counters.miss("main", &[format!("-made-up-{i}"), format!("ENV_{i}")]);
        }
        let causes = counters.causes();
        let names: Vec<&str> = causes.iter().map(|(_, cause, _)| *cause).collect();
        assert_eq!(names, ["-ldflags", "GOOS", "other"]);
        assert_eq!(causes[2].2, 200);
        assert_eq!(metric_cause("source files"), "source files");
    }
}
