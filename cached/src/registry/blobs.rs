//! Blob pulls (GET and HEAD, with `Range`) and deletes. A repository's blob is a link from its
//! SHA-256 to a CAS blob; a link whose blob was evicted is a miss and is removed. One whose
//! blob the shared tier was not asked about (`shared::presence`) is a miss and stays.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, StatusCode, header};
use proto::Digest;
use tokio::sync::mpsc::Receiver;
use tokio_stream::wrappers::ReceiverStream;

use super::errors::{Code, RegistryError, RegistryResult};
use super::names::{Repository, Sha256Digest};
use super::{Registry, RegistryRecords};
use crate::cas::{Encoding, ReadChunk};
use crate::error::{Error, Result};
use crate::shared::Presence;
use crate::store::BlobStore;

pub(super) const DIGEST_HEADER: &str = "docker-content-digest";

fn unknown(repo: &Repository, sha256: &Sha256Digest) -> RegistryError {
    RegistryError::new(Code::BlobUnknown, format!("blob {sha256} is not in {repo}"))
}

impl Registry {
    /// The CAS digest of `sha256` in `repo`, if the repository holds it and the CAS still does.
    pub(super) async fn resolve_blob(
        &self,
        repo: &Repository,
        sha256: Sha256Digest,
    ) -> RegistryResult<Option<Digest>> {
        let (owned, store) = (repo.clone(), Arc::clone(self.cas.store()));
        Ok(self.records("registry blob", move |records| resolve(records, &*store, &owned, &sha256)).await?)
    }

    /// Whether the CAS holds each of `digests`, and whether a miss is proof.
    pub(super) async fn blob_presence(&self, digests: Vec<Digest>) -> Result<Vec<Presence>> {
        let store = Arc::clone(self.cas.store());
        crate::task::spawn_blocking("registry blob presence", move || {
            crate::shared::presence(&*store, &digests)
        })
        .await?
    }
}

/// `Registry::resolve_blob`, on a blocking thread.
fn resolve(
    records: &dyn RegistryRecords,
    store: &dyn BlobStore,
    repo: &Repository,
    sha256: &Sha256Digest,
) -> Result<Option<Digest>> {
    let Some(digest) = records.blob(repo, sha256)? else { return Ok(None) };
    match crate::shared::presence(store, &[digest])?[0] {
        Presence::Held => Ok(Some(digest)),
        // Every replica reads the link: only proof its blob is gone may drop it, not the
        // caller's spent lookups nor this replica's trouble with the bucket.
        Presence::Unknown => Ok(None),
        Presence::Absent => {
            records.unlink_blob(repo, sha256)?;
            Ok(None)
        }
    }
}

/// What of a blob GET's request the answer needs.
pub(super) struct BlobRequest<'a> {
    pub headers: &'a HeaderMap,
    /// The caller's token name, whose streams the download counts against.
    pub token: &'a str,
}

pub(super) async fn get(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
    request: BlobRequest<'_>,
    head_only: bool,
) -> RegistryResult<Response> {
    let headers = request.headers;
    let sha256 = Sha256Digest::parse(reference)?;
    let digest = registry.resolve_blob(repo, sha256).await?.ok_or_else(|| unknown(repo, &sha256))?;
    let mut range = match headers.get(header::RANGE).and_then(|value| value.to_str().ok()) {
        Some(value) if !head_only => Some(parse_range(value, digest.size)?),
        _ => None,
    };
    let (mut start, mut end) = range.unwrap_or((0, digest.size));
    let mut response = if head_only || start == end {
        Response::new(Body::empty())
    } else {
        // One of the token's CAS streams (max_streams_per_token), as a Cas.Read would take,
        // held for as long as the body is sent.
        let slot = registry.auth.stream_slot(request.token)?;
        let (served, chunks) = download(registry, digest, range).await?;
        (range, (start, end)) = (served, served.unwrap_or((0, digest.size)));
        let body = ReceiverStream::new(chunks).map(move |chunk| {
            let _held = &slot;
            chunk.map(|chunk| chunk.data)
        });
        Response::new(Body::from_stream(body))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, (end - start).into());
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
    insert(headers, DIGEST_HEADER, &sha256.to_string());
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {start}-{}/{}", end.saturating_sub(1), digest.size);
        insert(response.headers_mut(), header::CONTENT_RANGE.as_str(), &content_range);
    }
    Ok(response)
}

