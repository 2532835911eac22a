//! cached: a content-addressed store and Go action cache on RocksDB, served over gRPC.
//!
//! `run` is the whole server, so tests embed it with their own listener and shutdown signal.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod builds;
pub mod cas;
pub mod config;
pub mod conn;
pub mod db;
pub mod embedded;
pub mod error;
pub mod gocache;
pub mod metrics;
pub mod redact;
pub mod scheduler;
pub mod service;
pub mod signals;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::admin_server::AdminServer;
use proto::v1::builds_server::BuildsServer;
use proto::v1::cas_server::CasServer;
use proto::v1::go_cache_server::GoCacheServer;
use proto::v1::jobs_server::JobsServer;
use proto::v1::stats_server::StatsServer;
use proto::v1::workers_server::WorkersServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{
    FreeSpace, Metered, RocksStore, SharedStore, SpaceGuarded, StoreCounters, Verified, rocks_budget,
};

/// How long an HTTP/2 keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs cached on `listener` (and `/metrics` on `metrics_listener`) until `shutdown`
/// resolves, then drains and flushes. With `tokens`, SIGHUP reloads the tokens from it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tokens: Option<auth::TokenSource>,
) -> Result<()> {
    let listen = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    config::check_exposure(listen, !config.tokens.is_empty(), config.allow_anonymous)
        .map_err(Error::FailedPrecondition)?;
    if config.tokens.is_empty() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "serving without tokens beyond loopback (allow_anonymous): anyone who can connect may write the cache");
    }
    let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
    let auth = Arc::new(auth::AuthSettings::new(&config));
    let data_dir = config.data_dir.clone();
    let budget = rocks_budget(&config);
    let scheduler_settings = config.scheduler.clone();
    let (db, rocks, scheduler) = tokio::task::spawn_blocking(move || -> Result<_> {
        let db = db::open(&data_dir)?;
        let rocks = RocksStore::open(Arc::clone(&db), budget)?;
        let scheduler = scheduler::Scheduler::open(Arc::clone(&db), scheduler_settings)?;
        Ok((db, rocks, scheduler))
    })
    .await??;
    // Builds reach the cache with their lease's credential, which only the scheduler can vouch for.
    auth.attach_leases(scheduler.lease_keys(), Arc::clone(&scheduler) as Arc<dyn auth::LiveLeases>);
    let space = Arc::new(FreeSpace::new(config.data_dir.clone(), config.min_free_space));
    warn_if_the_disk_is_smaller(&config, &space, &rocks);
    let stats = Arc::new(stats::Stats::default());
    let store_counters = Arc::new(StoreCounters::default());
    let held = rocks.clone();
    let store: SharedStore = Arc::new(Metered::new(
        SpaceGuarded::new(
            Verified::new(rocks.clone()),
            Arc::clone(&space),
            Box::new(move || held.totals().stored_bytes),
        ),
        Arc::clone(&store_counters),
    ));
    let limits = config.limits.clone();
    let cas = Arc::new(cas::Cas::new(Arc::clone(&store), limits.clone()));
    let go_cache = gocache::GoCache::new(Arc::clone(&db), Arc::clone(&store), Arc::clone(&stats));
    let builds = {
        let (db, store, counters) = (Arc::clone(&db), Arc::clone(&store), Arc::clone(&stats.builds));
        let history = builds::History { max_bytes: config.max_build_history, space: Arc::clone(&space) };
        tokio::task::spawn_blocking(move || builds::Builds::new(db, store, counters, history)).await??
    };
    let connections = conn::Connections::new(conn::ConnLimits::from(&config.limits));
    let metrics = metrics::Metrics::new(
        Arc::clone(&stats),
        rocks.clone(),
        store_counters,
        Arc::clone(&space),
        Arc::clone(&connections),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(
        rocks.clone(),
        Arc::clone(&space),
        Arc::clone(&go_cache),
        config.maintenance_interval,
        stop_rx.clone(),
    ));
    let sweeper = tokio::spawn(Arc::clone(&scheduler).run_sweeper());
    let metrics_server = metrics_listener.map(|listener| {
        let mut stop = stop_rx.clone();
        tokio::spawn(metrics::serve(listener, Arc::clone(&metrics), async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }))
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CasServer<service::CasService>>().await;
    health.set_serving::<GoCacheServer<service::GoCacheService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| Error::Internal(format!("reflection service: {err}")))?;

    let max_message = limits.max_message_size;
    let idle_timeout = limits.idle_timeout;
    let router = tonic::transport::Server::builder()
        .http2_adaptive_window(Some(true))
        .max_concurrent_streams(limits.max_streams_per_connection)
        // Pings find connections whose peer vanished without closing them.
        .http2_keepalive_interval(Some(idle_timeout))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(conn::WatchLayer::new(Arc::clone(&connections)))
        .layer(metrics::GrpcMetricsLayer::new(metrics))
        .layer(auth::AuthLayer::new(Arc::clone(&auth)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            CasServer::new(service::CasService::new(cas, Arc::clone(&stats)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            GoCacheServer::new(service::GoCacheService::new(go_cache, Arc::clone(&stats), limits))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            BuildsServer::new(service::BuildsService::new(builds, Arc::clone(&stats)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(StatsServer::new(service::StatsService::new(stats, rocks.clone(), Arc::clone(&space))))
        .add_service(
            JobsServer::new(service::JobsService::new(Arc::clone(&scheduler)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            WorkersServer::new(service::WorkersService::new(Arc::clone(&scheduler)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(AdminServer::new(service::AdminService::new(Arc::clone(&db))));

    tracing::info!(
        %listen,
        data_dir = %config.data_dir.display(),
        max_size = config.max_size,
        tls = tls.as_ref().map_or("off", |tls| if tls.is_mutual() { "mTLS" } else { "TLS" }),
        tokens = auth.token_count(),
        "cached is serving"
    );
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let drained = async move {
        let _ = drain_rx.await;
    };
    let reload =
        tls.as_ref().map(|tls| tokio::spawn(tls::reload_on_sighup(Arc::clone(tls), stop_rx.clone())));
    let reload_tokens = tokens.map(|source| {
        let (auth, stop) = (Arc::clone(&auth), stop_rx.clone());
        tokio::spawn(auth::reload::reload_on_sighup(auth, source, listen, config.allow_anonymous, stop))
    });
    let mut serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(tls::incoming(listener, tls, connections), drained))
        }
        None => {
            Box::pin(router.serve_with_incoming_shutdown(conn::incoming_tcp(listener, connections), drained))
        }
    };
    tokio::select! {
        result = &mut serve => result.map_err(|err| Error::Internal(format!("gRPC server failed: {err}")))?,
        () = shutdown => {
            health.set_not_serving::<CasServer<service::CasService>>().await;
            // Watch and lease streams never end on their own: end them so draining does not
            // wait out the grace period. Leases survive in RocksDB; agents reconnect.
            scheduler.shut_down();
            let _ = drain_tx.send(());
            match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                Ok(result) => result.map_err(|err| Error::Internal(format!("gRPC server failed: {err}")))?,
                Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "grace period over; cutting off the streams still running"),
            }
        }
    }
    let _ = stop_tx.send(true);
    scheduler.shut_down();
    let _ = sweeper.await;
    let _ = housekeeping.await;
    for reload in reload.into_iter().chain(reload_tokens) {
        let _ = reload.await;
    }
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    tokio::task::spawn_blocking(move || rocks.flush()).await??;
    tracing::info!("store flushed; stopped");
    Ok(())
}

/// Says so at start-up when `max_size` cannot fit on the disk: the free-space floor, not the
/// budget, will then decide what the store keeps.
fn warn_if_the_disk_is_smaller(config: &Config, space: &FreeSpace, rocks: &RocksStore) {
    // A disk whose free space cannot be read shows in the first upload's error, not here.
    let Some(free) = (space.floor() > 0).then(|| space.available().ok()).flatten() else { return };
    let room = free.saturating_sub(space.floor()) + rocks.totals().stored_bytes;
    if config.max_size > room {
        tracing::warn!(
            max_size = config.max_size,
            room,
            min_free_space = space.floor(),
            data_dir = %config.data_dir.display(),
            "max_size is more than the disk has room for: the store will be held to the free-space \
             floor (min_free_space) instead; lower max_size to make eviction predictable"
        );
    }
}

/// Go entries looked at per housekeeping round for blobs that are gone: a bounded amount of
/// work (a few hundred milliseconds) however large the action cache is.
const DANGLING_SWEEP_PER_ROUND: usize = 100_000;

/// Every `interval`: persists access times and evicts past the high watermark or below the
/// free-space floor, then drops the next slice of Go entries whose blob is gone.
async fn housekeeping(
    store: RocksStore,
    space: Arc<FreeSpace>,
    go_cache: Arc<gocache::GoCache>,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let (store, space, go_cache, mut slice) =
            (store.clone(), Arc::clone(&space), Arc::clone(&go_cache), std::mem::take(&mut cursor));
        // A failed step is logged and the others still run; the sweep keeps its place.
        let round = tokio::task::spawn_blocking(move || {
            if let Err(err) = store.maintain() {
                tracing::warn!(error = %err, "store housekeeping failed");
            }
            if let Err(err) = store::reclaim(&store, &space) {
                tracing::warn!(error = %err, "freeing disk space failed");
            }
            match go_cache.sweep_dangling(&mut slice, DANGLING_SWEEP_PER_ROUND) {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, "dropped Go entries whose blob was evicted"),
                Err(err) => tracing::warn!(error = %err, "sweeping Go entries failed"),
            }
            slice
        });
        match round.await {
            Ok(next) => cursor = next,
            Err(err) => tracing::warn!(error = %err, "store housekeeping panicked"),
        }
    }
}
