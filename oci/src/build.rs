//! `build_image`: binaries in, a multi-platform image out (an OCI layout and/or a registry
//! push). The steps, in order: validate the spec; resolve the base; hash the binaries; look
//! their layers up in the cache; build the missing layers (in parallel) and store them in the
//! cache; write configs, manifests and the index; write the layout; push.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::base::{self, BaseImage, BaseOrigin, BaseSource};
use super::cache::{self, LayerCache};
use super::config::{self, ConfigOptions};
use super::digest::Sha256;
use super::error::{OciError, Result, join};
use super::layer::{self, Compression, Layer, LayerOptions};
use super::layout::Layout;
use super::manifest::{
    self, ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, Descriptor, Index, MEDIA_CONFIG, MEDIA_INDEX,
    MEDIA_MANIFEST, Manifest,
};
use super::platform::ImagePlatform;
use super::push::{self, Document, PushBlob, PushImage, PushPlan};
use super::reference::Reference;
use super::registry::{PushCounts, Registry, RegistryOptions};
use super::sources::{Rebuild, Sources};
use super::tree::{self, TreeOptions};

/// Everything that defines an image. Only what is listed here enters its digests: never the
/// paths of the binaries or of the output directory.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// The binary's name in the image (`/app/<name>` by default) and in history.
    pub name: String,
    /// One binary per platform.
    pub binaries: Vec<(ImagePlatform, PathBuf)>,
    /// The directory the binary goes in.
    pub dir: String,
    /// The user the container runs as; `None` keeps the base's, or 65532 (nonroot).
    pub user: Option<String>,
    /// Owner of the binary and its directories in the layer.
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub compression: Compression,
    /// Seconds since the epoch for mtimes and `created` (SOURCE_DATE_EPOCH, else 0).
    pub epoch: u64,
    /// `--base`: a registry reference, `oci:DIR[:NAME]`, or a layout directory.
    pub base: Option<String>,
    /// `--layer`: directories whose trees become layers at `/`, in this order, between the
    /// base's layers and the binary's, each for every platform or for one. Their contents
    /// enter the digests, their paths do not.
    pub layers: Vec<LayerDir>,
    pub oci_layout: Option<PathBuf>,
    /// The name of the image in the layout's index.json; defaults to the push tag or `latest`.
    pub tag: Option<String>,
    /// `registry/repository[:tag]` to push to.
    pub push: Option<String>,
    pub registry: RegistryOptions,
}

impl ImageSpec {
    pub fn new(name: &str, binaries: Vec<(ImagePlatform, PathBuf)>) -> Self {
        Self {
            name: name.to_owned(),
            binaries,
            dir: "/app".to_owned(),
            user: None,
            uid: 0,
            gid: 0,
            mode: 0o755,
            env: Vec::new(),
            labels: BTreeMap::new(),
            compression: Compression::Gzip,
            epoch: 0,
            base: None,
            layers: Vec::new(),
            oci_layout: None,
            tag: None,
            push: None,
            registry: RegistryOptions::default(),
        }
    }

    pub fn binary_path(&self) -> String {
        format!("{}/{}", self.dir.trim_end_matches('/'), self.name)
    }

    fn tree_options(&self) -> TreeOptions {
        TreeOptions { uid: self.uid, gid: self.gid, mtime: self.epoch, compression: self.compression }
    }

    fn layer_options(&self) -> LayerOptions {
        LayerOptions {
            path: self.binary_path(),
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
            mtime: self.epoch,
            compression: self.compression,
        }
    }
}

/// A `--layer` directory, for every platform (`platform: None`) or for the binary of one
/// (`--layer OS/ARCH=DIR`: a root filesystem of that architecture's libraries, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDir {
    pub platform: Option<ImagePlatform>,
    pub dir: PathBuf,
}

impl LayerDir {
    /// A tree every platform gets.
    pub fn shared(dir: impl Into<PathBuf>) -> Self {
        Self { platform: None, dir: dir.into() }
    }

    /// A tree only `platform`'s image gets.
    pub fn for_platform(platform: ImagePlatform, dir: impl Into<PathBuf>) -> Self {
        Self { platform: Some(platform), dir: dir.into() }
    }

