//! Blob pulls (GET and HEAD, with `Range`) and deletes. A repository's blob is a link from its
//! SHA-256 to a CAS blob; a link whose blob was evicted is a miss and is removed.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, StatusCode, header};
use proto::Digest;
use tokio_stream::wrappers::ReceiverStream;

use super::Registry;
use super::errors::{Code, RegistryError, RegistryResult};
use super::names::{Repository, Sha256Digest};
use crate::cas::Encoding;

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
        let owned = repo.clone();
        let Some(digest) =
            self.records("registry blob", move |records| records.blob(&owned, &sha256)).await?
        else {
            return Ok(None);
        };
        if self.cas.contains(vec![digest]).await?[0] {
            return Ok(Some(digest));
        }
        let owned = repo.clone();
        self.records("registry unlink", move |records| records.unlink_blob(&owned, &sha256)).await?;
        Ok(None)
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
    let range = match headers.get(header::RANGE).and_then(|value| value.to_str().ok()) {
        Some(value) if !head_only => Some(parse_range(value, digest.size)?),
        _ => None,
    };
    let (start, end) = range.unwrap_or((0, digest.size));
    let mut response = if head_only || start == end {
        Response::new(Body::empty())
    } else {
        // One of the token's CAS streams (max_streams_per_token), as a Cas.Read would take,
        // held for as long as the body is sent.
        let slot = registry.auth.stream_slot(request.token)?;
        let chunks = registry.cas.download(digest, start, end - start, Encoding::Identity).await?;
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
