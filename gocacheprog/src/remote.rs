//! The remote tier: cached's GoCache and Cas services, behind a circuit breaker.
//!
//! Fetches land in the local tier (the go command needs a file), verified on the way: BLAKE3
//! against the CAS digest of the entry, which cached accepted only for a blob whose SHA-256 is
//! its OutputID, the go command's own name for the bytes. Every call has a deadline,
//! and no failure here is ever the build's failure: it is a miss, or an upload not made.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proto::v1;
use proto::{ActionId, Digest, FRAME_SIZE, OutputId};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::breaker::Breaker;
use super::counters::{Counters, add};
use super::disk::{DiskError, DiskTier, Entry};
use super::landing::{Found, new_decoder, store_frames};
pub use super::remote_error::RemoteError;
use super::session::{self, Record};
use cached_client::connect::{Client, ConnectOptions};
use cached_client::error::ClientError;
use cached_client::failover::Failover;
use cached_client::recheck;
use cached_client::transfer;

/// zstd level for uploads. Level 1 costs the compiler, which shares the CPU with us during a
/// cold build, a third less than level 3 and gives up under 5% of the ratio on Go outputs.
const UPLOAD_LEVEL: i32 = 1;
/// Transfers get this rate's worth of time on top of the base deadline, so a large body on a
/// slow link is not cut off while a hung server still is.
const MIN_BYTES_PER_SECOND: u64 = 10 << 20;
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Frames buffered between the network and the file being written.
const PIPELINE_FRAMES: usize = 4;
/// Corrupt bodies a session reports to cached at most.
const MAX_REPORTS: usize = 16;

impl From<DiskError> for RemoteError {
    fn from(err: DiskError) -> Self {
        match err {
            // A body that does not hash to what the server said came from the server.
            DiskError::WrongBody { .. } | DiskError::WrongDigest { .. } | DiskError::WrongSize { .. } => {
                Self::Corrupt(err.to_string())
            }
            DiskError::Io { .. } => Self::Local(err),
        }
    }
}

/// One stored body to send: its CAS blob, then its entry.
#[derive(Debug, Clone)]
pub struct Upload {
    pub action_id: ActionId,
    pub output_id: OutputId,
    pub digest: Digest,
    pub time_unix_nanos: i64,
    /// The body in the local tier, which never rewrites it, so it stays valid.
    pub path: PathBuf,
}

pub struct RemoteTier {
    /// The go command's own lookups and the uploads.
    client: Client,
    /// The preload's bulk fetches, on a connection of their own, so a large reply never sits
    /// in front of a lookup the go command is waiting for.
    bulk: Client,
    namespace: String,
    timeout: Duration,
    pub breaker: Breaker,
    counters: Arc<Counters>,
    /// Set once cached refuses our writes (a read-only token): reads go on, uploads stop.
    uploads_refused: AtomicBool,
    /// Blobs reported to cached as corrupt this session, each with whether its recheck is over.
    reported: Mutex<HashMap<Digest, watch::Receiver<bool>>>,
}

impl RemoteTier {
    /// Prepares a connection that is made on first use, so a down server costs the go command
    /// nothing at startup.
    pub fn new(
        server: &str,
        options: &ConnectOptions,
        namespace: String,
        timeout: Duration,
        counters: Arc<Counters>,
    ) -> Result<Self, ClientError> {
        let endpoints = options.endpoints(server, |endpoint| {
            endpoint
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                // Inline bodies reach 1 MiB of zstd: a window that holds a few of them whole saves
                // the round trips of growing an adaptive one from 64 KiB on every new connection.
                .initial_stream_window_size(Some(STREAM_WINDOW))
                .initial_connection_window_size(Some(CONNECTION_WINDOW))
        })?;
        // Two lazy channels (per replica) are two connections, each made on its first call.
        let client = Client::from_replicas(server, Failover::lazy(&endpoints), options)?;
        let bulk = Client::from_replicas(server, Failover::lazy(&endpoints), options)?;
        Ok(Self {
            client,
            bulk,
            namespace,
            timeout,
            breaker: Breaker::new(server),
            counters,
            uploads_refused: AtomicBool::new(false),
            reported: Mutex::default(),
        })
    }

