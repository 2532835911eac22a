//! The OCI distribution API (v1.1) on a listener of its own (`registry_listen`): docker,
//! containerd, skopeo and crane pull and push with cached's tokens.
//!
//! Blob bytes are CAS blobs (BLAKE3, zstd frames); a repository's blobs are links from their
//! SHA-256 to the CAS digest, made only after the server hashed the bytes itself. Manifests
//! (exact bytes), tags and referrers are records ([`RegistryRecords`]). A repository's first
//! path segment is the cached namespace tokens are checked against: `main/app` lives in `main`.
//!
//! Handlers are thin: `routes` parses a request and checks who may make it (`auth`), the
//! modules by concern (`blobs`, `uploads`, `manifests`, `tags`, `referrers`) answer it, and
//! every refusal is one of the spec's codes (`errors`).

mod auth;
mod blobs;
mod buffers;
mod errors;
mod listen;
mod manifests;
mod names;
mod pg;
mod reach;
mod records;
mod referrers;
mod retention;
mod rocks;
mod routes;
mod tags;
mod uploads;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use errors::{Code, RegistryError};
pub use names::{Repository, Sha256Digest};
pub use pg::PgRegistry;
pub use records::{ManifestPut, ManifestWrite, OrderRow, Recorded, RegistryRecords, StoredManifest};
pub use rocks::RocksRegistry;

use crate::auth::AuthSettings;
use crate::cas::Cas;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::FreeSpace;

/// The registry's settings, from `registry_*` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    pub listen: SocketAddr,
    /// An upload untouched this long is dropped with its spooled bytes.
    pub upload_timeout: Duration,
    pub max_uploads_per_namespace: usize,
    /// `min_free_space`: below it, uploads are not spooled nor manifests stored.
    pub min_free_space: u64,
    /// `max_upload_bytes_per_token`: bytes one token's open upload sessions may spool.
    pub max_upload_bytes_per_token: u64,
    /// `max_registry_records`: bytes of blob links, manifests and tags kept; beyond it the
    /// oldest written are forgotten.
    pub max_records: u64,
    /// How long an upload's body may keep the server waiting (`idle_timeout`,
    /// `min_transfer_rate`), as gRPC uploads are held to it.
    pub upload_pace: crate::conn::Pace,
}

/// Everything a registry request may use.
pub struct Registry {
    records: Arc<dyn RegistryRecords>,
    cas: Arc<Cas>,
    auth: Arc<AuthSettings>,
    uploads: uploads::Uploads,
    /// The data directory's disk, where manifests are stored.
    space: Arc<FreeSpace>,
    /// What the records may take.
    bound: Arc<retention::RecordBound>,
    /// The names of manifests pushes reached lately.
    manifest_names: Arc<reach::ManifestNames>,
    /// The memory manifest bodies being pushed hold in flight.
    pushes: Arc<buffers::BodyBuffers>,
    /// The memory manifest and referrers bodies being pulled hold in flight.
    pulls: Arc<buffers::BodyBuffers>,
    /// How long a pushed manifest's body may keep the server waiting, as an upload's may.
    pace: crate::conn::Pace,
    metrics: Arc<Metrics>,
    /// Whether the listener speaks TLS, for the token realm it advertises.
    tls: bool,
}

impl Registry {
    /// The registry over `records` and `cas`, spooling uploads under `data_dir`; uploads a
    /// previous run left there are removed.
    pub fn new(
        settings: &RegistrySettings,
        data_dir: &Path,
        records: Arc<dyn RegistryRecords>,
        cas: Arc<Cas>,
        auth: Arc<AuthSettings>,
        metrics: Arc<Metrics>,
        tls: bool,
    ) -> Result<Arc<Self>> {
        let spool = data_dir.join("registry-uploads");
        let space = Arc::new(
            FreeSpace::new(data_dir.to_owned(), settings.min_free_space)
                .with_pending_cap(settings.max_upload_bytes_per_token),
        );
        let limits = uploads::UploadLimits {
            timeout: settings.upload_timeout,
            per_namespace: settings.max_uploads_per_namespace,
            max_blob_size: cas.limits().max_blob_size,
            pace: settings.upload_pace,
            space: Arc::clone(&space),
        };
        let uploads = uploads::Uploads::open(spool, limits)
            .map_err(|err| Error::Internal(format!("registry upload directory: {err}")))?;
        let bound = Arc::new(retention::RecordBound::new(settings.max_records, Arc::clone(metrics.stats())));
        let (pushes, pulls) = (buffers::BodyBuffers::new(), buffers::BodyBuffers::new());
        let pace = settings.upload_pace;
        let manifest_names = Arc::default();
        Ok(Arc::new(Self {
            records,
            cas,
            auth,
            uploads,
            space,
            bound,
            manifest_names,
            pushes,
            pulls,
            pace,
            metrics,
            tls,
        }))
    }

    /// Drops uploads untouched for `registry_upload_timeout`, with their spooled bytes, until
    /// `stop` turns true: sessions are also swept as new ones open, but abandoned ones must
    /// not keep their disk when no upload follows.
    pub async fn expire_uploads(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let period = (self.uploads.timeout() / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = tokio::time::sleep(period) => {}
            }
            let registry = Arc::clone(&self);
            let _ =
                crate::task::spawn_blocking("registry upload expiry", move || registry.uploads.sweep()).await;
        }
    }

    /// Runs a blocking record operation off the async workers.
    async fn records<T: Send + 'static>(
        &self,
        what: &'static str,
        operation: impl FnOnce(&dyn RegistryRecords) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let records = Arc::clone(&self.records);
        crate::task::spawn_blocking(what, move || operation(&*records)).await?
    }
}

/// Refuses a write of the registry's own (an upload's spool, a manifest) while the data
/// directory's disk is below `min_free_space`, as CAS uploads are refused: a full disk wedges
/// RocksDB, and these writes are not blobs eviction could give back.
fn check_free_space(space: &FreeSpace) -> errors::RegistryResult<()> {
    Ok(space.recheck()?)
}

/// Serves the registry on `listener` (TLS with `tls`), each peer within `connections`' limits,
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    tls: Option<Arc<crate::tls::Tls>>,
    connections: Arc<crate::conn::Connections>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, routes::router(registry), tls, connections, shutdown).await
}
