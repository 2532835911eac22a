//! cached: a content-addressed store and Go action cache on RocksDB, served over gRPC.
//!
//! `run` is the whole server, so tests embed it with their own listener and shutdown signal.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod builds;
pub mod caller;
pub mod cas;
pub mod config;
pub mod conn;
pub mod db;
pub mod embedded;
pub mod error;
pub mod gocache;
pub mod metrics;
pub mod postgres;
pub mod redact;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod shared;
pub mod shares;
pub mod shutdown;
pub mod signals;
pub mod stats;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::backend::Backends;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::scheduler::backend::SchedulerBackend;
use crate::scheduler::gauges::QueueGauges;
use crate::shutdown::Tasks;
use crate::store::{FreeSpace, SharedStore, StoreCounters, StoreUsage, rocks_budget};

/// The sockets cached serves on.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub metrics: Option<tokio::net::TcpListener>,
    /// The OCI registry's, with `registry_listen`.
    pub registry: Option<tokio::net::TcpListener>,
}

/// Runs cached on `listeners` until `shutdown` resolves, then stops in order (`shutdown`).
/// With `tokens`, SIGHUP reloads the tokens from it.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tokens: Option<auth::TokenSource>,
) -> Result<()> {
    let listen = check_listeners(&config, &listeners)?;
    let Listeners { grpc: listener, metrics: metrics_listener, registry: registry_listener } = listeners;
    let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
    let auth = Arc::new(auth::AuthSettings::new(&config));
    let (backends, scheduler) = open_records(&config).await?;
    // Builds reach the cache with their lease's credential, which only the scheduler can vouch for.
    auth.attach_leases(scheduler.lease_keys(), Arc::clone(&scheduler) as Arc<dyn auth::LiveLeases>);
    let space = free_space(&config, &*backends.usage);
    let (stats, store_counters) = (Arc::new(stats::Stats::default()), Arc::new(StoreCounters::default()));
    if let Some(bucket) = &backends.shared {
        let _ = stats.shared_store.set((bucket.url().to_owned(), Arc::clone(&bucket.counters)));
    }
    let store = store::layered(&backends.blobs, backends.shared.as_ref(), &space, &store_counters);
    let cas = Arc::new(cas::Cas::new(Arc::clone(&store), config.limits.clone()));
    let go_cache = gocache::GoCache::new(
        Arc::clone(&backends.go_entries),
        Arc::clone(&store),
        Arc::clone(&stats),
        Arc::clone(&space),
    );
    let builds = open_builds(&config, &backends, store, &stats, &space).await?;
    let connections = conn::Connections::new(conn::ConnLimits::from(&config.limits));
    let (metrics, queue) = new_metrics(&stats, &backends, store_counters, &space, &connections, tls.clone());
    let (mut servers, mut background) = (Tasks::default(), Tasks::default());
    if let Some(listener) = metrics_listener {
        spawn_metrics_server(&mut servers, listener, Arc::clone(&metrics));
    }
    spawn_housekeeping(&mut background, &config, &backends, &space, &go_cache);
    spawn_scheduler_tasks(&mut background, &scheduler, queue);
    spawn_reloads(&mut background, tls.as_ref(), tokens, &auth, listen, config.allow_anonymous);
    let services = new_services((cas, go_cache, builds), &scheduler, stats, space, &backends);
    let layers = server::Layers { connections, metrics, auth: Arc::clone(&auth) };
    if let Some(listener) = registry_listener {
        let tasks = (&mut servers, &mut background);
        start_registry(tasks, listener, &config, &backends, &services, &layers, tls.clone())?;
    }
    follow_purges(&mut background, &config, &backends, &scheduler).await;
    let (grpc, health) = server::start(services, layers, &config.limits, listener, tls.clone()).await?;
    if let Some(bucket) = &backends.shared {
        let watch = shared::health::watch(Arc::clone(bucket), health.clone(), background.stop_signal());
        background.spawn("shared store health", watch);
    }
    announce(&config, listen, tls.as_deref(), &auth);
    let ordered = shutdown::Ordered {
        grace: config.shutdown_grace,
        before_drain: server::stopping(health, scheduler),
        servers,
        background,
        flush: Box::new(move || backends.upkeep.flush()),
    };
    ordered.serve_until(grpc, shutdown).await
}

/// With a shared bucket: drops the local entries of namespaces purged through other replicas
/// (and, without a database, this replica's own build records and jobs of them), first before
/// serving, then in the background.
async fn follow_purges(
    background: &mut Tasks,
    config: &Config,
    backends: &Backends,
    scheduler: &Arc<dyn SchedulerBackend>,
) {
    let Some(follower) = &backends.purges else { return };
    let records = config.database.is_none().then(|| shared::purges::LocalRecords {
        build_records: Arc::clone(&backends.build_records),
        scheduler: Arc::clone(scheduler),
    });
    if let Err(err) = shared::purges::catch_up(follower, records.as_ref()).await {
        tracing::warn!(error = %err, "could not look for purges through other replicas yet");
    }
    background.spawn(
        "follow purges",
        shared::purges::follow(Arc::clone(follower), records, background.stop_signal()),
    );
}