    /// How the flag spelled it, for messages.
    fn flag(&self) -> String {
        match &self.platform {
            Some(platform) => format!("--layer {platform}={}", self.dir.display()),
            None => format!("--layer {}", self.dir.display()),
        }
    }
}

/// A `--layer` directory's layer, and the platform it is for (`None`: every platform).
#[derive(Clone, Debug)]
pub struct TreeLayer {
    pub platform: Option<ImagePlatform>,
    pub layer: Layer,
}

impl TreeLayer {
    /// True when `platform`'s image has this layer.
    pub fn applies_to(&self, platform: &ImagePlatform) -> bool {
        self.platform.as_ref().is_none_or(|own| own.matches(platform))
    }
}

/// One platform's image.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub platform: ImagePlatform,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layer: Layer,
    /// The layer came from the cache (not tarred or compressed here).
    pub layer_cached: bool,
    /// The `--layer` layers this platform's image has (the shared ones and its own), in order.
    pub tree_layers: Vec<Sha256>,
}

#[derive(Clone, Debug)]
pub struct PushReport {
    pub reference: String,
    pub counts: PushCounts,
}

#[derive(Clone, Debug)]
pub struct ImageResult {
    /// The image index over every platform: what a job result carries.
    pub index: Descriptor,
    pub images: Vec<PlatformImage>,
    /// The `--layer` directories' layers, in command-line order, each with its platform;
    /// a platform's image has the shared ones and its own, in this order.
    pub tree_layers: Vec<TreeLayer>,
    /// The layout written, and the image's name in it.
    pub layout: Option<(PathBuf, String)>,
    pub push: Option<PushReport>,
    /// Things that went wrong without failing the build (the cache, mostly).
    pub warnings: Vec<String>,
}

/// Checked inputs.
struct Plan {
    binaries: Vec<(ImagePlatform, PathBuf)>,
    base: Option<BaseSource>,
    push: Option<Reference>,
    layout_name: String,
    options: LayerOptions,
}

fn plan(spec: &ImageSpec) -> Result<Plan> {
    if spec.binaries.is_empty() {
        return Err(OciError::Usage("no binaries: give at least one --platform OS/ARCH=PATH".into()));
    }
    let valid_name = !spec.name.is_empty()
        && spec.name != "."
        && spec.name != ".."
        && !spec.name.contains('/')
        && !spec.name.bytes().any(|b| b.is_ascii_control());
    if !valid_name {
        return Err(OciError::Usage(format!("--name {:?}: must be a file name (no slashes)", spec.name)));
    }
    if !spec.dir.starts_with('/') {
        return Err(OciError::Usage(format!("--dir {:?}: must be absolute", spec.dir)));
    }
    let options = spec.layer_options();
    options.validate()?;
    let mut binaries = spec.binaries.clone();
    // Sorted, so that the order of --platform flags does not change the index digest.
    binaries.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in binaries.windows(2) {
        if pair[0].0.matches(&pair[1].0) {
            return Err(OciError::Usage(format!("platform {} is given twice", pair[1].0)));
        }
    }
    for tree in &spec.layers {
        if let Some(platform) = &tree.platform
            && !binaries.iter().any(|(binary, _)| binary.matches(platform))
        {
            let platforms: Vec<String> = binaries.iter().map(|(p, _)| p.to_string()).collect();
            return Err(OciError::Usage(format!(
                "{}: no --platform binary for {platform}, so no image to put it in (the platforms are {})",
                tree.flag(),
                platforms.join(", ")
            )));
        }
        let metadata =
            std::fs::metadata(&tree.dir).map_err(|err| OciError::Usage(format!("{}: {err}", tree.flag())))?;
        if !metadata.is_dir() {
            return Err(OciError::Usage(format!("{}: not a directory", tree.flag())));
        }
    }
    for (platform, path) in &binaries {
        let metadata = std::fs::metadata(path)
            .map_err(|err| OciError::Usage(format!("--platform {platform}={}: {err}", path.display())))?;
        if !metadata.is_file() {
            return Err(OciError::Usage(format!("--platform {platform}={}: not a file", path.display())));
        }
    }
    let push = spec.push.as_deref().map(Reference::parse).transpose()?;
    if let Some(reference) = &push
        && reference.digest.is_some()
    {
        return Err(OciError::reference(&reference.to_string(), "push to a tag, not a digest"));
    }
    let layout_name = spec
        .tag
        .clone()
        .or_else(|| push.as_ref().and_then(|r| r.tag.clone()))
        .unwrap_or_else(|| "latest".to_owned());
    check_ref_name(&layout_name)?;
    let base = spec.base.as_deref().map(BaseSource::parse).transpose()?;
    Ok(Plan { binaries, base, push, layout_name, options })
}

