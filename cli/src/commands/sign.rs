//! `cachectl sign REF --key KEY`: a cosign-compatible signature of an image in a registry.

use std::path::{Path, PathBuf};

use cached_client::error::{ClientError, Result};
use cached_oci::Reference;
use cached_oci::signature::{self, PrivateKey, SignReport};

use super::image::RegistryArgs;

/// The variable cosign reads a key's password from; the same here, so one setting serves both.
const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to sign, REGISTRY/REPOSITORY:TAG or @sha256:...; a tag is signed as the
    /// digest it names now.
    reference: String,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The private key to sign with; `cachectl image --sign-key` takes the same.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The private key: what `cosign generate-key-pair` writes (encrypted; the password in
    /// COSIGN_PASSWORD or --key-password-file), or a plain PKCS#8 or SEC1 ECDSA P-256 PEM.
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// File holding the encrypted key's password (a trailing newline is ignored) [default: $COSIGN_PASSWORD]
    #[arg(long, value_name = "FILE")]
    pub key_password_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Loads the key, opening it with the password when it is encrypted.
    pub fn load(&self) -> Result<PrivateKey> {
        load_key(&self.key, self.key_password_file.as_deref())
    }
}

pub fn load_key(path: &Path, password_file: Option<&Path>) -> Result<PrivateKey> {
    let password = match password_file {
        Some(file) => {
            let text =
                std::fs::read(file).map_err(|source| ClientError::File { path: file.to_owned(), source })?;
            Some(trim_newline(text))
        }
        None => std::env::var_os(PASSWORD_ENV).map(|value| value.into_encoded_bytes()),
    };
    Ok(PrivateKey::load(path, password.as_deref())?)
}

fn trim_newline(mut text: Vec<u8>) -> Vec<u8> {
    if text.ends_with(b"\n") {
        text.pop();
        if text.ends_with(b"\r") {
            text.pop();
        }
    }
    text
}

pub async fn run(args: Args) -> Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let key = args.key.load()?;
    let report = signature::sign(&reference, &key, &args.registry.options()).await?;
    out!("{}", render(&report));
    Ok(())
}

pub fn render(report: &SignReport) -> String {
    let what = if report.added { "signed" } else { "already signed with this key" };
    format!("{what} {}: {} signature(s) at {}\n", report.image, report.signatures, report.signatures_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_lose_one_trailing_newline_only() {
        assert_eq!(trim_newline(b"pw\n".to_vec()), b"pw");
        assert_eq!(trim_newline(b"pw\r\n".to_vec()), b"pw");
        assert_eq!(trim_newline(b"pw\n\n".to_vec()), b"pw\n");
        assert_eq!(trim_newline(b" pw ".to_vec()), b" pw ");
    }
}
