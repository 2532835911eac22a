//! Whether the bucket refused a request for its rate: S3 answers 503 with a `SlowDown` code in
//! its body, other stores 429. Throttled, it answered: the request fails, but whether the bucket
//! counts as reachable stays as it was (`SharedCounters::request_throttled`). The tier's breaker
//! is for a bucket that does not answer; opened by throttling, one tenant's flood would fail
//! every tenant's writes until a probe got through. A 503 without that code is not throttling:
//! proxies and load balancers answer so when the bucket behind them is gone (and a 503 to a
//! HEAD has no body to tell).
//!
//! object_store keeps the status and body only in its error's text ("Server returned non-2xx
//! status code: 503 Service Unavailable: <body>"); the test below pins that against a real
//! server.

/// Whether `err`, or what caused it, is the bucket's throttling answer.
pub(super) fn throttled(err: &object_store::Error) -> bool {
    const MARKS: [&str; 3] =
        ["status code: 429", "<Code>SlowDown</Code>", "<Code>RequestLimitExceeded</Code>"];
    let mut cause: Option<&dyn std::error::Error> = Some(err);
    while let Some(err) = cause {
        let text = err.to_string();
        if MARKS.iter().any(|mark| text.contains(mark)) {
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
        let slow_down = bucket_at(&runtime, &answering(&runtime, StatusCode::SERVICE_UNAVAILABLE, SLOW_DOWN));
        assert!(slow_down.stat(&digest).is_err(), "throttled is no answer");
        assert!(slow_down.counters.reachable(), "503 SlowDown opened the breaker");
        let too_many = bucket_at(&runtime, &answering(&runtime, StatusCode::TOO_MANY_REQUESTS, ""));
        assert!(too_many.stat(&digest).is_err() && too_many.probe().is_err());
        assert!(too_many.counters.reachable(), "429 opened the breaker");
        // Nor does a throttled answer close a breaker an outage opened.
        too_many.counters.request_ended(Duration::ZERO, false);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(too_many.probe().is_err());
        assert!(!too_many.counters.reachable(), "a 429 closed the breaker");
    }

    /// Proxies answer 503 when the bucket behind them is gone, and 502: neither is throttling,
    /// and the breaker opens, as it does for an endpoint no one answers for.
    #[test]
    fn a_bucket_gone_behind_a_proxy_opens_the_breaker() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let digest = Digest::of(b"blob");
        let unreachable = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let no_upstream = "<html><body>503 Service Temporarily Unavailable</body></html>";
        for endpoint in [
            unreachable,
            answering(&runtime, StatusCode::SERVICE_UNAVAILABLE, no_upstream),
            answering(&runtime, StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>"),
        ] {
            let bucket = bucket_at(&runtime, &endpoint);
            assert!(bucket.stat(&digest).is_err());
            assert!(!bucket.counters.reachable(), "{endpoint}: the bucket counts as answering");
        }
        // A HEAD's 503 has no body to say SlowDown.
        let slow_down = bucket_at(&runtime, &answering(&runtime, StatusCode::SERVICE_UNAVAILABLE, SLOW_DOWN));
        assert!(slow_down.probe().is_err());
        assert!(!slow_down.counters.reachable(), "a bodiless 503 counts as answering");
    }
}
