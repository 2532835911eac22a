//! Pushing an image to a registry without wasted uploads: every blob is checked with HEAD
//! first and mounted from the base's repository when that is on the same registry; only
//! then is it uploaded. Children go before the index, and the tag is moved last (and only
//! when it does not already point at the index).

use bytes::Bytes;
use futures::StreamExt;

use super::error::Result;
use super::manifest::Descriptor;
use super::registry::{Mount, Registry};
use super::sources::Sources;

/// A blob to push, and the repository on the same registry it may be mounted from.
#[derive(Clone, Debug)]
pub struct PushBlob {
    pub descriptor: Descriptor,
    pub mount_from: Option<String>,
}

/// One document (manifest or index) with its exact bytes.
#[derive(Clone, Debug)]
pub struct Document {
    pub descriptor: Descriptor,
    pub bytes: Bytes,
}

/// Everything pushed for one image, in push order.
#[derive(Clone, Debug)]
pub struct PushPlan {
    pub blobs: Vec<PushBlob>,
    /// One manifest per platform, pushed by digest.
    pub manifests: Vec<Document>,
    /// Pushed last, under the tag.
    pub index: Document,
    pub tag: String,
}

/// Pushes the plan's blobs, then its manifests (by digest), then its index under its tag.
pub async fn push(
    registry: &Registry,
    repository: &str,
    plan: &PushPlan,
    sources: &Sources,
    parallelism: usize,
) -> Result<()> {
    let PushPlan { blobs, manifests, index, tag } = plan;
    let mut unique: Vec<&PushBlob> = Vec::new();
    for blob in blobs {
        if !unique.iter().any(|b| b.descriptor.digest == blob.descriptor.digest) {
            unique.push(blob);
        }
    }
    let results: Vec<Result<()>> = futures::stream::iter(unique)
        .map(|blob| push_blob(registry, repository, blob, sources))
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;

    let results: Vec<Result<()>> = futures::stream::iter(manifests.iter())
        .map(|document| async move {
            let digest = document.descriptor.digest.to_string();
            if registry.manifest_digest(repository, &digest).await?.is_some() {
                add_present(registry);
                return Ok(());
            }
            registry.put_manifest(repository, &digest, &document.descriptor.media_type, &document.bytes).await
        })
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;

    if registry.manifest_digest(repository, tag.as_str()).await? == Some(index.descriptor.digest) {
        add_present(registry);
        return Ok(());
    }
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
    let session = match &blob.mount_from {
        Some(from) if from != repository => match registry.mount(repository, digest, from).await {
            Ok(Mount::Mounted) => return Ok(()),
            Ok(Mount::Session(session)) => Some(session),
            // Some registries fail a mount they cannot do instead of starting a session.
            Err(_) => None,
        },
        _ => None,
    };
    let path = sources.local(&blob.descriptor).await?;
    let session = match session {
        Some(session) => session,
        None => registry.start_upload(repository).await?,
    };
    registry.upload(session, digest, *size, &path).await
}
