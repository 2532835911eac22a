//! The gRPC server: every service behind the connection, metrics and auth layers, over TCP or
//! TLS, serving until it is told to drain.

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
use tonic_health::server::HealthReporter;

use crate::builds::{BuildRecords, Builds};
use crate::cas::Cas;
use crate::config::Limits;
use crate::conn::Connections;
use crate::error::{Error, Result};
use crate::gocache::{GoCache, GoEntryStore};
use crate::metrics::Metrics;
use crate::scheduler::backend::SchedulerBackend;
use crate::scheduler::reuse::FinishedJobs;
use crate::service;
use crate::shutdown::Grpc;
use crate::stats::Stats;
use crate::store::{FreeSpace, StoreUsage};
use crate::{auth, conn, metrics, tls};

/// How long an HTTP/2 keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a peer may make the server reset on one connection before it is closed.
const MAX_LOCAL_RESETS: usize = 1024;

/// What the services serve.
pub struct Services {
    pub cas: Arc<Cas>,
    pub go_cache: Arc<GoCache>,
    pub builds: Arc<Builds>,
    pub scheduler: Arc<dyn SchedulerBackend>,
    pub stats: Arc<Stats>,
    pub usage: Arc<dyn StoreUsage>,
    pub space: Arc<FreeSpace>,
    pub go_entries: Arc<dyn GoEntryStore>,
    pub build_records: Arc<dyn BuildRecords>,
}

/// What every call passes through, outermost first.
pub struct Layers {
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<auth::AuthSettings>,
}

/// Starts serving `services` on `listener`; health checks say CAS and GoCache are serving.
pub async fn start(
    services: Services,
    layers: Layers,
    limits: &Limits,
    listener: TcpListener,
    tls: Option<Arc<tls::Tls>>,
) -> Result<(Grpc, HealthReporter)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CasServer<service::CasService>>().await;
    health.set_serving::<GoCacheServer<service::GoCacheService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| Error::Internal(format!("reflection service: {err}")))?;
    let Services { cas, go_cache, builds, scheduler, stats, usage, space, go_entries, build_records } =
        services;
    let finished = finished_jobs(&cas, &scheduler);
    let blobs = Arc::clone(cas.store());
    let max = limits.max_message_size;
    let router = tonic::transport::Server::builder()
        .http2_adaptive_window(Some(true))
        .max_concurrent_streams(limits.max_streams_per_connection)
        // tonic's default turns off h2's bound on streams a peer makes the server reset
        // (CVE-2025-8671, "MadeYouReset"); hyper's own default is 1024.
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        // Pings find connections whose peer vanished without closing them.
        .http2_keepalive_interval(Some(limits.idle_timeout))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(conn::WatchLayer::new(Arc::clone(&layers.connections)))
        .layer(metrics::GrpcMetricsLayer::new(layers.metrics))
        .layer(auth::AuthLayer::new(layers.auth))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            CasServer::new(service::CasService::new(cas, Arc::clone(&stats)))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            GoCacheServer::new(service::GoCacheService::new(go_cache, Arc::clone(&stats), limits.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            BuildsServer::new(service::BuildsService::new(builds, Arc::clone(&stats)))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(StatsServer::new(service::StatsService::new(stats, usage, space)))
        .add_service(
            JobsServer::new(service::JobsService::new(Arc::clone(&scheduler), finished))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            WorkersServer::new(service::WorkersService::new(Arc::clone(&scheduler), blobs))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(AdminServer::new(service::AdminService::new(go_entries, build_records, scheduler)));
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    let drained = async move {
        let _ = drained.await;
    };
    let connections = layers.connections;
    let serving: crate::shutdown::Serving = match tls {
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(tls::incoming(listener, tls, connections), drained))
        }
        None => {
            Box::pin(router.serve_with_incoming_shutdown(conn::incoming_tcp(listener, connections), drained))
        }
    };
    Ok((Grpc { serving, drain }, health))
}

/// What a shutdown does before the server drains: health checks stop calling the CAS
/// healthy, and the scheduler ends its watch and lease streams, which never end on their own
/// and would make draining wait out the grace period (leases survive in RocksDB; agents
/// reconnect).
pub fn stopping(
    health: HealthReporter,
    scheduler: Arc<dyn SchedulerBackend>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        health.set_not_serving::<CasServer<service::CasService>>().await;
        scheduler.shut_down();
    })
}

/// What job reuse knows, learning the jobs kept from before this start in the background.
fn finished_jobs(cas: &Arc<Cas>, scheduler: &Arc<dyn SchedulerBackend>) -> Arc<FinishedJobs> {
    let finished = Arc::new(FinishedJobs::new(Arc::clone(cas)));
    let (learning, scheduler) = (Arc::clone(&finished), Arc::clone(scheduler));
    crate::task::spawn("learn finished jobs", async move {
        if let Err(err) = learning.learn_kept(&*scheduler).await {
            tracing::warn!(error = %err, "finished jobs could not be read: jobs before this start are not reused");
        }
    })
    .detach();
    finished
}
