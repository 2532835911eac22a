//! Whether the bucket refused a request for its rate (S3 answers 503 `SlowDown`; others 429)
//! rather than could not be reached. Throttled, it answered: the other callers' requests still
//! go. The tier's breaker (`SharedCounters::may_send`) is for a bucket that does not answer;
//! opened by throttling, one tenant's flood would fail every tenant's writes, and the purge
//! follower's listing, until a probe got through.
//!
//! object_store keeps the status only in its error's text ("Server returned non-2xx status
//! code: 503 Service Unavailable: <body>"); the test below pins that against a real server.

/// Whether `err`, or what caused it, is the bucket's throttling answer.
pub(super) fn throttled(err: &object_store::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(err);
    while let Some(err) = cause {
        let text = err.to_string();
        if ["status code: 503", "status code: 429", "<Code>SlowDown</Code>"]
            .iter()
            .any(|mark| text.contains(mark))
        {
            return true;
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use object_store::aws::AmazonS3Builder;
    use object_store::{BackoffConfig, RetryConfig};
    use proto::Digest;

    use crate::shared::Bucket;

    const SLOW_DOWN: &str =
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

    /// An endpoint on loopback answering every request `status` and `body`.
    fn answering(runtime: &tokio::runtime::Runtime, status: StatusCode, body: &'static str) -> String {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || async move { (status, body) });
        runtime.spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn bucket_at(runtime: &tokio::runtime::Runtime, endpoint: &str) -> Arc<Bucket> {
        // As Bucket::open does: the client's TLS uses the process's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let backoff = BackoffConfig { init_backoff: Duration::from_millis(10), ..BackoffConfig::default() };
        let retry = RetryConfig { max_retries: 1, retry_timeout: Duration::from_secs(2), backoff };
        let store = AmazonS3Builder::new()
            .with_bucket_name("cache")
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_retry(retry)
            .build()
            .unwrap();
        Bucket::over(Arc::new(store), runtime.handle().clone())
    }

    /// A bucket throttling one tenant's flood answered; the breaker stays closed for the rest.
    #[test]
    fn a_throttled_request_fails_but_keeps_the_bucket_reachable() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let digest = Digest::of(b"blob");
        for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::TOO_MANY_REQUESTS] {
            let bucket = bucket_at(&runtime, &answering(&runtime, status, SLOW_DOWN));
            assert!(bucket.stat(&digest).is_err(), "{status}: throttled is no answer");
            assert!(bucket.probe().is_err(), "{status}: nor is it for a HEAD, which has no body");
            assert!(bucket.counters.reachable(), "{status} opened the breaker");
        }
        // A bucket that does not answer still opens it.
        let unreachable = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let bucket = bucket_at(&runtime, &unreachable);
        assert!(bucket.stat(&digest).is_err());
        assert!(!bucket.counters.reachable(), "a bucket no one answers for is unreachable");
        // And so does an answer that is not throttling.
        let gateway = answering(&runtime, StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>");
        let bucket = bucket_at(&runtime, &gateway);
        assert!(bucket.stat(&digest).is_err());
        assert!(!bucket.counters.reachable(), "502 from a proxy whose bucket is gone");
    }
}
