//! TLS to PostgreSQL, against a real server that turns plain TCP connections away: cached
//! connects with the database's CA (`database_ca`), verifies the certificate and its name,
//! and refuses a server it cannot verify rather than sending it the password.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cached::embedded::Embedded;
use cached_e2e::postgres::{Postgres, ServerIdentity};
use common::ca::Ca;

/// The identity of a server known as `names`, issued by `ca`.
fn identity(ca: &Ca, names: &[&str]) -> ServerIdentity {
    let (certificate_pem, key_pem) = ca.issue(names);
    ServerIdentity { certificate_pem, key_pem }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Starts cached on `db` through `url`, with `ca` as database_ca.
fn start(db: &Postgres, url: &str, ca: &str) -> impl Future<Output = (Embedded, tempfile::TempDir)> {
    let data = tempfile::tempdir().unwrap();
    let password = db.password_file().display().to_string();
    let (url, ca) = (url.to_owned(), ca.to_owned());
    async move {
        let settings =
            [("database_url", url.as_str()), ("database_password_file", &password), ("database_ca", &ca)];
        (Embedded::start(data.path(), &settings).await.unwrap(), data)
    }
}

/// Why cached on `db` through `url` and `ca` did not start: it opens the database before it
/// serves, and ends with the error when it cannot.
async fn refusal(db: &Postgres, url: &str, ca: &str) -> String {
    let (server, _data) = start(db, url, ca).await;
    server.stop().await.err().map(|err| err.to_string()).unwrap_or_else(|| panic!("{url} with {ca:?} worked"))
}

/// Connections of cached to `db` that use TLS.
fn encrypted_connections(db: &Postgres) -> u32 {
    db.query(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'cached' AND ssl",
    )
    .parse()
    .unwrap()
}

#[tokio::test]
async fn cached_reaches_a_tls_only_database_through_its_ca_and_refuses_one_it_cannot_verify() {
    let ca = Ca::new("database CA");
    let db = Postgres::start_tls_only(&identity(&ca, &["localhost", "127.0.0.1"]));
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(files.path(), "ca.pem", &ca.pem);
    let stranger_file = write(files.path(), "stranger.pem", &Ca::new("another CA").pem);

    // Plain, as before: the server turns it away, so what works below went over TLS.
    let err = refusal(&db, &db.url(), "").await;
    assert!(err.contains("no encryption"), "{err}");

    for (url, ca) in [(db.url(), &ca_file), (format!("{}?sslmode=verify-full", db.url()), &ca_file)] {
        let (server, _data) = start(&db, &url, ca).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while encrypted_connections(&db) == 0 {
            assert!(Instant::now() < deadline, "{url}: cached never connected over TLS");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.stop().await.unwrap();
    }

    // A certificate its CA did not sign, or one the system's roots do not know: refused.
    for (url, ca) in [(db.url(), stranger_file.as_str()), (format!("{}?sslmode=require", db.url()), "")] {
        let err = refusal(&db, &url, ca).await;
        assert!(err.contains("certificate"), "{url} with {ca:?}: {err}");
    }
}
