//! What configures the shared tier: the bucket, where its service is, and how long a request
//! to it may take.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    pub bucket: String,
    /// Prepended to every object's key (no leading or trailing slash; may be empty), so that
    /// one bucket can hold several independent caches.
    pub prefix: String,
    /// The S3 service's URL; `None`: AWS (or AWS_ENDPOINT_URL).
    pub endpoint: Option<String>,
    /// `None`: AWS_REGION, else us-east-1.
    pub region: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`), which most self-hosted services need.
    pub path_style: bool,
    /// The longest one request may take, its retries included.
    pub request_timeout: Duration,
    /// Bucket lookups per second one token's local misses may cause; `None` is unlimited.
    pub lookups_per_token: Option<u32>,
}

impl SharedSettings {
    /// `s3://bucket/prefix`, as operators wrote it and as messages name the store.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (which may be empty).
pub fn parse_store_url(text: &str) -> Result<(String, String), String> {
    let Some(rest) = text.strip_prefix("s3://") else {
        return Err("expected s3://bucket or s3://bucket/prefix".to_owned());
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || !bucket.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        return Err(format!("{bucket:?} is not an S3 bucket name"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
        return Err(format!("the prefix {prefix:?} has an empty, `.` or `..` part"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_a_bucket_and_an_optional_prefix() {
        assert_eq!(parse_store_url("s3://cache").unwrap(), ("cache".into(), "".into()));
        assert_eq!(parse_store_url("s3://cache/team/ci/").unwrap(), ("cache".into(), "team/ci".into()));
        assert!(parse_store_url("cache/prefix").is_err());
        assert!(parse_store_url("s3:///prefix").is_err());
        assert!(parse_store_url("s3://cache/a/../b").is_err());
    }
}
