//! ECDSA P-256 keys in the PEM files cosign reads and writes: its password-encrypted private
//! key (`ENCRYPTED SIGSTORE PRIVATE KEY`, or the older `ENCRYPTED COSIGN PRIVATE KEY`), a
//! plain PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) key, and the SPKI `PUBLIC KEY`.

use std::path::Path;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::Decode;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, ObjectIdentifier, PrivateKeyInfo};

use super::envelope;
use super::error::{KeyError, SignatureError};

pub const LABEL_SIGSTORE_ENCRYPTED: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
pub const LABEL_COSIGN_ENCRYPTED: &str = "ENCRYPTED COSIGN PRIVATE KEY";
const LABEL_PKCS8: &str = "PRIVATE KEY";
const LABEL_SEC1: &str = "EC PRIVATE KEY";
const LABEL_PUBLIC: &str = "PUBLIC KEY";

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A key that signs: ECDSA over P-256 with SHA-256, as cosign's default.
pub struct PrivateKey(SigningKey);

/// A key that verifies what [`PrivateKey`] (or cosign) signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PrivateKey {
    /// Reads a key file; `password` opens an encrypted one.
    pub fn load(path: &Path, password: Option<&[u8]>) -> Result<Self, SignatureError> {
        let text = read(path)?;
        Self::from_pem(&text, password)
            .map_err(|source| SignatureError::Key { path: path.to_owned(), source })
    }

    pub fn from_pem(text: &[u8], password: Option<&[u8]>) -> Result<Self, KeyError> {
        let (label, der) = pem(text)?;
        match label.as_str() {
            LABEL_SIGSTORE_ENCRYPTED | LABEL_COSIGN_ENCRYPTED => {
                let password = password.ok_or(KeyError::NeedsPassword)?;
                Self::from_pkcs8(&envelope::open(&der, password)?)
            }
            LABEL_PKCS8 => Self::from_pkcs8(&der),
            LABEL_SEC1 => p256::SecretKey::from_sec1_der(&der)
                .map(|key| Self(key.into()))
                .map_err(|err| KeyError::NotP256(format!("SEC1 key: {err}"))),
            _ => Err(KeyError::UnexpectedLabel { label, expected: "a private key" }),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let info =
            PrivateKeyInfo::from_der(der).map_err(|err| KeyError::NotP256(format!("PKCS#8: {err}")))?;
        check_algorithm(info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
        SigningKey::from_pkcs8_der(der).map(Self).map_err(|err| KeyError::NotP256(err.to_string()))
    }

    /// The DER ASN.1 ECDSA signature of SHA-256(`message`), as cosign puts it in annotations.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.0.sign(message);
        signature.to_der().as_bytes().to_vec()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }
}

