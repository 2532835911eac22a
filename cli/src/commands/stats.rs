use std::time::Duration;

use crate::render::StatsReport;
use cached_client::connect::Client;
use cached_client::error::{ClientError, Result};

/// Top miss causes and missed targets shown per namespace.
const TOP: u32 = 10;

pub async fn run(client: &Client, json: bool, since: Duration) -> Result<()> {
    let response = client.stats.clone().get(proto::v1::StatsRequest {}).await?.into_inner();
    let mut report = StatsReport::new(&client.server, response);
    let request =
        proto::v1::BuildStatsRequest { namespace: String::new(), since_seconds: since.as_secs(), top: TOP };
    // One Explain or Stats call per token reads the history at a time: others wait their turn.
    let stats = || async { client.builds.clone().stats(request.clone()).await.map_err(ClientError::from) };
    match cached_client::busy::retrying_within(super::explain::HISTORY_PATIENCE, stats).await {
        Ok(builds) => report = report.with_builds(builds.into_inner()),
        // A server from before the whole-build cache: its section stays null.
        Err(ClientError::Status { code: tonic::Code::Unimplemented, .. }) => {}
        Err(err) => return Err(err),
    }
    if json {
        outln!("{}", report.to_json());
    } else {
        out!("{}", report.to_table());
    }
    Ok(())
}
