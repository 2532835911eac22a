//! The handles of remote execution: one connection to cached with the CAS (and Go cache)
//! client, `Jobs` for submitters and `Workers` for runner agents.

use std::time::Duration;

use proto::v1::jobs_client::JobsClient;
use proto::v1::workers_client::WorkersClient;
use tonic::service::interceptor::InterceptedService;

use crate::connect::{Client, ConnectOptions, Transport};
use crate::error::{ClientError, Result};
use crate::failover::Failover;

/// Large enough for a job listing with many specs.
const MAX_MESSAGE: usize = 64 << 20;

/// A connection for remote execution. Unlike a plain [`Client`] it keeps the connection
/// alive while idle: submitters follow jobs and agents hold leases for a long time.
#[derive(Clone)]
pub struct RemoteExec {
    pub client: Client,
    pub jobs: JobsClient<Transport>,
    pub workers: WorkersClient<Transport>,
}

impl RemoteExec {
    /// Connects to `server`, or to the first of a comma list of replicas that answers; when it
    /// stops answering, the calls after the one that failed go to the next.
    pub async fn connect(server: &str, options: &ConnectOptions) -> Result<Self> {
        let endpoints = options.endpoints(server, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })?;
        let replicas = Failover::connect(&endpoints)
            .await
            .map_err(|reason| ClientError::Unreachable { server: server.to_owned(), reason })?;
        let client = Client::from_replicas(server, replicas.clone(), options)?;
        let transport = InterceptedService::new(replicas, options.credentials()?);
        Ok(Self {
            client,
            jobs: JobsClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            workers: WorkersClient::new(transport)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }
}
