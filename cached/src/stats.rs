//! Counters since start-up: per API (requests, errors, hits, misses, bytes) and per Go cache
//! namespace. The gRPC `Stats` service and `/metrics` both read these.
//!
//! Callers choose request paths and namespaces, so neither may grow these maps (or the metric
//! series made from them) without bound: APIs are named from the method table and anything
//! else is [`OTHER_API`]; past [`MAX_NAMESPACES`] namespaces, new ones count together under
//! [`OTHER_NAMESPACES`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use dashmap::DashMap;

/// Namespaces counted one by one since start-up; later ones share [`OTHER_NAMESPACES`].
pub const MAX_NAMESPACES: usize = 256;
/// Of those, the most one tenant's (a namespace's first path segment) take; its later ones
/// share `<tenant>/(other)`, which its own tokens see. First come, first served over all of
/// them, a pull request's token spreading calls over its pattern (`pr-1/*`) took every entry
/// after a restart, and other tenants' counters went where only `*` tokens see them.
pub const MAX_NAMESPACES_PER_TENANT: usize = 32;
/// Where the namespaces past [`MAX_NAMESPACES`] are counted. Only a token that may use every
/// namespace sees it.
pub const OTHER_NAMESPACES: &str = "(other)";
/// The API name of every call to a path cached does not serve.
pub const OTHER_API: &str = "other";

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
    namespaces: BoundedNames<NamespaceCounters>,
    /// Go action entries dropped because their blob had been evicted.
    pub go_entries_dropped: AtomicU64,
    /// Go action entries forgotten beyond `max_go_entries`: the oldest of the namespaces holding the most.
    pub go_entries_forgotten: AtomicU64,
    /// Go action entries counted against `max_go_entries`, as of the last put or round.
    pub go_entries: AtomicU64,
    /// Bytes of the registry's records counted against `max_registry_records`.
    pub registry_record_bytes: AtomicU64,
    /// Registry records (blob links, manifests, tags) forgotten, oldest first, beyond it.
    pub registry_records_forgotten: AtomicU64,
    /// Whole-build lookups, misses by cause and records, for `/metrics`.
    pub builds: Arc<crate::builds::BuildCounters>,
    /// The shared tier's URL and counters, once it is configured.
    pub shared_store: std::sync::OnceLock<(String, Arc<crate::shared::SharedCounters>)>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            apis: DashMap::new(),
            namespaces: BoundedNames::default(),
            go_entries_dropped: AtomicU64::new(0),
            go_entries_forgotten: AtomicU64::new(0),
            go_entries: AtomicU64::new(0),
            registry_record_bytes: AtomicU64::new(0),
            registry_records_forgotten: AtomicU64::new(0),
            builds: Arc::default(),
            shared_store: std::sync::OnceLock::new(),
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

    /// Counters of one namespace, or of [`OTHER_NAMESPACES`] once `MAX_NAMESPACES` exist.
    pub fn namespace(&self, name: &str) -> Arc<NamespaceCounters> {
        self.namespaces.entry(name)
    }

    /// Every API's counters, sorted by name.
    pub fn apis(&self) -> Vec<(String, Arc<ApiCounters>)> {
        sorted(&self.apis)
    }

    pub fn namespaces(&self) -> Vec<(String, Arc<NamespaceCounters>)> {
        self.namespaces.sorted()
    }
}

/// Counters by namespace, at most [`MAX_NAMESPACES`] of them.
#[derive(Debug)]
pub struct BoundedNames<T> {
    map: DashMap<String, Arc<T>>,
    /// How many entries each caller (its budget: a token, or a submitter's job leases) made.
    made_by: DashMap<Arc<str>, usize>,
}

impl<T> Default for BoundedNames<T> {
    fn default() -> Self {
        Self { map: DashMap::new(), made_by: DashMap::new() }
    }
}

impl<T: Default> BoundedNames<T> {
    /// The entry of `name`, made while there are fewer than [`MAX_NAMESPACES`], its tenant
    /// holds fewer than [`MAX_NAMESPACES_PER_TENANT`] and the caller made fewer than as many
    /// (a race may add a few more); past the tenant's, its shared entry
    /// `<tenant>/(other)`; past the others, the shared entry [`OTHER_NAMESPACES`]. The
    /// caller's cap: a token of `pr-*` calling into `pr-0` .. `pr-299`, each a tenant of its
    /// own, took every entry, and other tenants' new namespaces went where only `*` tokens
    /// see them.
    pub fn entry(&self, name: &str) -> Arc<T> {
        if let Some(counters) = self.map.get(name) {
            return Arc::clone(&counters);
        }
        let tenant = crate::shares::tenant_of(name);
        let shared = format!("{tenant}/{OTHER_NAMESPACES}");
        if let Some(counters) = self.map.get(&shared) {
            return Arc::clone(&counters);
        }
        let maker = crate::caller::current_owner().filter(|owner| crate::auth::Grant::has_own_limits(owner));
        let made = maker.as_ref().and_then(|maker| self.made_by.get(maker).map(|made| *made)).unwrap_or(0);
        if self.map.len() >= MAX_NAMESPACES || made >= MAX_NAMESPACES_PER_TENANT {
            return Arc::clone(&self.map.entry(OTHER_NAMESPACES.to_owned()).or_default());
        }
        // Counted only while entries are still made, at most `MAX_NAMESPACES` times: a flood
        // of new names past the caps costs a few lookups each.
        let held = self.map.iter().filter(|entry| crate::shares::tenant_of(entry.key()) == tenant).count();
        let name = if held < MAX_NAMESPACES_PER_TENANT { name.to_owned() } else { shared };
        match self.map.entry(name) {
            dashmap::Entry::Occupied(entry) => Arc::clone(entry.get()),
            dashmap::Entry::Vacant(entry) => {
                if let Some(maker) = maker {
                    *self.made_by.entry(maker).or_default() += 1;
                }
                Arc::clone(entry.insert(Arc::default()).value())
            }
        }
    }

