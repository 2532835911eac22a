//! The S3 calls of the shared tier. Stores run on blocking threads, so each call is driven to
//! its end on the runtime's handle (`Handle::block_on`), which a blocking thread may do. Every
//! call is bounded by `request_timeout` (retries included) and counted; a failure for want of
//! the bucket becomes `SharedStoreUnavailable`, naming the store.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::aws::AmazonS3Builder;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use proto::{ActionId, Digest};
use tokio::runtime::Handle;

use super::counters::SharedCounters;
use super::layout::{LENGTH_PREFIX, Layout, TRAILER_LEN, parse_trailer};
use super::lookups::LookupBudget;
use super::settings::SharedSettings;
use super::throttled::throttled;
use crate::error::{Error, Result};
use crate::gocache::GoEntry;
use crate::store::BlobInfo;

/// A purge marker as the bucket lists it.
pub(super) struct PurgeMarker {
    pub(super) key: object_store::path::Path,
    pub(super) version: String,
}

/// How many objects one batch asks about at once (FindMissing of local misses).
const STAT_CONCURRENCY: usize = 16;

pub struct Bucket {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) layout: Layout,
    pub(super) runtime: Handle,
    url: String,
    pub counters: Arc<SharedCounters>,
    lookups: LookupBudget,
    /// The ids of the purge markers this process wrote: its own purges, applied already.
    marked: Mutex<HashSet<String>>,
}

/// A purge marker read back: which namespace, and whether this process wrote it.
pub(super) struct PurgeNotice {
    pub(super) namespace: String,
    pub(super) ours: bool,
}

