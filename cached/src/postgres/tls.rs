//! TLS to the database. It is on when `database_ca` names the CA certificates the server's
//! certificate must chain to, or when `database_url` says `sslmode=require` (then the system's
//! roots). Either way the certificate is verified, and its name against the URL's host, as
//! libpq's `verify-full` does: a TLS connection whose peer nobody checked would hand the
//! database password to whoever answers. `verify-full` and `verify-ca` are accepted in the URL
//! and mean the same. Without either, connections are plain, even to a server that offers TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ConfigError;

/// The `sslmode` values libpq users write for a verified connection; tokio-postgres knows
/// them as `require`, and here `require` is verified anyway.
const VERIFIED_MODES: [&str; 2] = ["sslmode=verify-full", "sslmode=verify-ca"];

/// `url` with a libpq `sslmode=verify-*` in its query spelled as tokio-postgres reads it
/// (only there: a password may hold anything).
pub(super) fn normalize_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_owned() };
    let query =
        VERIFIED_MODES.iter().fold(query.to_owned(), |query, mode| query.replace(mode, "sslmode=require"));
    format!("{base}?{query}")
}

/// The TLS connector `config` needs, given the `database_ca` setting; `None`: plain. Makes
/// `config` require TLS whenever a connector is returned, so it never falls back to plain.
pub(super) fn connector(
    config: &mut tokio_postgres::Config,
    ca_file: &str,
) -> Result<Option<MakeRustlsConnect>, ConfigError> {
    let ca_file = Some(ca_file.trim()).filter(|path| !path.is_empty()).map(Path::new);
    let invalid = |reason: &str| ConfigError::Invalid {
        origin: "database_ca".to_owned(),
        value: ca_file.map(|path| path.display().to_string()).unwrap_or_default(),
        reason: reason.to_owned(),
    };
    let wanted = match config.get_ssl_mode() {
        SslMode::Disable if ca_file.is_some() => {
            return Err(invalid("database_url says sslmode=disable; drop one or the other"));
        }
        SslMode::Disable => false,
        SslMode::Require => true,
        _ => ca_file.is_some(),
    };
    if !wanted {
        return Ok(None);
    }
    config.ssl_mode(SslMode::Require);
    let roots = match ca_file {
        Some(path) => roots_from(path)?,
        None => system_roots().map_err(|reason| invalid(&reason))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(&err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(tls)))
}

fn roots_from(path: &Path) -> Result<RootCertStore, ConfigError> {
    let unusable = |reason: String| ConfigError::File {
        file: path.display().to_string(),
        reason: format!("database_ca: {reason}"),
    };
    let pem = std::fs::read(path).map_err(|err| unusable(err.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| unusable(format!("not PEM certificates: {err}")))?;
    if certificates.is_empty() {
        return Err(unusable("holds no PEM certificate".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|err| unusable(format!("a certificate is unusable: {err}")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "database_url asks for TLS but this machine has no CA certificates to check the \
             database's with ({} errors loading them); name its CA in database_ca",
            found.errors.len()
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(&normalize_url(url)).unwrap()
    }

    #[test]
    fn tls_is_on_with_a_ca_or_when_the_url_requires_it_and_never_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate =
            rcgen::CertificateParams::new(vec!["db.test".to_owned()]).unwrap().self_signed(&key);
        std::fs::write(&ca, certificate.unwrap().pem()).unwrap();
        let ca = ca.display().to_string();

        let mut plain = config("postgres://u@db.test/jobs");
        assert!(connector(&mut plain, "").unwrap().is_none());
        let mut with_ca = config("postgres://u@db.test/jobs");
        assert!(connector(&mut with_ca, &ca).unwrap().is_some());
        assert_eq!(with_ca.get_ssl_mode(), SslMode::Require, "a CA given: no plain fallback");
        for url in
            ["postgres://u@db.test/jobs?sslmode=verify-full", "postgres://u@db.test/jobs?sslmode=verify-ca"]
        {
            let mut verified = config(url);
            assert_eq!(verified.get_ssl_mode(), SslMode::Require, "{url}");
            assert!(connector(&mut verified, &ca).unwrap().is_some(), "{url}");
        }

        let password = "postgres://u:sslmode=verify-ca@db.test/jobs";
        assert_eq!(normalize_url(password), password, "only the query is rewritten");

        let mut disabled = config("postgres://u@db.test/jobs?sslmode=disable");
        let err = connector(&mut disabled, &ca).err().unwrap().to_string();
        assert!(err.contains("database_ca") && err.contains("sslmode=disable"), "{err}");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let err =
            connector(&mut config("postgres://u@db/jobs"), &not_pem.display().to_string()).err().unwrap();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
