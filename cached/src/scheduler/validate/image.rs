//! The image a job asks agents to layer. Agents check the rest (platforms, the binary) with
//! the image library itself; what is checked here fails a job at submission instead of on
//! every agent.

use proto::v1::{ImageSpec, Target};

use super::bounds::check_text;
use crate::error::{Error, Result};

/// Entries of the image's env and labels, and bytes in each text.
const MAX_IMAGE_ENTRIES: usize = 64;
const MAX_IMAGE_TEXT: usize = 4096;
/// The last second of year 9999 (9999-12-31T23:59:59Z): an image config's `created` is an
/// RFC 3339 time, whose year has four digits, so no later epoch can be written into one.
const MAX_EPOCH: u64 = 253_402_300_799;

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

pub(super) fn check_image(image: &ImageSpec, targets: &[Target]) -> Result<()> {
    if !image.base.is_empty() {
        return Err(Error::FailedPrecondition(
            "base images are not supported in jobs yet; layer the outputs with `cachectl image --base`"
                .to_owned(),
        ));
    }
    // Container images are linux only; the other targets of the job are built, not imaged.
    let linux: Vec<&Target> = targets.iter().filter(|t| t.goos == "linux").collect();
    if linux.is_empty() {
        return Err(invalid("an image needs at least one linux target".to_owned()));
    }
    // cgo does not change the image platform.
    for (i, a) in linux.iter().enumerate() {
        if let Some(b) = linux[i + 1..].iter().find(|b| b.goarch == a.goarch && b.arch_level == a.arch_level)
        {
            return Err(invalid(format!(
                "targets {} and {} would be the same image platform",
                proto::platform::label(a),
                proto::platform::label(b)
            )));
        }
    }
    if image.epoch > MAX_EPOCH {
        return Err(invalid(format!(
            "image epoch {} (SOURCE_DATE_EPOCH) is after 9999-12-31T23:59:59Z ({MAX_EPOCH}), the last \
             time an image config can hold; give seconds since 1970-01-01, such as the last commit's \
             time (git log -1 --format=%ct)",
            image.epoch
        )));
    }
    if image.env.len() > MAX_IMAGE_ENTRIES || image.labels.len() > MAX_IMAGE_ENTRIES {
        return Err(invalid(format!("at most {MAX_IMAGE_ENTRIES} image env entries and labels")));
    }
    let texts = image.env.iter().chain(image.labels.keys()).chain(image.labels.values());
    for text in texts.chain([&image.user, &image.dir, &image.binary, &image.compression]) {
        check_text("image spec entry", text, MAX_IMAGE_TEXT).map_err(invalid)?;
    }
    if !image.binary.is_empty() {
        proto::platform::check_output_name(&image.binary).map_err(invalid)?;
    }
    if !image.dir.is_empty() && (!image.dir.starts_with('/') || image.dir.split('/').any(|part| part == ".."))
    {
        return Err(invalid(format!("image dir {:?} must be an absolute path", image.dir)));
    }
    if !matches!(image.compression.as_str(), "" | "gzip" | "zstd") {
        return Err(invalid(format!("image compression {:?}: expected gzip or zstd", image.compression)));
    }
    if image.env.iter().any(|entry| entry.split_once('=').is_none_or(|(key, _)| key.is_empty())) {
        return Err(invalid("image env entries are KEY=VALUE".to_owned()));
    }
    Ok(())
}