/// The metrics, and the queue gauges they show, which the scheduler's task keeps current.
fn new_metrics(
    stats: &Arc<stats::Stats>,
    backends: &Backends,
    store_counters: Arc<StoreCounters>,
    space: &Arc<FreeSpace>,
    connections: &Arc<conn::Connections>,
    tls: Option<Arc<tls::Tls>>,
) -> (Arc<metrics::Metrics>, Arc<QueueGauges>) {
    let queue = Arc::new(QueueGauges::default());
    let sources = metrics::Sources {
        store: Arc::clone(&backends.usage),
        store_counters,
        space: Arc::clone(space),
        connections: Arc::clone(connections),
        queue: Arc::clone(&queue),
        tls,
    };
    (metrics::Metrics::new(Arc::clone(stats), sources), queue)
}

fn new_services(
    (cas, go_cache, builds): (Arc<cas::Cas>, Arc<gocache::GoCache>, Arc<builds::Builds>),
    scheduler: &Arc<dyn SchedulerBackend>,
    stats: Arc<stats::Stats>,
    space: Arc<FreeSpace>,
    backends: &Backends,
) -> server::Services {
    server::Services {
        cas,
        go_cache,
        builds,
        scheduler: Arc::clone(scheduler),
        stats,
        usage: Arc::clone(&backends.usage),
        space,
        go_entries: Arc::clone(&backends.go_entries),
        build_records: Arc::clone(&backends.build_records),
    }
}

/// Checks each listener's address against the exposure rules; the gRPC listener's address.
fn check_listeners(config: &Config, listeners: &Listeners) -> Result<SocketAddr> {
    let address = |listener: &tokio::net::TcpListener| {
        listener.local_addr().map_err(|e| Error::Internal(e.to_string()))
    };
    let listen = address(&listeners.grpc)?;
    check_exposure(config, listen)?;
    if let Some(registry) = &listeners.registry {
        check_exposure(config, address(registry)?)?;
    }
    Ok(listen)
}

/// Refuses to serve beyond loopback without tokens unless allowed, and warns when allowed.
fn check_exposure(config: &Config, listen: SocketAddr) -> Result<()> {
    config::check_exposure(listen, !config.tokens.is_empty(), config.allow_anonymous)
        .map_err(Error::FailedPrecondition)?;
    if config.tokens.is_empty() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "serving without tokens beyond loopback (allow_anonymous): anyone who can connect may write the cache");
    }
    Ok(())
}

/// Opens the stores and the scheduler with its stored jobs: all in the local RocksDB, or with
/// `database_url` the jobs and build records in PostgreSQL.
async fn open_records(config: &Config) -> Result<(Backends, Arc<dyn SchedulerBackend>)> {
    let data_dir = config.data_dir.clone();
    let budget = rocks_budget(config);
    let max_go_entries = config.max_go_entries;
    let scheduler_settings = config.scheduler.clone();
    let local = config.database.is_none();
    let shared = config
        .shared_store
        .as_ref()
        .map(|settings| shared::Bucket::open(settings, tokio::runtime::Handle::current()))
        .transpose()?;
    let (mut backends, scheduler) = crate::task::spawn_blocking("open stores", move || -> Result<_> {
        let mut backends = Backends::open_rocksdb(&data_dir, budget, max_go_entries)?;
        if let Some(bucket) = shared {
            backends = backends.with_shared_store(bucket, &data_dir);
        }
        let scheduler = local
            .then(|| scheduler::Scheduler::open(Arc::clone(&backends.jobs), scheduler_settings))
            .transpose()?;
        Ok((backends, scheduler))
    })
    .await??;
    if let Some(scheduler) = scheduler {
        return Ok((backends, scheduler));
    }
    let settings = config.database.as_ref().expect("no local scheduler without a database");
    let scheduler = postgres::attach(settings, &mut backends, config.scheduler.clone()).await?;
    Ok((backends, scheduler))
}

/// The whole-build cache, with its event log pruned as it opens (blocking).
async fn open_builds(
    config: &Config,
    backends: &Backends,
    store: SharedStore,
    stats: &stats::Stats,
    space: &Arc<FreeSpace>,
) -> Result<Arc<builds::Builds>> {
    let (records, counters) = (Arc::clone(&backends.build_records), Arc::clone(&stats.builds));
    let history = builds::History {
        max_bytes: config.max_build_history,
        max_record_bytes: config.max_build_records,
        space: Arc::clone(space),
    };
    crate::task::spawn_blocking("open builds", move || builds::Builds::new(records, store, counters, history))
        .await?
}

