//! The image part of a job, between the wire (`cached.v1.ImageSpec`, `PlatformImage`,
//! `OciBlob`) and the image library ([`crate`]). Runner agents and `cachectl submit` both
//! go through these functions, so an agent's per-platform image and the image the submitter
//! writes or pushes come from the same spec and get the same digests.
//!
//! Who does what: the agent of each linux target layers its binary, writes that platform's
//! config and manifest, and records all three (SHA-256 and CAS digest) in its task result; a
//! final task assembles the index ([`crate::index_document`]) and the job carries its
//! digest; the submitter, who holds the registry credentials, writes the OCI layout and/or
//! pushes, building the image again from the downloaded binaries with every layer a cache hit,
//! and checks that it arrives at the job's index digest. The agent's part is
//! [`build_platform_for_job`] and [`build_index_for_job`]: everything goes to cached, the layer
//! through the layer cache (so the submitter's image build finds it), the config, manifest
//! and index as CAS blobs. Agents hold no registry credentials and push nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use cached_client::connect::Client;
use cached_client::error::ClientError;
use cached_client::transfer;
use proto::{Digest, v1};

use crate::manifest::{Descriptor, MEDIA_MANIFEST};
use crate::{Compression, ImagePlatform, ImageSpec, LayerCache, OciError, PlatformBuild, Sha256};

/// Where the binary goes in the image unless the spec says otherwise.
pub const DEFAULT_DIR: &str = "/app";

/// The image platform of a target, or `None` for a target that gets no image (not linux).
pub fn image_platform(target: &proto::Platform) -> Option<Result<ImagePlatform, OciError>> {
    (target.goos == "linux").then(|| crate::platform::from_target(target))
}

/// The output that goes in the image: the one `image.binary` names, else the build's only one.
pub fn pick_binary<'a>(image: &v1::ImageSpec, names: &[&'a str]) -> Result<&'a str, String> {
    if !image.binary.is_empty() {
        return names.iter().copied().find(|name| *name == image.binary).ok_or_else(|| {
            format!("the image binary {:?} is not among the outputs ({})", image.binary, names.join(", "))
        });
    }
    match names {
        [only] => Ok(only),
        [] => Err("the build wrote no binary to put in the image".to_owned()),
        several => Err(format!(
            "the build wrote {} binaries ({}); name the one for the image with --image-binary",
            several.len(),
            several.join(", ")
        )),
    }
}

/// The library's spec for the image of `binaries`, the binary named `name`.
pub fn oci_spec(
    image: &v1::ImageSpec,
    name: &str,
    binaries: Vec<(ImagePlatform, PathBuf)>,
) -> Result<ImageSpec, OciError> {
    if !image.base.is_empty() {
        return Err(OciError::Usage(
            "base images are not supported in jobs yet; layer the outputs with `cachectl image --base`"
                .into(),
        ));
    }
    let mut spec = ImageSpec::new(name, binaries);
    if !image.dir.is_empty() {
        spec.dir.clone_from(&image.dir);
    }
    spec.user = (!image.user.is_empty()).then(|| image.user.clone());
    spec.env.clone_from(&image.env);
    spec.labels = image.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>();
    spec.compression = match image.compression.as_str() {
        "" => Compression::Gzip,
        other => other.parse()?,
    };
    spec.epoch = image.epoch;
    spec.uid = image.uid;
    spec.gid = image.gid;
    Ok(spec)
}

pub fn blob_to_wire(descriptor: &Descriptor, cas: proto::Digest) -> v1::OciBlob {
    v1::OciBlob {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.to_string(),
        size: descriptor.size,
        cas: Some(cas.to_wire()),
    }
}

/// The OCI descriptor and CAS digest of a blob from the wire, checked.
pub fn blob_from_wire(
    blob: Option<&v1::OciBlob>,
    what: &str,
) -> Result<(Descriptor, proto::Digest), OciError> {
    let blob = blob.ok_or_else(|| OciError::Invalid(format!("{what} is missing")))?;
    let digest: Sha256 = blob.digest.parse().map_err(|err| OciError::Invalid(format!("{what}: {err}")))?;
    let cas = proto::Digest::from_wire(blob.cas.as_ref())
        .map_err(|err| OciError::Invalid(format!("{what}: CAS digest: {err}")))?;
    if cas.size != blob.size {
        return Err(OciError::Invalid(format!("{what}: CAS and OCI sizes differ")));
    }
    Ok((Descriptor::new(&blob.media_type, digest, blob.size), cas))
}

