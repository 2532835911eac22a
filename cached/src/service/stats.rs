use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::v1;
use tonic::{Request, Response, Status};

use crate::stats::Stats;
use crate::store::RocksStore;

pub struct StatsService {
    stats: Arc<Stats>,
    store: RocksStore,
}

impl StatsService {
    pub fn new(stats: Arc<Stats>, store: RocksStore) -> Self {
        Self { stats, store }
    }
}

/// The counters as the wire carries them; `/metrics` renders the same numbers.
fn snapshot(stats: &Stats, store: &RocksStore) -> v1::StatsResponse {
    let totals = store.totals();
    let (evicted_blobs, evicted_bytes) = store.evictions();
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    v1::StatsResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: stats.uptime_seconds(),
        store: Some(v1::StoreStats {
            blobs: totals.blobs,
            raw_bytes: totals.raw_bytes,
            stored_bytes: totals.stored_bytes,
            max_bytes: store.budget().max_bytes,
            evicted_blobs,
            evicted_bytes,
            go_entries_dropped: load(&stats.go_entries_dropped),
        }),
        apis: stats
            .apis()
            .into_iter()
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
        namespaces: stats
            .namespaces()
            .into_iter()
            .map(|(namespace, c)| v1::NamespaceStats {
                namespace,
                go_hits: load(&c.go_hits),
                go_misses: load(&c.go_misses),
                go_puts: load(&c.go_puts),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::stats_server::Stats for StatsService {
    async fn get(&self, _request: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        Ok(Response::new(snapshot(&self.stats, &self.store)))
    }
}
