//! Base images: read from an OCI layout (`oci:DIR[:NAME]`, or a layout directory) or a
//! registry reference, resolved to one manifest and config per wanted platform.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::digest::Sha256;
use super::error::{OciError, Result};
use super::layout::Layout;
use super::manifest::{
    self, DOCKER_LAYER_GZIP, Descriptor, Index, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD, Manifest,
};
use super::platform::ImagePlatform;
use super::reference::Reference;
use super::registry::{Registry, RegistryOptions};

/// Where a base image comes from, as given to `--base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseSource {
    Layout { dir: PathBuf, name: Option<String> },
    Registry(Reference),
}

impl BaseSource {
    /// `oci:DIR[:NAME]` or an existing layout directory is a layout; anything else a reference.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, name) = match rest.rsplit_once(':') {
                Some((dir, name)) if !name.contains('/') && !dir.is_empty() => (dir, Some(name.to_owned())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(OciError::Usage(format!("--base {text:?}: expected oci:DIR or oci:DIR:NAME")));
            }
            return Ok(Self::Layout { dir: PathBuf::from(dir), name: name.filter(|n| !n.is_empty()) });
        }
        if Path::new(text).join("oci-layout").is_file() {
            return Ok(Self::Layout { dir: PathBuf::from(text), name: None });
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Err(OciError::Usage(format!(
                "--base {text:?}: no OCI image layout there (a layout directory holds an oci-layout file)"
            )));
        }
        Reference::parse(text).map(Self::Registry)
    }
}

/// Where the base's blobs can be read.
#[derive(Clone)]
pub enum BaseOrigin {
    Layout(Layout),
    Registry { registry: Arc<Registry>, reference: Reference },
}

/// The part of the base for one platform.
#[derive(Clone, Debug)]
pub struct BasePlatform {
    pub platform: ImagePlatform,
    pub manifest_digest: Sha256,
    /// Layers in order, media types in the OCI family.
    pub layers: Vec<Descriptor>,
    pub config: Value,
}

#[derive(Clone)]
pub struct BaseImage {
    /// For the `org.opencontainers.image.base.name` annotation.
    pub name: Option<String>,
    /// Digest of what the base reference names (its index, or its only manifest).
    pub digest: Sha256,
    pub platforms: Vec<BasePlatform>,
    pub origin: BaseOrigin,
}

impl BaseImage {
    pub fn for_platform(&self, platform: &ImagePlatform) -> Option<&BasePlatform> {
        self.platforms.iter().find(|base| base.platform.matches(platform))
    }
}

/// Resolves `source` for each of `wanted`; every wanted platform must be in the base.
pub async fn resolve(
    source: &BaseSource,
    wanted: &[ImagePlatform],
    options: &RegistryOptions,
) -> Result<BaseImage> {
    let (origin, top, name, shown) = match source {
        BaseSource::Layout { dir, name } => {
            let layout = Layout::open(dir)?;
            let top = layout.resolve(name.as_deref())?;
            let ref_name = top.annotation(manifest::ANNOTATION_REF_NAME).map(str::to_owned);
            // Only a full reference is a meaningful base name; a directory never is (it would
            // make the image depend on where the layout happens to be).
            let base_name = ref_name.filter(|n| n.contains('/') && Reference::parse(n).is_ok());
            (BaseOrigin::Layout(layout), Some(top), base_name, format!("oci:{}", dir.display()))
        }
        BaseSource::Registry(reference) => {
            let repositories = [(reference.repository.clone(), "pull")];
            let registry = Registry::connect(&reference.registry, &repositories, options).await?;
            let origin = BaseOrigin::Registry { registry: Arc::new(registry), reference: reference.clone() };
            (origin, None, Some(reference.to_string()), reference.to_string())
        }
    };
    let fetcher = Fetcher { origin: &origin, shown: &shown };
    let (bytes, media_type) = match &top {
        Some(descriptor) => (fetcher.document(&descriptor.digest).await?, descriptor.media_type.clone()),
        None => fetcher.top().await?,
    };
    let digest = Sha256::of(&bytes);
    let media_type = media_type_of(&bytes, &media_type);
    let mut platforms = Vec::new();
    if manifest::is_index(&media_type) {
        let index: Index = manifest::parse(&bytes, &format!("base index {shown}"))?;
        let mut entries = Vec::new();
        for platform in wanted {
            let entry = index
                .manifests
                .iter()
                .filter(|d| manifest::is_manifest(&d.media_type))
                .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(platform)))
                .ok_or_else(|| {
                    let has: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .filter(|p| p.os != "unknown")
                        .map(ToString::to_string)
                        .collect();
                    OciError::Usage(format!(
                        "base image {shown} has no {platform} (it has: {})",
                        if has.is_empty() { "none".to_owned() } else { has.join(", ") }
                    ))
                })?;
            entries.push((platform, entry));
        }
        // Every platform's manifest and config at once: each is a round trip or two.
        let fetches = entries.into_iter().map(|(platform, entry)| {
            let fetcher = &fetcher;
            async move {
                let bytes = fetcher.document(&entry.digest).await?;
                fetcher.platform(platform, entry.digest, &bytes).await
            }
        });
        platforms = futures::future::try_join_all(fetches).await?;
    } else if manifest::is_manifest(&media_type) {
        let single = fetcher.platform(&wanted[0], digest, &bytes).await?;
        let actual = config_platform(&single.config);
        for platform in wanted {
            if !actual.as_ref().is_some_and(|a| a.matches(platform)) {
                let actual = actual.as_ref().map_or("an unknown platform".to_owned(), ToString::to_string);
                return Err(OciError::Usage(format!(
                    "base image {shown} is a single {actual} image; it cannot be the base of {platform}"
                )));
            }
        }
        for platform in wanted {
            platforms.push(BasePlatform { platform: platform.clone(), ..single.clone() });
        }
    } else {
        return Err(OciError::Invalid(format!(
            "base image {shown} has unsupported media type {media_type:?}"
        )));
    }
    Ok(BaseImage { name, digest, platforms, origin })
}

