//! Whole-build counters since start-up, per namespace, for `/metrics`. The windowed numbers of
//! `cachectl stats` come from the persisted event log instead (`Builds::stats`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

#[derive(Debug, Default)]
pub struct BuildNamespaceCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub records: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub time_saved_ms: AtomicU64,
}

#[derive(Debug, Default)]
pub struct BuildCounters {
    namespaces: DashMap<String, Arc<BuildNamespaceCounters>>,
    /// (namespace, cause) → misses with that cause.
    causes: DashMap<(String, String), u64>,
    /// Build entries removed because an output blob had been evicted.
    pub entries_dropped: AtomicU64,
}

impl BuildCounters {
    pub fn namespace(&self, name: &str) -> Arc<BuildNamespaceCounters> {
        if let Some(counters) = self.namespaces.get(name) {
            return Arc::clone(&counters);
        }
        Arc::clone(&self.namespaces.entry(name.to_owned()).or_default())
    }

    pub fn miss(&self, namespace: &str, causes: &[String]) {
        self.namespace(namespace).misses.fetch_add(1, Ordering::Relaxed);
        for cause in causes {
            *self.causes.entry((namespace.to_owned(), cause.clone())).or_default() += 1;
        }
    }

    /// Every namespace's counters, sorted by name.
    pub fn namespaces(&self) -> Vec<(String, Arc<BuildNamespaceCounters>)> {
        let mut items: Vec<_> =
            self.namespaces.iter().map(|entry| (entry.key().clone(), Arc::clone(entry.value()))).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }

    /// `(namespace, cause, misses)`, sorted.
    pub fn causes(&self) -> Vec<(String, String, u64)> {
        let mut items: Vec<_> = self
            .causes
            .iter()
            .map(|entry| (entry.key().0.clone(), entry.key().1.clone(), *entry.value()))
            .collect();
        items.sort();
        items
    }
}