impl Bucket {
    /// A client of the bucket `settings` name, with credentials found the way AWS tools find
    /// them (AWS_* variables, web identity, container and instance credentials, then the
    /// shared credentials file). Nothing is sent yet: a bucket that
    /// does not answer leaves cached serving from its local tier.
    pub fn open(settings: &SharedSettings, runtime: Handle) -> Result<Arc<Self>> {
        // HTTPS endpoints: the client's TLS uses the process's provider (ring, as cached's own).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_retry(retry(settings.request_timeout))
            .with_client_options(client_options(settings.request_timeout));
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(keys) = super::credentials::from_profile_file(&|name| std::env::var(name).ok()) {
            builder =
                builder.with_access_key_id(keys.access_key_id).with_secret_access_key(keys.secret_access_key);
            if let Some(token) = keys.session_token {
                builder = builder.with_token(token);
            }
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        let store = builder
            .build()
            .map_err(|err| Error::SharedStoreUnavailable { store: settings.url(), source: err })?;
        Ok(Arc::new(Self {
            store: Arc::new(store),
            layout: Layout::new(&settings.prefix),
            runtime,
            url: settings.url(),
            counters: Arc::new(SharedCounters::default()),
            lookups: LookupBudget::new(settings.lookups_per_token),
            marked: Mutex::default(),
        }))
    }

    /// A bucket over `store` as it is, for tests of what replicas do with one.
    #[cfg(test)]
    pub(crate) fn over(store: Arc<dyn ObjectStore>, runtime: Handle) -> Arc<Self> {
        Self::over_limited(store, runtime, None)
    }

    /// `over`, with each token's misses held to `lookups_per_token` (`max_shared_lookups`).
    #[cfg(test)]
    pub(crate) fn over_limited(
        store: Arc<dyn ObjectStore>,
        runtime: Handle,
        lookups_per_token: Option<u32>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            layout: Layout::new(""),
            runtime,
            url: "memory://".to_owned(),
            counters: Arc::new(SharedCounters::default()),
            lookups: LookupBudget::new(lookups_per_token),
            marked: Mutex::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether `lookups` local misses of the current caller may ask the bucket
    /// ([`super::lookups`]); those that may not are counted, and are misses.
    pub fn admit_lookups(&self, lookups: usize) -> bool {
        let admitted = self.lookups.admit(lookups);
        if !admitted {
            SharedCounters::add(&self.counters.lookups_skipped, lookups as u64);
        }
        admitted
    }

    /// Runs one request to its end, timing and counting it. A missing object is an answer,
    /// not a failure.
    async fn request<T>(&self, request: impl Future<Output = object_store::Result<T>>) -> Result<Option<T>> {
        if !self.counters.may_send() {
            return Err(self.unavailable(object_store::Error::Generic {
                store: "S3",
                source: "it did not answer the last request; it is tried again once a second".into(),
            }));
        }
        let started = Instant::now();
        let outcome = request.await;
        match &outcome {
            Err(err) if throttled(err) => self.counters.request_throttled(started.elapsed()),
            Err(err) if !is_answer(err) => self.counters.request_ended(started.elapsed(), false),
            _ => self.counters.request_ended(started.elapsed(), true),
        }
        match outcome {
            Ok(value) => Ok(Some(value)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.unavailable(source)),
        }
    }

    /// `request`, from a blocking thread.
    pub(super) fn call<T>(
        &self,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>> {
        self.runtime.block_on(self.request(request))
    }

    pub(super) fn unavailable(&self, source: object_store::Error) -> Error {
        Error::SharedStoreUnavailable { store: self.url.clone(), source }
    }

    /// What the bucket knows of a blob: its trailer, read with one ranged GET. An object whose
    /// trailer does not fit its size is corrupt: it is deleted and reported missing.
    pub fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        self.runtime.block_on(self.stat_async(digest))
    }

    async fn stat_async(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.layout.blob(digest);
        let options = GetOptions::default().with_range(Some(GetRange::Suffix(TRAILER_LEN as u64)));
        let fetched = self
            .request(async {
                let result = self.store.get_opts(&path, options).await?;
                let size = result.meta.size;
                Ok((result.bytes().await?, size))
            })
            .await?;
        let Some((trailer, object_size)) = fetched else { return Ok(None) };
        match parse_trailer(digest, &trailer, object_size) {
            Some((sha256, stored_bytes)) => Ok(Some(BlobInfo { stored_bytes, sha256 })),
            None => {
                self.discard_corrupt_async(digest, "its trailer does not match its size").await;
                Ok(None)
            }
        }
    }

    /// `stat` of many blobs, a bounded number at a time.
    pub fn stat_many(&self, digests: &[Digest]) -> Result<Vec<Option<BlobInfo>>> {
        self.runtime.block_on(
            stream::iter(digests)
                .map(|digest| self.stat_async(digest))
                .buffered(STAT_CONCURRENCY)
                .try_collect(),
        )
    }

    /// The frames of a blob's object, read as they arrive, or `None` when there is none.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<ObjectFrames>> {
        let path = self.layout.blob(digest);
        let Some(result) = self.call(self.store.get(&path))? else { return Ok(None) };
        Ok(Some(ObjectFrames {
            e_tag: result.meta.e_tag.clone(),
            chunks: result.into_stream(),
            runtime: self.runtime.clone(),
            store: Arc::clone(&self.store),
            path,
            received: 0,
            resumes_left: RESUMES,
            buffer: Vec::new(),
            frames_left: proto::frames::frame_count(digest.size),
        }))
    }

    /// Deletes an object that did not match its key, so the next write of the blob replaces it
    /// and no replica serves it meanwhile.
    pub fn discard_corrupt(&self, digest: &Digest, why: &str) {
        self.runtime.block_on(self.discard_corrupt_async(digest, why));
    }

    async fn discard_corrupt_async(&self, digest: &Digest, why: &str) {
        SharedCounters::add(&self.counters.corrupt_objects, 1);
        tracing::error!(%digest, store = %self.url, why, "a shared-store object does not match its key; deleting it");
        if let Err(err) = self.request(self.store.delete(&self.layout.blob(digest))).await {
            tracing::warn!(%digest, error = %err, "could not delete a corrupt shared-store object");
        }
    }

    pub fn get_entry(&self, namespace: &str, action_id: &ActionId) -> Result<Option<GoEntry>> {
        let path = self.layout.entry(namespace, action_id);
        let Some(bytes) = self.call(async { self.store.get(&path).await?.bytes().await })? else {
            return Ok(None);
        };
        match GoEntry::decode(&bytes) {
            Ok(entry) => Ok(Some(entry)),
            Err(err) => {
                tracing::warn!(store = %self.url, %path, error = %err, "an unreadable Go entry in the shared store");
                Ok(None)
            }
        }
    }

    pub fn put_entry(&self, namespace: &str, action_id: &ActionId, entry: &GoEntry) -> Result<()> {
        let path = self.layout.entry(namespace, action_id);
        let payload = PutPayload::from(Bytes::copy_from_slice(&entry.encode()));
        self.call(self.store.put(&path, payload))?;
        Ok(())
    }

    /// Leaves word of a purge of `namespace` for the other replicas. The first line is new for
    /// every purge, so a replica that applied an earlier one sees this one as new.
    pub fn mark_purged(&self, namespace: &str) -> Result<()> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|err| Error::Internal(format!("no randomness: {err}")))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let id = format!("{}-{:016x}", now.as_millis(), u64::from_le_bytes(nonce));
        let body = format!("{id}\n{namespace}");
        self.lock_marked().insert(id);
        self.call(self.store.put(&self.layout.purge_marker(namespace), PutPayload::from(body)))?;
        Ok(())
    }

    /// Every purge marker, as listed: a version that changes when the marker is written again.
    pub(super) fn purge_markers(&self) -> Result<Vec<PurgeMarker>> {
        let prefix = self.layout.purge_markers();
        let markers = self.call(async {
            self.store
                .list(Some(&prefix))
                .map_ok(|meta| PurgeMarker {
                    version: format!(
                        "{}|{}|{}",
                        meta.last_modified,
                        meta.e_tag.unwrap_or_default(),
                        meta.size
                    ),
                    key: meta.location,
                })
                .try_collect::<Vec<_>>()
                .await
        })?;
        Ok(markers.unwrap_or_default())
    }

    /// The namespace a purge marker names; `None` if it went away meanwhile.
    pub(super) fn purged_namespace(&self, marker: &PurgeMarker) -> Result<Option<PurgeNotice>> {
        let Some(body) = self.call(async { self.store.get(&marker.key).await?.bytes().await })? else {
            return Ok(None);
        };
        let body = String::from_utf8_lossy(&body);
        Ok(body.split_once('\n').map(|(id, namespace)| PurgeNotice {
            namespace: namespace.to_owned(),
            ours: self.lock_marked().contains(id),
        }))
    }

    fn lock_marked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.marked.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Asks the bucket for an object that is never written: any answer (a miss) proves it
    /// reachable again.
    pub fn probe(&self) -> Result<()> {
        let path = self.layout.probe();
        self.call(self.store.head(&path))?;
        Ok(())
    }

    /// Deletes every Go entry of `namespace` from the bucket; returns how many there were.
    /// Blobs stay: other namespaces may share them, and the bucket's lifecycle rule ages them.
    pub fn purge_namespace(&self, namespace: &str) -> Result<u64> {
        let prefix = self.layout.namespace(namespace);
        let deleted = self.call(async {
            let locations = self.store.list(Some(&prefix)).map_ok(|meta| meta.location).boxed();
            self.store.delete_stream(locations).try_fold(0u64, |count, _| async move { Ok(count + 1) }).await
        })?;
        Ok(deleted.unwrap_or(0))
    }
}

