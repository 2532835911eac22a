//! TLS and mTLS with certificate authorities made inside the test (rcgen): HTTPS serves, plain
//! HTTP and untrusted certificates are refused, mTLS refuses clients without a certificate from
//! its CA, and SIGHUP swaps the certificate of the running daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use common::ca::Ca;
use proto::v1;
use proto::v1::stats_client::StatsClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Writes the server's identity (and optionally a client CA) into `dir`; returns the settings.
fn server_files(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> Vec<(String, String)> {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let write = |name: &str, text: &str| -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let mut settings = vec![
        ("tls_cert".to_owned(), write("server.pem", &cert)),
        ("tls_key".to_owned(), write("server.key", &key)),
    ];
    if let Some(client_ca) = client_ca {
        settings.push(("tls_client_ca".to_owned(), write("clients.pem", &client_ca.pem)));
    }
    settings
}

async fn start(dir: &Path, settings: &[(String, String)]) -> Server {
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start(&dir.join("data"), &settings).await
}

/// Asks for stats over `https://`, trusting `ca`, presenting `identity` if given.
async fn stats_over_tls(port: u16, ca: &Ca, identity: Option<(String, String)>) -> Result<(), String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|err| err.to_string())?;
    let channel = endpoint.connect().await.map_err(|err| format!("connect: {err:?}"))?;
    StatsClient::new(channel).get(v1::StatsRequest {}).await.map(drop).map_err(|status| format!("{status:?}"))
}

async fn stats_over_plain_http(port: u16) -> Result<(), String> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|err| format!("connect: {err:?}"))?;
    StatsClient::new(channel).get(v1::StatsRequest {}).await.map(drop).map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn tls_serves_https_and_refuses_plain_http_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cached test CA");
    let server = start(dir.path(), &server_files(dir.path(), &ca, None)).await;
    let port = server.addr.port();

    stats_over_tls(port, &ca, None).await.expect("a client that trusts the CA is served");
    let stranger = Ca::new("some other CA");
    let err =
        stats_over_tls(port, &stranger, None).await.expect_err("the server's certificate is not trusted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    stats_over_plain_http(port).await.expect_err("plain HTTP/2 gets no answer from a TLS port");
    // The server is unharmed by the failed handshakes.
    stats_over_tls(port, &ca, None).await.expect("still serving");
    // rcgen's certificates are valid until 4096-01-01T00:00:00Z unless told otherwise.
    let metrics = server.metrics().await;
    let expiry = "cached_tls_certificate_expiry_timestamp_seconds 67090118400";
    assert!(metrics.contains(expiry), "missing {expiry:?} in\n{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = start(dir.path(), &server_files(dir.path(), &server_ca, Some(&client_ca))).await;
    let port = server.addr.port();

    stats_over_tls(port, &server_ca, None).await.expect_err("no client certificate");
    let wrong = Ca::new("not the client CA").issue(&["runner-1"]);
    stats_over_tls(port, &server_ca, Some(wrong)).await.expect_err("a client certificate from another CA");
    // A certificate from the server's CA is no good either: only the client CA counts.
    let server_signed = server_ca.issue(&["runner-1"]);
    stats_over_tls(port, &server_ca, Some(server_signed))
        .await
        .expect_err("a certificate from the server CA");
    let good = client_ca.issue(&["runner-1"]);
    stats_over_tls(port, &server_ca, Some(good)).await.expect("a client certificate from the client CA");
    server.stop().await;
}

/// Whether the server closes `stream` within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_peer_gets_few_handshakes_and_silent_ones_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cached test CA");
    let mut settings = server_files(dir.path(), &ca, None);
    settings.push(("max_handshakes_per_peer".to_owned(), "2".to_owned()));
    settings.push(("handshake_timeout".to_owned(), "3s".to_owned()));
    let server = start(dir.path(), &settings).await;
    // Two connections that never start their handshake hold all this peer may have.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(1)).await, "a third handshake is refused at once");

    // Another peer is served meanwhile.
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("another peer connects");
    StatsClient::new(channel).get(v1::StatsRequest {}).await.expect("and is served");

    for stream in &mut silent {
        assert!(closed_within(stream, Duration::from_secs(10)).await, "handshake_timeout closes silent ones");
    }
    stats_over_tls(server.addr.port(), &ca, None).await.expect("the peer's slots are back");
    server.stop().await;
}

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(data_dir: &Path, settings: &[(String, String)]) -> Self {
        let port = cached_e2e::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cached"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(data_dir)
            .env_clear()
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in settings {
            command.arg(format!("--{}", key.replace('_', "-"))).arg(value);
        }
        let child = command.spawn().expect("start cached");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "cached did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn hangup(&self) {
        let status = Command::new("kill").args(["-s", "HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_of(settings: &[(String, String)], key: &str) -> PathBuf {
    PathBuf::from(&settings.iter().find(|(k, _)| k == key).unwrap().1)
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let settings = server_files(dir.path(), &old_ca, None);
    let daemon = Daemon::start(&dir.path().join("data"), &settings);
    stats_over_tls(daemon.port, &old_ca, None).await.expect("served with the old certificate");

    // A broken certificate file on SIGHUP keeps the current one.
    std::fs::write(path_of(&settings, "tls_cert"), "not a certificate").unwrap();
    daemon.hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stats_over_tls(daemon.port, &old_ca, None).await.expect("a failed reload keeps the old certificate");

    let new_ca = Ca::new("new CA");
    let (cert, key) = new_ca.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(path_of(&settings, "tls_key"), key).unwrap();
    std::fs::write(path_of(&settings, "tls_cert"), cert).unwrap();
    daemon.hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = stats_over_tls(daemon.port, &new_ca, None).await {
        assert!(Instant::now() < deadline, "the new certificate was never served: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stats_over_tls(daemon.port, &old_ca, None).await.expect_err("the old certificate is gone");
}

#[test]
fn unreadable_certificates_stop_the_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cached"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--tls-cert", "/nonexistent.pem"])
        .args(["--tls-key", "/nonexistent.key", "--data-dir"])
        .arg(dir.path())
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls_cert") && stderr.contains("/nonexistent.pem"), "{stderr}");
}