/// A platform image for a task result; `config` and `manifest` are where the agent stored
/// those documents in the CAS.
pub fn platform_to_wire(
    image: &crate::PlatformImage,
    config: proto::Digest,
    manifest: proto::Digest,
) -> v1::PlatformImage {
    v1::PlatformImage {
        os: image.platform.os.clone(),
        architecture: image.platform.architecture.clone(),
        variant: image.platform.variant.clone().unwrap_or_default(),
        manifest: Some(blob_to_wire(&image.manifest, manifest)),
        config: Some(blob_to_wire(&image.config, config)),
        layer: Some(blob_to_wire(
            &Descriptor::new(&image.layer.media_type, image.layer.digest, image.layer.size),
            image.layer.cas,
        )),
        layer_cached: image.layer_cached,
    }
}

/// The index entry of a platform image from the wire: its manifest descriptor with the
/// platform, as [`crate::index_document`] takes it.
pub fn index_entry(image: &v1::PlatformImage) -> Result<Descriptor, OciError> {
    let mut text = format!("{}/{}", image.os, image.architecture);
    if !image.variant.is_empty() {
        text = format!("{text}/{}", image.variant);
    }
    let platform: ImagePlatform = text.parse()?;
    let (mut manifest, _) = blob_from_wire(image.manifest.as_ref(), &format!("the manifest of {platform}"))?;
    if manifest.media_type != MEDIA_MANIFEST {
        return Err(OciError::Invalid(format!(
            "the manifest of {platform} has media type {:?}",
            manifest.media_type
        )));
    }
    manifest.platform = Some(platform);
    Ok(manifest)
}

/// `linux/arm64` of a platform image from the wire.
pub fn platform_label(image: &v1::PlatformImage) -> String {
    match image.variant.as_str() {
        "" => format!("{}/{}", image.os, image.architecture),
        variant => format!("{}/{}/{variant}", image.os, image.architecture),
    }
}

