//! Prometheus metrics: a tower layer that times every gRPC call and counts it by method and
//! status, a collector that exports the stats counters at scrape time, and `/metrics`.
//!
//! Every label value comes from a fixed set or a capped one, never straight from a caller:
//! methods from the method table (any other path is `other`, refused calls included),
//! namespaces capped in `stats` and `builds::counters`, miss causes from a fixed list.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::Frame;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::conn::Connections;
use crate::scheduler::gauges::QueueGauges;
use crate::stats::{ApiCounters, Stats};
use crate::store::{FreeSpace, StoreCounters, StoreUsage};
use crate::tls::Tls;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// Labels of a registry request: its kind and method from fixed sets, its HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    registry_requests: Family<RegistryLabels, Counter>,
    registry_latency: Family<RouteLabels, Histogram>,
    stats: Arc<Stats>,
}

/// What the scrape-time collector reads, besides the stats.
pub struct Sources {
    pub store: Arc<dyn StoreUsage>,
    pub store_counters: Arc<StoreCounters>,
    pub space: Arc<FreeSpace>,
    pub connections: Arc<Connections>,
    pub queue: Arc<QueueGauges>,
    pub tls: Option<Arc<Tls>>,
}

impl Metrics {
    pub fn new(stats: Arc<Stats>, sources: Sources) -> Arc<Self> {
        let mut registry = Registry::with_prefix("cached");
        let requests = Family::<CallLabels, Counter>::default();
        registry.register("grpc_requests", "gRPC calls by method and status code", requests.clone());
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to about 27 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call duration until the last byte of the response, by method",
            latency.clone(),
        );
        let registry_requests = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "OCI registry requests by kind (route), method and HTTP status",
            registry_requests.clone(),
        );
        let registry_latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "registry_request_duration_seconds",
            "OCI registry request duration until the response starts, by kind",
            registry_latency.clone(),
        );
        registry.register_collector(Box::new(StatsCollector { stats: Arc::clone(&stats), sources }));
        Arc::new(Self { registry, requests, latency, registry_requests, registry_latency, stats })
    }

    /// The counters behind the metrics, for those who add to them.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => text,
            Err(err) => format!("# encoding metrics failed: {err}\n"),
        }
    }

    /// One registry request: `route` and `method` come from fixed sets, `status` is an HTTP
    /// status (a few dozen at most).
    pub fn observe_registry(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.registry_requests.get_or_create(&RegistryLabels { route, method, status }).inc();
        self.registry_latency.get_or_create(&RouteLabels { route }).observe(elapsed.as_secs_f64());
        // `cachectl stats` lists them beside the gRPC APIs, as `Registry.blobs` and so on.
        let counters = self.stats.api(&format!("Registry.{route}"));
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 400 {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `api` is a label from [`crate::stats::api_label`]: one of a fixed set.
    fn observe(&self, api: &'static str, code: tonic::Code, elapsed: f64) {
        self.requests.get_or_create(&CallLabels { method: api, code: format!("{code:?}") }).inc();
        self.latency.get_or_create(&MethodLabels { method: api }).observe(elapsed);
        let counters = self.stats.api(api);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if code != tonic::Code::Ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

struct StatsCollector {
    stats: Arc<Stats>,
    sources: Sources,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(value as i64);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter family labelled by `label`, one sample per `(label value, count)`.
fn labelled<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl Iterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, count) in samples {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let apis = self.stats.apis();
        let api_field = |field: fn(&ApiCounters) -> &AtomicU64| {
            apis.iter().map(move |(name, counters)| (name.as_str(), load(field(counters))))
        };
        labelled(
            &mut encoder,
            "hits",
            "lookups that found what they asked for",
            "api",
            api_field(|c| &c.hits),
        )?;
        labelled(&mut encoder, "misses", "lookups that did not", "api", api_field(|c| &c.misses))?;
        labelled(
            &mut encoder,
            "bytes_in",
            "uncompressed bytes stored, by API",
            "api",
            api_field(|c| &c.bytes_in),
        )?;
        labelled(
            &mut encoder,
            "bytes_out",
            "uncompressed bytes served, by API",
            "api",
            api_field(|c| &c.bytes_out),
        )?;

        let namespaces = self.stats.namespaces();
        let ns_field = |field: fn(&crate::stats::NamespaceCounters) -> &AtomicU64| {
            namespaces.iter().map(move |(name, counters)| (name.as_str(), load(field(counters))))
        };
        labelled(&mut encoder, "go_hits", "Go action cache hits", "namespace", ns_field(|c| &c.go_hits))?;
        labelled(
            &mut encoder,
            "go_misses",
            "Go action cache misses",
            "namespace",
            ns_field(|c| &c.go_misses),
        )?;
        labelled(
            &mut encoder,
            "go_puts",
            "Go action entries recorded",
            "namespace",
            ns_field(|c| &c.go_puts),
        )?;
        labelled(
            &mut encoder,
            "client_gets",
            "lookups clients reported (Stats.Report), whichever tier answered",
            "namespace",
            ns_field(|c| &c.client_gets),
        )?;
        labelled(
            &mut encoder,
            "client_local_hits",
            "lookups clients answered from their local tier",
            "namespace",
            ns_field(|c| &c.client_local_hits),
        )?;
        labelled(
            &mut encoder,
            "client_remote_hits",
            "lookups clients answered from cached",
            "namespace",
            ns_field(|c| &c.client_remote_hits),
        )?;

        let store = &self.sources.store_counters;
        counter(
            &mut encoder,
            "store_read_bytes",
            "compressed bytes read from the store",
            load(&store.read_bytes),
        )?;
        counter(
            &mut encoder,
            "store_written_bytes",
            "compressed bytes written to the store",
            load(&store.written_bytes),
        )?;
        counter(&mut encoder, "store_commits", "uploads verified and committed", load(&store.commits))?;
        counter(
            &mut encoder,
            "store_duplicate_uploads",
            "verified uploads discarded because another upload of the digest committed first",
            load(&store.duplicate_commits),
        )?;
        let (evicted_blobs, evicted_bytes) = self.sources.store.evictions();
        counter(
            &mut encoder,
            "evicted_blobs",
            "blobs evicted to stay within max_size and keep min_free_space free",
            evicted_blobs,
        )?;
        counter(&mut encoder, "evicted_bytes", "stored bytes evicted", evicted_bytes)?;
        let scrubbed = self.sources.store.scrubbed();
        counter(
            &mut encoder,
            "scrubbed_bytes",
            "stored bytes read back by the scrub and checked against their digests",
            scrubbed.checked_bytes,
        )?;
        counter(
            &mut encoder,
            "scrub_removed_blobs",
            "blobs the scrub found rotten at rest and removed",
            scrubbed.removed_blobs,
        )?;
        counter(
            &mut encoder,
            "go_entries_dropped",
            "Go entries removed because their blob was evicted",
            load(&self.stats.go_entries_dropped),
        )?;
        counter(
            &mut encoder,
            "go_entries_forgotten",
            "Go entries forgotten (the oldest of the namespaces holding the most) to stay within max_go_entries",
            load(&self.stats.go_entries_forgotten),
        )?;
        gauge(
            &mut encoder,
            "go_entries",
            "Go entries counted against max_go_entries (puts since removed count until forgotten)",
            load(&self.stats.go_entries),
        )?;
        gauge(
            &mut encoder,
            "registry_record_bytes",
            "bytes of registry records (blob links, manifests, tags) counted against max_registry_records",
            load(&self.stats.registry_record_bytes),
        )?;
        counter(
            &mut encoder,
            "registry_records_forgotten",
            "registry records forgotten, oldest first, to stay within max_registry_records",
            load(&self.stats.registry_records_forgotten),
        )?;
        encode_builds(&mut encoder, &self.stats.builds)?;
        if let Some((_, shared)) = self.stats.shared_store.get() {
            encode_shared_store(&mut encoder, &shared.snapshot())?;
        }

        encode_queue(&mut encoder, &self.sources.queue)?;
        if let Some(tls) = &self.sources.tls {
            gauge(
                &mut encoder,
                "tls_certificate_expiry_timestamp_seconds",
                "when the certificate cached serves expires (seconds since the epoch; follows reloads)",
                u64::try_from(tls.not_after()).unwrap_or(0),
            )?;
        }
        let totals = self.sources.store.totals();
        gauge(&mut encoder, "stored_blobs", "blobs in the store", totals.blobs)?;
        gauge(&mut encoder, "stored_raw_bytes", "uncompressed bytes of the stored blobs", totals.raw_bytes)?;
        gauge(&mut encoder, "stored_bytes", "bytes the stored blobs take (compressed)", totals.stored_bytes)?;
        gauge(
            &mut encoder,
            "max_bytes",
            "the byte budget (max_size)",
            self.sources.store.budget().max_bytes,
        )?;
        if let Ok(free) = self.sources.space.available() {
            gauge(&mut encoder, "disk_free_bytes", "bytes free on the data directory's disk", free)?;
        }
        gauge(
            &mut encoder,
            "min_free_bytes",
            "free space kept on that disk (min_free_space): below it uploads are refused",
            self.sources.space.floor(),
        )?;
        let connections = &self.sources.connections;
        gauge(&mut encoder, "open_connections", "gRPC connections open", connections.open() as u64)?;
        counter(
            &mut encoder,
            "connections_refused",
            "connections closed at accept: the listener was at max_connections, or the peer at max_connections_per_peer or max_handshakes_per_peer",
            connections.refused(),
        )?;
        counter(
            &mut encoder,
            "connections_cut",
            "connections closed because a response stream's client stopped reading (idle_timeout, min_transfer_rate)",
            connections.cut(),
        )?;
        gauge(&mut encoder, "uptime_seconds", "seconds since start", self.stats.uptime_seconds())
    }
}

/// The remote-build queue, as last read from the scheduler (every few seconds).
fn encode_queue(encoder: &mut DescriptorEncoder, queue: &QueueGauges) -> std::fmt::Result {
    gauge(
        encoder,
        "scheduler_queued_tasks",
        "build and image-index tasks waiting for an agent (every replica's, with a database)",
        queue.queued_tasks(),
    )?;
    gauge(
        encoder,
        "scheduler_oldest_queued_seconds",
        "how long the oldest job with a queued task has waited since it was submitted (0: none queued)",
        queue.oldest_queued_seconds(),
    )?;
    gauge(encoder, "scheduler_agents", "runner agents connected to this replica", queue.agents())
}

/// Whole-build counters since start-up: lookups by result, misses by cause, records, bytes and
/// the build time hits saved, per namespace.
fn encode_builds(encoder: &mut DescriptorEncoder, builds: &crate::builds::BuildCounters) -> std::fmt::Result {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let namespaces = builds.namespaces();
    let mut lookups = encoder.encode_descriptor(
        "build_lookups",
        "whole-build lookups (cachectl go build) by namespace and result",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for (namespace, counters) in &namespaces {
        for (result, value) in [("hit", load(&counters.hits)), ("miss", load(&counters.misses))] {
            let labels = [("namespace", namespace.as_str()), ("result", result)];
            ConstCounter::new(value).encode(lookups.encode_family(&labels)?)?;
        }
    }
    let causes = builds.causes();
    let mut family = encoder.encode_descriptor(
        "build_miss_causes",
        "whole-build misses by cause category (a miss can have several)",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for (namespace, cause, value) in &causes {
        let labels = [("namespace", namespace.as_str()), ("cause", *cause)];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    let field = |f: fn(&crate::builds::BuildNamespaceCounters) -> &AtomicU64| {
        namespaces.iter().map(move |(name, counters)| (name.as_str(), load(f(counters))))
    };
    labelled(encoder, "build_records", "successful builds recorded", "namespace", field(|c| &c.records))?;
    labelled(
        encoder,
        "build_bytes_served",
        "uncompressed output bytes of whole-build hits",
        "namespace",
        field(|c| &c.bytes_served),
    )?;
    labelled(
        encoder,
        "build_bytes_stored",
        "uncompressed output bytes of recorded builds",
        "namespace",
        field(|c| &c.bytes_stored),
    )?;
    let mut saved = encoder.encode_descriptor(
        "build_time_saved_seconds",
        "recorded build durations of the builds that hit",
        None,
        ConstCounter::new(0f64).metric_type(),
    )?;
    for (namespace, counters) in &namespaces {
        let labels = [("namespace", namespace.as_str())];
        ConstCounter::new(load(&counters.time_saved_ms) as f64 / 1000.0)
            .encode(saved.encode_family(&labels)?)?;
    }
    counter(
        encoder,
        "build_entries_dropped",
        "build entries removed because an output blob was evicted",
        load(&builds.entries_dropped),
    )?;
    counter(
        encoder,
        "build_records_forgotten",
        "recorded builds forgotten, oldest first, to stay within max_build_records",
        load(&builds.records_forgotten),
    )?;
    gauge(
        encoder,
        "build_record_bytes",
        "bytes of recorded builds (entries and manifests) counted against max_build_records",
        load(&builds.record_bytes),
    )
}

/// Tower layer that records every gRPC call's method, status and duration.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, metrics: Arc::clone(&self.metrics) }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut recorder = Recorder {
            api: crate::stats::api_label(request.uri().path()),
            started: Instant::now(),
            code: None,
            metrics: Some(Arc::clone(&self.metrics)),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            // A trailers-only response (every unary error) carries the status in its headers.
            recorder.code = grpc_code(response.headers());
            Ok(response.map(|inner| MeteredBody { inner, recorder }))
        })
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// Records the call once: when the body has sent its trailers, or when it is dropped (a
/// client that went away counts as Cancelled).
struct Recorder {
    api: &'static str,
    started: Instant,
    code: Option<tonic::Code>,
    metrics: Option<Arc<Metrics>>,
}

impl Recorder {
    fn finish(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            let code = self.code.unwrap_or(tonic::Code::Cancelled);
            metrics.observe(self.api, code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project_lite::pin_project! {
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        recorder: Recorder,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.recorder.code = Some(code);
                    this.recorder.finish();
                }
            }
            Poll::Ready(None) => {
                this.recorder.code.get_or_insert(tonic::Code::Ok);
                this.recorder.finish();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The shared tier, per tier: reads each answered, bytes each way, request latency, and
/// whether the bucket answers.
fn encode_shared_store(
    encoder: &mut DescriptorEncoder,
    now: &crate::shared::SharedSnapshot,
) -> std::fmt::Result {
    labelled(
        encoder,
        "tier_blob_hits",
        "blob reads answered, by tier: local (RocksDB) or shared (the bucket, filling the local tier)",
        "tier",
        [("local", now.local_hits), ("shared", now.shared_hits)].into_iter(),
    )?;
    counter(
        encoder,
        "shared_store_misses",
        "local misses the bucket did not hold either",
        now.shared_misses,
    )?;
    counter(
        encoder,
        "shared_store_lookups_skipped",
        "local misses not asked of the bucket: their token was over max_shared_lookups",
        now.lookups_skipped,
    )?;
    counter(
        encoder,
        "shared_store_fill_bytes",
        "stored bytes read from the bucket into the local tier",
        now.fill_bytes,
    )?;
    counter(encoder, "shared_store_uploads", "blobs written through to the bucket", now.uploads)?;
    counter(encoder, "shared_store_upload_bytes", "stored bytes written to the bucket", now.upload_bytes)?;
    counter(
        encoder,
        "shared_store_corrupt_objects",
        "bucket objects that did not match their key: deleted, never served",
        now.corrupt_objects,
    )?;
    counter(encoder, "shared_store_errors", "requests that failed for want of the bucket", now.errors)?;
    counter(encoder, "shared_store_requests", "requests sent to the bucket", now.requests)?;
    let seconds = ConstCounter::new(now.request_seconds_total);
    seconds.encode(encoder.encode_descriptor(
        "shared_store_request_seconds",
        "time requests to the bucket took, together (divide by shared_store_requests for the mean)",
        None,
        seconds.metric_type(),
    )?)?;
    gauge(
        encoder,
        "shared_store_up",
        "1 while the bucket answers, 0 while it does not (degraded)",
        u64::from(now.reachable),
    )
}
