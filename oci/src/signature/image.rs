//! The signature image cosign keeps next to a signed manifest: tagged `sha256-<hex>.sig` in
//! the same repository, one layer per signature whose blob is the signed payload and whose
//! annotation holds the base64 signature. Its config only lists the layers (go-containerregistry
//! derives it so); verifiers read the layers alone.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::json;

use crate::digest::Sha256;
use crate::manifest::{self, Descriptor, MEDIA_CONFIG, MEDIA_MANIFEST, Manifest};

pub const MEDIA_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// Go's zero time, which go-containerregistry writes for an image with no creation time.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The tag that holds the signatures of the manifest with `digest`.
pub fn signature_tag(digest: &Sha256) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The layer descriptor of one signature over `payload`.
pub fn signature_layer(payload: &[u8], signature_der: &[u8]) -> Descriptor {
    let mut layer = Descriptor::of(MEDIA_SIMPLE_SIGNING, payload);
    layer.annotations =
        Some(BTreeMap::from([(ANNOTATION_SIGNATURE.to_owned(), STANDARD.encode(signature_der))]));
    layer
}

/// A signature layer's signature, decoded; the reason when it has none.
pub fn layer_signature(layer: &Descriptor) -> Result<Vec<u8>, String> {
    if layer.media_type != MEDIA_SIMPLE_SIGNING {
        return Err(format!(
            "layer {} is a {}, not a simple-signing payload",
            layer.digest, layer.media_type
        ));
    }
    let text = layer
        .annotation(ANNOTATION_SIGNATURE)
        .ok_or_else(|| format!("layer {} has no {ANNOTATION_SIGNATURE} annotation", layer.digest))?;
    STANDARD.decode(text).map_err(|err| format!("layer {}: the signature is not base64: {err}", layer.digest))
}

/// The signature image's documents: its config and its manifest (with `layers` in order).
pub struct SignatureImage {
    pub config: Bytes,
    pub manifest: Bytes,
}

impl SignatureImage {
    pub fn new(layers: Vec<Descriptor>) -> Self {
        let diff_ids: Vec<String> = layers.iter().map(|layer| layer.digest.to_string()).collect();
        let history: Vec<_> = layers.iter().map(|_| json!({"created": ZERO_TIME})).collect();
        let config = manifest::canonical_json(&json!({
            "architecture": "",
            "created": ZERO_TIME,
            "history": history,
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }));
        let document = Manifest {
            schema_version: 2,
            media_type: MEDIA_MANIFEST.to_owned(),
            config: Descriptor::of(MEDIA_CONFIG, &config),
            layers,
            annotations: None,
        };
        Self { config: config.into(), manifest: manifest::to_json(&document).into() }
    }

    pub fn config_descriptor(&self) -> Descriptor {
        Descriptor::of(MEDIA_CONFIG, &self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_carry_payload_digest_and_signature() {
        let layer = signature_layer(b"payload", b"\x30\x06der");
        assert_eq!(layer.digest, Sha256::of(b"payload"));
        assert_eq!(layer.size, 7);
        assert_eq!(layer_signature(&layer).unwrap(), b"\x30\x06der");
        let image = SignatureImage::new(vec![layer.clone()]);
        let parsed: Manifest = manifest::parse(&image.manifest, "signature manifest").unwrap();
        assert_eq!(parsed.layers, vec![layer]);
        assert_eq!(parsed.config, image.config_descriptor());
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], Sha256::of(b"payload").to_string());
    }

    #[test]
    fn layers_without_a_signature_are_refused() {
        let mut layer = signature_layer(b"p", b"s");
        layer.annotations = None;
        assert!(layer_signature(&layer).unwrap_err().contains("no dev.cosignproject.cosign/signature"));
        layer.media_type = MEDIA_CONFIG.to_owned();
        assert!(layer_signature(&layer).unwrap_err().contains("not a simple-signing payload"));
        assert_eq!(signature_tag(&Sha256([0xcd; 32])), format!("sha256-{}.sig", "cd".repeat(32)));
    }
}
