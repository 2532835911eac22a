//! `cachectl image`: built binaries in, a multi-platform OCI image out (layout and/or push).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use cached_client::connect::ConnectOptions;
use cached_client::error::{ClientError, Result};
use cached_oci::signature::{self, PrivateKey, SignReport};
use cached_oci::{
    self as oci, Compression, ImagePlatform, ImageResult, ImageSpec, LayerCache, LayerDir, Reference,
    RegistryOptions,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A binary and its platform, OS/ARCH[/VARIANT]=PATH; repeat for each platform.
    #[arg(long = "platform", value_name = "OS/ARCH=PATH", required = true)]
    platforms: Vec<String>,
    /// Name of the binary in the image: it is installed as DIR/NAME and is the entrypoint.
    #[arg(long)]
    name: String,
    /// Directory of the binary in the image; it is appended to PATH.
    #[arg(long, default_value = "/app")]
    dir: String,
    /// Base image: a registry reference, oci:DIR[:NAME], or an OCI layout directory [default: none]
    #[arg(long, value_name = "REF")]
    base: Option<String>,
    /// A directory whose tree becomes a layer at / (sorted, modes and symlinks kept, owned by
    /// --owner, mtimes from SOURCE_DATE_EPOCH), between the base and the binary; repeatable.
    /// OS/ARCH=DIR puts it in that --platform's image only (its root filesystem, say); a plain
    /// DIR goes in every platform's.
    #[arg(long = "layer", value_name = "[OS/ARCH=]DIR")]
    layers: Vec<String>,
    /// Write the image to this OCI image layout directory (created if absent).
    #[arg(long, value_name = "DIR")]
    oci_layout: Option<PathBuf>,
    /// Name of the image in the layout's index.json [default: the --push tag, else latest]
    #[arg(long)]
    tag: Option<String>,
    /// Push the image to REGISTRY/REPOSITORY:TAG.
    #[arg(long, value_name = "REPO:TAG")]
    push: Option<String>,
    /// Sign the pushed image index as `cosign sign --key KEY` does (see `cachectl sign`).
    #[arg(long, value_name = "KEY", requires = "push")]
    sign_key: Option<PathBuf>,
    /// File holding --sign-key's password [default: $COSIGN_PASSWORD]
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    sign_key_password_file: Option<PathBuf>,
    /// Namespace of the layer cache's records: layers are only ever reused within one
    /// namespace, like Go action entries (writing needs `ac-write` in it).
    #[arg(long, env = "CACHED_NAMESPACE", default_value = "")]
    namespace: String,
    /// Layer compression: gzip (what every runtime reads) or zstd.
    #[arg(long, default_value = "gzip", value_parser = parse_compression)]
    compression: Compression,
    /// User the container runs as [default: the base's, else 65532 (nonroot)]
    #[arg(long)]
    user: Option<String>,
    /// Owner of the binary and of the --layer trees in their layers, UID:GID.
    #[arg(long, default_value = "0:0", value_parser = parse_owner)]
    owner: (u64, u64),
    /// Environment variable for the image, KEY=VALUE; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Image label, KEY=VALUE; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Time of files and of `created`, in seconds since the epoch.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Blobs larger than this are uploaded in chunks of this size.
    #[arg(long, default_value = "64MiB", value_parser = cached_client::size::parse, hide = true)]
    chunk_size: u64,
    /// Do not use the layer cache in cached.
    #[arg(long)]
    no_cache: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// How to reach registries; `cachectl image` and `cachectl submit --image` take the same.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Speak plain HTTP to registries (loopback registries always get it).
    #[arg(long)]
    insecure: bool,
    /// docker config.json with registry credentials [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure,
            docker_config: self.docker_config.clone(),
            ..RegistryOptions::default()
        }
    }
}

fn parse_compression(text: &str) -> std::result::Result<Compression, String> {
    text.parse().map_err(|err: oci::OciError| err.to_string())
}