/// The layout's `org.opencontainers.image.ref.name` grammar (components of letters and
/// digits joined by `-._:@/+`).
fn check_ref_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .split(['/', '-', '.', '_', ':', '@', '+'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(OciError::Usage(format!(
            "image name {name:?} in the layout must be letters and digits joined by - . _ : @ / +"
        )))
    }
}

/// Builds the image for `spec`, using `cache` for layers when given.
pub async fn build_image(spec: &ImageSpec, cache: Option<&LayerCache>) -> Result<ImageResult> {
    let plan = plan(spec)?;
    let mut warnings = Vec::new();
    let platforms: Vec<ImagePlatform> = plan.binaries.iter().map(|(p, _)| p.clone()).collect();

    // The base first: a wrong base should fail before any work is done.
    let base = match &plan.base {
        Some(source) => Some(base::resolve(source, &platforms, &spec.registry).await?),
        None => None,
    };

    // Staging: the output layout itself, or a temporary one for a push-only run.
    let temp_dir;
    let staging = match &spec.oci_layout {
        Some(dir) => Layout::create(dir)?,
        None => {
            temp_dir = tempfile::tempdir().map_err(OciError::file(std::env::temp_dir()))?;
            Layout::create(temp_dir.path())?
        }
    };

    let (layers, stores) = layers(&plan, &staging, cache, &mut warnings).await?;
    let tree_layers = tree_layers(spec, &staging).await?;

    // Configs, manifests, the index.
    let mut images = Vec::new();
    let mut push_images = Vec::new();
    let mount_from = match &base {
        Some(BaseImage { origin: BaseOrigin::Registry { reference, .. }, .. }) => Some(reference),
        _ => None,
    };
    for ((platform, _), (layer, layer_cached, _)) in plan.binaries.iter().zip(&layers) {
        let own_trees: Vec<&Layer> =
            tree_layers.iter().filter(|tree| tree.applies_to(platform)).map(|tree| &tree.layer).collect();
        let (config_bytes, manifest) = documents(spec, platform, layer, &own_trees, base.as_ref())?;
        let config = staging.write_blob(MEDIA_CONFIG, &config_bytes)?;
        let base_count = manifest.layers.len() - own_trees.len() - 1;
        let mut blobs = Vec::new();
        let binary_layer = manifest.layers.len() - 1;
        for (i, descriptor) in manifest.layers.iter().enumerate() {
            let mount = mount_from
                .filter(|r| i < base_count && plan.push.as_ref().is_some_and(|p| p.registry == r.registry))
                .map(|r| r.repository.clone());
            // A binary layer from the layer cache is in the CAS: a cached registry links it.
            let cas = (i == binary_layer && *layer_cached).then_some(layer.cas);
            blobs.push(PushBlob { descriptor: descriptor.clone(), mount_from: mount, cas });
        }
        // Runner agents store every config they make in the CAS (`job::store_documents`), so
        // publishing a job's image links its configs too; where the CAS lacks one, the mount
        // starts the upload session the push needs anyway.
        let config_cas = cache.is_some().then(|| proto::Digest::of(&config_bytes));
        blobs.push(PushBlob { descriptor: config.clone(), mount_from: None, cas: config_cas });
        let bytes = manifest::to_json(&manifest);
        let mut descriptor = staging.write_blob(MEDIA_MANIFEST, &bytes)?;
        let document = Document { descriptor: descriptor.clone(), bytes: Bytes::from(bytes) };
        push_images.push(PushImage { manifest: document, blobs });
        descriptor.platform = Some(platform.clone());
        images.push(PlatformImage {
            platform: platform.clone(),
            manifest: descriptor,
            config,
            layer: layer.clone(),
            layer_cached: *layer_cached,
            tree_layers: own_trees.iter().map(|tree| tree.digest).collect(),
        });
    }
    let index_annotations = base.as_ref().map(|b| base_annotations(b.name.as_deref(), b.digest));
    let (_, index_bytes) =
        index_document(images.iter().map(|image| image.manifest.clone()).collect(), index_annotations)?;
    let index_descriptor = staging.write_blob(MEDIA_INDEX, &index_bytes)?;
    let index_document = Document { descriptor: index_descriptor.clone(), bytes: Bytes::from(index_bytes) };

    let sources = Sources {
        staging: staging.clone(),
        cache: cache.cloned(),
        cached_layers: layers
            .iter()
            .filter(|(_, cached, _)| *cached)
            .map(|(layer, _, rebuild)| (layer.digest, rebuild.clone()))
            .collect::<HashMap<_, _>>(),
        base: base.as_ref().map(|b| b.origin.clone()),
    };

    let mut layout = None;
    if let Some(dir) = &spec.oci_layout {
        let mut blobs: Vec<&Descriptor> = Vec::new();
        for blob in push_images.iter().flat_map(|image| &image.blobs) {
            if !blobs.iter().any(|b| b.digest == blob.descriptor.digest) {
                blobs.push(&blob.descriptor);
            }
        }
        let fetches = futures::stream::iter(blobs).map(|descriptor| sources.local(descriptor));
        let fetched: Vec<Result<PathBuf>> =
            fetches.buffer_unordered(spec.registry.parallelism.max(1)).collect().await;
        fetched.into_iter().collect::<Result<Vec<_>>>()?;
        staging.set_ref(&plan.layout_name, &index_descriptor)?;
        layout = Some((dir.clone(), plan.layout_name.clone()));
    }

    let mut push_report = None;
    if let Some(reference) = &plan.push {
        let mut repositories = vec![(reference.repository.clone(), "pull,push")];
        if let Some(from) =
            mount_from.filter(|r| r.registry == reference.registry && r.repository != reference.repository)
        {
            repositories.push((from.repository.clone(), "pull"));
        }
        let registry = Arc::new(Registry::connect(&reference.registry, &repositories, &spec.registry).await?);
        let tag = reference.tag.clone().unwrap_or_else(|| "latest".to_owned());
        let plan = PushPlan { images: push_images, index: index_document, tag: tag.clone() };
        push::push(&registry, &reference.repository, &plan, &sources, spec.registry.parallelism).await?;
        let shown = Reference { tag: Some(tag), ..reference.clone() };
        push_report = Some(PushReport { reference: shown.to_string(), counts: registry.counters.snapshot() });
    }

    // New layers went to the cache while the image was written and pushed.
    for store in stores {
        if let Err(err) = join(store).await {
            warnings.push(format!("could not store a layer in the cache: {err}"));
        }
    }
    Ok(ImageResult { index: index_descriptor, images, tree_layers, layout, push: push_report, warnings })
}

