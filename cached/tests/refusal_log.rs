//! Refusals are audited, but nobody needs a token to be refused: a flood of bad calls from one
//! address must not become a flood of log lines. Each address gets one line per reason per
//! interval; the rest are counted into its next line.

mod common;

use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use common::Server;
use proto::v1;
use proto::v1::go_cache_client::GoCacheClient;
use proto::v1::stats_client::StatsClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn request(secret: Option<&str>) -> Request<v1::StatsRequest> {
    let mut request = Request::new(v1::StatsRequest {});
    if let Some(secret) = secret {
        request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    }
    request
}

#[tokio::test]
async fn a_flood_of_refused_calls_is_logged_once_per_reason() {
    let (captured, _guard) = common::logs::capture();

    let dir = tempfile::tempdir().unwrap();
    // `ci` may use every namespace; `pr` only its own, which a caller names in each request.
    let spec = |name: &str, scopes: &str, namespaces: &str| {
        let spec = TokenSpec {
            name: name.to_owned(),
            scopes: Scopes::parse_list(scopes).unwrap(),
            namespaces: NamespacePattern::parse_list(namespaces).unwrap(),
            secret_hash: SecretHash::new(&format!("the-{name}-secret")).unwrap(),
            rate_limit: Some(0),
            max_priority: None,
        };
        spec.to_toml()
    };
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("{}\n{}", spec("ci", "cas-write", "*"), spec("pr", "read", "pr/*")))
        .unwrap();
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", tokens.to_str().unwrap())]).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let stats = StatsClient::new(channel.clone());
    let go = GoCacheClient::new(channel);

    let callers = [
        (None, Code::Unauthenticated),
        (Some("not-a-token-this-server-knows"), Code::Unauthenticated),
        (Some("cached_lease.forged"), Code::Unauthenticated),
        (Some("the-ci-secret"), Code::PermissionDenied),
    ];
    for round in 0..250 {
        for (secret, code) in callers {
            let err = stats.clone().get(request(secret)).await.unwrap_err();
            assert_eq!(err.code(), code, "{err:?}");
        }
        let get = v1::GoGetRequest { namespace: format!("main-{round}"), action_id: vec![1; 32].into() };
        let mut get = Request::new(get);
        get.metadata_mut().insert("authorization", "Bearer the-pr-secret".parse().unwrap());
        let err = go.clone().get(get).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    server.stop().await;

    let log = captured.text();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| ["refused", "scope denied", "namespace denied"].iter().any(|what| line.contains(what)))
        .collect();
    assert_eq!(
        refusals.len(),
        callers.len() + 1,
        "1,250 refused calls from one address, one line per reason:\n{}",
        refusals.iter().take(10).copied().collect::<Vec<_>>().join("\n")
    );
    for line in &refusals {
        assert!(line.contains("unlogged=0") && line.contains("once per 10s"), "{line}");
    }
}