/// Why an agent could not make its part of a job's image.
#[derive(Debug, thiserror::Error)]
pub enum JobImageError {
    /// No output, or several and none named, to put in the image.
    #[error("image: {0}")]
    Binary(String),
    #[error("image: output {0} vanished")]
    Vanished(String),
    #[error("image: {0}")]
    Oci(#[source] OciError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl From<OciError> for JobImageError {
    fn from(err: OciError) -> Self {
        Self::Oci(err)
    }
}

impl JobImageError {
    /// A bad spec or matrix fails the same way on every agent; anything else (files, the
    /// cache) may be this machine, and another attempt elsewhere may succeed.
    pub fn is_spec(&self) -> bool {
        matches!(self, Self::Binary(_) | Self::Oci(OciError::Usage(_) | OciError::Reference { .. }))
    }
}

/// Stores small blobs (configs, manifests, indexes) in the CAS unless it has them; their
/// CAS digests, in order.
pub async fn store_documents(client: &Client, blobs: &[&[u8]]) -> Result<Vec<Digest>, ClientError> {
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

/// A target's platform image, built and stored in cached.
pub struct StoredPlatformImage {
    /// What the task result carries.
    pub wire: v1::PlatformImage,
    pub build: PlatformBuild,
    pub spec: ImageSpec,
}

/// The image of one built target (`outputs`: its files and their CAS digests) of a job in
/// `namespace`, stored in cached: `None` for a target that gets none (not linux).
pub async fn build_platform_for_job(
    client: &Client,
    namespace: &str,
    image: &v1::ImageSpec,
    target: &proto::Platform,
    outputs: &[(PathBuf, Digest)],
) -> Result<Option<StoredPlatformImage>, JobImageError> {
    let Some(platform) = image_platform(target) else { return Ok(None) };
    let platform = platform?;
    let names: Vec<&str> =
        outputs.iter().filter_map(|(path, _)| path.file_name().and_then(|name| name.to_str())).collect();
    let name = pick_binary(image, &names).map_err(JobImageError::Binary)?;
    let binary = outputs
        .iter()
        .find(|(path, _)| path.file_name().and_then(|n| n.to_str()) == Some(name))
        .map(|(path, _)| path.clone())
        .ok_or_else(|| JobImageError::Vanished(name.to_owned()))?;
    let spec = oci_spec(image, name, vec![(platform, binary)])?;
    let cache = LayerCache::new(client.clone(), namespace);
    let build = crate::build_platform_image(&spec, Some(&cache)).await?;
    let stored = store_documents(client, &[&build.config, &build.manifest]).await?;
    let wire = platform_to_wire(&build.image, stored[0], stored[1]);
    Ok(Some(StoredPlatformImage { wire, build, spec }))
}

/// A job's last step: the image index over its targets' images, stored in cached; its
/// descriptor and the blob the task result carries.
pub async fn build_index_for_job(
    client: &Client,
    images: &[v1::PlatformImage],
) -> Result<(Descriptor, v1::OciBlob), JobImageError> {
    let entries = images.iter().map(index_entry).collect::<Result<Vec<_>, _>>()?;
    let (descriptor, bytes) = crate::index_document(entries, None)?;
    let stored = store_documents(client, &[&bytes]).await?;
    let blob = blob_to_wire(&descriptor, stored[0]);
    Ok((descriptor, blob))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_binary_is_named_or_the_only_one() {
        let image = v1::ImageSpec::default();
        assert_eq!(pick_binary(&image, &["app"]).unwrap(), "app");
        assert!(pick_binary(&image, &["a", "b"]).unwrap_err().contains("--image-binary"));
        assert!(pick_binary(&image, &[]).is_err());
        let named = v1::ImageSpec { binary: "b".into(), ..v1::ImageSpec::default() };
        assert_eq!(pick_binary(&named, &["a", "b"]).unwrap(), "b");
        assert!(pick_binary(&named, &["a"]).is_err());
    }

    #[test]
    fn wire_specs_become_library_specs() {
        let image = v1::ImageSpec {
            dir: "/srv".into(),
            env: vec!["MODE=prod".into()],
            labels: [("team".to_owned(), "build".to_owned())].into(),
            compression: "zstd".into(),
            epoch: 7,
            ..v1::ImageSpec::default()
        };
        let spec = oci_spec(&image, "app", vec![("linux/amd64".parse().unwrap(), "bin/app".into())]).unwrap();
        assert_eq!(spec.binary_path(), "/srv/app");
        assert_eq!(spec.compression, Compression::Zstd);
        assert_eq!((spec.epoch, spec.user.as_deref()), (7, None));
        let defaults = oci_spec(&v1::ImageSpec::default(), "app", Vec::new()).unwrap();
        assert_eq!((defaults.binary_path().as_str(), defaults.compression), ("/app/app", Compression::Gzip));
        let based = v1::ImageSpec { base: "cgr.dev/chainguard/static".into(), ..v1::ImageSpec::default() };
        assert!(oci_spec(&based, "app", Vec::new()).is_err());
    }

    #[test]
    fn index_entries_round_trip_through_the_wire() {
        let mut manifest = Descriptor::of(MEDIA_MANIFEST, b"{}");
        manifest.platform = Some("linux/arm/v7".parse().unwrap());
        let wire = v1::PlatformImage {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: "v7".into(),
            manifest: Some(blob_to_wire(&manifest, proto::Digest::of(b"{}"))),
            ..v1::PlatformImage::default()
        };
        assert_eq!(index_entry(&wire).unwrap(), manifest);
        assert_eq!(platform_label(&wire), "linux/arm/v7");
        let lying = v1::PlatformImage {
            manifest: Some(v1::OciBlob { size: 3, ..blob_to_wire(&manifest, proto::Digest::of(b"{}")) }),
            ..wire
        };
        assert!(index_entry(&lying).is_err());
    }
}