/// The config (its canonical bytes) and manifest of one platform: `layer` on top of the
/// base's layers for `platform`, if there is a base.
fn documents(
    spec: &ImageSpec,
    platform: &ImagePlatform,
    layer: &Layer,
    tree_layers: &[&Layer],
    base: Option<&BaseImage>,
) -> Result<(Vec<u8>, Manifest)> {
    let base_platform = base.and_then(|b| b.for_platform(platform));
    let options = ConfigOptions {
        binary_path: spec.binary_path(),
        env: spec.env.clone(),
        user: spec.user.clone(),
        labels: spec.labels.clone(),
        created: spec.epoch,
        created_by: format!("cachectl image {}", spec.binary_path()),
        tree_layers: tree_layers.iter().map(|tree| tree.diff_id).collect(),
    };
    let config_bytes =
        config::image_config(base_platform.map(|b| &b.config), platform, layer.diff_id, &options)?;
    let mut layers = base_platform.map(|b| b.layers.clone()).unwrap_or_default();
    layers.extend(tree_layers.iter().map(|tree| Descriptor::new(&tree.media_type, tree.digest, tree.size)));
    layers.push(Descriptor::new(&layer.media_type, layer.digest, layer.size));
    let annotations = match (base, base_platform) {
        (Some(base), Some(base_platform)) => {
            Some(base_annotations(base.name.as_deref(), base_platform.manifest_digest))
        }
        _ => None,
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST.to_owned(),
        config: Descriptor::of(MEDIA_CONFIG, &config_bytes),
        layers,
        annotations,
    };
    Ok((config_bytes, manifest))
}

