//! The daemon's one error type, and the only place that turns errors into gRPC statuses.

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or its data does not match what it claims.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the store is not in a state to accept it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size, count or concurrency limit was hit, or the disk is full.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate or a share of a pool is used up for now: the same request is admitted again after
    /// `retry_after`, which the status carries ([`proto::RETRY_AFTER_MS`]).
    #[error("{message}")]
    Busy { message: String, retry_after: std::time::Duration },
    /// No token, or one this server does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token lacks the scope or the namespace the call needs; the message names which.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request or idle timeout expired.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client went away or the stream broke before the request was complete.
    #[error("{0}")]
    Aborted(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// The PostgreSQL database of jobs and build records (`database_url`) failed or is out of
    /// reach; the cache itself is unaffected.
    #[error("the database is unavailable: {0}; jobs and build records wait for it, the cache works on")]
    Database(#[from] crate::postgres::DatabaseError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Internal(String),
    /// The shared store (the bucket several replicas share) could not be reached or answered
    /// with an error; `store` names it.
    #[error("the shared store {store} is unavailable: {source}")]
    SharedStoreUnavailable {
        store: String,
        #[source]
        source: object_store::Error,
    },
    /// A status the transport raised while reading a client's stream (a message over
    /// max_message_size, a reset), passed on with its own code.
    #[error("{}", .0.message())]
    Transport(Status),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// RocksDB's kIOError with its kNoSpace subcode. The binding hands a status over as its
    /// text only ("IO error: No space left on device: ..."): the kind comes from its prefix,
    /// the subcode from the phrase RocksDB writes for it.
    fn is_disk_full(&self) -> bool {
        matches!(self, Self::Storage(err)
            if err.kind() == rocksdb::ErrorKind::IOError && err.as_ref().contains("No space left on device"))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Database(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Database(err.into())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::Internal(format!("worker task failed: {err}"))
    }
}

impl From<proto::DigestError> for Error {
    fn from(err: proto::DigestError) -> Self {
        Self::InvalidArgument(err.to_string())
    }
}

impl From<proto::GoIdError> for Error {
    fn from(err: proto::GoIdError) -> Self {
        Self::InvalidArgument(err.to_string())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        if let Error::Transport(status) = err {
            return status;
        }
        if err.is_disk_full() {
            return Status::resource_exhausted(format!(
                "the server's disk is full ({err}); nothing was stored. Free space or lower --max-size"
            ));
        }
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) | Error::Busy { .. } => Code::ResourceExhausted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Aborted(_) => Code::Aborted,
            Error::ShuttingDown | Error::SharedStoreUnavailable { .. } | Error::Database(_) => {
                Code::Unavailable
            }
            Error::Corrupt(_) => Code::DataLoss,
            Error::Storage(_) | Error::Internal(_) => Code::Internal,
            Error::Transport(status) => status.code(),
        };
        if code == Code::Internal || code == Code::DataLoss {
            tracing::error!(error = %err, "request failed");
        }
        let mut status = Status::new(code, err.to_string());
        if let Error::Busy { retry_after, .. } = &err {
            let millis = retry_after.as_millis().max(1).to_string();
            if let Ok(value) = millis.parse() {
                status.metadata_mut().insert(proto::RETRY_AFTER_MS, value);
            }
        }
        status
    }
}
