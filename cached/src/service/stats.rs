use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::v1;
use tonic::{Request, Response, Status};

use crate::auth::{self, Grant, NamespacePattern};
use crate::gocache::namespace;
use crate::shared::SharedCounters;
use crate::stats::{OTHER_NAMESPACES, Stats};
use crate::store::{FreeSpace, StoreUsage};

pub struct StatsService {
    stats: Arc<Stats>,
    store: Arc<dyn StoreUsage>,
    space: Arc<FreeSpace>,
}

impl StatsService {
    pub fn new(stats: Arc<Stats>, store: Arc<dyn StoreUsage>, space: Arc<FreeSpace>) -> Self {
        Self { stats, store, space }
    }
}

/// Whether `grant` may see the counters of `namespace`. The namespaces past the cap are
/// anyone's, so only a token that may use every namespace sees their sum.
fn may_see(grant: &Grant, namespace: &str) -> bool {
    if namespace == OTHER_NAMESPACES {
        return sees_everything(grant);
    }
    grant.allows_namespace(namespace)
}

/// Whether `grant` may use every namespace, and so see counters summed over all of them.
fn sees_everything(grant: &Grant) -> bool {
    grant.namespaces.contains(&NamespacePattern::Any)
}

fn shared_store(url: &str, counters: &SharedCounters) -> v1::SharedStoreStats {
    let now = counters.snapshot();
    v1::SharedStoreStats {
        url: url.to_owned(),
        reachable: now.reachable,
        local_hits: now.local_hits,
        shared_hits: now.shared_hits,
        shared_misses: now.shared_misses,
        fill_bytes: now.fill_bytes,
        uploads: now.uploads,
        upload_bytes: now.upload_bytes,
        corrupt_objects: now.corrupt_objects,
        errors: now.errors,
        requests: now.requests,
        request_nanos: (now.request_seconds_total * 1e9) as u64,
    }
}

/// The counters as the wire carries them, the namespaces limited to those `grant` covers;
/// `/metrics` renders the same numbers.
fn snapshot(stats: &Stats, store: &dyn StoreUsage, space: &FreeSpace, grant: &Grant) -> v1::StatsResponse {
    let totals = store.totals();
    let (evicted_blobs, evicted_bytes) = store.evictions();
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    v1::StatsResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: stats.uptime_seconds(),
        // Server-wide, as `apis` are: how much others store and evict is not theirs to see.
        store: sees_everything(grant).then(|| v1::StoreStats {
            blobs: totals.blobs,
            raw_bytes: totals.raw_bytes,
            stored_bytes: totals.stored_bytes,
            max_bytes: store.budget().max_bytes,
            evicted_blobs,
            evicted_bytes,
            go_entries_dropped: load(&stats.go_entries_dropped),
            disk_free_bytes: space.available().unwrap_or(0),
            min_free_bytes: space.floor(),
        }),
        // Counted over every namespace: another tenant's traffic is not a namespace-scoped
        // token's to see.
        apis: stats
            .apis()
            .into_iter()
            .filter(|_| sees_everything(grant))
            .map(|(api, c)| v1::ApiStats {
                api,
                requests: load(&c.requests),
                errors: load(&c.errors),
                hits: load(&c.hits),
                misses: load(&c.misses),
                bytes_in: load(&c.bytes_in),
                bytes_out: load(&c.bytes_out),
            })
            .collect(),
        shared_store: stats
            .shared_store
            .get()
            .filter(|_| sees_everything(grant))
            .map(|(url, counters)| shared_store(url, counters)),
        namespaces: stats
            .namespaces()
            .into_iter()
            .filter(|(namespace, _)| may_see(grant, namespace))
            .map(|(namespace, c)| v1::NamespaceStats {
                namespace,
                go_hits: load(&c.go_hits),
                go_misses: load(&c.go_misses),
                go_puts: load(&c.go_puts),
                client_sessions: load(&c.client_sessions),
                client_gets: load(&c.client_gets),
                client_local_hits: load(&c.client_local_hits),
                client_remote_hits: load(&c.client_remote_hits),
                client_misses: load(&c.client_misses),
                client_wait_nanos: load(&c.client_wait_nanos),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::stats_server::Stats for StatsService {
    async fn get(&self, request: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        let grant = auth::grant(request.extensions())?;
        Ok(Response::new(snapshot(&self.stats, &*self.store, &self.space, &grant)))
    }

    async fn report(
        &self,
        request: Request<v1::ReportRequest>,
    ) -> Result<Response<v1::ReportResponse>, Status> {
        let session = request.get_ref().session.clone().unwrap_or_default();
        let ns = namespace(&session.namespace)?;
        auth::check_namespace(request.extensions(), ns)?;
        let counters = self.stats.namespace(ns);
        let add = |counter: &std::sync::atomic::AtomicU64, value: u64| {
            counter.fetch_add(value, Ordering::Relaxed);
        };
        add(&counters.client_sessions, 1);
        add(&counters.client_gets, session.gets);
        add(&counters.client_local_hits, session.local_hits);
        add(&counters.client_remote_hits, session.remote_hits);
        add(&counters.client_misses, session.misses);
        add(&counters.client_wait_nanos, session.wait_nanos);
        Ok(Response::new(v1::ReportResponse {}))
    }
}
