//! cosign-compatible image signatures: what `cosign sign --key` writes and `cosign verify
//! --key` reads, made and checked without cosign. Key mode only: no keyless (Fulcio)
//! certificates and no transparency-log (Rekor) entries.
//!
//! Read in this order: `envelope` (cosign's password-encrypted private key), `key` (the PEM
//! keys), `payload` (the simple-signing document that is signed), `image` (the `.sig`
//! manifest that carries signatures), `remote` (signing and verifying through a registry).

pub mod envelope;
pub mod error;
pub mod image;
pub mod key;
pub mod payload;
pub mod remote;

pub use error::{KeyError, SignatureError};
pub use key::{PrivateKey, PublicKey};
pub use remote::{SignReport, VerifyReport, sign, sign_digest, verify};
