use crate::client::Client;
use crate::error::Result;
use crate::render::StatsReport;

pub async fn run(client: &Client, json: bool) -> Result<()> {
    let response = client.stats.clone().get(proto::v1::StatsRequest {}).await?.into_inner();
    let report = StatsReport::new(&client.server, response);
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
