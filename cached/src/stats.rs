//! Counters since start-up: per API (requests, errors, hits, misses, bytes) and per Go cache
//! namespace. The gRPC `Stats` service and `/metrics` both read these.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

#[derive(Debug, Default)]
pub struct ApiCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl ApiCounters {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_in(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_out(&self, bytes: u64) {
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct NamespaceCounters {
    pub go_hits: AtomicU64,
    pub go_misses: AtomicU64,
    pub go_puts: AtomicU64,
    /// Reported by clients (`Stats.Report`), local-tier hits included.
    pub client_sessions: AtomicU64,
    pub client_gets: AtomicU64,
    pub client_local_hits: AtomicU64,
    pub client_remote_hits: AtomicU64,
    pub client_misses: AtomicU64,
    pub client_wait_nanos: AtomicU64,
}

#[derive(Debug)]
pub struct Stats {
    started: Instant,
    apis: DashMap<String, Arc<ApiCounters>>,
    namespaces: DashMap<String, Arc<NamespaceCounters>>,
    /// Go action entries dropped because their blob had been evicted.
    pub go_entries_dropped: AtomicU64,
    /// Whole-build lookups, misses by cause and records, for `/metrics`.
    pub builds: Arc<crate::builds::BuildCounters>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            apis: DashMap::new(),
            namespaces: DashMap::new(),
            go_entries_dropped: AtomicU64::new(0),
            builds: Arc::default(),
        }
    }
}

impl Stats {
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Counters of one API, named like `Cas.Read`.
    pub fn api(&self, name: &str) -> Arc<ApiCounters> {
        if let Some(counters) = self.apis.get(name) {
            return Arc::clone(&counters);
        }
        Arc::clone(&self.apis.entry(name.to_owned()).or_default())
    }

    pub fn namespace(&self, name: &str) -> Arc<NamespaceCounters> {
        if let Some(counters) = self.namespaces.get(name) {
            return Arc::clone(&counters);
        }
        Arc::clone(&self.namespaces.entry(name.to_owned()).or_default())
    }

    /// Every API's counters, sorted by name.
    pub fn apis(&self) -> Vec<(String, Arc<ApiCounters>)> {
        sorted(&self.apis)
    }

    pub fn namespaces(&self) -> Vec<(String, Arc<NamespaceCounters>)> {
        sorted(&self.namespaces)
    }
}

fn sorted<T>(map: &DashMap<String, Arc<T>>) -> Vec<(String, Arc<T>)> {
    let mut items: Vec<_> =
        map.iter().map(|entry| (entry.key().clone(), Arc::clone(entry.value()))).collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

/// Turns a gRPC path (`/cached.v1.Cas/Read`) into the API name used in stats (`Cas.Read`).
pub fn api_name(path: &str) -> String {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}.{method}")
        }
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_drop_the_package() {
        assert_eq!(api_name("/cached.v1.Cas/Read"), "Cas.Read");
        assert_eq!(api_name("/grpc.health.v1.Health/Check"), "Health.Check");
    }
}
