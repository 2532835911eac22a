//! Where each blob of an image can be had, so that bytes are only produced or moved when an
//! output needs them: layers we built are already staged; cached layers are downloaded from
//! the CAS (or, should the CAS have lost them, rebuilt); base layers come from the base's
//! layout or registry.

use std::collections::HashMap;
use std::path::PathBuf;

use super::base::BaseOrigin;
use super::cache::LayerCache;
use super::digest::Sha256;
use super::error::{OciError, Result, join};
use super::layer::{self, Layer, LayerOptions};
use super::layout::Layout;
use super::manifest::Descriptor;

/// How to rebuild a cached layer from its binary.
#[derive(Clone, Debug)]
pub struct Rebuild {
    pub layer: Layer,
    pub binary: PathBuf,
    pub binary_digest: proto::Digest,
    pub options: LayerOptions,
}

pub struct Sources {
    /// Where blobs are materialized: the output layout, or a temporary one.
    pub staging: Layout,
    pub cache: Option<LayerCache>,
    pub cached_layers: HashMap<Sha256, Rebuild>,
    pub base: Option<BaseOrigin>,
}

impl Sources {
    /// The path of the blob in the staging layout, fetching it there first if need be.
    pub async fn local(&self, descriptor: &Descriptor) -> Result<PathBuf> {
        let Descriptor { digest, size, .. } = descriptor;
        let dest = self.staging.blob_path(digest);
        if self.staging.has_blob(digest, *size) {
            return Ok(dest);
        }
        if let Some(rebuild) = self.cached_layers.get(digest) {
            return self.cached_layer(rebuild).await;
        }
        match &self.base {
            Some(BaseOrigin::Layout(layout)) if layout.has_blob(digest, *size) => {
                let (from, to, digest, size) = (layout.clone(), self.staging.clone(), *digest, *size);
                join(cached_client::task::spawn_blocking("copy-blob", move || {
                    to.copy_from(&from, &digest, size)
                }))
                .await?;
                Ok(dest)
            }
            Some(BaseOrigin::Registry { registry, reference }) => {
                let temp = self.temp()?;
                registry.download_blob(&reference.repository, digest, temp.path()).await?;
                self.staging.import(temp.path(), digest, *size)
            }
            _ => Err(OciError::Invalid(format!(
                "blob {digest} is in neither the layout, the cache nor the base"
            ))),
        }
    }

    fn temp(&self) -> Result<tempfile::NamedTempFile> {
        let dir = self.staging.root.join("blobs").join("sha256");
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(OciError::file(&dir))
    }

    async fn cached_layer(&self, rebuild: &Rebuild) -> Result<PathBuf> {
        let layer = &rebuild.layer;
        let temp = self.temp()?;
        if let Some(cache) = &self.cache
            && cache.fetch(layer, temp.path()).await.is_ok()
        {
            return self.staging.import(temp.path(), &layer.digest, layer.size);
        }
        // The CAS lost the bytes since the lookup: the layer is deterministic, so make it again.
        let (binary, digest, options, path) =
            (rebuild.binary.clone(), rebuild.binary_digest, rebuild.options.clone(), temp.path().to_owned());
        let built = join(cached_client::task::spawn_blocking("rebuild-layer", move || {
            let file = std::fs::File::create(&path).map_err(OciError::file(&path))?;
            layer::write_layer(&binary, digest, &options, std::io::BufWriter::new(file))
        }))
        .await?;
        if built.digest != layer.digest {
            return Err(OciError::Invalid(format!(
                "the cached record of layer {} disagrees with the layer rebuilt from {} ({})",
                layer.digest,
                rebuild.binary.display(),
                built.digest
            )));
        }
        self.staging.import(temp.path(), &layer.digest, layer.size)
    }
}
