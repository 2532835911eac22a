//! The image part of a job, on the agent (`cached_oci::job`): after a linux target is built,
//! its platform image; and the job's last step, the image index over every target's image.
//! What stays here is how the results show in the task's log and become task errors.

use std::path::PathBuf;
use std::time::Instant;

use cached_client::connect::Client;
use cached_oci::job::{self, JobImageError, platform_label};
use proto::v1::{self, TaskLease};
use proto::{Digest, Platform};
use tokio::sync::mpsc;

use crate::TaskError;

fn task_error(err: JobImageError) -> TaskError {
    if err.is_spec() { TaskError::Build(err.to_string()) } else { TaskError::Infrastructure(err.to_string()) }
}

/// The image of one built target of a job in `namespace`: `None` for a target that gets none
/// (not linux).
pub async fn platform_image(
    client: &Client,
    namespace: &str,
    image: &v1::ImageSpec,
    target: &Platform,
    outputs: &[(PathBuf, Digest)],
    lines: &mpsc::UnboundedSender<String>,
) -> Result<Option<v1::PlatformImage>, TaskError> {
    let Some(stored) =
        job::build_platform_for_job(client, namespace, image, target, outputs).await.map_err(task_error)?
    else {
        return Ok(None);
    };
    let (build, spec) = (&stored.build, &stored.spec);
    for warning in &build.warnings {
        let _ = lines.send(format!("runner-agent: warning: {warning}"));
    }
    let _ = lines.send(format!(
        "runner-agent: image {} {} ({} {}, layer {} {})",
        platform_label(&stored.wire),
        build.image.manifest.digest,
        spec.binary_path(),
        bytesize::ByteSize(std::fs::metadata(&spec.binaries[0].1).map_or(0, |m| m.len())),
        bytesize::ByteSize(build.image.layer.size),
        if build.image.layer_cached { "cached" } else { "built" }
    ));
    Ok(Some(stored.wire))
}

/// The job's last step: the image index over the targets' images, stored in the CAS.
pub async fn index(
    client: &Client,
    lease: &TaskLease,
    lines: &mpsc::UnboundedSender<String>,
) -> Result<v1::TaskResult, TaskError> {
    let started = Instant::now();
    let (descriptor, blob) = job::build_index_for_job(client, &lease.images).await.map_err(task_error)?;
    let _ = lines.send(format!(
        "runner-agent: image index {} over {}",
        descriptor.digest,
        lease.images.iter().map(platform_label).collect::<Vec<_>>().join(", ")
    ));
    Ok(v1::TaskResult {
        index: Some(blob),
        duration_ms: started.elapsed().as_millis() as u64,
        ..v1::TaskResult::default()
    })
}
