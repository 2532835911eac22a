//! The simple-signing payload cosign signs (sigstore's `payload.SimpleContainerImage`): the
//! image's repository and manifest digest, in the field order Go writes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::reference::{DOCKER_HUB, Reference};

pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// What go-containerregistry calls Docker Hub, and so what cosign writes for its images.
const DOCKER_HUB_CANONICAL: &str = "index.docker.io";

#[derive(Debug, Serialize, Deserialize)]
pub struct SimpleSigning {
    pub critical: Critical,
    /// Annotations a signer attached; `null` when none, as cosign writes.
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl SimpleSigning {
    /// The payload cosign writes for `reference` at `digest` without a claimed identity:
    /// the repository's full name, no tag.
    pub fn new(reference: &Reference, digest: &Sha256) -> Self {
        let registry =
            if reference.registry == DOCKER_HUB { DOCKER_HUB_CANONICAL } else { reference.registry.as_str() };
        Self {
            critical: Critical {
                identity: Identity { docker_reference: format!("{registry}/{}", reference.repository) },
                image: Image { docker_manifest_digest: digest.to_string() },
                kind: SIGNATURE_TYPE.to_owned(),
            },
            optional: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        crate::manifest::to_json(self)
    }

    /// Parses a signed payload; the reason when it is not a cosign image signature.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let payload: Self = serde_json::from_slice(bytes)
            .map_err(|err| format!("the payload is not simple-signing JSON: {err}"))?;
        if payload.critical.kind != SIGNATURE_TYPE {
            return Err(format!("the payload's type is {:?}, not {SIGNATURE_TYPE:?}", payload.critical.kind));
        }
        Ok(payload)
    }

    /// Whether the payload vouches for the manifest with `digest`.
    pub fn names(&self, digest: &Sha256) -> bool {
        self.critical.image.docker_manifest_digest == digest.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_what_cosign_writes() {
        let reference = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        let digest = Sha256([0xab; 32]);
        let bytes = SimpleSigning::new(&reference, &digest).to_bytes();
        let expected = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/team/app\"}},\
             \"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\
             \"type\":\"cosign container image signature\"}},\"optional\":null}}"
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn docker_hub_is_named_as_go_containerregistry_names_it() {
        let payload = SimpleSigning::new(&Reference::parse("alpine").unwrap(), &Sha256([0; 32]));
        assert_eq!(payload.critical.identity.docker_reference, "index.docker.io/library/alpine");
    }

    #[test]
    fn parse_checks_type_and_names_checks_digest() {
        let digest = Sha256([1; 32]);
        let payload = SimpleSigning::new(&Reference::parse("localhost:1/a").unwrap(), &digest);
        let parsed = SimpleSigning::parse(&payload.to_bytes()).unwrap();
        assert!(parsed.names(&digest));
        assert!(!parsed.names(&Sha256([2; 32])));
        let other =
            String::from_utf8(payload.to_bytes()).unwrap().replace("cosign container", "atomic container");
        assert!(SimpleSigning::parse(other.as_bytes()).unwrap_err().contains("type"));
        assert!(SimpleSigning::parse(b"{}").is_err());
    }
}
