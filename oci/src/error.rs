//! Errors of image building and pushing, each saying what was wrong and what to do.

use std::path::PathBuf;

use cached_client::error::ClientError;

pub type Result<T, E = OciError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Bad input: a flag, a platform, a file name.
    #[error("{0}")]
    Usage(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// Unreadable or unusable credentials, or credentials a registry refused.
    #[error("{0}")]
    Credentials(String),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    /// A registry answered with an error or could not be reached.
    #[error("{0}")]
    Registry(String),
    /// A base image, layout or blob that is not what it claims to be.
    #[error("{0}")]
    Invalid(String),
}

impl OciError {
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::File { path, source }
    }

    pub(crate) fn reference(reference: &str, reason: impl Into<String>) -> Self {
        Self::Reference { reference: reference.to_owned(), reason: reason.into() }
    }

    /// True for errors in what the user gave (exit code 2).
    pub fn is_input(&self) -> bool {
        matches!(self, Self::Usage(_) | Self::Reference { .. } | Self::Credentials(_) | Self::File { .. })
    }
}

impl From<OciError> for ClientError {
    fn from(err: OciError) -> Self {
        match err {
            OciError::File { path, source } => ClientError::File { path, source },
            err if err.is_input() => ClientError::Usage(err.to_string()),
            err => ClientError::Failed(format!("image: {err}")),
        }
    }
}

/// Joins a blocking task, turning a panic into an error instead of unwinding through async code.
pub(crate) async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await.map_err(|err| OciError::Invalid(format!("image task failed: {err}")))?
}