fn spawn_housekeeping(
    background: &mut Tasks,
    config: &Config,
    backends: &Backends,
    space: &Arc<FreeSpace>,
    go_cache: &Arc<gocache::GoCache>,
) {
    let (upkeep, space, go_cache) = (Arc::clone(&backends.upkeep), Arc::clone(space), Arc::clone(go_cache));
    let stop = background.stop_signal();
    let schedule = store::housekeeping::Schedule::new(config.maintenance_interval, config.scrub_rate);
    let rounds = store::housekeeping::run(upkeep, space, go_cache, schedule, stop);
    background.spawn("housekeeping", rounds);
}

fn spawn_metrics_server(
    servers: &mut Tasks,
    listener: tokio::net::TcpListener,
    metrics: Arc<metrics::Metrics>,
) {
    let serve = metrics::serve(listener, metrics, servers.stopped());
    servers.spawn("metrics server", async move {
        if let Err(err) = serve.await {
            tracing::warn!(error = %err, "the metrics server failed");
        }
    });
}

/// The lease sweeper (and, with a database, this replica's dispatcher) and the queue gauges.
fn spawn_scheduler_tasks(
    background: &mut Tasks,
    scheduler: &Arc<dyn SchedulerBackend>,
    queue: Arc<QueueGauges>,
) {
    background.spawn("lease sweeper", Arc::clone(scheduler).run_sweeper());
    let gauges = scheduler::gauges::refresh(Arc::clone(scheduler), queue, background.stop_signal());
    background.spawn("queue gauges", gauges);
}

/// The OCI registry on its own listener, and the expiry of its abandoned uploads.
fn start_registry(
    (servers, background): (&mut Tasks, &mut Tasks),
    listener: tokio::net::TcpListener,
    config: &Config,
    backends: &Backends,
    services: &server::Services,
    layers: &server::Layers,
    tls: Option<Arc<tls::Tls>>,
) -> Result<()> {
    let registry = registry::Registry::new(
        config.registry.as_ref().expect("a registry listener only with registry settings"),
        &config.data_dir,
        Arc::clone(&backends.registry),
        Arc::clone(&services.cas),
        Arc::clone(&layers.auth),
        Arc::clone(&layers.metrics),
        tls.is_some(),
    )?;
    background
        .spawn("registry upload expiry", Arc::clone(&registry).expire_uploads(background.stop_signal()));
    // The registry's connections count against caps of their own: a docker pull opening a few
    // connections does not take them from the same host's builds.
    let connections = conn::Connections::new(conn::ConnLimits::from(&config.limits));
    spawn_registry_server(servers, listener, registry, tls, connections);
    Ok(())
}

fn spawn_registry_server(
    servers: &mut Tasks,
    listener: tokio::net::TcpListener,
    registry: Arc<registry::Registry>,
    tls: Option<Arc<tls::Tls>>,
    connections: Arc<conn::Connections>,
) {
    let serve = registry::serve(listener, registry, tls, connections, servers.stopped());
    servers.spawn("registry server", async move {
        if let Err(err) = serve.await {
            tracing::warn!(error = %err, "the registry server failed");
        }
    });
}

/// SIGHUP reloads the TLS identity (with TLS) and the tokens (with a token source).
fn spawn_reloads(
    background: &mut Tasks,
    tls: Option<&Arc<tls::Tls>>,
    tokens: Option<auth::TokenSource>,
    auth: &Arc<auth::AuthSettings>,
    listen: SocketAddr,
    allow_anonymous: bool,
) {
    if let Some(tls) = tls {
        background.spawn("TLS reload", tls::reload_on_sighup(Arc::clone(tls), background.stop_signal()));
    }
    if let Some(source) = tokens {
        let reload = auth::reload::reload_on_sighup(
            Arc::clone(auth),
            source,
            listen,
            allow_anonymous,
            background.stop_signal(),
        );
        background.spawn("token reload", reload);
    }
}

fn announce(config: &Config, listen: SocketAddr, tls: Option<&tls::Tls>, auth: &auth::AuthSettings) {
    tracing::info!(
        %listen,
        data_dir = %config.data_dir.display(),
        max_size = config.max_size,
        tls = tls.map_or("off", |tls| if tls.is_mutual() { "mTLS" } else { "TLS" }),
        tokens = auth.token_count(),
        "cached is serving"
    );
}

/// The free-space guard of the data directory, with a warning when `max_size` cannot fit there.
fn free_space(config: &Config, usage: &dyn StoreUsage) -> Arc<FreeSpace> {
    let space = Arc::new(
        FreeSpace::new(config.data_dir.clone(), config.min_free_space)
            .with_pending_cap(config.limits.max_upload_bytes_per_token),
    );
    warn_if_the_disk_is_smaller(config, &space, usage);
    space
}

/// Says so at start-up when `max_size` cannot fit on the disk: the free-space floor, not the
/// budget, will then decide what the store keeps.
fn warn_if_the_disk_is_smaller(config: &Config, space: &FreeSpace, usage: &dyn StoreUsage) {
    // A disk whose free space cannot be read shows in the first upload's error, not here.
    let Some(free) = (space.floor() > 0).then(|| space.available().ok()).flatten() else { return };
    let room = free.saturating_sub(space.floor()) + usage.totals().stored_bytes;
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