/// The image index over per-platform manifests (each descriptor with its platform), in
/// platform order whatever order they come in, and its descriptor. The one encoder of indexes:
/// [`build_image`] and runner agents assembling a job's image both use it, so the same
/// manifests give the same index digest everywhere.
pub fn index_document(
    mut manifests: Vec<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
) -> Result<(Descriptor, Vec<u8>)> {
    if manifests.is_empty() {
        return Err(OciError::Usage("an image index needs at least one platform".into()));
    }
    if manifests.iter().any(|m| m.platform.is_none()) {
        return Err(OciError::Invalid("a manifest of the index has no platform".into()));
    }
    manifests.sort_by(|a, b| a.platform.cmp(&b.platform));
    let platforms: Vec<&ImagePlatform> = manifests.iter().filter_map(|m| m.platform.as_ref()).collect();
    for (i, a) in platforms.iter().enumerate() {
        if let Some(b) = platforms[i + 1..].iter().find(|b| a.matches(b)) {
            return Err(OciError::Usage(format!("two images for one platform: {a} and {b}")));
        }
    }
    let bytes = manifest::to_json(&Index::new(manifests, annotations));
    Ok((Descriptor::of(MEDIA_INDEX, &bytes), bytes))
}

/// One platform's image, built without an index, a layout or a push: what a runner agent
/// makes for its target. The layer comes from the cache or is built and stored in it (awaited,
/// so whoever assembles the image next finds it there); the config and manifest bytes are
/// returned for the caller to keep.
#[derive(Clone, Debug)]
pub struct PlatformBuild {
    /// The manifest descriptor carries the platform, as an index entry does.
    pub image: PlatformImage,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub warnings: Vec<String>,
}

/// Builds the image of the single platform in `spec` (no base, layout or push: those belong to
/// the whole image). The documents are exactly those [`build_image`] writes for that platform.
pub async fn build_platform_image(spec: &ImageSpec, cache: Option<&LayerCache>) -> Result<PlatformBuild> {
    if spec.binaries.len() != 1 {
        return Err(OciError::Usage(format!(
            "a platform image needs exactly one binary, got {}",
            spec.binaries.len()
        )));
    }
    if spec.base.is_some() || !spec.layers.is_empty() || spec.oci_layout.is_some() || spec.push.is_some() {
        return Err(OciError::Usage(
            "a platform image has no base, extra layers, layout or push; build the whole image for those"
                .into(),
        ));
    }
    let plan = plan(spec)?;
    let mut warnings = Vec::new();
    let temp = tempfile::tempdir().map_err(OciError::file(std::env::temp_dir()))?;
    let staging = Layout::create(temp.path())?;
    let (layers, stores) = layers(&plan, &staging, cache, &mut warnings).await?;
    let ((platform, _), (layer, layer_cached, _)) = plan
        .binaries
        .iter()
        .zip(&layers)
        .next()
        .ok_or_else(|| OciError::Invalid("no layer was built".into()))?;
    let (config_bytes, manifest) = documents(spec, platform, layer, &[], None)?;
    let manifest_bytes = manifest::to_json(&manifest);
    let mut descriptor = Descriptor::of(MEDIA_MANIFEST, &manifest_bytes);
    descriptor.platform = Some(platform.clone());
    for store in stores {
        if let Err(err) = join(store).await {
            warnings.push(format!("could not store a layer in the cache: {err}"));
        }
    }
    let image = PlatformImage {
        platform: platform.clone(),
        manifest: descriptor,
        config: manifest.config.clone(),
        layer: layer.clone(),
        layer_cached: *layer_cached,
        tree_layers: Vec::new(),
    };
    Ok(PlatformBuild { image, config: config_bytes, manifest: manifest_bytes, warnings })
}

fn base_annotations(name: Option<&str>, digest: Sha256) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    if let Some(name) = name {
        annotations.insert(ANNOTATION_BASE_NAME.to_owned(), name.to_owned());
    }
    annotations.insert(ANNOTATION_BASE_DIGEST.to_owned(), digest.to_string());
    annotations
}

