//! The image part of a job, on the agent: after a linux target is built, its platform image
//! (layer, config, manifest) through `cachectl::oci`; and the job's last step, the image index
//! over every target's image. Everything goes to cached: the layer through the layer cache
//! (so the submitter's image build finds it), the config, manifest and index as CAS blobs, all
//! recorded with their SHA-256 in the task result. Agents hold no registry credentials and push
//! nothing; the submitter does (see `cachectl::submit::image`).

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use cachectl::oci::{self, LayerCache, OciError};
use cachectl::submit::image::{
    blob_to_wire, image_platform, index_entry, oci_spec, pick_binary, platform_label, platform_to_wire,
};
use cached_client::connect::Client;
use cached_client::transfer;
use proto::v1::{self, TaskLease};
use proto::{Digest, Platform};
use tokio::sync::mpsc;

use crate::TaskError;

/// A bad spec or matrix fails the same way on every agent; anything else (files, the cache)
/// may be this machine, and another attempt elsewhere may succeed.
fn task_error(err: OciError) -> TaskError {
    match err {
        OciError::Usage(_) | OciError::Reference { .. } => TaskError::Build(format!("image: {err}")),
        err => TaskError::Infrastructure(format!("image: {err}")),
    }
}

/// Stores small blobs (configs, manifests, indexes) in the CAS unless it has them; their
/// CAS digests, in order.
async fn store(client: &Client, blobs: &[&[u8]]) -> Result<Vec<Digest>, TaskError> {
    let digests: Vec<Digest> = blobs.iter().map(|bytes| Digest::of(bytes)).collect();
    let missing = transfer::find_missing(client, &digests).await?;
    let writes: Vec<(Digest, Bytes)> = digests
        .iter()
        .zip(blobs)
        .filter(|(digest, _)| missing.contains(digest))
        .map(|(digest, bytes)| (*digest, Bytes::copy_from_slice(bytes)))
        .collect();
    if !writes.is_empty() {
        transfer::batch_write(client, writes, transfer::DEFAULT_LEVEL).await?;
    }
    Ok(digests)
}

/// The image of one built target: `None` for a target that gets none (not linux).
pub async fn platform_image(
    client: &Client,
    image: &v1::ImageSpec,
    target: &Platform,
    outputs: &[(PathBuf, Digest)],
    lines: &mpsc::UnboundedSender<String>,
) -> Result<Option<v1::PlatformImage>, TaskError> {
    let Some(platform) = image_platform(target) else { return Ok(None) };
    let platform = platform.map_err(task_error)?;
    let names: Vec<&str> =
        outputs.iter().filter_map(|(path, _)| path.file_name().and_then(|name| name.to_str())).collect();
    let name = pick_binary(image, &names).map_err(|err| TaskError::Build(format!("image: {err}")))?;
    let binary = outputs
        .iter()
        .find(|(path, _)| path.file_name().and_then(|n| n.to_str()) == Some(name))
        .map(|(path, _)| path.clone())
        .ok_or_else(|| TaskError::Infrastructure(format!("image: output {name} vanished")))?;
    let spec = oci_spec(image, name, vec![(platform, binary)]).map_err(task_error)?;
    let cache = LayerCache::new(client.clone());
    let built = oci::build_platform_image(&spec, Some(&cache)).await.map_err(task_error)?;
    for warning in &built.warnings {
        let _ = lines.send(format!("runner-agent: warning: {warning}"));
    }
    let stored = store(client, &[&built.config, &built.manifest]).await?;
    let wire = platform_to_wire(&built.image, stored[0], stored[1]);
    let _ = lines.send(format!(
        "runner-agent: image {} {} ({} {}, layer {} {})",
        platform_label(&wire),
        built.image.manifest.digest,
        spec.binary_path(),
        bytesize::ByteSize(std::fs::metadata(&spec.binaries[0].1).map_or(0, |m| m.len())),
        bytesize::ByteSize(built.image.layer.size),
        if built.image.layer_cached { "cached" } else { "built" }
    ));
    Ok(Some(wire))
}

/// The job's last step: the image index over the targets' images, stored in the CAS.
pub async fn index(
    client: &Client,
    lease: &TaskLease,
    lines: &mpsc::UnboundedSender<String>,
) -> Result<v1::TaskResult, TaskError> {
    let started = Instant::now();
    let entries = lease.images.iter().map(index_entry).collect::<Result<Vec<_>, _>>().map_err(task_error)?;
    let (descriptor, bytes) = oci::index_document(entries, None).map_err(task_error)?;
    let stored = store(client, &[&bytes]).await?;
    let _ = lines.send(format!(
        "runner-agent: image index {} over {}",
        descriptor.digest,
        lease.images.iter().map(platform_label).collect::<Vec<_>>().join(", ")
    ));
    Ok(v1::TaskResult {
        index: Some(blob_to_wire(&descriptor, stored[0])),
        duration_ms: started.elapsed().as_millis() as u64,
        ..v1::TaskResult::default()
    })
}
