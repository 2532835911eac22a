//! The distribution spec's error codes and the JSON body every refusal carries:
//! `{"errors":[{"code":"...","message":"...","detail":...}]}`, with the status the spec gives
//! each code.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// Not one of the spec's codes: the server's own failure.
    Internal,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Internal => "INTERNAL_ERROR",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown | Self::BlobUploadUnknown | Self::ManifestUnknown | Self::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            Self::BlobUploadInvalid
            | Self::DigestInvalid
            | Self::ManifestBlobUnknown
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::SizeInvalid => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A refusal: a spec code, a message for people, and the status (the code's own unless a
/// case of the spec says otherwise, e.g. 413 for an oversized manifest, 416 for a chunk gap).
#[derive(Debug)]
pub struct RegistryError {
    pub code: Code,
    pub message: String,
    pub status: StatusCode,
    /// Headers the refusal must carry: `WWW-Authenticate` on 401, `Range` on 416.
    pub headers: Vec<(http::HeaderName, String)>,
}

impl RegistryError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), status: code.status(), headers: Vec::new() }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for RegistryError {}

/// The store's errors as the registry answers them: what it cannot find is unknown, a full
/// disk or a limit is "too many requests" (retry later), the rest is the server's fault.
impl From<Error> for RegistryError {
    fn from(err: Error) -> Self {
        match &err {
            Error::NotFound(message) => Self::new(Code::BlobUnknown, message.clone()),
            Error::InvalidArgument(message) => Self::new(Code::BlobUploadInvalid, message.clone()),
            Error::Unauthenticated(message) => Self::new(Code::Unauthorized, message.clone()),
            Error::PermissionDenied(message) => Self::new(Code::Denied, message.clone()),
            Error::ResourceExhausted(message) | Error::Busy { message, .. } => {
                Self::new(Code::TooManyRequests, message.clone())
            }
            _ => {
                tracing::error!(error = %err, "registry request failed");
                Self::new(Code::Internal, err.to_string())
            }
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code.name(), "message": self.message, "detail": {} }]
        });
        let mut response =
            (self.status, [(http::header::CONTENT_TYPE, "application/json")], body.to_string())
                .into_response();
        for (name, value) in self.headers {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

pub(super) type RegistryResult<T> = std::result::Result<T, RegistryError>;