/// The bytes of `range` (all of the blob without one), and the range they are. A part of a
/// blob is served only where it is held, and this replica would have to copy all of it from
/// the bucket first: the whole blob is the answer then (HTTP lets a server ignore Range), so
/// what it copies is what the reply carries.
async fn download(
    registry: &Registry,
    digest: Digest,
    range: Option<(u64, u64)>,
) -> Result<(Option<(u64, u64)>, Receiver<Result<ReadChunk>>)> {
    let Some((start, end)) = range else {
        return Ok((None, registry.cas.download(digest, 0, 0, Encoding::Identity).await?));
    };
    match registry.cas.download(digest, start, end - start, Encoding::Identity).await {
        Err(Error::NotFound(_)) => Ok((None, registry.cas.download(digest, 0, 0, Encoding::Identity).await?)),
        chunks => Ok((range, chunks?)),
    }
}

pub(super) fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(name), header::HeaderValue::from_str(value))
    {
        headers.insert(name, value);
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` as `[start, end)` within `size`; 416 when it is not.
fn parse_range(value: &str, size: u64) -> RegistryResult<(u64, u64)> {
    let unsatisfiable = || {
        RegistryError::new(
            Code::BlobUnknown,
            format!("range {value:?} is not within the blob's {size} bytes"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
    };
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    let (first, last) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let number = |text: &str| text.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (false, false) => (number(first)?, number(last)?.saturating_add(1).min(size)),
        (false, true) => (number(first)?, size),
        (true, false) => (size.saturating_sub(number(last)?), size),
        (true, true) => return Err(unsatisfiable()),
    };
    if start >= end || start >= size {
        return Err(unsatisfiable());
    }
    Ok((start, end))
}

pub(super) async fn delete(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
) -> RegistryResult<Response> {
    let sha256 = Sha256Digest::parse(reference)?;
    let owned = repo.clone();
    // Only the link goes: the CAS blob may serve other repositories and builds, and eviction
    // reclaims it once nothing reads it.
    let held =
        registry.records("registry unlink", move |records| records.unlink_blob(&owned, &sha256)).await?;
    if !held {
        return Err(unknown(repo, &sha256));
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RocksRegistry;
    use crate::shared::testing::{SharedBucket, as_token, put, spend_lookups};

    fn layer() -> (Repository, Sha256Digest) {
        (Repository::parse("main/app").unwrap(), Sha256Digest([7; 32]))
    }

    /// A read-only token that spent its own lookups on replica B pulls (HEAD or GET) another
    /// namespace's blob, which B does not hold: a miss for it, and the link every replica reads
    /// stays.
    #[test]
    fn a_pull_that_may_not_ask_the_bucket_leaves_the_link() {
        let shared = SharedBucket::new();
        let (a, b) = (shared.replica(), shared.replica());
        let records = RocksRegistry::new(Arc::clone(&a.db));
        let (repo, sha256) = layer();
        let digest = put(a.store.as_ref(), b"a layer");
        records.link_blob(&repo, &sha256, &digest).unwrap();

        spend_lookups(&b, "observer");
        let observed = as_token("observer", || resolve(&records, b.store.as_ref(), &repo, &sha256)).unwrap();
        assert_eq!(observed, None);
        assert_eq!(records.blob(&repo, &sha256).unwrap(), Some(digest), "the link went");
        assert_eq!(resolve(&records, a.store.as_ref(), &repo, &sha256).unwrap(), Some(digest));
        assert_eq!(resolve(&records, b.store.as_ref(), &repo, &sha256).unwrap(), Some(digest));
    }

    /// A blob the bucket says it does not have is gone for every replica: its link goes.
    #[test]
    fn a_link_the_bucket_says_is_gone_goes() {
        let shared = SharedBucket::new();
        let (a, b) = (shared.replica(), shared.replica());
        let records = RocksRegistry::new(Arc::clone(&a.db));
        let (repo, sha256) = layer();
        // Stored on A's disk alone, as before A had a shared tier.
        let digest = put(&crate::store::Verified::new(a.rocks.clone()), b"local");
        records.link_blob(&repo, &sha256, &digest).unwrap();

        assert_eq!(resolve(&records, b.store.as_ref(), &repo, &sha256).unwrap(), None);
        assert_eq!(records.blob(&repo, &sha256).unwrap(), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 10));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), (90, 100));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), (90, 100));
        assert_eq!(parse_range("bytes=95-200", 100).unwrap(), (95, 100));
        for bad in ["bytes=100-", "bytes=5-2", "items=0-1", "bytes=-", "bytes=x-1"] {
            assert_eq!(parse_range(bad, 100).unwrap_err().status, StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        }
    }
}
