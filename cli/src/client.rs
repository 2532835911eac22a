//! Connections to cached.

use std::time::Duration;

use proto::v1::cas_client::CasClient;
use proto::v1::go_cache_client::GoCacheClient;
use proto::v1::stats_client::StatsClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CliError, Result};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";
/// Large enough for a batch of small blobs; the server enforces its own limit.
const MAX_MESSAGE: usize = 64 << 20;

/// A connection to one cached server, with a client per service.
#[derive(Clone)]
pub struct Client {
    pub server: String,
    pub cas: CasClient<Channel>,
    pub go: GoCacheClient<Channel>,
    pub stats: StatsClient<Channel>,
}

impl Client {
    pub async fn connect(server: &str) -> Result<Self> {
        let unreachable = |reason: String| CliError::Unreachable { server: server.to_owned(), reason };
        let endpoint = Endpoint::from_shared(server.to_owned())
            .map_err(|err| CliError::Usage(format!("--server {server:?} is not a valid URL: {err}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        let channel = endpoint.connect().await.map_err(|err| unreachable(source_chain(&err)))?;
        Ok(Self {
            server: server.to_owned(),
            cas: CasClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            go: GoCacheClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            stats: StatsClient::new(channel),
        })
    }
}

/// The whole chain of an error, because tonic's top-level message ("transport error") alone
/// does not say what went wrong.
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
