//! The client side of remote execution: source trees into the CAS as Merkle trees
//! ([`tree`]), the module dependencies a build needs as a module proxy tree ([`modules`]),
//! reading trees back ([`tree::read_tree`], checked by the pure [`expand`]) for runner agents,
//! the image part of a job between the wire and the image library ([`image`]), and how a job
//! is shown while it runs and when it ends ([`progress`]).

pub mod expand;
pub mod image;
pub mod modules;
pub mod progress;
pub mod tree;

use std::time::Duration;

use proto::v1::jobs_client::JobsClient;
use proto::v1::workers_client::WorkersClient;
use tonic::service::interceptor::InterceptedService;

use crate::client::{Client, ConnectOptions, Transport};
use crate::error::{CliError, Result};

/// Large enough for a job listing with many specs.
const MAX_MESSAGE: usize = 64 << 20;

/// One connection to cached with the clients remote execution uses: the CAS (and Go cache)
/// client, `Jobs` for submitters and `Workers` for runner agents.
#[derive(Clone)]
pub struct Remote {
    pub client: Client,
    pub jobs: JobsClient<Transport>,
    pub workers: WorkersClient<Transport>,
}

impl Remote {
    pub async fn connect(server: &str, options: &ConnectOptions) -> Result<Self> {
        let endpoint = options
            .endpoint(server)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|err| CliError::Unreachable { server: server.to_owned(), reason: err.to_string() })?;
        let client = Client::from_channel(server, channel.clone(), options)?;
        let transport = InterceptedService::new(channel, options.credentials()?);
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