/// Each platform's layer, from the cache or built here, in the order of `plan.binaries`,
/// with whether it was cached and how to rebuild it; plus the tasks storing the new layers
/// in the cache, which run on while the image is written.
async fn layers(
    plan: &Plan,
    staging: &Layout,
    cache: Option<&LayerCache>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<(Layer, bool, Rebuild)>, Vec<tokio::task::JoinHandle<Result<()>>>)> {
    let hashes = plan.binaries.iter().map(|(_, path)| {
        let path = path.clone();
        join(cached_client::task::spawn_blocking("hash-binary", move || {
            cached_client::transfer::hash_file(&path).map_err(|err| OciError::Usage(err.to_string()))
        }))
    });
    let digests = futures::future::try_join_all(hashes).await?;
    let keys: Vec<[u8; 32]> = digests.iter().map(|d| cache::layer_key(d, &plan.options)).collect();

    let mut hits = vec![None; keys.len()];
    if let Some(cache) = cache {
        match cache.lookup(&keys).await {
            Ok(found) => hits = found,
            Err(err) => warnings.push(format!("layer cache lookup failed, building every layer: {err}")),
        }
    }

    // Build the misses in parallel, bounded by the cores.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let permits = Arc::new(tokio::sync::Semaphore::new(cores));
    let builds = plan.binaries.iter().zip(&digests).zip(&hits).map(|(((_, binary), digest), hit)| {
        let (binary, digest, options, staging, permits) =
            (binary.clone(), *digest, plan.options.clone(), staging.clone(), permits.clone());
        let needed = hit.is_none();
        async move {
            if !needed {
                return Ok(None);
            }
            let _permit = permits.acquire_owned().await.map_err(|err| OciError::Invalid(err.to_string()))?;
            join(cached_client::task::spawn_blocking("build-layer", move || {
                build_layer(&staging, &binary, digest, &options)
            }))
            .await
            .map(Some)
        }
    });
    let built = futures::future::try_join_all(builds).await?;

    // A cache failure is a warning, never a failed image.
    let mut stores = Vec::new();
    if let Some(cache) = cache {
        for (layer, key) in built.iter().zip(&keys) {
            if let Some((layer, path)) = layer {
                let (cache, key, layer, path) = (cache.clone(), *key, layer.clone(), path.clone());
                stores.push(cached_client::task::spawn("store-layer", async move {
                    cache.store(key, &layer, &path).await
                }));
            }
        }
    }

    let mut out = Vec::with_capacity(keys.len());
    for (((hit, built), digest), (_, binary)) in hits.into_iter().zip(built).zip(&digests).zip(&plan.binaries)
    {
        let (layer, cached) = match (hit, built) {
            (Some(layer), _) => (layer, true),
            (None, Some((layer, _))) => (layer, false),
            (None, None) => return Err(OciError::Invalid("a layer was neither cached nor built".into())),
        };
        let rebuild = Rebuild {
            layer: layer.clone(),
            binary: binary.clone(),
            binary_digest: *digest,
            options: plan.options.clone(),
        };
        out.push((layer, cached, rebuild));
    }
    Ok((out, stores))
}

/// The `--layer` directories' layers, in order, built into the staging layout (in parallel,
/// bounded by the cores). They are not cached: a tree has no single digest to key them by
/// without reading it all, which is what building the layer does anyway.
async fn tree_layers(spec: &ImageSpec, staging: &Layout) -> Result<Vec<TreeLayer>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let builds = spec.layers.iter().map(|tree| {
        let (tree, options, staging) = (tree.clone(), spec.tree_options(), staging.clone());
        join(cached_client::task::spawn_blocking("build-tree-layer", move || {
            let layer = build_tree_layer(&staging, &tree.dir, &options)?;
            Ok(TreeLayer { platform: tree.platform, layer })
        }))
    });
    futures::stream::iter(builds).buffered(cores).collect::<Vec<_>>().await.into_iter().collect()
}

fn build_tree_layer(staging: &Layout, dir: &std::path::Path, options: &TreeOptions) -> Result<Layer> {
    let blobs = staging.root.join("blobs").join("sha256");
    let temp =
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(&blobs).map_err(OciError::file(&blobs))?;
    let file = temp.reopen().map_err(OciError::file(temp.path()))?;
    let layer = tree::write_tree_layer(dir, options, std::io::BufWriter::with_capacity(1 << 20, file))?;
    staging.import(temp.path(), &layer.digest, layer.size)?;
    Ok(layer)
}

