//! Manifests: pulls by tag or digest, pushes (exact bytes, every referenced blob and child
//! manifest present, at most 4096 of them distinct, Content-Type equal to the manifest's
//! mediaType, at most 4 MiB), and deletes. A manifest with a `subject` is listed by the
//! referrers API and answered with `OCI-Subject`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{StatusCode, header};
use serde::Deserialize;

use super::auth;
use super::blobs::{DIGEST_HEADER, insert};
use super::buffers::{BodyReservation, held_body};
use super::errors::{Code, RegistryError, RegistryResult};
use super::names::{Repository, Sha256Digest, check_tag};
use super::reach::{MAX_REACHED_MANIFEST_BYTES, MAX_REACHED_RECORDS, Reached, TooLarge, keep_subjects};
use super::records::{
    MAX_DESCRIPTOR_BYTES, MAX_REFERRERS, MAX_REFERRERS_BYTES, ManifestPut, ManifestWrite, Recorded,
    StoredManifest,
};
use super::routes::Call;
use super::{Registry, check_free_space};
use crate::auth::Scope;
use crate::shared::Presence;

/// The largest manifest accepted: what the spec suggests registries accept at least.
pub(super) const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The parts of a manifest or index the registry checks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    media_type: Option<String>,
    artifact_type: Option<String>,
    pub(super) config: Option<Descriptor>,
    #[serde(default)]
    pub(super) layers: Vec<Descriptor>,
    #[serde(default)]
    pub(super) manifests: Vec<Descriptor>,
    pub(super) subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) urls: Vec<String>,
}

/// The fields of manifests, indexes and descriptors, as the specs spell them.
const FIELDS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "digest",
    "size",
    "urls",
    "data",
    "platform",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "features",
];

/// Refuses a field named as a known one but for its case (`"Subject"`, `"MEDIATYPE"`, and
/// any name not in ASCII, which Go folds too: `"ſubject"`): the checks here read the exact
/// names, while Go clients (containerd, cosign) match names without case, so such a field
/// would pass the checks unseen and still be read by them. Annotation keys are the pusher's
/// own.
fn check_field_names(value: &serde_json::Value) -> RegistryResult<()> {
    match value {
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                // Go folds case the Unicode way too: `ſubject` is `subject` to it.
                if !name.is_ascii() {
                    return Err(invalid(format!(
                        "the manifest has a field {name:?}; field names are ASCII (annotation keys aside)"
                    )));
                }
                if let Some(known) =
                    FIELDS.iter().find(|known| known.eq_ignore_ascii_case(name) && **known != name)
                {
                    return Err(invalid(format!(
                        "the manifest has a field {name:?}; spell it {known:?} (field names are matched by case)"
                    )));
                }
                if name != "annotations" {
                    check_field_names(field)?;
                }
            }
            Ok(())
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_field_names),
        _ => Ok(()),
    }
}

fn unknown(repo: &Repository, reference: &str) -> RegistryError {
    RegistryError::new(Code::ManifestUnknown, format!("manifest {reference} is not in {repo}"))
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError::new(Code::ManifestInvalid, message)
}

