//! The password envelope around the private keys `cosign generate-key-pair` writes: a JSON
//! document (from go-securesystemslib's `encrypted` package) holding scrypt parameters and
//! salt, a NaCl secretbox nonce and the sealed PKCS#8 key, each byte string in standard
//! base64 as Go's encoding/json writes `[]byte`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use serde::{Deserialize, Serialize};

use super::error::KeyError;

const KDF_SCRYPT: &str = "scrypt";
const CIPHER_SECRETBOX: &str = "nacl/secretbox";
const KEY_SIZE: usize = 32;
const NONCE_SIZE: usize = 24;
/// The scrypt costs go-securesystemslib writes (legacy, standard, OWASP); like it, we refuse
/// others, so a crafted key file cannot make us spend gigabytes deriving a key.
const KNOWN_PARAMS: [ScryptParams; 3] = [
    ScryptParams { n: 1 << 15, r: 8, p: 1 },
    ScryptParams { n: 1 << 16, r: 8, p: 1 },
    ScryptParams { n: 1 << 17, r: 8, p: 1 },
];

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// Opens an envelope with `password`: the plaintext (a PKCS#8 DER key, for cosign).
pub fn open(envelope: &[u8], password: &[u8]) -> Result<Vec<u8>, KeyError> {
    let envelope: Envelope =
        serde_json::from_slice(envelope).map_err(|err| KeyError::Envelope(format!("bad JSON: {err}")))?;
    if envelope.kdf.name != KDF_SCRYPT {
        return Err(KeyError::Envelope(format!("unknown key derivation {:?}", envelope.kdf.name)));
    }
    if envelope.cipher.name != CIPHER_SECRETBOX {
        return Err(KeyError::Envelope(format!("unknown cipher {:?}", envelope.cipher.name)));
    }
    let params = envelope.kdf.params;
    if !KNOWN_PARAMS.contains(&params) {
        return Err(KeyError::Envelope(format!(
            "unsupported scrypt parameters N={} r={} p={}",
            params.n, params.r, params.p
        )));
    }
    let salt = decode("kdf.salt", &envelope.kdf.salt)?;
    let nonce = decode("cipher.nonce", &envelope.cipher.nonce)?;
    if nonce.len() != NONCE_SIZE {
        return Err(KeyError::Envelope(format!("the nonce is {} bytes, not {NONCE_SIZE}", nonce.len())));
    }
    let sealed = decode("ciphertext", &envelope.ciphertext)?;
    let key = derive_key(password, &salt, params)?;
    XSalsa20Poly1305::new(&key.into())
        .decrypt(Nonce::from_slice(&nonce), sealed.as_slice())
        .map_err(|_| KeyError::WrongPassword)
}

/// Seals `plaintext` as cosign does (standard scrypt cost), with the given salt and nonce:
/// encrypted test keys.
#[cfg(test)]
pub(crate) fn seal(
    plaintext: &[u8],
    password: &[u8],
    salt: &[u8; 32],
    nonce: &[u8; NONCE_SIZE],
) -> Result<Vec<u8>, KeyError> {
    let params = KNOWN_PARAMS[1];
    let key = derive_key(password, salt, params)?;
    let sealed = XSalsa20Poly1305::new(&key.into())
        .encrypt(Nonce::from_slice(nonce), plaintext)
        .map_err(|_| KeyError::Envelope("sealing failed".to_owned()))?;
    let envelope = Envelope {
        kdf: Kdf { name: KDF_SCRYPT.to_owned(), params, salt: STANDARD.encode(salt) },
        cipher: Cipher { name: CIPHER_SECRETBOX.to_owned(), nonce: STANDARD.encode(nonce) },
        ciphertext: STANDARD.encode(sealed),
    };
    serde_json::to_vec(&envelope).map_err(|err| KeyError::Envelope(err.to_string()))
}

fn decode(field: &str, text: &str) -> Result<Vec<u8>, KeyError> {
    STANDARD.decode(text).map_err(|err| KeyError::Envelope(format!("{field} is not base64: {err}")))
}

fn derive_key(password: &[u8], salt: &[u8], params: ScryptParams) -> Result<[u8; KEY_SIZE], KeyError> {
    // KNOWN_PARAMS are powers of two, so the logarithm is exact.
    let log_n = params.n.trailing_zeros() as u8;
    let params = scrypt::Params::new(log_n, params.r, params.p, KEY_SIZE)
        .map_err(|err| KeyError::Envelope(format!("scrypt parameters: {err}")))?;
    let mut key = [0u8; KEY_SIZE];
    scrypt::scrypt(password, salt, &params, &mut key)
        .map_err(|err| KeyError::Envelope(format!("scrypt: {err}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_with_its_password_only() {
        let sealed = seal(b"key bytes", b"secret", &[7; 32], &[9; NONCE_SIZE]).unwrap();
        assert_eq!(open(&sealed, b"secret").unwrap(), b"key bytes");
        assert!(matches!(open(&sealed, b"other"), Err(KeyError::WrongPassword)));
    }

    #[test]
    fn unknown_costs_and_algorithms_are_refused() {
        let sealed = seal(b"key", b"", &[1; 32], &[2; NONCE_SIZE]).unwrap();
        let mut envelope: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        envelope["kdf"]["params"]["N"] = serde_json::json!(1u64 << 30);
        let err = open(&serde_json::to_vec(&envelope).unwrap(), b"").unwrap_err();
        assert!(err.to_string().contains("unsupported scrypt parameters"), "{err}");
        envelope["kdf"]["params"]["N"] = serde_json::json!(1u64 << 16);
        envelope["cipher"]["name"] = serde_json::json!("aes-gcm");
        let err = open(&serde_json::to_vec(&envelope).unwrap(), b"").unwrap_err();
        assert!(err.to_string().contains("unknown cipher"), "{err}");
    }
}
