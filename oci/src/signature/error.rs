//! Why a key could not be loaded, or why an image has no valid signature.

use std::path::PathBuf;

use cached_client::error::ClientError;

use crate::digest::Sha256;
use crate::error::OciError;

/// What is wrong with a key file's contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM file: {0}")]
    NotPem(String),
    #[error("a {label:?} PEM block is not {expected}")]
    UnexpectedLabel { label: String, expected: &'static str },
    #[error(
        "the key is encrypted: give its password in COSIGN_PASSWORD (as cosign takes it) or in a file \
         (--key-password-file; --sign-key-password-file for cachectl image)"
    )]
    NeedsPassword,
    #[error("wrong password for the encrypted key (or the key file is damaged)")]
    WrongPassword,
    #[error("not a cosign encrypted key: {0}")]
    Envelope(String),
    #[error(
        "not an ECDSA P-256 key: {0}; only ECDSA P-256 keys (what cosign generate-key-pair writes) are supported"
    )]
    NotP256(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("{reference}@{digest} is not signed: the registry has no {tag} tag")]
    Unsigned { reference: String, digest: Sha256, tag: String },
    #[error("{reference}@{digest} has no valid signature for this key:{}", list(reasons))]
    NoValidSignature { reference: String, digest: Sha256, reasons: Vec<String> },
    #[error("{0}")]
    Registry(#[from] OciError),
}

fn list(reasons: &[String]) -> String {
    reasons.iter().map(|reason| format!("\n  {reason}")).collect()
}

impl From<SignatureError> for ClientError {
    fn from(err: SignatureError) -> Self {
        match err {
            SignatureError::KeyFile { path, source } => ClientError::File { path, source },
            // Not OciError's own conversion: that one prefixes "image:", and nothing is built here.
            SignatureError::Registry(err) if !err.is_input() => ClientError::Failed(err.to_string()),
            SignatureError::Registry(err) => err.into(),
            err @ SignatureError::Key { .. } => ClientError::Usage(err.to_string()),
            err => ClientError::Failed(err.to_string()),
        }
    }
}