    /// Every entry, sorted by name.
    pub fn sorted(&self) -> Vec<(String, Arc<T>)> {
        sorted(&self.map)
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

/// Methods anyone may call, besides those of the method table.
const OPEN_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The API name of every method cached serves, by path: a fixed set.
static API_LABELS: LazyLock<HashMap<&'static str, &'static str>> = LazyLock::new(|| {
    let paths =
        crate::auth::scopes::METHODS.iter().map(|method| method.path).chain(OPEN_METHODS.iter().copied());
    // Leaked once: a few dozen short names, for the life of the process.
    paths.map(|path| (path, &*api_name(path).leak())).collect()
});

/// The API name (`Cas.Read`) of a method cached serves, or [`OTHER_API`] for any other path:
/// what metrics and per-API counters are labelled with, whatever path a caller made up.
pub fn api_label(path: &str) -> &'static str {
    API_LABELS.get(path).copied().unwrap_or(OTHER_API)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_drop_the_package() {
        assert_eq!(api_name("/cached.v1.Cas/Read"), "Cas.Read");
        assert_eq!(api_name("/grpc.health.v1.Health/Check"), "Health.Check");
    }

    #[test]
    fn labels_come_from_the_method_table_only() {
        assert_eq!(api_label("/cached.v1.Cas/Read"), "Cas.Read");
        assert_eq!(api_label("/grpc.health.v1.Health/Check"), "Health.Check");
        assert_eq!(api_label("/cached.v1.Cas/Made-Up-1234"), OTHER_API);
        assert_eq!(api_label("/x"), OTHER_API);
    }

    /// A pull request's token spreading its calls over the namespaces of its pattern takes its
    /// tenant's entries, not every tenant's.
    #[test]
    fn one_tenant_takes_at_most_its_share_of_the_entries() {
        let stats = Stats::default();
        for i in 0..500 {
            stats.namespace(&format!("pr-1/ns{i}")).go_hits.fetch_add(1, Ordering::Relaxed);
        }
        stats.namespace("teama").go_puts.fetch_add(1, Ordering::Relaxed);
        let namespaces = stats.namespaces();
        assert_eq!(
            namespaces.len(),
            MAX_NAMESPACES_PER_TENANT + 2,
            "the tenant's, its shared one and teama's"
        );
        let named =
            |name: &str| namespaces.iter().find(|(n, _)| n == name).map(|(_, counters)| Arc::clone(counters));
        let shared = named("pr-1/(other)").expect("the tenant's shared entry");
        assert_eq!(shared.go_hits.load(Ordering::Relaxed), 500 - MAX_NAMESPACES_PER_TENANT as u64);
        assert_eq!(named("teama").expect("teama's own entry").go_puts.load(Ordering::Relaxed), 1);
    }

    /// A `pr-*` token's calls into namespaces each of a tenant of their own took every entry.
    #[test]
    fn one_token_makes_at_most_a_tenants_share_of_the_entries() {
        let stats = Stats::default();
        crate::caller::run_as(Some(Arc::from("pr-builds")), || {
            for i in 0..300 {
                stats.namespace(&format!("pr-{i}")).go_hits.fetch_add(1, Ordering::Relaxed);
            }
        });
        crate::caller::run_as(Some(Arc::from("team-a")), || {
            stats.namespace("teama").go_puts.fetch_add(1, Ordering::Relaxed);
        });
        let namespaces = stats.namespaces();
        assert_eq!(namespaces.len(), MAX_NAMESPACES_PER_TENANT + 2, "the token's, (other) and teama's");
        let teama = namespaces.iter().find(|(name, _)| name == "teama").expect("teama's own entry");
        assert_eq!(teama.1.go_puts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn namespaces_past_the_cap_share_one_entry() {
        let stats = Stats::default();
        for i in 0..MAX_NAMESPACES + 50 {
            stats.namespace(&format!("pr-{i}")).go_hits.fetch_add(1, Ordering::Relaxed);
        }
        let namespaces = stats.namespaces();
        assert_eq!(namespaces.len(), MAX_NAMESPACES + 1);
        let other = namespaces.iter().find(|(name, _)| name == OTHER_NAMESPACES).expect("the shared entry");
        assert_eq!(other.1.go_hits.load(Ordering::Relaxed), 50);
        assert_eq!(stats.namespace("pr-0").go_hits.load(Ordering::Relaxed), 1, "known ones keep counting");
    }
}
