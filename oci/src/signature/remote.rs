//! Signing and verifying through a registry, as cosign does: the signed manifest is found by
//! its digest, its signatures under the `sha256-<hex>.sig` tag of the same repository. A new
//! signature is appended to those already there, so cosign's and ours live side by side.

use crate::digest::Sha256;
use crate::error::OciError;
use crate::manifest::{self, Descriptor, MEDIA_MANIFEST, Manifest};
use crate::reference::Reference;
use crate::registry::{Registry, RegistryOptions};

use super::error::SignatureError;
use super::image::{self, SignatureImage, signature_tag};
use super::key::{PrivateKey, PublicKey};
use super::payload::SimpleSigning;

#[derive(Clone, Debug)]
pub struct SignReport {
    /// `registry/repository@sha256:...`, what was signed.
    pub image: String,
    /// `registry/repository:sha256-<hex>.sig`, where the signatures are.
    pub signatures_at: String,
    /// Signatures there now, ours included.
    pub signatures: usize,
    /// False when this very signature was there already.
    pub added: bool,
}

#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub image: String,
    /// Signatures that hold for the key, of `signatures` found.
    pub valid: usize,
    pub signatures: usize,
}

/// Signs the manifest `reference` names (by tag or digest) with `key`.
pub async fn sign(
    reference: &Reference,
    key: &PrivateKey,
    options: &RegistryOptions,
) -> Result<SignReport, SignatureError> {
    let scopes = [(reference.repository.clone(), "pull,push")];
    let registry = Registry::connect(&reference.registry, &scopes, options).await?;
    let digest = resolve(&registry, reference).await?;
    sign_digest(&registry, reference, &digest, key).await
}

/// Signs the manifest with `digest` in `reference`'s repository, on a registry already
/// connected with push access (as after pushing the image).
pub async fn sign_digest(
    registry: &Registry,
    reference: &Reference,
    digest: &Sha256,
    key: &PrivateKey,
) -> Result<SignReport, SignatureError> {
    let repository = &reference.repository;
    let payload = SimpleSigning::new(reference, digest).to_bytes();
    let layer = image::signature_layer(&payload, &key.sign(&payload));
    let tag = signature_tag(digest);
    let mut layers = existing_signatures(registry, repository, &tag).await?;
    // ECDSA signing here is deterministic (RFC 6979), so signing twice finds its own layer.
    let added = !layers.contains(&layer);
    if added {
        layers.push(layer);
        let image = SignatureImage::new(layers.clone());
        upload_small_blob(registry, repository, &payload).await?;
        upload_small_blob(registry, repository, &image.config).await?;
        registry.put_manifest(repository, &tag, MEDIA_MANIFEST, &image.manifest).await?;
    }
    Ok(SignReport {
        image: format!("{}@{digest}", reference.name()),
        signatures_at: format!("{}:{tag}", reference.name()),
        signatures: layers.len(),
        added,
    })
}

/// Checks that the manifest `reference` names has at least one signature by `key`.
pub async fn verify(
    reference: &Reference,
    key: &PublicKey,
    options: &RegistryOptions,
) -> Result<VerifyReport, SignatureError> {
    let scopes = [(reference.repository.clone(), "pull")];
    let registry = Registry::connect(&reference.registry, &scopes, options).await?;
    let repository = &reference.repository;
    let digest = resolve(&registry, reference).await?;
    let tag = signature_tag(&digest);
    if registry.manifest_digest(repository, &tag).await?.is_none() {
        return Err(SignatureError::Unsigned { reference: reference.name(), digest, tag });
    }
    let (bytes, _) = registry.get_manifest(repository, &tag).await?;
    let signatures: Manifest = manifest::parse(&bytes, &format!("signature manifest {tag}"))?;
    let mut reasons = Vec::new();
    let mut valid = 0;
    for layer in &signatures.layers {
        match check_signature(&registry, repository, layer, &digest, key).await {
            Ok(()) => valid += 1,
            Err(reason) => reasons.push(format!("layer {}: {reason}", layer.digest)),
        }
    }
    if valid == 0 {
        if reasons.is_empty() {
            reasons.push(format!("the {tag} manifest has no layers"));
        }
        return Err(SignatureError::NoValidSignature { reference: reference.name(), digest, reasons });
    }
    Ok(VerifyReport {
        image: format!("{}@{digest}", reference.name()),
        valid,
        signatures: signatures.layers.len(),
    })
}

/// One signature layer: its payload is the blob it names, signed by `key`, for `digest`.
async fn check_signature(
    registry: &Registry,
    repository: &str,
    layer: &Descriptor,
    digest: &Sha256,
    key: &PublicKey,
) -> Result<(), String> {
    let signature = image::layer_signature(layer)?;
    // get_blob checks the bytes against the layer's digest.
    let payload = registry.get_blob(repository, &layer.digest).await.map_err(|err| err.to_string())?;
    key.verify(&payload, &signature)?;
    let payload = SimpleSigning::parse(&payload)?;
    if !payload.names(digest) {
        return Err(format!(
            "the signed payload is for {}, not for this image",
            payload.critical.image.docker_manifest_digest
        ));
    }
    Ok(())
}

/// The digest of the manifest `reference` names: given, or what its tag points to now. Either
/// way the manifest must exist: a signature of nothing would only mislead.
async fn resolve(registry: &Registry, reference: &Reference) -> Result<Sha256, OciError> {
    let target = reference.target();
    if let Some(digest) = registry.manifest_digest(&reference.repository, &target).await? {
        return Ok(reference.digest.unwrap_or(digest));
    }
    // No such tag, or a registry that leaves Docker-Content-Digest out of HEAD answers: the
    // GET says which, and its bytes give the digest.
    let (bytes, _) = registry.get_manifest(&reference.repository, &target).await?;
    // get_manifest has checked the bytes against a digest reference.
    Ok(Sha256::of(&bytes))
}

async fn existing_signatures(
    registry: &Registry,
    repository: &str,
    tag: &str,
) -> Result<Vec<Descriptor>, OciError> {
    if registry.manifest_digest(repository, tag).await?.is_none() {
        return Ok(Vec::new());
    }
    let (bytes, _) = registry.get_manifest(repository, tag).await?;
    let signatures: Manifest = manifest::parse(&bytes, &format!("signature manifest {tag}"))?;
    Ok(signatures.layers)
}

/// Uploads a payload or config unless the repository has it; the upload reads from a file.
async fn upload_small_blob(registry: &Registry, repository: &str, bytes: &[u8]) -> Result<(), OciError> {
    let digest = Sha256::of(bytes);
    if registry.blob_exists(repository, &digest).await? {
        return Ok(());
    }
    let file = tempfile::NamedTempFile::new().map_err(OciError::file(std::env::temp_dir()))?;
    tokio::fs::write(file.path(), bytes).await.map_err(OciError::file(file.path()))?;
    let session = registry.start_upload(repository).await?;
    registry.upload(session, &digest, bytes.len() as u64, file.path()).await
}
