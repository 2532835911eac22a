//! cachectl against a cached that wants TLS and tokens: --tls-ca, --token, --token-file and
//! CACHED_TOKEN reach the server, and refusals name what is missing.

use std::path::Path;
use std::process::{Command, Output};

use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use cached::embedded::Embedded;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");

fn token(name: &str, scopes: &str, secret: &str) -> String {
    TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list(scopes).unwrap(),
        namespaces: NamespacePattern::parse_list("*").unwrap(),
        secret_hash: SecretHash::new(secret).unwrap(),
        rate_limit: None,
        max_priority: None,
    }
    .to_toml()
}

/// A CA, and a server certificate for 127.0.0.1 and localhost it signed: (CA PEM, cert, key).
fn certificates() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "cachectl test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn cachectl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(CACHECTL);
    command.args(args).env_remove("CACHED_TOKEN").env_remove("CACHED_TOKEN_FILE").env_remove("CACHED_TLS_CA");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run cachectl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_tls_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let ca_file = write(dir.path(), "ca.pem", &ca);
    let tokens = format!(
        "{}\n{}",
        token("dev", "read,cas-write", "dev-secret"),
        token("reader", "read", "reader-secret")
    );
    let settings = [
        ("tls_cert", write(dir.path(), "server.pem", &cert)),
        ("tls_key", write(dir.path(), "server.key", &key)),
        ("tokens_file", write(dir.path(), "tokens.toml", &tokens)),
    ];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Embedded::start(&dir.path().join("data"), &settings).await.expect("cached starts");
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let base = ["--server", url.as_str(), "--tls-ca", ca_file.as_str()];
    let token_file = write(dir.path(), "dev.token", "dev-secret\n");
    let file = write(dir.path(), "object.o", "compiled code");

    let put = cachectl(&[&base[..], &["--token-file", &token_file, "put", &file]].concat(), &[]);
    assert!(put.status.success(), "{}", stderr(&put));
    let printed = String::from_utf8(put.stdout).unwrap();
    let digest = printed.split_whitespace().next().unwrap().to_owned();

    let anonymous = cachectl(&[&base[..], &["has", &digest]].concat(), &[]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        stderr(&anonymous).contains("Unauthenticated") && stderr(&anonymous).contains("token"),
        "{}",
        stderr(&anonymous)
    );

    let reader = [("CACHED_TOKEN", "reader-secret")];
    let has = cachectl(&[&base[..], &["has", &digest]].concat(), &reader);
    assert!(has.status.success(), "{}", stderr(&has));
    let other = write(dir.path(), "other.o", "other code");
    let denied = cachectl(&[&base[..], &["put", &other]].concat(), &reader);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains("PermissionDenied") && stderr(&denied).contains("`cas-write`"),
        "{}",
        stderr(&denied)
    );
    assert!(!stderr(&denied).contains("reader-secret"));

    let untrusted = cachectl(&["--server", &url, "--token", "dev-secret", "has", &digest], &[]);
    assert!(!untrusted.status.success(), "the test CA is not among the system's roots");

    let plain = cachectl(&["--server", "http://127.0.0.1:1", "--tls-ca", &ca_file, "has", &digest], &[]);
    assert_eq!(plain.status.code(), Some(2), "{}", stderr(&plain));
    let both =
        cachectl(&[&base[..], &["--token", "x", "--token-file", &token_file, "has", &digest]].concat(), &[]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    server.stop().await.unwrap();
}

/// TEST-NET-1 (RFC 5737): never answers, so only a refusal before connecting ends quickly
/// with exit code 2; a connection attempt ends with 3 (unreachable) after its timeout.
const REMOTE: &str = "http://192.0.2.1:7070";
const OPT_IN: [&str; 2] = ["--allow-insecure-token", "CACHED_ALLOW_INSECURE_TOKEN=1"];

fn assert_refused_in_clear(what: &str, message: &str) {
    for expected in OPT_IN.iter().chain(&["https://", "192.0.2.1", "not a loopback address"]) {
        assert!(message.contains(expected), "{what}: no {expected:?} in: {message}");
    }
    assert!(!message.contains("cached_secret"), "{what}: the token is never printed: {message}");
}

