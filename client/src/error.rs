//! Client errors, each with the exit code the command ends with.

use std::path::PathBuf;

use proto::Digest;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach cached at {server}: {reason}\n  is cached running? Start it with `cached`, or point --server / CACHED_ADDR at it"
    )]
    Unreachable { server: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("blob {0} is not in the cache")]
    NotFound(Digest),
    #[error("download of {expected} is corrupt: {reason}; nothing was written")]
    Corrupt { expected: Digest, reason: String },
    #[error("cached refused the request: {0}")]
    Server(String),
    /// A call cached answered with an error status: the code tells a refusal (no write
    /// scope, a disk at its floor) from a failure.
    #[error("cached refused the request: {code:?}: {message}")]
    Status {
        code: tonic::Code,
        message: String,
        /// When the server says the same request will be admitted ([`proto::RETRY_AFTER_MS`]):
        /// a rate or a pool share used up for now, not a refusal that stands.
        retry_after: Option<std::time::Duration>,
    },
    #[error("{0} of the given digests are missing")]
    SomeMissing(usize),
    /// A program this command runs (the go command) could not be started or waited for.
    #[error("cannot run {program}: {source}")]
    Run {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The local cache directory (or another file the command keeps) failed; the cause says
    /// which file and why.
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A command that could not do its job for a reason outside the user's input: a registry
    /// refusing a push, a tool failing. Says what failed and why.
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// The wait before the same request is admitted, when the server said it would be.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// 0 success, 1 failure, 2 bad input, 3 server unreachable.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unreachable { .. } => 3,
            Self::Usage(_) | Self::File { .. } => 2,
            _ => 1,
        }
    }

    /// Names the server in errors that came from a status without knowing it.
    pub fn for_server(self, server: &str) -> Self {
        match self {
            Self::Unreachable { reason, .. } => Self::Unreachable { server: server.to_owned(), reason },
            other => other,
        }
    }

    pub fn run(program: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let program = program.into();
        move |source| Self::Run { program, source }
    }

    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::File { path, source }
    }
}

/// The wait a RESOURCE_EXHAUSTED status asks for before the same request, if it is worth one.
pub fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
    let millis = status.metadata().get(proto::RETRY_AFTER_MS)?.to_str().ok()?.parse::<u64>().ok()?;
    (status.code() == tonic::Code::ResourceExhausted).then(|| std::time::Duration::from_millis(millis))
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable => {
                Self::Unreachable { server: "the server".to_owned(), reason: status.message().to_owned() }
            }
            code => {
                Self::Status { code, message: status.message().to_owned(), retry_after: retry_after(&status) }
            }
        }
    }
}