/// Tars and compresses one binary into the staging layout.
fn build_layer(
    staging: &Layout,
    binary: &std::path::Path,
    digest: proto::Digest,
    options: &LayerOptions,
) -> Result<(Layer, PathBuf)> {
    let dir = staging.root.join("blobs").join("sha256");
    let temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(OciError::file(&dir))?;
    let file = temp.reopen().map_err(OciError::file(temp.path()))?;
    let layer =
        layer::write_layer(binary, digest, options, std::io::BufWriter::with_capacity(1 << 20, file))?;
    let path = staging.import(temp.path(), &layer.digest, layer.size)?;
    Ok((layer, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec for one linux/amd64 binary and one tree, into `layout`.
    fn spec_with_tree(
        name: &str,
        binary: &std::path::Path,
        tree: &std::path::Path,
        layout: PathBuf,
    ) -> ImageSpec {
        let mut spec = ImageSpec::new(name, vec![("linux/amd64".parse().unwrap(), binary.to_owned())]);
        spec.layers = vec![LayerDir::shared(tree)];
        spec.epoch = 1_700_000_000;
        spec.oci_layout = Some(layout);
        spec
    }

    fn manifest_and_config(layout: &std::path::Path, result: &ImageResult) -> (Manifest, serde_json::Value) {
        let layout = Layout::open(layout).unwrap();
        let manifest: Manifest =
            serde_json::from_slice(&layout.read_blob(&result.images[0].manifest.digest).unwrap()).unwrap();
        let config = serde_json::from_slice(&layout.read_blob(&manifest.config.digest).unwrap()).unwrap();
        (manifest, config)
    }

    /// A base made with --layer, given as `oci:DIR`, under an image with a tree of its own:
    /// base layers, then ours in order, each with its diff_id and history entry.
    #[tokio::test]
    async fn tree_layers_sit_between_the_base_and_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        std::fs::write(&binary, b"\x7fELF not really").unwrap();
        let (rootfs, extra) = (dir.path().join("rootfs"), dir.path().join("extra"));
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "nonroot:x:65532:65532::/:/sbin/nologin\n").unwrap();
        std::fs::create_dir_all(extra.join("usr/share")).unwrap();
        std::fs::write(extra.join("usr/share/data"), "data").unwrap();

        let base_dir = dir.path().join("base");
        let base =
            build_image(&spec_with_tree("base", &binary, &rootfs, base_dir.clone()), None).await.unwrap();
        assert_eq!(base.tree_layers.len(), 1);

        let build = |out: &str| {
            let mut spec = spec_with_tree("app", &binary, &extra, dir.path().join(out));
            spec.base = Some(format!("oci:{}", base_dir.display()));
            async move { build_image(&spec, None).await.unwrap() }
        };
        let image = build("one").await;
        assert_eq!(build("two").await.index.digest, image.index.digest, "the same inputs, the same index");

        let (manifest, config) = manifest_and_config(&dir.path().join("one"), &image);
        let digests: Vec<Sha256> = manifest.layers.iter().map(|layer| layer.digest).collect();
        let expected = [
            base.tree_layers[0].layer.digest,
            base.images[0].layer.digest,
            image.tree_layers[0].layer.digest,
            image.images[0].layer.digest,
        ];
        assert_eq!(digests, expected);
        let diff_ids: Vec<&str> =
            config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
        let expected_ids: Vec<String> = [
            &base.tree_layers[0].layer,
            &base.images[0].layer,
            &image.tree_layers[0].layer,
            &image.images[0].layer,
        ]
        .iter()
        .map(|layer| layer.diff_id.to_string())
        .collect();
        assert_eq!(diff_ids, expected_ids);
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 4);
        assert_eq!(history[2]["created_by"], "cachectl image --layer");
        assert!(
            !String::from_utf8_lossy(&serde_json::to_vec(&config).unwrap())
                .contains(&*dir.path().to_string_lossy())
        );
    }

    #[test]
    fn ref_names_follow_the_layout_grammar() {
        for good in ["latest", "v1.2", "ghcr.io/o/app:v1", "a+b"] {
            check_ref_name(good).unwrap();
        }
        for bad in ["", "-x", "x-", "a b", "a//b"] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
    }
}
