//! `cachectl admin`: what operators do by hand, with a token that has the `admin` scope.

use proto::v1;

use cached_client::connect::{Client, ConnectOptions};
use cached_client::error::{ClientError, Result};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Forget every Go action entry and whole-build record of a namespace, for when a writer
    /// stored entries it should not have. Blobs stay (they are named by their own hash); the
    /// next builds in the namespace miss, rebuild and store their entries again.
    Purge {
        /// The namespace (requests that name none use `default`).
        #[arg(long)]
        namespace: String,
    },
}

pub async fn run(server: &str, connect: &ConnectOptions, command: Command) -> Result<()> {
    match command {
        Command::Purge { namespace } => {
            if namespace.is_empty() {
                return Err(ClientError::Usage(
                    "--namespace is empty: name the namespace to purge (requests that name none use `default`)"
                        .into(),
                ));
            }
            let mut client = Client::connect(server, connect).await?;
            let request = v1::PurgeRequest { namespace: namespace.clone() };
            let purged = client.admin.purge(request).await?.into_inner();
            outln!(
                "purged namespace `{namespace}`: {} Go action entries, {} whole-build records; {} earlier jobs \
                 will not be reused; {} unfinished jobs cancelled",
                purged.go_entries,
                purged.build_records,
                purged.jobs_revoked,
                purged.jobs_cancelled
            );
            Ok(())
        }
    }
}
