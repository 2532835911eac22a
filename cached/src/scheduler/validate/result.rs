//! What an agent reports of a successful task: output names and digests, and the image blobs
//! it recorded. Names reach the submitter's disk, so they are portable file names.

use std::collections::HashSet;
use std::sync::Arc;

use proto::Digest;
use proto::v1::{JobStatus, OciBlob, TaskKind, TaskResult, TaskStatus};

use crate::error::{Error, Result};
use crate::store::{BlobInfo, SharedStore};

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// `sha256:<64 lowercase hex>`.
fn is_sha256(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn check_blob(blob: Option<&OciBlob>, what: &str) -> Result<()> {
    let blob = blob.ok_or_else(|| invalid(format!("{what} is missing")))?;
    let cas = Digest::from_wire(blob.cas.as_ref()).map_err(|err| invalid(format!("{what}: {err}")))?;
    if !is_sha256(&blob.digest) || cas.size != blob.size || blob.media_type.is_empty() {
        return Err(invalid(format!("{what} is not a valid OCI blob")));
    }
    Ok(())
}

/// Outputs one task may report: every submitter downloads all of them into one directory.
const MAX_OUTPUTS: usize = 1024;

pub fn check_result(result: &TaskResult) -> Result<()> {
    if result.outputs.len() > MAX_OUTPUTS {
        return Err(invalid(format!(
            "{} outputs reported; a task has at most {MAX_OUTPUTS}",
            result.outputs.len()
        )));
    }
    let mut names = HashSet::with_capacity(result.outputs.len());
    for output in &result.outputs {
        Digest::from_wire(output.digest.as_ref())?;
        proto::platform::check_output_name(&output.name).map_err(invalid)?;
        // Two files of one name would overwrite each other on the submitter's disk.
        if !names.insert(output.name.as_str()) {
            return Err(invalid(format!("output {:?} is reported twice", output.name)));
        }
    }
    if let Some(image) = &result.image {
        check_blob(image.manifest.as_ref(), "the image manifest")?;
        check_blob(image.config.as_ref(), "the image config")?;
        check_blob(image.layer.as_ref(), "the image layer")?;
        if image.os.is_empty() || image.architecture.is_empty() {
            return Err(invalid("the image has no platform".to_owned()));
        }
    }
    if let Some(index) = &result.index {
        check_blob(Some(index), "the image index")?;
    }
    Ok(())
}

/// What a task may report: an image only from a build task of a linux target of a job that
/// asked for one, for the target's own os and architecture; an index only from the job's
/// image-index task. The index task is leased every build task's image, so an image another
/// task reports, or one of another platform, would go into the job's index.
pub fn check_for_task(result: &TaskResult, job: &JobStatus, task: &TaskStatus) -> Result<()> {
    let index_task = task.kind == TaskKind::ImageIndex as i32;
    if result.index.is_some() && !index_task {
        return Err(invalid(
            "a build task reports its platform's image, not an image index: only the job's image-index task does"
                .to_owned(),
        ));
    }
    let Some(image) = &result.image else { return Ok(()) };
    if index_task {
        return Err(invalid("the image-index task reports the index, not a platform image".to_owned()));
    }
    let asked = job.spec.as_ref().is_some_and(|spec| spec.image.is_some());
    let target = task.target.as_ref().filter(|target| asked && target.goos == "linux").ok_or_else(|| {
        invalid(format!(
            "task {} gets no image: the job asks for none, or its target is not linux",
            task.index
        ))
    })?;
    if image.os != target.goos || image.architecture != target.goarch {
        return Err(invalid(format!(
            "the image is for {}/{}, but the task builds {}/{}",
            image.os, image.architecture, target.goos, target.goarch
        )));
    }
    Ok(())
}

/// The OCI blobs of `result`, each with what it is.
fn oci_blobs(result: &TaskResult) -> Vec<(&'static str, &OciBlob)> {
    let mut blobs = Vec::new();
    if let Some(image) = &result.image {
        let parts = [("the image manifest", &image.manifest), ("the image config", &image.config)];
        let parts = parts.into_iter().chain([("the image layer", &image.layer)]);
        blobs.extend(parts.filter_map(|(what, blob)| blob.as_ref().map(|blob| (what, blob))));
    }
    blobs.extend(result.index.as_ref().map(|index| ("the image index", index)));
    blobs
}

/// Checks every OCI blob of `result` (well formed: [`check_result`]) against what the CAS
/// recorded when the blob was uploaded: it is there, and its bytes hash (SHA-256) to the OCI
/// digest reported. The job's index is assembled from these descriptors, the submitter rebuilds
/// the image expecting them, and cached's registry serves the CAS blob under the OCI digest.
/// The size needs no lookup: a CAS digest names its size, and `check_result` compared the two.
pub async fn check_stored(result: &TaskResult, store: &SharedStore) -> Result<()> {
    let blobs = oci_blobs(result);
    let digests = blobs
        .iter()
        .map(|(what, blob)| {
            Digest::from_wire(blob.cas.as_ref()).map_err(|err| invalid(format!("{what}: {err}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if digests.is_empty() {
        return Ok(());
    }
    let (store, looked_up) = (Arc::clone(store), digests.clone());
    let infos = crate::task::spawn_blocking("check task blobs", move || store.stat(&looked_up)).await??;
    for (((what, blob), cas), info) in blobs.into_iter().zip(digests).zip(infos) {
        check_stored_blob(what, blob, cas, info)?;
    }
    Ok(())
}

fn check_stored_blob(what: &str, blob: &OciBlob, cas: Digest, info: Option<BlobInfo>) -> Result<()> {
    let Some(info) = info else {
        return Err(Error::FailedPrecondition(format!(
            "{what} {cas} is not in the CAS; upload it (Cas.Write) before completing the task"
        )));
    };
    let stored: String = info.sha256.iter().map(|byte| format!("{byte:02x}")).collect();
    if blob.digest.strip_prefix("sha256:") != Some(stored.as_str()) {
        return Err(invalid(format!(
            "{what} is reported as {}, but its bytes in the CAS ({cas}) hash to sha256:{stored}",
            blob.digest
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::OutputFile;

    fn blob(bytes: &[u8]) -> OciBlob {
        OciBlob {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: bytes.len() as u64,
            cas: Some(Digest::of(bytes).to_wire()),
        }
    }

    #[test]
    fn task_results_with_images() {
        let image = proto::v1::PlatformImage {
            os: "linux".into(),
            architecture: "amd64".into(),
            manifest: Some(blob(b"m")),
            config: Some(blob(b"c")),
            layer: Some(blob(b"l")),
            ..Default::default()
        };
        let good =
            TaskResult { image: Some(image.clone()), index: Some(blob(b"i")), ..TaskResult::default() };
        check_result(&good).unwrap();
        let short = OciBlob { digest: "sha256:abc".into(), ..blob(b"m") };
        let bad = TaskResult {
            image: Some(proto::v1::PlatformImage { manifest: Some(short), ..image }),
            ..TaskResult::default()
        };
        assert!(check_result(&bad).is_err());
    }

    #[test]
    fn output_names_are_portable() {
        let output = |name: &str| TaskResult {
            outputs: vec![OutputFile {
                name: name.into(),
                digest: Some(Digest::of(b"x").to_wire()),
                executable: true,
            }],
            ..TaskResult::default()
        };
        check_result(&output("app.exe")).unwrap();
        for bad in ["..\\evil.exe", "app:stream", "CON", "aux.exe", "app.", "a/b", "a\nb"] {
            assert!(check_result(&output(bad)).is_err(), "{bad:?}");
        }
    }
}
