//! The remote tier's error: what a call to cached, or landing what it sent, can end in. Its own
//! file because both the tier (`remote.rs`) and the landing of fetched bodies (`landing.rs`)
//! produce it.

use std::time::Duration;

use cached_client::ClientError;

use super::disk::DiskError;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("it sent a corrupt body: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("local tier: {0}")]
    Local(DiskError),
    #[error("{0}")]
    Internal(String),
}

impl RemoteError {
    /// Whether the server answered and refused to store (a token without write scope, a disk
    /// nearly full): it still serves reads, so this is no outage. A refusal for now
    /// ([`RemoteError::is_busy`]) is not one.
    pub(crate) fn is_refusal(&self) -> bool {
        const REFUSALS: [tonic::Code; 3] =
            [tonic::Code::PermissionDenied, tonic::Code::Unauthenticated, tonic::Code::ResourceExhausted];
        !self.is_busy()
            && match self {
                Self::Status(status) => REFUSALS.contains(&status.code()),
                Self::Client(ClientError::Status { code, .. }) => REFUSALS.contains(code),
                _ => false,
            }
    }

    /// Whether the server refused this request for now (a rate, a share of a pool) and would
    /// admit it again shortly: neither an outage nor a refusal that stands.
    pub(crate) fn is_busy(&self) -> bool {
        match self {
            Self::Status(status) => cached_client::error::retry_after(status).is_some(),
            Self::Client(err) => err.retry_after().is_some(),
            _ => false,
        }
    }

    /// Whether the failure is the server's (counts toward the breaker) rather than ours.
    pub(crate) fn is_remote(&self) -> bool {
        !matches!(self, Self::Local(_) | Self::Internal(_))
    }
}
