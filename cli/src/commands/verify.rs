//! `cachectl verify REF --key PUB`: does the image have a cosign-compatible signature by this
//! key? Exits 0 when one holds, 1 (saying why each failed) when none does.

use std::path::PathBuf;

use cached_client::error::Result;
use cached_oci::Reference;
use cached_oci::signature::{self, PublicKey};

use super::image::RegistryArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to check, REGISTRY/REPOSITORY:TAG or @sha256:...
    reference: String,
    /// The public key (PEM, as `cosign generate-key-pair` writes cosign.pub).
    #[arg(long, value_name = "PUB")]
    key: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let key = PublicKey::load(&args.key)?;
    let report = signature::verify(&reference, &key, &args.registry.options()).await?;
    outln!(
        "verified {}: {} of {} signature(s) hold for {}",
        report.image,
        report.valid,
        report.signatures,
        args.key.display()
    );
    Ok(())
}
