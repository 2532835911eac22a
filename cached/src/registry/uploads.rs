//! Blob pushes: upload sessions (POST, PATCH chunks, PUT to close, GET status, DELETE),
//! single-request uploads (`POST ?digest=`), cross-repository mounts (`?mount=&from=`) and
//! mounts from the CAS (`?mount=&cas=<BLAKE3>/<size>`, cached's own): a layer `cachectl`
//! or an agent already stored over gRPC is published without sending its bytes again.
//!
//! A session's bytes are spooled to a file under the data directory, never held in memory;
//! SHA-256 and BLAKE3 are computed as they arrive, so closing a session checks the client's
//! digest without reading the bytes again, and only a match is written to the CAS (once, read
//! back from the spool) and linked into the repository. Sessions are capped per namespace and
//! in all, spool nothing while the disk is below `min_free_space`, and are dropped once nothing
//! was sent to them for `registry_upload_timeout`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, header};
use proto::{Digest, FRAME_SIZE};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth;
use super::blobs::{DIGEST_HEADER, insert};
use super::errors::{Code, RegistryError, RegistryResult};
use super::names::{Repository, Sha256Digest};
use super::routes::Call;
use super::{Registry, check_free_space};
use crate::auth::{Grant, Scope};
use crate::cas::{DecodeBudget, Encoding};
use crate::conn::Pace;
use crate::store::{FreeSpace, PendingBytes};

pub(super) struct UploadLimits {
    pub timeout: Duration,
    pub per_namespace: usize,
    pub max_blob_size: u64,
    pub pace: Pace,
    /// The spool's disk: nothing is spooled below its floor.
    pub space: Arc<FreeSpace>,
}

/// Most sessions open at once in all namespaces together (or `registry_max_uploads`, if more):
/// the cap per namespace alone lets a token for `*` open sessions in as many namespaces as it
/// names.
const MAX_UPLOADS: usize = 1024;
/// Most sessions one token holds open (or `registry_max_uploads`, if more), so that a token for
/// `*` cannot take every session of the server either. Callers without tokens are one party.
const MAX_UPLOADS_PER_TOKEN: usize = MAX_UPLOADS / 4;

/// How many bytes a chunk spools between two looks at the disk's free space.
const SPOOL_RECHECK: u64 = 8 << 20;

/// The open sessions and their spool directory.
pub(super) struct Uploads {
    dir: PathBuf,
    limits: UploadLimits,
    sessions: Mutex<HashMap<String, Arc<Entry>>>,
}

struct Entry {
    repo: Repository,
    /// The token that opened it.
    token: String,
    /// Whose budget it counts against ([`Grant::budget`]: the token's, or for a lease its
    /// submitter's, which all the leases of its jobs share).
    budget: String,
    touched: Mutex<Instant>,
    /// Held by the one request working on the session.
    session: tokio::sync::Mutex<Session>,
}

struct Session {
    path: PathBuf,
    written: u64,
    /// What it spooled, against its token's share of the disk until the session goes.
    pending: PendingBytes,
    sha256: Sha256,
    blake3: blake3::Hasher,
}