    pub fn server(&self) -> &str {
        &self.client.server
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Tells cached what this session saw, local-tier hits included, so `cachectl stats` shows
    /// the hit rate builds really get. Best effort: skipped while the breaker is open, bounded
    /// by the request timeout, and failures are ignored.
    pub async fn report(&self) {
        if !self.breaker.allows() {
            return;
        }
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        let session = v1::ClientSession {
            namespace: self.namespace.clone(),
            gets: load(&counters.gets),
            local_hits: load(&counters.local_hits),
            // Preloaded hits came from cached too.
            remote_hits: load(&counters.remote_hits) + load(&counters.preloaded_hits),
            misses: load(&counters.misses),
            puts: load(&counters.puts),
            bytes_down: load(&counters.bytes_down),
            bytes_up: load(&counters.bytes_up),
            wait_nanos: load(&counters.wait_nanos),
        };
        let mut request = tonic::Request::new(v1::ReportRequest { session: Some(session) });
        request.set_timeout(self.timeout);
        let _ = self.client.stats.clone().report(request).await;
    }

    /// Looks an action up on the server and brings its body into the local tier. `None` on a
    /// miss and on any failure.
    pub async fn fetch(&self, action_id: ActionId, disk: Arc<DiskTier>) -> Option<(Entry, PathBuf)> {
        if !self.breaker.allows() {
            return None;
        }
        match self.try_fetch(action_id, disk).await {
            Ok(found) => {
                self.breaker.success();
                found
            }
            Err(err) => {
                self.note_failure(&err);
                None
            }
        }
    }

    pub fn note_failure(&self, err: &RemoteError) {
        // A refusal for now says the server is there: the breaker is for outages.
        if err.is_remote() && !err.is_busy() {
            self.breaker.failure(&err.to_string());
        }
    }

    /// Reports a body that was not what its digest names to cached, which checks its copy and
    /// removes it if that is what is corrupt (`cached_client::recheck`). The report runs in
    /// the background; the lookup is a miss either way. A session reports few blobs: many
    /// corrupt bodies point at the link, not at cached's disk.
    pub fn report_if_corrupt(&self, digest: Digest, err: &RemoteError) {
        if !matches!(err, RemoteError::Corrupt(_)) {
            return;
        }
        let mut reported = self.reported.lock().unwrap_or_else(|poison| poison.into_inner());
        if reported.len() >= MAX_REPORTS || reported.contains_key(&digest) {
            return;
        }
        let (over, recheck_over) = watch::channel(false);
        reported.insert(digest, recheck_over);
        let client = self.bulk.clone();
        // Detached: once the report reaches cached, its recheck runs through even if this
        // session ends first.
        drop(cached_client::task::spawn("recheck-report", async move {
            let rechecked = recheck::recheck(&client, digest).await;
            let _ = over.send(true);
            match rechecked {
                Ok(outcome) => {
                    tracing::warn!(%digest, ?outcome, "a body from cached was corrupt; cached rechecked its copy")
                }
                Err(err) => {
                    tracing::warn!(%digest, error = %err, "a body from cached was corrupt; asking cached to recheck it failed")
                }
            }
        }));
    }

    async fn call<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.into()),
            Err(_) => Err(RemoteError::Timeout(limit)),
        }
    }

    fn transfer_deadline(&self, size: u64) -> Duration {
        self.timeout + Duration::from_secs(size / MIN_BYTES_PER_SECOND)
    }

    async fn try_fetch(
        &self,
        action_id: ActionId,
        disk: Arc<DiskTier>,
    ) -> Result<Option<(Entry, PathBuf)>, RemoteError> {
        let request =
            v1::GoGetRequest { namespace: self.namespace.clone(), action_id: action_id.0.to_vec().into() };
        let reply = self.call(self.timeout, self.client.go.clone().get(request)).await?;
        let Some(found) = Found::from_reply(reply)? else { return Ok(None) };
        let (entry, digest) = (found.entry, found.digest);
        let landed = if found.is_here(&disk) {
            off_runtime(entry.size, move || found.store(&disk, action_id, &mut new_decoder()?)).await
        } else {
            self.download(&self.client, disk, action_id, entry, digest).await
        };
        let path = match landed {
            Ok(Some(path)) => path,
            // The blob was evicted since the lookup, or the entry is not one to land.
            Ok(None) => return Ok(None),
            Err(err) => {
                self.report_if_corrupt(digest, &err);
                return Err(err);
            }
        };
        add(&self.counters.bytes_down, entry.size);
        Ok(Some((entry, path)))
    }

    /// Looks many actions up at once on the bulk connection (GetMany: small bodies inline).
    /// `expected_bytes` (a hint) sizes the deadline. Counts toward the breaker.
    pub async fn get_many(
        &self,
        action_ids: &[ActionId],
        expected_bytes: u64,
    ) -> Result<Vec<Option<Found>>, RemoteError> {
        if !self.breaker.allows() {
            return Err(RemoteError::Internal("cached is not being asked (breaker open)".into()));
        }
        let request = v1::GoGetManyRequest {
            namespace: self.namespace.clone(),
            action_ids: action_ids.iter().map(|id| id.0.to_vec().into()).collect(),
        };
        let limit = self.transfer_deadline(expected_bytes);
        let result = self.call(limit, self.bulk.go.clone().get_many(request)).await.and_then(|reply| {
            if reply.results.len() != action_ids.len() {
                return Err(RemoteError::Corrupt(format!(
                    "GetMany answered {} of {} lookups",
                    reply.results.len(),
                    action_ids.len()
                )));
            }
            reply.results.into_iter().map(Found::from_reply).collect()
        });
        match &result {
            Ok(_) => self.breaker.success(),
            Err(err) => self.note_failure(err),
        }
        result
    }

    /// Brings a body GetMany did not inline into the local tier over the bulk connection.
    /// `None` when the blob is gone; failures count toward the breaker.
    pub async fn download_bulk(
        &self,
        disk: Arc<DiskTier>,
        action_id: ActionId,
        found: &Found,
    ) -> Result<Option<PathBuf>, RemoteError> {
        if !self.breaker.allows() {
            return Err(RemoteError::Internal("cached is not being asked (breaker open)".into()));
        }
        let result = self.download(&self.bulk, disk, action_id, found.entry, found.digest).await;
        match &result {
            Ok(_) => self.breaker.success(),
            Err(err) => self.note_failure(err),
        }
        result
    }

    /// Reads the session list stored under `key`, verified like any body. `Ok(None)` when
    /// there is none (or it is not a list this version reads); `Err` when cached could not
    /// say, so the caller does not overwrite a list it never saw.
    pub async fn fetch_list(&self, key: ActionId) -> Result<Option<Vec<Record>>, RemoteError> {
        if !self.breaker.allows() {
            return Err(RemoteError::Internal("cached is not being asked (breaker open)".into()));
        }
        let request =
            v1::GoGetRequest { namespace: self.namespace.clone(), action_id: key.0.to_vec().into() };
        let reply = match self.call(self.timeout, self.bulk.go.clone().get(request)).await {
            Ok(reply) => reply,
            Err(err) => {
                self.note_failure(&err);
                return Err(err);
            }
        };
        self.breaker.success();
        let Some(found) = Found::from_reply(reply)? else { return Ok(None) };
        // Lists are written to fit one frame, so they always come inline.
        let Some(frame) = found.inline.as_ref() else { return Ok(None) };
        let body = found.decode_inline(frame)?;
        Ok(session::decode(&body))
    }

    /// Stores a session list under `key`: its blob, then the entry that names it.
    pub async fn write_list(&self, key: ActionId, list: Vec<u8>) -> Result<(), RemoteError> {
        if !self.breaker.allows() || self.uploads_refused.load(Ordering::Relaxed) {
            return Ok(());
        }
        let digest = Digest::of(&list);
        let output_id = OutputId(Sha256::digest(&list).into());
        let limit = self.transfer_deadline(digest.size);
        let written = tokio::time::timeout(
            limit,
            transfer::batch_write(&self.client, vec![(digest, list.into())], UPLOAD_LEVEL),
        )
        .await
        .map_err(|_| RemoteError::Timeout(limit))
        .and_then(|result| result.map_err(RemoteError::from));
        let result = match written {
            Ok(()) => {
                let upload = Upload {
                    action_id: key,
                    output_id,
                    digest,
                    time_unix_nanos: super::protocol::now_unix_nanos(),
                    path: PathBuf::new(),
                };
                self.put_entry(&upload).await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = &result
            && !err.is_refusal()
        {
            self.note_failure(err);
        }
        result
    }

    /// Streams a body too large to travel inline through Cas.Read into the local tier.
    async fn download(
        &self,
        client: &Client,
        disk: Arc<DiskTier>,
        action_id: ActionId,
        entry: Entry,
        digest: Digest,
    ) -> Result<Option<PathBuf>, RemoteError> {
        let limit = self.transfer_deadline(entry.size);
        let streamed = async {
            let Some(mut stream) = transfer::open_read(client, digest).await? else { return Ok(None) };
            let (sender, pieces) = mpsc::channel(PIPELINE_FRAMES);
            let writer = cached_client::task::spawn_blocking("store-frames", move || {
                store_frames(&disk, action_id, entry, digest, pieces)
            });
            let mut failure = None;
            loop {
                match stream.message().await {
                    Ok(Some(piece)) => {
                        if sender.send(piece).await.is_err() {
                            break; // The writer failed; its result says why.
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        failure = Some(status);
                        break;
                    }
                }
            }
            drop(sender);
            let stored =
                writer.await.map_err(|err| RemoteError::Internal(format!("writing failed: {err}")))?;
            match failure {
                Some(status) => Err(status.into()),
                None => stored,
            }
        };
        tokio::time::timeout(limit, streamed).await.map_err(|_| RemoteError::Timeout(limit))?
    }

    /// Whether cached lets this session's token record Go cache entries in its namespace
    /// (GoCache.Access): `None` when it cannot say (unreachable, slow, or a version without
    /// the call). Asks again while cached is busy (a rate limit, a full pool): a refusal for now
    /// says nothing of the token. A `false` also stops the uploads, which cached would refuse.
    pub async fn may_put(&self) -> Option<bool> {
        let mut pause = Duration::from_millis(50);
        loop {
            if !self.breaker.allows() {
                return None;
            }
            let request = v1::GoAccessRequest { namespace: self.namespace.clone() };
            let answer = self.call(self.timeout, self.client.go.clone().access(request)).await;
            let may_put = match answer {
                Ok(reply) => reply.may_put,
                Err(RemoteError::Status(status))
                    if matches!(
                        status.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    ) =>
                {
                    false
                }
                Err(err) if err.is_busy() => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(RemoteError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                    tracing::debug!("cached is a version that cannot say whether this session may record");
                    return None;
                }
                Err(err) => {
                    self.note_failure(&err);
                    tracing::debug!("cannot ask cached whether this session may record ({err})");
                    return None;
                }
            };
            if !may_put {
                self.uploads_refused.store(true, Ordering::Relaxed);
            }
            return Some(may_put);
        }
    }

    /// Uploads bodies (CAS blob first, then the entry that names it). Never fails: what cannot
    /// be uploaded is counted as lost.
    pub async fn upload(&self, uploads: Vec<Upload>) {
        let count = uploads.len() as u64;
        if !self.breaker.allows() || self.uploads_refused.load(Ordering::Relaxed) {
            add(&self.counters.uploads_lost, count);
            return;
        }
        match self.try_upload(&uploads).await {
            Ok(bytes) => {
                self.breaker.success();
                add(&self.counters.uploads, count);
                add(&self.counters.bytes_up, bytes);
            }
            Err(err) if err.is_refusal() => {
                // Not an outage: cached will not store what this client sends (its token, its
                // disk). Say so once, keep reading.
                if !self.uploads_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cached at {} refuses uploads ({err}); reading from it only",
                        self.server()
                    );
                }
                add(&self.counters.uploads_lost, count);
            }
            Err(err) => {
                self.note_failure(&err);
                add(&self.counters.uploads_lost, count);
            }
        }
    }

    /// Waits until cached has rechecked any of `digests` this session reported as corrupt: the
    /// go command builds such a body again, and its upload would be dropped as already present
    /// while the rotten copy is still there, leaving the entry pointing at a blob about to go.
    async fn rechecks_done(&self, digests: impl Iterator<Item = Digest>) {
        let pending: Vec<watch::Receiver<bool>> = {
            let reported = self.reported.lock().unwrap_or_else(|poison| poison.into_inner());
            digests.filter_map(|digest| reported.get(&digest).cloned()).collect()
        };
        for mut over in pending {
            let _ = over.wait_for(|over| *over).await;
        }
    }

    /// Returns the bytes sent.
    async fn try_upload(&self, uploads: &[Upload]) -> Result<u64, RemoteError> {
        self.rechecks_done(uploads.iter().map(|upload| upload.digest)).await;
        let (small, large): (Vec<&Upload>, Vec<&Upload>) =
            uploads.iter().partition(|u| u.digest.size <= FRAME_SIZE as u64);
        let mut sent = 0;
        if !small.is_empty() {
            sent += self.write_small(&small).await?;
        }
        for upload in large {
            sent += self.write_large(upload).await?;
        }
        let puts = uploads.iter().map(|upload| self.put_entry(upload));
        futures::future::try_join_all(puts).await?;
        Ok(sent)
    }

    /// One BatchWrite for many small blobs. No FindMissing first: for small blobs the extra
    /// round trip costs more than resending what the server may already hold.
    async fn write_small(&self, uploads: &[&Upload]) -> Result<u64, RemoteError> {
        let files: Vec<(Digest, PathBuf)> = uploads.iter().map(|u| (u.digest, u.path.clone())).collect();
        let blobs = cached_client::task::spawn_blocking("read-upload-blobs", move || read_blobs(files))
            .await
            .map_err(|err| RemoteError::Internal(format!("reading failed: {err}")))??;
        let bytes: u64 = blobs.iter().map(|(digest, _)| digest.size).sum();
        let limit = self.transfer_deadline(bytes);
        tokio::time::timeout(limit, transfer::batch_write(&self.client, blobs, UPLOAD_LEVEL))
            .await
            .map_err(|_| RemoteError::Timeout(limit))??;
        Ok(bytes)
    }

    async fn write_large(&self, upload: &Upload) -> Result<u64, RemoteError> {
        let size = upload.digest.size;
        let missing =
            tokio::time::timeout(self.timeout, transfer::find_missing(&self.client, &[upload.digest]))
                .await
                .map_err(|_| RemoteError::Timeout(self.timeout))??;
        if missing.is_empty() {
            return Ok(0);
        }
        let limit = self.transfer_deadline(size);
        tokio::time::timeout(
            limit,
            transfer::upload_file(&self.client, &upload.path, upload.digest, UPLOAD_LEVEL),
        )
        .await
        .map_err(|_| RemoteError::Timeout(limit))??;
        Ok(size)
    }

    async fn put_entry(&self, upload: &Upload) -> Result<(), RemoteError> {
        let request = v1::GoPutRequest {
            namespace: self.namespace.clone(),
            action_id: upload.action_id.0.to_vec().into(),
            entry: Some(v1::GoEntry {
                output_id: upload.output_id.0.to_vec().into(),
                size: upload.digest.size,
                digest: Some(upload.digest.to_wire()),
                time_unix_nanos: upload.time_unix_nanos,
            }),
        };
        self.call(self.timeout, self.client.go.clone().put(request)).await?;
        Ok(())
    }
}

