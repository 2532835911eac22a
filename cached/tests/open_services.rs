//! Health and reflection need no token, so what they may hold is capped: a client without a
//! token cannot pile up `Health/Watch` streams (which the server never ends on its own), and
//! probes with `Health/Check` answer whatever the streams do.

mod common;

use cached::auth::open::PER_PEER;
use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use common::Server;
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request};

fn tokens_file(dir: &std::path::Path) -> String {
    let spec = TokenSpec {
        name: "ci".to_owned(),
        scopes: Scopes::parse_list("read").unwrap(),
        namespaces: NamespacePattern::parse_list("*").unwrap(),
        secret_hash: SecretHash::new("a-secret-no-test-call-sends").unwrap(),
        rate_limit: None,
        max_priority: None,
    };
    let path = dir.join("tokens.toml");
    std::fs::write(&path, spec.to_toml()).unwrap();
    path.display().to_string()
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

#[tokio::test]
async fn tokenless_streams_are_capped_per_client_and_checks_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", &tokens)]).await;
    let mut health = HealthClient::new(channel(&server).await);
    let watch = || HealthCheckRequest { service: String::new() };

    let mut held = Vec::new();
    for _ in 0..PER_PEER {
        let mut stream = health.watch(watch()).await.expect("a watch within the cap").into_inner();
        stream.next().await.expect("the current status").expect("serving");
        held.push(stream);
    }
    // More streams, on this connection or on others from the same address, are refused.
    let err = health.watch(watch()).await.expect_err("one watch over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("Health/Check"), "{}", err.message());
    let mut other = HealthClient::new(channel(&server).await);
    let err = other.watch(watch()).await.expect_err("another connection, the same address");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let err = reflection
        .server_reflection_info(futures::stream::iter([list.clone()]))
        .await
        .expect_err("reflection streams share the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Probes are not streams and are answered anyway.
    other.check(watch()).await.expect("Health/Check without a token");

    // A stream that ends gives its slot back.
    drop(held.pop());
    let mut reopened = None;
    for _ in 0..200 {
        match health.watch(watch()).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(err) => assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(reopened.is_some(), "the slot of the dropped watch never came back");
    drop((held, reopened));
    server.stop().await;
}
