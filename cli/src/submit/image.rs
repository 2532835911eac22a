//! The image part of a job, between the wire (`cached.v1.ImageSpec`, `PlatformImage`,
//! `OciBlob`) and the image library ([`crate::oci`]). Runner agents and `cachectl submit` both
//! go through these functions, so an agent's per-platform image and the image the submitter
//! writes or pushes come from the same spec and get the same digests.
//!
//! Who does what: the agent of each linux target layers its binary, writes that platform's
//! config and manifest, and records all three (SHA-256 and CAS digest) in its task result; a
//! final task assembles the index ([`crate::oci::index_document`]) and the job carries its
//! digest; the submitter, who holds the registry credentials, writes the OCI layout and/or
//! pushes, building the image again from the downloaded binaries with every layer a cache hit,
//! and checks that it arrives at the job's index digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proto::v1;

use crate::oci::manifest::{Descriptor, MEDIA_MANIFEST};
use crate::oci::{self, Compression, ImageSpec, OciError, Platform, Sha256};

/// Where the binary goes in the image unless the spec says otherwise.
pub const DEFAULT_DIR: &str = "/app";

/// The image platform of a target, or `None` for a target that gets no image (not linux).
pub fn image_platform(target: &proto::Platform) -> Option<Result<Platform, OciError>> {
    (target.goos == "linux").then(|| oci::platform::from_target(target))
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
    binaries: Vec<(Platform, PathBuf)>,
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
    image: &oci::PlatformImage,
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
/// platform, as [`oci::index_document`] takes it.
pub fn index_entry(image: &v1::PlatformImage) -> Result<Descriptor, OciError> {
    let mut text = format!("{}/{}", image.os, image.architecture);
    if !image.variant.is_empty() {
        text = format!("{text}/{}", image.variant);
    }
    let platform: Platform = text.parse()?;
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
