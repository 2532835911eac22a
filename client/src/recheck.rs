//! Reporting a blob that downloaded wrong, so cached can check its copy (`Cas.Recheck`).
//!
//! A download that fails its digest check is refused either way; the report is what makes a
//! blob that rotted on cached's disk go away at once rather than at the scrub's next pass,
//! so the next upload of it stores it whole. cached reads the blob back itself, so a report
//! is only a hint, and one about bytes damaged in transit leaves the blob alone.

use std::time::Duration;

use proto::Digest;
use proto::v1::{self, recheck_response::Outcome};

use crate::{Client, ClientError, Result};

/// How long a reporter waits for the recheck: cached runs one at a time, and a large blob
/// takes seconds to read back.
const RECHECK_WAIT: Duration = Duration::from_secs(60);

/// Asks cached to read `digest` back and remove it if it is corrupt; what it found.
pub async fn recheck(client: &Client, digest: Digest) -> Result<Outcome> {
    let request = v1::RecheckRequest { digest: Some(digest.to_wire()) };
    let reply = tokio::time::timeout(RECHECK_WAIT, client.cas.clone().recheck(request))
        .await
        .map_err(|_| ClientError::Server(format!("no answer to the recheck within {RECHECK_WAIT:?}")))??;
    Ok(reply.into_inner().outcome())
}

/// For a [`ClientError::Corrupt`] download: reports the blob and says in the error what cached
/// found. Any other error comes back unchanged.
pub async fn after_failure(client: &Client, err: ClientError) -> ClientError {
    let ClientError::Corrupt { expected, reason } = err else { return err };
    let found = match recheck(client, expected).await {
        Ok(Outcome::Removed) => "cached found its copy corrupt and removed it: upload it again".to_owned(),
        Ok(Outcome::Sound) => "cached's copy is sound, so it was damaged on the way: try again".to_owned(),
        Ok(Outcome::Absent) => "cached no longer holds it".to_owned(),
        Ok(Outcome::Unspecified) => "cached could not say whether its copy is sound".to_owned(),
        Err(err) => format!("asking cached to recheck its copy failed: {err}"),
    };
    ClientError::Corrupt { expected, reason: format!("{reason} ({found})") }
}
