//! TLS and mTLS with rustls. The server's identity (certificate chain, key, and the client CAs
//! of mTLS) is read at start and again on SIGHUP; every new connection uses the identity that is
//! current when it arrives, and a reload that fails keeps the previous one.
//!
//! tonic's own `ServerTlsConfig` cannot reload, so connections are accepted here: each
//! handshake runs in its own task under `handshake_timeout` (a client that never finishes its
//! handshake holds nothing but that task, and a peer at most `max_handshakes_per_peer` of
//! them), and finished streams are handed to tonic as [`Conn`]s, with the same caps and
//! watch as plain connections (`crate::conn`).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsFiles;
use crate::conn::{Conn, Connections};
use crate::error::{Error, Result};

/// Handshakes in progress at once, all peers together; further connections wait in the listen
/// backlog. One peer gets at most `max_handshakes_per_peer` of them.
const MAX_HANDSHAKES: usize = 256;

pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// When the served certificate expires, in seconds since the epoch (for the alert that
    /// comes before it does).
    not_after: AtomicI64,
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>> {
        let (config, not_after) = server_config(files)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            not_after: AtomicI64::new(not_after),
        }))
    }

    /// Reads the files again. On failure the current identity stays.
    pub fn reload(&self) -> Result<()> {
        let (config, not_after) = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// When the certificate served now expires, in seconds since the epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    pub fn is_mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor for HTTP/1.1 (the registry's listener): the same identity, without gRPC's
    /// h2-only ALPN, which clients that speak only HTTP/1.1 would fail to agree on.
    pub fn http1_acceptor(&self) -> TlsAcceptor {
        let current = Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut config = (*current).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }
}

fn unusable(key: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("{key} {}: {reason}", path.display()))
}

/// The end of the validity of the certificate served (the first of the chain).
fn expiry(files: &TlsFiles, leaf: &CertificateDer<'_>) -> Result<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|err| unusable("tls_cert", &files.cert, format!("is not an X.509 certificate: {err}")))?;
    Ok(certificate.validity().not_after.timestamp())
}

/// The server's TLS configuration, and when its certificate expires.
fn server_config(files: &TlsFiles) -> Result<(ServerConfig, i64)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|err| unusable("tls_cert", &files.cert, err))?;
    if certs.is_empty() {
        return Err(unusable("tls_cert", &files.cert, "holds no PEM certificate"));
    }
    let not_after = expiry(files, &certs[0])?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| unusable("tls_key", &files.key, err))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Internal(format!("TLS protocol versions: {err}")))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|err| unusable("tls_client_ca", path, err))?;
            for ca in cas {
                roots.add(ca).map_err(|err| unusable("tls_client_ca", path, err))?;
            }
            if roots.is_empty() {
                return Err(unusable("tls_client_ca", path, "holds no PEM certificate"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| unusable("tls_client_ca", path, err))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| unusable("tls_cert", &files.cert, format!("does not go with tls_key: {err}")))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, not_after))
}

/// The TLS streams of the connections `listener` accepts within their peer's caps, each
/// handshake limited to `handshake_timeout`. Failed handshakes (a wrong client certificate,
/// plain HTTP, a scanner) are logged and dropped. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    connections: Arc<Connections>,
) -> ReceiverStream<io::Result<Conn<TlsStream<TcpStream>>>> {
    let handshake_timeout = connections.limits().handshake_timeout;
    let (sender, receiver) = mpsc::channel(64);
    // Ends when the server drops the stream of connections.
    crate::task::spawn("TLS accept", async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                accepted = connections.accept(&listener) => accepted,
                () = sender.closed() => return,
            };
            let Some((stream, peer, slot)) = accepted else { continue };
            let Some(handshake) = connections.admit_handshake(peer) else { continue };
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { return };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let (sender, connections) = (sender.clone(), Arc::clone(&connections));
            // Bounded by handshake_timeout.
            crate::task::spawn("TLS handshake", async move {
                let _permits = (permit, handshake);
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(connections.wrap(stream, peer, slot))).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, error = %err, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out (handshake_timeout)"),
                }
            })
            .detach();
        }
    })
    .detach();
    ReceiverStream::new(receiver)
}

/// Reloads the TLS identity on every SIGHUP until `stop` turns true.
pub async fn reload_on_sighup(tls: Arc<Tls>, stop: watch::Receiver<bool>) {
    crate::signals::on_hangup("certificates", stop, || match tls.reload() {
        Ok(()) => tracing::info!(cert = %tls.files.cert.display(), "SIGHUP: TLS certificate reloaded"),
        Err(err) => {
            tracing::error!(error = %err, "SIGHUP: TLS reload failed; still serving the previous certificate")
        }
    })
    .await;
}