/// `--layer`: `OS/ARCH[/VARIANT]=DIR` when what comes before the first `=` is a platform, else
/// a plain `DIR` (a directory whose path starts with a platform and `=` is written `./...`).
fn parse_layer(text: &str) -> Result<LayerDir> {
    if let Some((prefix, dir)) = text.split_once('=') {
        match prefix.parse::<ImagePlatform>() {
            Ok(_) if dir.is_empty() => {
                return Err(ClientError::Usage(format!(
                    "--layer {text:?}: expected OS/ARCH=DIR, like linux/arm64=rootfs-arm64"
                )));
            }
            Ok(platform) => return Ok(LayerDir::for_platform(platform, dir)),
            // Meant as a platform, most likely, unless there is such a directory.
            Err(err) if prefix.contains('/') && !Path::new(text).exists() => {
                return Err(ClientError::Usage(format!(
                    "--layer {text:?}: neither OS/ARCH=DIR ({err}) nor an existing directory"
                )));
            }
            Err(_) => {}
        }
    }
    Ok(LayerDir::shared(text))
}

fn parse_owner(text: &str) -> std::result::Result<(u64, u64), String> {
    let (uid, gid) = text.split_once(':').ok_or_else(|| format!("{text:?}: expected UID:GID"))?;
    let number = |n: &str| n.parse::<u64>().map_err(|_| format!("{text:?}: {n:?} is not a number"));
    Ok((number(uid)?, number(gid)?))
}

impl Args {
    /// Checks the arguments and turns them into a spec, before anything is contacted.
    pub fn spec(&self) -> Result<ImageSpec> {
        let mut binaries = Vec::new();
        for entry in &self.platforms {
            let (platform, path) = entry.split_once('=').ok_or_else(|| {
                ClientError::Usage(format!(
                    "--platform {entry:?}: expected OS/ARCH=PATH, like linux/amd64=bin/app"
                ))
            })?;
            let platform: ImagePlatform = platform.parse().map_err(ClientError::from)?;
            binaries.push((platform, PathBuf::from(path)));
        }
        let mut labels = BTreeMap::new();
        for label in &self.label {
            let (key, value) = label
                .split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| ClientError::Usage(format!("--label {label:?}: expected KEY=VALUE")))?;
            labels.insert(key.to_owned(), value.to_owned());
        }
        let mut spec = ImageSpec::new(&self.name, binaries);
        spec.dir.clone_from(&self.dir);
        spec.user.clone_from(&self.user);
        (spec.uid, spec.gid) = self.owner;
        spec.env.clone_from(&self.env);
        spec.labels = labels;
        spec.compression = self.compression;
        spec.epoch = self.source_date_epoch;
        spec.base.clone_from(&self.base);
        spec.layers = self.layers.iter().map(|text| parse_layer(text)).collect::<Result<_>>()?;
        spec.oci_layout.clone_from(&self.oci_layout);
        spec.tag.clone_from(&self.tag);
        spec.push.clone_from(&self.push);
        spec.registry = RegistryOptions { chunk_size: self.chunk_size, ..self.registry.options() };
        Ok(spec)
    }
}

pub async fn run(server: &str, connect: &ConnectOptions, args: Args) -> Result<()> {
    let spec = args.spec()?;
    // A wrong password should stop us before the build, not after the push.
    let sign_key = match &args.sign_key {
        Some(path) => Some(super::sign::load_key(path, args.sign_key_password_file.as_deref())?),
        None => None,
    };
    let cache = if args.no_cache {
        None
    } else {
        match LayerCache::connect(server, connect, &args.namespace).await {
            Ok(cache) => Some(cache),
            Err(warning) => {
                eprintln!("cachectl: warning: {warning}");
                None
            }
        }
    };
    let result = oci::build_image(&spec, cache.as_ref()).await?;
    for warning in &result.warnings {
        eprintln!("cachectl: warning: {warning}");
    }
    let signed = match &sign_key {
        Some(key) => Some(sign_index(&result, key, &spec.registry).await?),
        None => None,
    };
    if args.json {
        let mut document = to_json(&result);
        if let Some(report) = &signed {
            document["signature"] = json!({
                "image": report.image,
                "signatures_at": report.signatures_at,
                "signatures": report.signatures,
                "added": report.added,
            });
        }
        outln!("{}", serde_json::to_string_pretty(&document).unwrap_or_default());
    } else {
        out!("{}", render(&result));
        if let Some(report) = &signed {
            out!("{}", super::sign::render(report));
        }
    }
    Ok(())
}