impl PublicKey {
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let text = read(path)?;
        Self::from_pem(&text).map_err(|source| SignatureError::Key { path: path.to_owned(), source })
    }

    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = pem(text)?;
        if label != LABEL_PUBLIC {
            return Err(KeyError::UnexpectedLabel { label, expected: "a public key (PUBLIC KEY)" });
        }
        let info = SubjectPublicKeyInfoRef::from_der(&der)
            .map_err(|err| KeyError::NotP256(format!("SubjectPublicKeyInfo: {err}")))?;
        check_algorithm(info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
        VerifyingKey::from_public_key_der(&der).map(Self).map_err(|err| KeyError::NotP256(err.to_string()))
    }

    /// Checks a DER signature of `message`; the reason when it does not hold.
    pub fn verify(&self, message: &[u8], signature_der: &[u8]) -> Result<(), String> {
        let signature =
            Signature::from_der(signature_der).map_err(|err| format!("not a DER ECDSA signature: {err}"))?;
        self.0.verify(message, &signature).map_err(|_| "the signature does not match the key".to_owned())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SignatureError> {
    std::fs::read(path).map_err(|source| SignatureError::KeyFile { path: path.to_owned(), source })
}

/// The first PEM block: its label and bytes.
fn pem(text: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    let (label, der) = pem_rfc7468::decode_vec(text).map_err(|err| KeyError::NotPem(err.to_string()))?;
    Ok((label.to_owned(), der))
}

/// Names the algorithm of a key that is not P-256, so the error says what was given.
fn check_algorithm(algorithm: ObjectIdentifier, curve: Option<ObjectIdentifier>) -> Result<(), KeyError> {
    let name = match algorithm.to_string().as_str() {
        _ if algorithm == OID_EC_PUBLIC_KEY && curve == Some(OID_P256) => return Ok(()),
        _ if algorithm == OID_EC_PUBLIC_KEY => match curve.map(|c| c.to_string()).as_deref() {
            Some("1.3.132.0.34") => "an ECDSA P-384 key".to_owned(),
            Some("1.3.132.0.35") => "an ECDSA P-521 key".to_owned(),
            Some(other) => format!("an EC key on curve {other}"),
            None => "an EC key with no named curve".to_owned(),
        },
        "1.2.840.113549.1.1.1" => "an RSA key".to_owned(),
        "1.3.101.112" => "an Ed25519 key".to_owned(),
        other => format!("a key of algorithm {other}"),
    };
    Err(KeyError::NotP256(name))
}

#[cfg(test)]
mod tests {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    use super::*;

    fn fixed_key() -> SigningKey {
        SigningKey::from_slice(&[0x42; 32]).unwrap()
    }

    fn encrypted_pem(key: &SigningKey, password: &[u8]) -> String {
        let der = key.to_pkcs8_der().unwrap();
        let sealed = envelope::seal(der.as_bytes(), password, &[3; 32], &[4; 24]).unwrap();
        pem_rfc7468::encode_string(LABEL_SIGSTORE_ENCRYPTED, pem_rfc7468::LineEnding::LF, &sealed).unwrap()
    }

    #[test]
    fn encrypted_key_signs_what_its_public_key_verifies() {
        let pem = encrypted_pem(&fixed_key(), b"pw");
        let key = PrivateKey::from_pem(pem.as_bytes(), Some(b"pw")).unwrap();
        let public_pem = fixed_key().verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let public = PublicKey::from_pem(public_pem.as_bytes()).unwrap();
        assert_eq!(key.public_key(), public);
        let signature = key.sign(b"payload");
        public.verify(b"payload", &signature).unwrap();
        assert!(public.verify(b"payload!", &signature).is_err());
    }

    /// A pair `cosign generate-key-pair` (v2.6.5) wrote with COSIGN_PASSWORD=fixture.
    #[test]
    fn cosign_generated_pair_loads_and_matches() {
        let key = PrivateKey::from_pem(include_bytes!("testdata/cosign.key"), Some(b"fixture")).unwrap();
        let public = PublicKey::from_pem(include_bytes!("testdata/cosign.pub")).unwrap();
        assert_eq!(key.public_key(), public);
        let wrong = PrivateKey::from_pem(include_bytes!("testdata/cosign.key"), Some(b"fixtures"));
        assert!(matches!(wrong, Err(KeyError::WrongPassword)));
    }

    #[test]
    fn encrypted_key_needs_the_right_password() {
        let pem = encrypted_pem(&fixed_key(), b"pw");
        assert!(matches!(PrivateKey::from_pem(pem.as_bytes(), None), Err(KeyError::NeedsPassword)));
        assert!(matches!(PrivateKey::from_pem(pem.as_bytes(), Some(b"no")), Err(KeyError::WrongPassword)));
    }

    #[test]
    fn plain_pkcs8_and_sec1_keys_load() {
        let pkcs8 = fixed_key().to_pkcs8_pem(LineEnding::LF).unwrap();
        let from_pkcs8 = PrivateKey::from_pem(pkcs8.as_bytes(), None).unwrap();
        let sec1 = p256::SecretKey::from(fixed_key()).to_sec1_pem(LineEnding::LF).unwrap();
        let from_sec1 = PrivateKey::from_pem(sec1.as_bytes(), None).unwrap();
        assert_eq!(from_pkcs8.public_key(), from_sec1.public_key());
    }

    #[test]
    fn keys_of_other_kinds_are_named() {
        // An Ed25519 PKCS#8 key (RFC 8410, section 10.3).
        let ed25519 = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        let err = PrivateKey::from_pem(ed25519.as_bytes(), None).err().unwrap();
        assert!(err.to_string().contains("an Ed25519 key"), "{err}");
        let public = PublicKey::from_pem(fixed_key().to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes());
        assert!(matches!(public, Err(KeyError::UnexpectedLabel { .. })));
    }
}
