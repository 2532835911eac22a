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