/// A request may stall at most `timeout` at any point (connecting, waiting for an answer,
/// between two reads of a body), but a large blob's body may take as long as it streams.
fn client_options(timeout: Duration) -> ClientOptions {
    ClientOptions::new()
        .with_timeout_disabled()
        .with_read_timeout(timeout)
        .with_connect_timeout(timeout.min(Duration::from_secs(3)))
}

/// Bounded retries: a bucket that does not answer fails the request within `timeout`, and
/// the next request tries again (that is how the tier recovers by itself).
fn retry(timeout: Duration) -> RetryConfig {
    RetryConfig { max_retries: 3, retry_timeout: timeout, ..RetryConfig::default() }
}

/// Whether an error is the bucket's answer (it was reached) rather than a failure to reach it.
fn is_answer(err: &object_store::Error) -> bool {
    matches!(
        err,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

/// How often a read of one object may pick up where its stream broke off (a stall past the
/// read timeout while the local tier was busy writing what came before).
const RESUMES: u8 = 3;

/// The frames of one object, split off its stream by their length prefixes. Each `next`
/// blocks on the runtime for the bytes it needs, so memory holds about one frame. A stream
/// that breaks off is resumed from the byte it reached, a few times.
pub struct ObjectFrames {
    chunks: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    runtime: Handle,
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    /// The version first read: a resumed read takes the rest of that version or nothing, so
    /// an object written again meanwhile (another replica's upload of the same blob, framed
    /// otherwise) is not spliced into one that looks corrupt and is deleted.
    e_tag: Option<String>,
    received: u64,
    resumes_left: u8,
    buffer: Vec<u8>,
    frames_left: u64,
}

/// Why an object's frames could not be read.
pub enum FramesError {
    /// The bucket stopped answering.
    Unreachable(object_store::Error),
    /// The object is not what its layout says (truncated, a length beyond any frame).
    Malformed(String),
}

impl ObjectFrames {
    fn fill_to(&mut self, len: usize) -> Result<(), FramesError> {
        while self.buffer.len() < len {
            match self.runtime.block_on(self.chunks.next()) {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    self.buffer.extend_from_slice(&chunk);
                }
                Some(Err(err)) if self.resumes_left == 0 => return Err(FramesError::Unreachable(err)),
                Some(Err(err)) => {
                    self.resumes_left -= 1;
                    tracing::debug!(path = %self.path, at = self.received, error = %err, "resuming a broken read");
                    self.resume()?;
                }
                None => return Err(FramesError::Malformed("the object ends early".to_owned())),
            }
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), FramesError> {
        let options = GetOptions { if_match: self.e_tag.clone(), ..GetOptions::default() }
            .with_range(Some(GetRange::Offset(self.received)));
        let result = self.runtime.block_on(self.store.get_opts(&self.path, options));
        self.chunks = result.map_err(FramesError::Unreachable)?.into_stream();
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<Vec<u8>, FramesError> {
        self.fill_to(len)?;
        let rest = self.buffer.split_off(len);
        Ok(std::mem::replace(&mut self.buffer, rest))
    }

    /// The next frame, or `None` after the last.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FramesError> {
        if self.frames_left == 0 {
            return Ok(None);
        }
        self.frames_left -= 1;
        let prefix = self.take(LENGTH_PREFIX)?;
        let len = u32::from_le_bytes(prefix[..].try_into().expect("four bytes")) as usize;
        // A compressed frame is never much larger than the frame it holds.
        if len > 2 * proto::FRAME_SIZE {
            return Err(FramesError::Malformed(format!("a frame of {len} bytes")));
        }
        Ok(Some(Bytes::from(self.take(len)?)))
    }

    /// The trailer after the last frame.
    pub fn trailer(&mut self) -> Result<Vec<u8>, FramesError> {
        self.take(TRAILER_LEN)
    }
}