#[test]
fn a_token_is_not_sent_in_clear_to_a_remote_address_without_the_opt_in() {
    let token = [("CACHED_TOKEN", "cached_secret")];
    for args in [&["stats"][..], &["jobs", "list"]] {
        let output = cachectl(&[&["--server", REMOTE][..], args].concat(), &token);
        assert_eq!(output.status.code(), Some(2), "{args:?} is refused, not tried: {}", stderr(&output));
        assert_refused_in_clear(&format!("{args:?}"), &stderr(&output));
    }

    // submit: after reading the module, before any connection.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "go.mod", "module example.com/m\n\ngo 1.22\n");
    write(dir.path(), "main.go", "package main\n\nfunc main() {}\n");
    std::fs::create_dir(dir.path().join("vendor")).unwrap();
    write(&dir.path().join("vendor"), "modules.txt", "");
    let module = dir.path().to_str().unwrap();
    let submit = cachectl(
        &["--server", REMOTE, "submit", "-C", module, "--targets", "linux/amd64", "--detach"],
        &token,
    );
    assert_eq!(submit.status.code(), Some(2), "submit is refused: {}", stderr(&submit));
    assert_refused_in_clear("submit", &stderr(&submit));

    // image: the layer cache is off, with the reason, and the image is still built.
    let binary = write(dir.path(), "app", "not really a binary");
    let layout = dir.path().join("layout");
    let image = cachectl(
        &[
            "--server",
            REMOTE,
            "image",
            "--platform",
            &format!("linux/amd64={binary}"),
            "--name",
            "app",
            "--oci-layout",
            layout.to_str().unwrap(),
        ],
        &token,
    );
    assert!(image.status.success(), "{}", stderr(&image));
    assert!(stderr(&image).contains("layer cache off"), "{}", stderr(&image));
    assert_refused_in_clear("image", &stderr(&image));

    // The GOCACHEPROG bridge: local cache only, and it says why.
    let mut bridge = Command::new(CACHECTL);
    bridge
        .args(["--server", REMOTE, "gocacheprog", "--dir"])
        .arg(dir.path().join("gocache"))
        .env_remove("CACHED_TOKEN_FILE")
        .env("CACHED_TOKEN", "cached_secret")
        .stdin(std::process::Stdio::null());
    let bridge = bridge.output().expect("run the bridge");
    assert!(bridge.status.success(), "{}", stderr(&bridge));
    assert!(stderr(&bridge).contains("local cache only"), "{}", stderr(&bridge));
    assert_refused_in_clear("gocacheprog", &stderr(&bridge));
}

#[test]
fn the_runner_agent_refuses_to_send_its_token_in_clear_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new(cached_e2e::binary("runner-agent"))
        .args(["--server", REMOTE, "--work-dir"])
        .arg(dir.path())
        .env_remove("CACHED_TOKEN_FILE")
        .env("CACHED_TOKEN", "cached_secret")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start runner-agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while agent.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!("runner-agent kept trying to reach {REMOTE} with its token");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = agent.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert_refused_in_clear("runner-agent", &stderr(&output));
}

#[test]
fn with_the_opt_in_the_token_goes_and_the_connection_is_tried() {
    let token = [("CACHED_TOKEN", "cached_secret")];
    let flag = cachectl(&["--server", REMOTE, "--allow-insecure-token", "stats"], &token);
    let env = cachectl(&["--server", REMOTE, "stats"], &[token[0], ("CACHED_ALLOW_INSECURE_TOKEN", "1")]);
    for output in [flag, env] {
        assert_eq!(output.status.code(), Some(3), "tried, and unreachable: {}", stderr(&output));
        assert!(
            stderr(&output).contains("cannot reach cached at http://192.0.2.1:7070"),
            "{}",
            stderr(&output)
        );
    }
    let garbage =
        cachectl(&["--server", REMOTE, "stats"], &[token[0], ("CACHED_ALLOW_INSECURE_TOKEN", "maybe")]);
    assert_eq!(garbage.status.code(), Some(2), "{}", stderr(&garbage));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_http_to_loopback_works_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens.toml", &token("reader", "read", "reader-secret"));
    let server =
        Embedded::start(&dir.path().join("data"), &[("tokens_file", &tokens)]).await.expect("cached starts");
    let port = server.addr.port();
    for url in [format!("http://127.0.0.1:{port}"), format!("http://localhost:{port}")] {
        let stats = cachectl(&["--server", &url, "stats"], &[("CACHED_TOKEN", "reader-secret")]);
        assert!(stats.status.success(), "{url}: {}", stderr(&stats));
    }
    server.stop().await.unwrap();
}