fn read_blobs(files: Vec<(Digest, PathBuf)>) -> Result<Vec<(Digest, Bytes)>, RemoteError> {
    files
        .into_iter()
        .map(|(digest, path)| {
            let data =
                std::fs::read(&path).map_err(|source| RemoteError::Local(DiskError::Io { path, source }))?;
            Ok((digest, Bytes::from(data)))
        })
        .collect()
}

/// Small bodies are stored right on the runtime thread: it takes tens of microseconds, less
/// than a handoff to the blocking pool, which on a loaded 2-core runner costs milliseconds.
const STORE_IN_PLACE_MAX: u64 = 64 << 10;

async fn off_runtime<T: Send + 'static>(
    size: u64,
    work: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    if size <= STORE_IN_PLACE_MAX {
        return work();
    }
    cached_client::task::spawn_blocking("store-entry", work)
        .await
        .map_err(|err| RemoteError::Internal(format!("storing failed: {err}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_outages() {
        assert!(RemoteError::Status(tonic::Status::permission_denied("no ac-write")).is_refusal());
        let via_transfer: ClientError = tonic::Status::unauthenticated("no token").into();
        assert!(RemoteError::Client(via_transfer).is_refusal());
        let full = tonic::Status::resource_exhausted("the server's disk is nearly full");
        assert!(RemoteError::Client(full.into()).is_refusal());
        let outage = RemoteError::Status(tonic::Status::unavailable("down"));
        assert!(!outage.is_refusal() && outage.is_remote());
        assert!(!RemoteError::Internal("join".into()).is_remote());
    }

    /// A token over its rate or its share of uploads is told when to come back: that neither
    /// stops the session's uploads nor counts toward the breaker.
    #[test]
    fn a_refusal_for_now_is_neither_a_standing_refusal_nor_an_outage() {
        let mut busy = tonic::Status::resource_exhausted("token `ci` is already sending 64 uploads");
        busy.metadata_mut().insert(proto::RETRY_AFTER_MS, "500".parse().unwrap());
        for err in [RemoteError::Status(busy.clone()), RemoteError::Client(busy.into())] {
            assert!(err.is_busy() && !err.is_refusal(), "{err}");
        }
        let full = RemoteError::Status(tonic::Status::resource_exhausted("the server's disk is nearly full"));
        assert!(!full.is_busy() && full.is_refusal());
    }
}
