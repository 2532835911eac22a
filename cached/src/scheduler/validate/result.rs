//! What an agent reports of a successful task: output names and digests, and the image blobs
//! it recorded. Names reach the submitter's disk, so they are portable file names.

use proto::Digest;
use proto::v1::{OciBlob, TaskResult};

use crate::error::{Error, Result};

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

pub fn check_result(result: &TaskResult) -> Result<()> {
    for output in &result.outputs {
        Digest::from_wire(output.digest.as_ref())?;
        proto::platform::check_output_name(&output.name).map_err(invalid)?;
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