impl Registry {
    /// The digest `reference` (a tag or a digest) names in `repo`, if any.
    async fn resolve_reference(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> RegistryResult<Option<Sha256Digest>> {
        if Sha256Digest::looks_like_digest(reference) {
            return Ok(Some(Sha256Digest::parse(reference)?));
        }
        check_tag(reference)?;
        let (repo, tag) = (repo.clone(), reference.to_owned());
        Ok(self.records("registry tag", move |records| records.tag(&repo, &tag)).await?)
    }

    async fn stored_manifest(
        &self,
        repo: &Repository,
        digest: Sha256Digest,
    ) -> RegistryResult<Option<StoredManifest>> {
        let repo = repo.clone();
        Ok(self.records("registry manifest", move |records| records.manifest(&repo, &digest)).await?)
    }
}

pub(super) async fn get(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
    token: &str,
    head_only: bool,
) -> RegistryResult<Response> {
    let digest =
        registry.resolve_reference(repo, reference).await?.ok_or_else(|| unknown(repo, reference))?;
    let manifest = registry.stored_manifest(repo, digest).await?.ok_or_else(|| unknown(repo, reference))?;
    let length = manifest.bytes.len();
    let body = if head_only {
        Body::empty()
    } else {
        let reservation = registry.pulls.reserve(token, None, length as u64)?;
        held_body(manifest.bytes, reservation)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    insert(headers, header::CONTENT_TYPE.as_str(), &manifest.media_type);
    headers.insert(header::CONTENT_LENGTH, length.into());
    insert(headers, DIGEST_HEADER, &digest.to_string());
    Ok(response)
}

pub(super) async fn put(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
    mut call: Call,
) -> RegistryResult<Response> {
    let by_digest = Sha256Digest::looks_like_digest(reference);
    // A manifest by digest is content-addressed; a tag is a pointer whoever may move decides
    // what every pull of it gets.
    auth::check(&call.grant, if by_digest { Scope::CasWrite } else { Scope::AcWrite }, repo)?;
    if !by_digest {
        check_tag(reference)?;
    }
    let content_type =
        call.headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let (bytes, _reservation) = read_limited(registry, repo, &mut call).await?;
    let digest = Sha256Digest::of(&bytes);
    if by_digest && Sha256Digest::parse(reference)? != digest {
        return Err(RegistryError::new(
            Code::DigestInvalid,
            format!("the manifest's digest is {digest}, not {reference}; nothing was stored"),
        ));
    }
    let document: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|err| invalid(format!("not a manifest: {err}")))?;
    check_field_names(&document)?;
    let manifest: Manifest =
        serde_json::from_value(document).map_err(|err| invalid(format!("not a manifest: {err}")))?;
    if manifest.subject.is_some() {
        check_referrer_scope(&call.grant, repo)?;
    }
    let media_type = media_type(&manifest, content_type.as_deref())?;
    let used = check_references(registry, repo, &manifest).await?;
    let referrer = match &manifest.subject {
        Some(subject) => Some((
            Sha256Digest::parse(&subject.digest)?,
            referrer_descriptor(&manifest, &media_type, digest, bytes.len())?,
        )),
        None => None,
    };
    let subject = referrer.as_ref().map(|(subject, _)| *subject);
    check_free_space(&registry.space)?;
    let stored = StoredManifest { media_type, bytes };
    let (owned, tag) = (repo.clone(), (!by_digest).then(|| reference.to_owned()));
    let (bound, names) = (Arc::clone(&registry.bound), Arc::clone(&registry.manifest_names));
    let put = registry
        .records("registry manifest put", move |records| {
            let write = ManifestWrite { digest, manifest: &stored, tag: tag.as_deref(), referrer };
            let loose = write.is_loose();
            let reached = match Reached::below(records, &names, &owned, used)? {
                Ok(reached) => reached,
                Err(TooLarge) => return Ok(Err(Refusal::TooLarge)),
            };
            if let Some(missing) = reached.check(records, loose)? {
                return Ok(Err(Refusal::Gone(missing)));
            }
            let put = records.put_manifest(&owned, write)?;
            if let ManifestPut::Stored { counted } = put {
                // Before counting, which may forget.
                reached.retime(records);
                if !loose {
                    let subjects = subject.map(|digest| Recorded::Manifest {
                        repo: owned.clone(),
                        digest,
                        subject: None,
                    });
                    let subjects = subjects.into_iter().chain(reached.subjects).collect();
                    keep_subjects(records, &names, &owned, subjects);
                }
                bound.count(records, counted);
            }
            Ok(Ok(put))
        })
        .await?
        .map_err(|refusal| refusal.error(repo))?;
    refuse_unstored(put, repo, digest, subject)?;
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    insert(headers, header::LOCATION.as_str(), &format!("/v2/{repo}/manifests/{digest}"));
    insert(headers, DIGEST_HEADER, &digest.to_string());
    if let Some(subject) = subject {
        insert(headers, "oci-subject", &subject.to_string());
    }
    headers.insert(header::CONTENT_LENGTH, 0.into());
    Ok(response)
}

/// The refusal of a push the records did not store.
fn refuse_unstored(
    put: ManifestPut,
    repo: &Repository,
    digest: Sha256Digest,
    subject: Option<Sha256Digest>,
) -> RegistryResult<()> {
    match put {
        ManifestPut::Stored { .. } => Ok(()),
        ManifestPut::ReferrersFull => {
            let subject = subject.map(|subject| subject.to_string()).unwrap_or_default();
            Err(invalid(format!(
                "{subject} already has as many referrers in {repo} as the referrers API lists in \
                 one reply ({MAX_REFERRERS}, in at most {MAX_REFERRERS_BYTES} bytes of descriptors); \
                 delete some (admin) before pushing more; nothing was stored"
            )))
        }
        // Content-addressed means the same answer for every pull: a later push, which
        // `cas-write` may make, must not relabel what others pull (an image as an index).
        ManifestPut::MediaTypeDiffers(stored) => Err(invalid(format!(
            "manifest {digest} is stored in {repo} as {stored:?}, and a stored manifest never \
             changes; push it with Content-Type {stored:?}, or have it deleted (admin) first; \
             nothing was stored"
        ))),
    }
}

/// A manifest with a `subject` is listed by the referrers API to everyone who asks what
/// refers to that subject (its signatures, SBOMs, attestations), so, like moving a tag, it
/// decides what others get: by digest too, it needs `ac-write`, not only `cas-write`.
fn check_referrer_scope(grant: &crate::auth::Grant, repo: &Repository) -> RegistryResult<()> {
    auth::check(grant, Scope::AcWrite, repo).map_err(|mut err| {
        err.message = format!(
            "a manifest with a subject is listed as that subject's referrer (a signature, SBOM or \
             attestation) to everyone who pulls it, so pushing one needs `ac-write`: {}",
            err.message
        );
        err
    })
}

/// The body, refused with 413 past [`MAX_MANIFEST_BYTES`] without reading further, with the
/// room it holds in memory, taken as its bytes arrive (a declared length nobody sends holds
/// nothing). The whole body must come within `idle_timeout` of the request: manifests are
/// small, and a client that sent most of one and then a byte now and then would hold its room
/// for as long as the bytes it sent earned under `min_transfer_rate`.
async fn read_limited(
    registry: &Registry,
    repo: &Repository,
    call: &mut Call,
) -> RegistryResult<(Bytes, BodyReservation)> {
    let too_large = || {
        invalid(format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes; nothing was stored"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = call
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_MANIFEST_BYTES) {
        return Err(too_large());
    }
    let mut reservation = registry.pushes.reserve(&call.grant.budget(), Some(repo.namespace()), 0)?;
    let mut data = std::mem::take(&mut call.body).into_data_stream();
    // Chunks as they came, joined at the end: a growing buffer would hold up to twice what
    // the reservation counts.
    let (mut chunks, mut received) = (Vec::new(), 0usize);
    let deadline = tokio::time::Instant::now() + registry.pace.idle;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, data.next()).await else {
            let waited = humantime::format_duration(registry.pace.idle);
            return Err(invalid(format!(
                "the manifest was cut off: {received} bytes came in {waited} (idle_timeout), the most a \
                 manifest body may take; nothing was stored"
            )));
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|err| invalid(format!("the manifest was cut off: {err}; nothing was stored")))?;
        if received + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        reservation.grow(chunk.len() as u64)?;
        received += chunk.len();
        chunks.push(chunk);
    }
    Ok((chunks.concat().into(), reservation))
}

