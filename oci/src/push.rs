//! Pushing an image to a registry without wasted uploads: the tag, then each manifest, then
//! each blob is checked with HEAD first, and a blob is mounted from the base's repository
//! when that is on the same registry, or linked from cached's CAS when the registry is a cached
//! that holds it; only then is anything uploaded. Children go before the
//! index, and the tag is moved last.

use bytes::Bytes;
use futures::StreamExt;

use super::error::Result;
use super::manifest::Descriptor;
use super::registry::{Mount, MountSource, Registry};
use super::sources::Sources;

/// A blob to push, and where the registry may already have it.
#[derive(Clone, Debug)]
pub struct PushBlob {
    pub descriptor: Descriptor,
    /// A repository on the same registry to mount it from.
    pub mount_from: Option<String>,
    /// Its digest in cached's CAS, when it is there (a layer from the layer cache).
    pub cas: Option<proto::Digest>,
}

/// One document (manifest or index) with its exact bytes.
#[derive(Clone, Debug)]
pub struct Document {
    pub descriptor: Descriptor,
    pub bytes: Bytes,
}

/// One platform's manifest and the blobs it references.
#[derive(Clone, Debug)]
pub struct PushImage {
    pub manifest: Document,
    pub blobs: Vec<PushBlob>,
}

/// Everything pushed for one image, in push order.
#[derive(Clone, Debug)]
pub struct PushPlan {
    pub images: Vec<PushImage>,
    /// Pushed last, under the tag.
    pub index: Document,
    pub tag: String,
}

/// Pushes what the registry lacks: nothing when the tag already names the index; else the
/// blobs of each manifest the registry does not have (a registry only accepts a manifest
/// whose blobs it holds), then those manifests by digest, then the index under the tag.
pub async fn push(
    registry: &Registry,
    repository: &str,
    plan: &PushPlan,
    sources: &Sources,
    parallelism: usize,
) -> Result<()> {
    let parallelism = parallelism.max(1);
    let PushPlan { images, index, tag } = plan;
    if registry.manifest_digest(repository, tag).await? == Some(index.descriptor.digest) {
        add_present(registry);
        return Ok(());
    }
    let heads: Vec<Result<bool>> = futures::stream::iter(images)
        .map(|image| async move {
            let digest = image.manifest.descriptor.digest.to_string();
            Ok(registry.manifest_digest(repository, &digest).await?.is_some())
        })
        .buffered(parallelism)
        .collect()
        .await;
    let mut missing = Vec::new();
    for (image, present) in images.iter().zip(heads) {
        if present? {
            add_present(registry);
        } else {
            missing.push(image);
        }
    }

    let mut unique: Vec<&PushBlob> = Vec::new();
    for blob in missing.iter().flat_map(|image| &image.blobs) {
        if !unique.iter().any(|b| b.descriptor.digest == blob.descriptor.digest) {
            unique.push(blob);
        }
    }
    let results: Vec<Result<()>> = futures::stream::iter(unique)
        .map(|blob| push_blob(registry, repository, blob, sources))
        .buffer_unordered(parallelism)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;

    let results: Vec<Result<()>> = futures::stream::iter(missing)
        .map(|image| {
            let document = &image.manifest;
            let digest = document.descriptor.digest.to_string();
            async move {
                registry
                    .put_manifest(repository, &digest, &document.descriptor.media_type, &document.bytes)
                    .await
            }
        })
        .buffer_unordered(parallelism)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;
    registry.put_manifest(repository, tag, &index.descriptor.media_type, &index.bytes).await
}

fn add_present(registry: &Registry) {
    registry.counters.manifests_present.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn push_blob(registry: &Registry, repository: &str, blob: &PushBlob, sources: &Sources) -> Result<()> {
    let Descriptor { digest, size, .. } = &blob.descriptor;
    if registry.blob_exists(repository, digest).await? {
        registry.counters.blobs_present.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    }
    let mount = match (&blob.mount_from, &blob.cas) {
        (Some(from), _) if from != repository => {
            Some(registry.mount(repository, digest, MountSource::Repository(from)).await)
        }
        (_, Some(cas)) => Some(registry.mount(repository, digest, MountSource::Cas(cas)).await),
        _ => None,
    };
    let session = match mount {
        Some(Ok(Mount::Mounted)) => return Ok(()),
        Some(Ok(Mount::Session(session))) => Some(session),
        // Some registries fail a mount they cannot do instead of starting a session.
        Some(Err(_)) | None => None,
    };
    let path = sources.local(&blob.descriptor).await?;
    let session = match session {
        Some(session) => session,
        None => registry.start_upload(repository).await?,
    };
    registry.upload(session, digest, *size, &path).await
}