impl Uploads {
    /// Empties `dir` (sessions do not survive a restart) and serves sessions from it.
    pub(super) fn open(dir: PathBuf, limits: UploadLimits) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, limits, sessions: Mutex::new(HashMap::new()) })
    }

    pub(super) fn timeout(&self) -> Duration {
        self.limits.timeout
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session in `repo` for the token named `token`, counted against `budget`, after
    /// dropping expired ones.
    fn create(&self, repo: &Repository, token: &str, budget: &str) -> RegistryResult<String> {
        self.sweep();
        let mut id_bytes = [0u8; 16];
        getrandom::fill(&mut id_bytes)
            .map_err(|err| RegistryError::new(Code::Internal, format!("random source: {err}")))?;
        let id: String = id_bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let path = self.dir.join(&id);
        std::fs::File::create_new(&path).map_err(io_error)?;
        let mut sessions = self.sessions();
        if let Err(err) = self.check_room(&sessions, repo, budget) {
            drop(sessions);
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        let session = Session {
            path,
            written: 0,
            pending: PendingBytes::new(&self.limits.space, Some(budget)),
            sha256: Sha256::new(),
            blake3: blake3::Hasher::new(),
        };
        let entry = Entry {
            repo: repo.clone(),
            token: token.to_owned(),
            budget: budget.to_owned(),
            touched: Mutex::new(Instant::now()),
            session: tokio::sync::Mutex::new(session),
        };
        sessions.insert(id.clone(), Arc::new(entry));
        Ok(id)
    }

    /// Refuses a new session in `repo` past the cap of its namespace, of its token (its
    /// budget) or of all namespaces. A token that holds sessions must leave room for one token
    /// more, `most / (holders + 2)`, which only a token holding none may take: with the caps
    /// alone, four tokens of wide patterns (or one submitter's leases) held every session and
    /// every other tenant was refused for the sessions' hour.
    fn check_room(
        &self,
        sessions: &HashMap<String, Arc<Entry>>,
        repo: &Repository,
        token: &str,
    ) -> RegistryResult<()> {
        let most = MAX_UPLOADS.max(self.limits.per_namespace);
        let held = sessions.values().filter(|entry| entry.budget == token).count();
        let holders = sessions.values().map(|entry| entry.budget.as_str()).collect::<HashSet<_>>().len()
            + usize::from(held == 0);
        let room_for_one_more = most / (holders + 2);
        let shared = Grant::has_own_limits(token);
        if sessions.len() >= most || (shared && held > 0 && most - sessions.len() <= room_for_one_more) {
            return Err(RegistryError::new(
                Code::TooManyRequests,
                format!(
                    "the server has {} uploads open, of the most it keeps in all namespaces together \
                     ({most}), and keeps the last {room_for_one_more} for callers holding none; \
                     finish or cancel one, or retry later",
                    sessions.len()
                ),
            ));
        }
        let per_token = MAX_UPLOADS_PER_TOKEN.max(self.limits.per_namespace);
        if Grant::has_own_limits(token) && held >= per_token {
            return Err(RegistryError::new(
                Code::TooManyRequests,
                format!(
                    "{} already has {held} uploads open, the most one token keeps \
                     ({per_token}); finish or cancel one, or retry later",
                    Grant::describe_budget(token)
                ),
            ));
        }
        let in_namespace = || sessions.values().filter(|entry| entry.repo.namespace() == repo.namespace());
        // Half a namespace's room for one token: a token of many namespaces (a developer's)
        // must not hold every slot of one that CI pushes to.
        let own_in_namespace = (self.limits.per_namespace / 2).max(1);
        let own = in_namespace().filter(|entry| entry.budget == token).count();
        if Grant::has_own_limits(token) && own >= own_in_namespace {
            return Err(RegistryError::new(
                Code::TooManyRequests,
                format!(
                    "{} already has {own} uploads open in namespace `{}`, the most one token \
                     keeps there (half of registry_max_uploads); finish or cancel one",
                    Grant::describe_budget(token),
                    repo.namespace()
                ),
            ));
        }
        let open = in_namespace().count();
        if open >= self.limits.per_namespace {
            return Err(RegistryError::new(
                Code::TooManyRequests,
                format!(
                    "namespace `{}` already has {open} uploads open (registry_max_uploads); finish or cancel one",
                    repo.namespace()
                ),
            ));
        }
        Ok(())
    }

    /// The session, kept open for another `registry_upload_timeout`: for requests that move
    /// the upload on.
    fn get(&self, repo: &Repository, id: &str, token: &str) -> RegistryResult<Arc<Entry>> {
        let entry = self.find(repo, id, token)?;
        *entry.touched.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        Ok(entry)
    }

    /// The session, without extending it: asking where an upload stands sends no byte, and
    /// must not keep an abandoned one (its spool, its slot) open for ever.
    /// A session is its repository's and its token's: another token that learns its id
    /// (from a log, a proxy) cannot append to it, finish it or cancel it.
    fn find(&self, repo: &Repository, id: &str, token: &str) -> RegistryResult<Arc<Entry>> {
        let entry =
            self.sessions().get(id).filter(|entry| entry.repo == *repo && entry.token == token).cloned();
        entry.ok_or_else(|| RegistryError::new(Code::BlobUploadUnknown, format!("no upload {id} in {repo}")))
    }

    fn remove(&self, id: &str) {
        if let Some(entry) = self.sessions().remove(id) {
            let _ = std::fs::remove_file(self.dir.join(id));
            drop(entry);
        }
    }

    /// Drops sessions untouched for the timeout and not in use.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.limits.timeout;
        let mut sessions = self.sessions();
        sessions.retain(|id, entry| {
            let touched = *entry.touched.lock().unwrap_or_else(PoisonError::into_inner);
            let expired = now.duration_since(touched) > timeout && entry.session.try_lock().is_ok();
            if expired {
                let _ = std::fs::remove_file(self.dir.join(id));
            }
            !expired
        });
    }
}