/// The media type to serve the manifest with: its own `mediaType`, which `Content-Type` must
/// equal; without one, `Content-Type`.
fn media_type(manifest: &Manifest, content_type: Option<&str>) -> RegistryResult<String> {
    let content_type = content_type.map(|value| value.split(';').next().unwrap_or(value).trim());
    match (manifest.media_type.as_deref(), content_type) {
        (Some(own), Some(sent)) if own != sent => {
            Err(invalid(format!("Content-Type {sent:?} is not the manifest's mediaType {own:?}")))
        }
        (Some(own), _) => Ok(own.to_owned()),
        (None, Some(sent)) => Ok(sent.to_owned()),
        (None, None) => Err(invalid("the manifest has no mediaType and the request no Content-Type")),
    }
}

/// Most distinct blobs and child manifests one manifest may name. Each is looked up before the
/// push is stored and marked used after it, while every other registry write waits: images
/// have tens of layers and indexes tens of platforms, but a 4 MiB index could name 40,000.
pub(super) const MAX_REFERENCES: usize = 4096;

/// What a manifest names that the repository lacks.
enum Lacking {
    /// The blob at this index of the blobs checked.
    Blob(usize),
    Manifest(Sha256Digest),
}

/// Every blob and child manifest the manifest names must be in the repository (layers that are
/// fetched from elsewhere, `urls`, excepted); the subject need not be. Returns them: a push
/// uses them, which keeps them from being the oldest records the registry forgets. What is
/// named twice (one manifest for two platforms) is checked and used once, all of it in one
/// lookup of the records and one of the CAS, and children without reading their bytes.
async fn check_references(
    registry: &Registry,
    repo: &Repository,
    manifest: &Manifest,
) -> RegistryResult<Vec<Recorded>> {
    let parse =
        |descriptor: &Descriptor| Sha256Digest::parse(&descriptor.digest).map_err(|err| invalid(err.message));
    let (mut blobs, mut seen) = (Vec::new(), HashSet::new());
    for descriptor in
        manifest.config.iter().chain(manifest.layers.iter().filter(|layer| layer.urls.is_empty()))
    {
        let sha256 = parse(descriptor)?;
        if seen.insert(sha256) {
            blobs.push((sha256, descriptor.media_type.as_str()));
        }
    }
    let (mut children, mut seen) = (Vec::new(), HashSet::new());
    for child in &manifest.manifests {
        let sha256 = parse(child)?;
        if seen.insert(sha256) {
            children.push(sha256);
        }
    }
    if blobs.len() + children.len() > MAX_REFERENCES {
        return Err(invalid(format!(
            "the manifest names {} distinct blobs and child manifests, more than the \
             {MAX_REFERENCES} a manifest may name; nothing was stored",
            blobs.len() + children.len()
        )));
    }
    let blob_unknown = |index: usize| {
        let (sha256, media_type) = blobs[index];
        RegistryError::new(
            Code::ManifestBlobUnknown,
            format!("blob {sha256} ({media_type}) is not in {repo}; push it first"),
        )
    };
    let (owned, digests, named) =
        (repo.clone(), blobs.iter().map(|(sha256, _)| *sha256).collect::<Vec<_>>(), children.clone());
    let found = registry
        .records("registry manifest references", move |records| {
            let mut links = Vec::with_capacity(digests.len());
            for (index, link) in records.blobs(&owned, &digests)?.into_iter().enumerate() {
                match link {
                    Some(link) => links.push(link),
                    None => return Ok(Err(Lacking::Blob(index))),
                }
            }
            let held = records.has_manifests(&owned, &named)?;
            if let Some((child, _)) = named.iter().zip(held).find(|(_, held)| !held) {
                return Ok(Err(Lacking::Manifest(*child)));
            }
            Ok(Ok(links))
        })
        .await?;
    let links = match found {
        Ok(links) => links,
        Err(Lacking::Blob(index)) => return Err(blob_unknown(index)),
        Err(Lacking::Manifest(sha256)) => {
            return Err(RegistryError::new(
                Code::ManifestBlobUnknown,
                format!("manifest {sha256} is not in {repo}; push the children before the index"),
            ));
        }
    };
    if !links.is_empty() {
        // The manifest relies on its blobs, whoever pushed or stored them first.
        registry.cas.claim(links.clone()).await?;
        // A link whose CAS blob is gone (evicted) is no blob: it is dropped, as a pull drops it.
        let present = registry.blob_presence(links).await?;
        let gone: Vec<usize> = present
            .iter()
            .enumerate()
            .filter(|(_, held)| **held == Presence::Absent)
            .map(|(i, _)| i)
            .collect();
        if let Some(&first) = gone.first() {
            let (owned, unlink) = (repo.clone(), gone.iter().map(|&i| blobs[i].0).collect::<Vec<_>>());
            registry
                .records("registry unlink", move |records| {
                    unlink.iter().try_for_each(|sha256| records.unlink_blob(&owned, sha256).map(drop))
                })
                .await?;
            return Err(blob_unknown(first));
        }
        // One the shared tier was not asked about is refused for this push, and its link kept.
        if let Some(first) = present.iter().position(|held| *held == Presence::Unknown) {
            return Err(blob_unknown(first));
        }
    }
    let blobs = blobs.into_iter().map(|(sha256, _)| Recorded::Blob { repo: repo.clone(), sha256 });
    let children =
        children.into_iter().map(|digest| Recorded::Manifest { repo: repo.clone(), digest, subject: None });
    Ok(blobs.chain(children).collect())
}