/// Signs the index just pushed, by its digest: the tag may have moved since.
pub async fn sign_index(
    result: &ImageResult,
    key: &PrivateKey,
    options: &RegistryOptions,
) -> Result<SignReport> {
    let pushed = result
        .push
        .as_ref()
        .ok_or_else(|| ClientError::Usage("--sign-key signs what --push pushed; add --push".to_owned()))?;
    let reference = Reference { digest: Some(result.index.digest), ..Reference::parse(&pushed.reference)? };
    Ok(signature::sign(&reference, key, options).await?)
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// The human report: one line per platform, then the index, the layout and the push.
pub fn render(result: &ImageResult) -> String {
    let mut out = String::new();
    let width = result.images.iter().map(|i| i.platform.to_string().len()).max().unwrap_or(0);
    for (n, tree) in result.tree_layers.iter().enumerate() {
        // A layer of one platform's image says which; the others are in every image.
        let only = tree.platform.as_ref().map(|p| format!(" ({p} only)")).unwrap_or_default();
        out.push_str(&format!(
            "--layer #{}{only}  {}  {}\n",
            n + 1,
            tree.layer.digest,
            size(tree.layer.size)
        ));
    }
    for image in &result.images {
        out.push_str(&format!(
            "{:width$}  {}  layer {} {}\n",
            image.platform.to_string(),
            image.manifest.digest,
            size(image.layer.size),
            if image.layer_cached { "(cached)" } else { "(built)" },
        ));
    }
    out.push_str(&format!("index {}\n", result.index.digest));
    if let Some((dir, name)) = &result.layout {
        out.push_str(&format!("wrote {} ({name})\n", dir.display()));
    }
    if let Some(push) = &result.push {
        let c = &push.counts;
        if c.blobs_uploaded == 0 && c.blobs_mounted == 0 && c.manifests_put == 0 {
            out.push_str(&format!(
                "pushed {}@{}: already there, nothing uploaded; {} requests\n",
                push.reference, result.index.digest, c.requests
            ));
        } else {
            out.push_str(&format!(
                "pushed {}@{}: {} blobs uploaded ({}), {} already there, {} mounted; {} manifests put; {} requests\n",
                push.reference,
                result.index.digest,
                c.blobs_uploaded,
                size(c.blob_bytes_uploaded),
                c.blobs_present,
                c.blobs_mounted,
                c.manifests_put,
                c.requests,
            ));
        }
    }
    out
}

/// The stable JSON document of `--json`.
pub fn to_json(result: &ImageResult) -> serde_json::Value {
    json!({
        "index": result.index.digest.to_string(),
        "images": result.images.iter().map(|image| json!({
            "platform": image.platform.to_string(),
            "manifest": image.manifest.digest.to_string(),
            "config": image.config.digest.to_string(),
            "layer": image.layer.digest.to_string(),
            "layer_size": image.layer.size,
            "diff_id": image.layer.diff_id.to_string(),
            "layer_cached": image.layer_cached,
            "tree_layers": image.tree_layers.iter().map(|digest| digest.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "layers": result.tree_layers.iter().map(|tree| json!({
            "digest": tree.layer.digest.to_string(),
            "size": tree.layer.size,
            "diff_id": tree.layer.diff_id.to_string(),
            "platform": tree.platform.as_ref().map(|p| p.to_string()),
        })).collect::<Vec<_>>(),
        "layout": result.layout.as_ref().map(|(dir, name)| json!({"dir": dir, "name": name})),
        "push": result.push.as_ref().map(|push| json!({
            "reference": push.reference,
            "requests": push.counts.requests,
            "blobs_uploaded": push.counts.blobs_uploaded,
            "blob_bytes_uploaded": push.counts.blob_bytes_uploaded,
            "blobs_present": push.counts.blobs_present,
            "blobs_mounted": push.counts.blobs_mounted,
            "manifests_put": push.counts.manifests_put,
            "manifests_present": push.counts.manifests_present,
        })),
        "warnings": result.warnings,
    })
}