fn io_error(err: std::io::Error) -> RegistryError {
    RegistryError::from(crate::error::Error::Internal(format!("registry upload spool: {err}")))
}

fn location(repo: &Repository, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The `Range` of what a session holds: `0-<last byte>` (`0-0` when empty, as distribution).
fn range(written: u64) -> String {
    format!("0-{}", written.saturating_sub(1))
}

fn accepted(repo: &Repository, id: &str, written: u64, status: StatusCode) -> Response {
    let mut response = status.into_response();
    let headers = response.headers_mut();
    insert(headers, header::LOCATION.as_str(), &location(repo, id));
    insert(headers, header::RANGE.as_str(), &range(written));
    insert(headers, "docker-upload-uuid", id);
    headers.insert(header::CONTENT_LENGTH, 0.into());
    response
}

fn created(repo: &Repository, sha256: &Sha256Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    insert(headers, header::LOCATION.as_str(), &format!("/v2/{repo}/blobs/{sha256}"));
    insert(headers, DIGEST_HEADER, &sha256.to_string());
    headers.insert(header::CONTENT_LENGTH, 0.into());
    response
}

/// POST `/blobs/uploads/`: a mount, a whole blob in one request, or a new session.
pub(super) async fn start(registry: &Registry, repo: &Repository, call: Call) -> RegistryResult<Response> {
    if let Some(mount) = call.param("mount") {
        let sha256 = Sha256Digest::parse(mount)?;
        if let Some(cas) = call.param("cas")
            && let Some(digest) = registry.cas_blob_with_sha256(cas, sha256).await?
        {
            link(registry, repo, sha256, digest).await?;
            return Ok(created(repo, &sha256));
        }
        if let Some(from) = call.param("from").map(Repository::parse).transpose()?
            && auth::check(&call.grant, Scope::Read, &from).is_ok()
            && let Some(digest) = registry.resolve_blob(&from, sha256).await?
        {
            link(registry, repo, sha256, digest).await?;
            return Ok(created(repo, &sha256));
        }
        // Not mountable: the spec's answer is an ordinary session.
    }
    let id = registry.uploads.create(repo, &call.grant.token, &call.grant.budget())?;
    let Some(expected) = call.param("digest").map(Sha256Digest::parse).transpose()? else {
        return Ok(accepted(repo, &id, 0, StatusCode::ACCEPTED));
    };
    let entry = registry.uploads.get(repo, &id, &call.grant.token)?;
    let result = complete(registry, repo, &entry, call.body, expected).await;
    registry.uploads.remove(&id);
    result.map(|()| created(repo, &expected))
}

impl Registry {
    /// The CAS blob `cas` (`<BLAKE3 hex>/<size>`), if the CAS holds it and the SHA-256 the
    /// server computed when it verified the blob's upload is `sha256`. The client names the
    /// blob; only the server's own hash decides whether it is the one asked for.
    async fn cas_blob_with_sha256(&self, cas: &str, sha256: Sha256Digest) -> RegistryResult<Option<Digest>> {
        let digest: Digest = cas.parse().map_err(|err| {
            RegistryError::new(Code::DigestInvalid, format!("cas={cas:?} is not a CAS digest: {err}"))
        })?;
        let store = std::sync::Arc::clone(self.cas.store());
        let info = crate::task::spawn_blocking("registry cas stat", move || store.stat(&[digest]))
            .await
            .map_err(crate::error::Error::from)??;
        Ok(info.first().copied().flatten().filter(|info| info.sha256 == sha256.0).map(|_| digest))
    }
}

/// PATCH: appends a chunk; with `Content-Range`, only at the end of what the session holds.
pub(super) async fn patch(
    registry: &Registry,
    repo: &Repository,
    id: &str,
    call: Call,
) -> RegistryResult<Response> {
    let entry = registry.uploads.get(repo, id, &call.grant.token)?;
    let mut session = entry.session.lock().await;
    check_content_range(&call, repo, id, session.written)?;
    if let Err(err) = append(&mut session, call.body, &registry.uploads.limits).await {
        drop(session);
        registry.uploads.remove(id);
        return Err(err);
    }
    Ok(accepted(repo, id, session.written, StatusCode::ACCEPTED))
}

/// A chunk must start where the session ends: 416 with the session's range otherwise.
fn check_content_range(call: &Call, repo: &Repository, id: &str, written: u64) -> RegistryResult<()> {
    let Some(value) = call.headers.get(header::CONTENT_RANGE).and_then(|value| value.to_str().ok()) else {
        return Ok(());
    };
    let spec = value.trim().trim_start_matches("bytes").trim_start_matches([' ', '=']);
    let start = spec.split_once('-').and_then(|(start, _)| start.trim().parse::<u64>().ok());
    if start == Some(written) {
        return Ok(());
    }
    Err(RegistryError::new(
        Code::BlobUploadInvalid,
        format!("chunk range {value:?} does not start at byte {written}, where the upload ends"),
    )
    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    .with_header(header::RANGE, range(written))
    .with_header(header::LOCATION, location(repo, id)))
}

/// PUT `?digest=`: the last chunk (if any), then the digest check and the store.
pub(super) async fn finish(
    registry: &Registry,
    repo: &Repository,
    id: &str,
    call: Call,
) -> RegistryResult<Response> {
    let entry = registry.uploads.get(repo, id, &call.grant.token)?;
    let Some(expected) = call.param("digest").map(Sha256Digest::parse).transpose()? else {
        return Err(RegistryError::new(Code::DigestInvalid, "closing an upload needs ?digest="));
    };
    {
        let session = entry.session.lock().await;
        check_content_range(&call, repo, id, session.written)?;
    }
    let result = complete(registry, repo, &entry, call.body, expected).await;
    registry.uploads.remove(id);
    result.map(|()| created(repo, &expected))
}

pub(super) fn status(
    registry: &Registry,
    repo: &Repository,
    id: &str,
    token: &str,
) -> RegistryResult<Response> {
    let entry = registry.uploads.find(repo, id, token)?;
    let written = entry.session.try_lock().map(|session| session.written).map_err(|_| {
        RegistryError::new(Code::TooManyRequests, format!("upload {id} is receiving a chunk; ask again"))
    })?;
    Ok(accepted(repo, id, written, StatusCode::NO_CONTENT))
}

pub(super) async fn cancel(
    registry: &Registry,
    repo: &Repository,
    id: &str,
    token: &str,
) -> RegistryResult<Response> {
    let entry = registry.uploads.get(repo, id, token)?;
    let _session = entry.session.lock().await;
    registry.uploads.remove(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Appends `body` to the session's spool file, hashing it, within `max` bytes in all. A body
/// that keeps the server waiting longer than `pace` allows is cut off: otherwise a client
/// trickling a byte now and then holds an upload slot for ever.
async fn append(session: &mut Session, body: Body, limits: &UploadLimits) -> RegistryResult<()> {
    let max = limits.max_blob_size;
    check_free_space(&limits.space)?;
    let mut unchecked = 0u64;
    let mut file = tokio::fs::OpenOptions::new().append(true).open(&session.path).await.map_err(io_error)?;
    let mut data = body.into_data_stream();
    let (mut waited, mut received) = (Duration::ZERO, 0u64);
    loop {
        let allowance = limits.pace.allowance(waited, received);
        let started = Instant::now();
        let Ok(next) = tokio::time::timeout(allowance, data.next()).await else {
            let why = limits.pace.overdue(waited, allowance, received).unwrap_or_default();
            return Err(RegistryError::new(
                Code::BlobUploadInvalid,
                format!("the upload was cut off for being too slow ({why})"),
            ));
        };
        waited += started.elapsed();
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|err| {
            RegistryError::new(Code::BlobUploadInvalid, format!("the upload was cut off: {err}"))
        })?;
        if session.written + chunk.len() as u64 > max {
            return Err(RegistryError::new(
                Code::SizeInvalid,
                format!("the blob is larger than the server's limit of {max} bytes (max_blob_size)"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        session.pending.add(chunk.len() as u64).map_err(RegistryError::from)?;
        unchecked += chunk.len() as u64;
        if unchecked >= SPOOL_RECHECK {
            unchecked = 0;
            check_free_space(&limits.space)?;
        }
        file.write_all(&chunk).await.map_err(io_error)?;
        session.sha256.update(&chunk);
        session.blake3.update(&chunk);
        session.written += chunk.len() as u64;
        received += chunk.len() as u64;
    }
    file.flush().await.map_err(io_error)
}

/// Appends the last chunk, checks the whole blob's SHA-256 against `expected`, and stores and
/// links it only on a match.
async fn complete(
    registry: &Registry,
    repo: &Repository,
    entry: &Entry,
    body: Body,
    expected: Sha256Digest,
) -> RegistryResult<()> {
    let mut session = entry.session.lock().await;
    append(&mut session, body, &registry.uploads.limits).await?;
    let actual = Sha256Digest(session.sha256.clone().finalize().into());
    if actual != expected {
        return Err(RegistryError::new(
            Code::DigestInvalid,
            format!(
                "the upload's {} bytes have digest {actual}, not {expected}; nothing was stored",
                session.written
            ),
        ));
    }
    let digest = Digest::from_hasher(&session.blake3, session.written);
    if !registry.cas.contains(vec![digest]).await?[0] {
        let file = tokio::fs::File::open(&session.path).await.map_err(io_error)?;
        registry
            .cas
            .upload(digest, Encoding::Identity, Box::pin(read_chunks(file)), &DecodeBudget::unmetered())
            .await?;
    }
    link(registry, repo, expected, digest).await
}

async fn link(
    registry: &Registry,
    repo: &Repository,
    sha256: Sha256Digest,
    digest: Digest,
) -> RegistryResult<()> {
    // A mount writes no spool, only this record: not below the floor either.
    check_free_space(&registry.space)?;
    // The repository now relies on the blob, whoever stored it first.
    registry.cas.claim(vec![digest]).await?;
    let (repo, bound) = (repo.clone(), std::sync::Arc::clone(&registry.bound));
    registry
        .records("registry link", move |records| {
            let counted = records.link_blob(&repo, &sha256, &digest)?;
            bound.count(records, counted);
            Ok(())
        })
        .await?;
    Ok(())
}

/// The spool file in frame-sized pieces.
fn read_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = crate::error::Result<Bytes>> {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; FRAME_SIZE];
        let mut filled = 0;
        while filled < buffer.len() {
            let read = file.read(&mut buffer[filled..]).await.map_err(|err| {
                crate::error::Error::Internal(format!("reading the registry upload spool: {err}"))
            })?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            return Ok(None);
        }
        buffer.truncate(filled);
        Ok(Some((Bytes::from(buffer), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads(dir: &std::path::Path, timeout: Duration) -> Uploads {
        let pace = Pace { idle: Duration::from_secs(60), min_rate: 0 };
        let space = Arc::new(FreeSpace::new(dir.to_owned(), 0));
        let limits = UploadLimits { timeout, per_namespace: 2, max_blob_size: 1 << 20, pace, space };
        Uploads::open(dir.join("spool"), limits).unwrap()
    }

    #[test]
    fn sessions_are_capped_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = uploads(dir.path(), Duration::from_secs(3600));
        let (app, lib) = (Repository::parse("main/app").unwrap(), Repository::parse("main/lib").unwrap());
        uploads.create(&app, "ci", "ci").unwrap();
        let own = uploads.create(&lib, "ci", "ci").unwrap_err();
        assert!(own.to_string().contains("token `ci`"), "half of the namespace's room per token: {own}");
        uploads.create(&lib, "dev", "dev").unwrap();
        let refused = uploads.create(&app, "other", "other").unwrap_err();
        assert_eq!(refused.code, Code::TooManyRequests, "{refused}");
        assert!(refused.to_string().contains("namespace `main`"), "{refused}");
        assert!(
            uploads.create(&Repository::parse("pr-7/app").unwrap(), "ci", "ci").is_ok(),
            "another namespace has its own"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("spool")).unwrap().count(),
            3,
            "a refused session leaves no file"
        );
    }

    #[test]
    fn sessions_are_capped_per_token_across_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = uploads(dir.path(), Duration::from_secs(3600));
        let repo = |i: usize| Repository::parse(&format!("team-{i}/app")).unwrap();
        for i in 0..MAX_UPLOADS_PER_TOKEN {
            uploads.create(&repo(i), "everywhere", "everywhere").unwrap();
        }
        let refused = uploads.create(&repo(MAX_UPLOADS_PER_TOKEN), "everywhere", "everywhere").unwrap_err();
        assert_eq!(refused.code, Code::TooManyRequests, "{refused}");
        assert!(refused.to_string().contains("token `everywhere`"), "{refused}");
        uploads.create(&repo(MAX_UPLOADS_PER_TOKEN), "other", "other").expect("another token has its own");
        for i in 0..MAX_UPLOADS_PER_TOKEN + 1 {
            uploads
                .create(&repo(i), Grant::ANONYMOUS, Grant::ANONYMOUS)
                .expect("callers without tokens are one party");
        }
    }

    /// Four tokens of wide patterns, or one submitter's leases, took all 1024 sessions and every
    /// other tenant was refused for the sessions' hour: a token holding sessions leaves room
    /// for one holding none, and one submitter's leases count as one token.
    #[test]
    fn sessions_leave_room_for_a_token_holding_none_and_leases_count_as_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = uploads(dir.path(), Duration::from_secs(3600));
        let repo = |i: usize| Repository::parse(&format!("pr-{i}/app")).unwrap();
        let lease = |task: usize| format!("lease:1a2b-cc/{task}/1");
        let mut refused = None;
        for i in 0..MAX_UPLOADS_PER_TOKEN + 1 {
            if let Err(err) = uploads.create(&repo(i), &lease(i), "lease:pr-7") {
                refused = Some((i, err));
                break;
            }
        }
        let (taken, err) = refused.expect("a tenant's leases took more than one token's sessions");
        assert_eq!(taken, MAX_UPLOADS_PER_TOKEN, "{err}");
        assert!(err.to_string().contains("the job leases of `pr-7`"), "{err}");
        let mut last_refusal = None;
        for (k, token) in ["wide-1", "wide-2", "wide-3"].into_iter().enumerate() {
            for i in 0..MAX_UPLOADS_PER_TOKEN {
                if let Err(err) = uploads.create(&repo((k + 1) * 1000 + i), token, token) {
                    last_refusal = Some(err);
                    break;
                }
            }
        }
        let err = last_refusal.expect("the wide tokens were refused");
        assert!(err.to_string().contains("for callers holding none"), "{err}");
        uploads.create(&repo(9000), "late", "late").expect("room kept for a token holding none");
    }

    #[test]
    fn expired_sessions_go_with_their_spool_and_a_restart_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = uploads(dir.path(), Duration::ZERO);
        let repo = Repository::parse("main/app").unwrap();
        let id = uploads.create(&repo, "ci", "ci").unwrap();
        assert!(
            uploads.get(&Repository::parse("main/other").unwrap(), &id, "ci").is_err(),
            "a session is its repository's"
        );
        assert!(uploads.get(&repo, &id, "other").is_err(), "a session is its token's");
        assert!(uploads.get(&repo, &id, "ci").is_ok());
        std::thread::sleep(Duration::from_millis(5));
        uploads.sweep();
        assert_eq!(uploads.get(&repo, &id, "ci").err().map(|err| err.code), Some(Code::BlobUploadUnknown));
        assert_eq!(std::fs::read_dir(dir.path().join("spool")).unwrap().count(), 0);

        let kept = self::uploads(dir.path(), Duration::from_secs(3600));
        kept.create(&repo, "ci", "ci").unwrap();
        drop(kept);
        let reopened = self::uploads(dir.path(), Duration::from_secs(3600));
        assert_eq!(std::fs::read_dir(dir.path().join("spool")).unwrap().count(), 0);
        drop(reopened);
    }
}