/// Why a push was refused inside the records' step.
enum Refusal {
    /// A record it reaches is no longer held: a forget removed it after `check_references`
    /// found it, or a child pushed by digest lost it while it was loose.
    Gone(Recorded),
    /// It reaches more than [`MAX_REACHED_MANIFEST_BYTES`] of manifests or
    /// [`MAX_REACHED_RECORDS`] records.
    TooLarge,
}

impl Refusal {
    fn error(self, repo: &Repository) -> RegistryError {
        let what = match self {
            Self::TooLarge => {
                return invalid(format!(
                    "the manifests this one reaches take more than {} MiB together, or name more \
                     than {MAX_REACHED_RECORDS} blobs and manifests; push an index naming fewer or \
                     smaller manifests; nothing was stored",
                    MAX_REACHED_MANIFEST_BYTES >> 20
                ));
            }
            Self::Gone(Recorded::Blob { sha256, .. }) => format!("blob {sha256}"),
            Self::Gone(Recorded::Manifest { digest, .. }) => format!("manifest {digest}"),
            Self::Gone(Recorded::Tag { tag, .. }) => format!("tag {tag}"),
        };
        RegistryError::new(
            Code::ManifestBlobUnknown,
            format!(
                "{what}, which this manifest reaches, is no longer in {repo}: the registry forgot \
                 it (the oldest records go past max_registry_records); push it again, then the \
                 manifests over it; nothing was stored"
            ),
        )
    }
}