/// The media type from the transport, or else from the document's own mediaType field.
fn media_type_of(bytes: &[u8], given: &str) -> String {
    if !given.is_empty() && given != "application/json" {
        return given.to_owned();
    }
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    match value.get("mediaType").and_then(Value::as_str) {
        Some(media_type) => media_type.to_owned(),
        None if value.get("manifests").is_some() => manifest::MEDIA_INDEX.to_owned(),
        None => manifest::MEDIA_MANIFEST.to_owned(),
    }
}

fn config_platform(config: &Value) -> Option<ImagePlatform> {
    Some(ImagePlatform {
        architecture: config.get("architecture")?.as_str()?.to_owned(),
        os: config.get("os")?.as_str()?.to_owned(),
        variant: config.get("variant").and_then(Value::as_str).map(str::to_owned),
    })
}

struct Fetcher<'a> {
    origin: &'a BaseOrigin,
    shown: &'a str,
}

impl Fetcher<'_> {
    async fn top(&self) -> Result<(Vec<u8>, String)> {
        match self.origin {
            BaseOrigin::Registry { registry, reference } => {
                registry.get_manifest(&reference.repository, &reference.target()).await
            }
            BaseOrigin::Layout(_) => {
                Err(OciError::Invalid("a layout base is resolved through index.json".into()))
            }
        }
    }

    /// A manifest or index by digest, verified.
    async fn document(&self, digest: &Sha256) -> Result<Vec<u8>> {
        match self.origin {
            BaseOrigin::Layout(layout) => layout.read_blob(digest),
            BaseOrigin::Registry { registry, reference } => {
                Ok(registry.get_manifest(&reference.repository, &digest.to_string()).await?.0)
            }
        }
    }

    async fn blob(&self, digest: &Sha256) -> Result<Vec<u8>> {
        match self.origin {
            BaseOrigin::Layout(layout) => layout.read_blob(digest),
            BaseOrigin::Registry { registry, reference } => {
                registry.get_blob(&reference.repository, digest).await
            }
        }
    }

    async fn platform(&self, platform: &ImagePlatform, digest: Sha256, bytes: &[u8]) -> Result<BasePlatform> {
        let shown = self.shown;
        let manifest: Manifest = manifest::parse(bytes, &format!("base manifest {shown} {platform}"))?;
        let config_bytes = self.blob(&manifest.config.digest).await?;
        let config: Value = serde_json::from_slice(&config_bytes).map_err(|err| {
            OciError::Invalid(format!("base image {shown} {platform}: config is not JSON: {err}"))
        })?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for layer in manifest.layers {
            let media_type = manifest::oci_layer_media_type(&layer.media_type).to_owned();
            if ![MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD, MEDIA_LAYER_TAR, DOCKER_LAYER_GZIP]
                .contains(&media_type.as_str())
            {
                return Err(OciError::Invalid(format!(
                    "base image {shown} {platform}: layer {} has media type {:?}, which is not supported",
                    layer.digest, layer.media_type
                )));
            }
            layers.push(Descriptor { media_type, platform: None, ..layer });
        }
        Ok(BasePlatform { platform: platform.clone(), manifest_digest: digest, layers, config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_sources_parse() {
        assert_eq!(
            BaseSource::parse("oci:/tmp/base:v1").unwrap(),
            BaseSource::Layout { dir: "/tmp/base".into(), name: Some("v1".into()) }
        );
        assert_eq!(
            BaseSource::parse("oci:base").unwrap(),
            BaseSource::Layout { dir: "base".into(), name: None }
        );
        assert!(matches!(BaseSource::parse("cgr.dev/chainguard/static").unwrap(), BaseSource::Registry(_)));
        let err = BaseSource::parse("/no/such/layout").unwrap_err().to_string();
        assert!(err.contains("no OCI image layout"), "{err}");
        assert!(BaseSource::parse("Bad/Ref").is_err());
    }
}