/// The descriptor the referrers API lists for a manifest with a subject, within
/// [`MAX_DESCRIPTOR_BYTES`]: with the manifest's annotations only if they fit, since every
/// listing of the subject carries them.
fn referrer_descriptor(
    manifest: &Manifest,
    media_type: &str,
    digest: Sha256Digest,
    size: usize,
) -> RegistryResult<Vec<u8>> {
    let artifact_type = manifest
        .artifact_type
        .clone()
        .or_else(|| manifest.config.as_ref().map(|config| config.media_type.clone()));
    let mut descriptor = serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    if let Some(artifact_type) = artifact_type {
        descriptor["artifactType"] = artifact_type.into();
    }
    let bare = descriptor.to_string().into_bytes();
    if bare.len() > MAX_DESCRIPTOR_BYTES {
        return Err(invalid(format!(
            "the referrers API would list this manifest in {} bytes, more than {MAX_DESCRIPTOR_BYTES}: \
             shorten its mediaType and artifactType (or its config's mediaType); nothing was stored",
            bare.len()
        )));
    }
    if let Some(annotations) = &manifest.annotations {
        descriptor["annotations"] = serde_json::Value::Object(annotations.clone());
        let annotated = descriptor.to_string().into_bytes();
        if annotated.len() <= MAX_DESCRIPTOR_BYTES {
            return Ok(annotated);
        }
    }
    Ok(bare)
}

pub(super) async fn delete(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
) -> RegistryResult<Response> {
    if !Sha256Digest::looks_like_digest(reference) {
        check_tag(reference)?;
        let (owned, tag) = (repo.clone(), reference.to_owned());
        let held =
            registry.records("registry tag delete", move |records| records.delete_tag(&owned, &tag)).await?;
        return if held { Ok(StatusCode::ACCEPTED.into_response()) } else { Err(unknown(repo, reference)) };
    }
    let digest = Sha256Digest::parse(reference)?;
    let stored = registry.stored_manifest(repo, digest).await?.ok_or_else(|| unknown(repo, reference))?;
    let subject = serde_json::from_slice::<Manifest>(&stored.bytes)
        .ok()
        .and_then(|manifest| manifest.subject)
        .and_then(|subject| Sha256Digest::parse(&subject.digest).ok());
    let owned = repo.clone();
    registry
        .records("registry manifest delete", move |records| {
            records.delete_manifest(&owned, &digest, subject.as_ref())
        })
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn content_type_must_match_the_media_type() {
        let oci = manifest(r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#);
        assert_eq!(
            media_type(&oci, Some("application/vnd.oci.image.manifest.v1+json")).unwrap(),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(media_type(&oci, Some(OCI_INDEX)).unwrap_err().code, Code::ManifestInvalid);
        let bare = manifest("{}");
        assert_eq!(media_type(&bare, Some("x/y; charset=utf-8")).unwrap(), "x/y");
        assert!(media_type(&bare, None).is_err());
    }

    #[test]
    fn referrers_list_the_artifact_type_or_the_config_media_type() {
        let digest = Sha256Digest::of(b"m");
        let image = manifest(
            r#"{"config":{"mediaType":"application/x-sig","digest":"sha256:00","size":1},"subject":{"mediaType":"m","digest":"sha256:00","size":1}}"#,
        );
        let descriptor: serde_json::Value =
            serde_json::from_slice(&referrer_descriptor(&image, "m", digest, 3).unwrap()).unwrap();
        assert_eq!(descriptor["artifactType"], "application/x-sig");
        assert_eq!(descriptor["size"], 3);
    }
}
