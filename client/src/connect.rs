//! Connections to cached: the address, TLS for `https://` servers (a CA file or the system
//! roots; a client certificate for mTLS), and the bearer token every call carries, which
//! goes in clear (`http://`) only to a loopback server unless the user opts in.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::admin_client::AdminClient;
use proto::v1::builds_client::BuildsClient;
use proto::v1::cas_client::CasClient;
use proto::v1::go_cache_client::GoCacheClient;
use proto::v1::stats_client::StatsClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{ClientError, Result};
use crate::failover::Failover;
use crate::loopback::{self, Place};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";
/// Large enough for a batch of small blobs; the server enforces its own limit.
const MAX_MESSAGE: usize = 64 << 20;
/// The largest HTTP/2 DATA frame this side accepts: a frame of a blob (up to 1 MiB) then
/// arrives in one or two HTTP/2 frames rather than sixty-four of the default 16 KiB.
const MAX_FRAME_SIZE: u32 = 1 << 20;

/// A token secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().trim().to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// How to reach cached and prove who we are: what the global `--token`, `--token-file`,
/// `--tls-ca`, `--tls-client-cert` and `--tls-client-key` options say.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub token: Option<Secret>,
    /// PEM CA certificates that sign the server's certificate; without it an `https://` server
    /// is checked against the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// mTLS: the client certificate chain and its key (PEM).
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Send the token over plain `http://` to a server that is not on loopback
    /// (`--allow-insecure-token`, `CACHED_ALLOW_INSECURE_TOKEN=1`): for a network path the
    /// user trusts. Without it such a connection is refused before it is made.
    pub allow_insecure_token: bool,
}

/// The opt-in, as error messages name it.
pub const ALLOW_INSECURE_TOKEN: &str = "--allow-insecure-token (CACHED_ALLOW_INSECURE_TOKEN=1)";

impl ConnectOptions {
    pub fn with_token(token: impl Into<String>) -> Self {
        Self { token: Some(Secret::new(token)), ..Self::default() }
    }

    /// The token of the `--token` and `--token-file` flags (and their environment variables),
    /// which give it one way or not at all.
    pub fn token_from_flags(token: Option<&str>, token_file: Option<&Path>) -> Result<Option<Secret>> {
        match (token, token_file) {
            (Some(_), Some(_)) => Err(ClientError::Usage(
                "give the token one way: --token (CACHED_TOKEN) or --token-file (CACHED_TOKEN_FILE)"
                    .to_owned(),
            )),
            (Some(token), None) => Ok(Some(Secret::new(token))),
            (None, Some(path)) => Self::read_token_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Reads a token file: the secret, alone, surrounding whitespace ignored.
    pub fn read_token_file(path: &Path) -> Result<Secret> {
        let text = std::fs::read_to_string(path).map_err(ClientError::file(path))?;
        let secret = Secret::new(text);
        if secret.expose().is_empty() || secret.expose().contains(char::is_whitespace) {
            return Err(ClientError::Usage(format!(
                "token file {} must hold one token and nothing else",
                path.display()
            )));
        }
        Ok(secret)
    }

    /// The endpoint of `server` with TLS set up when it is `https://`. Callers add their own
    /// timeouts and windows, then connect. Every connection is made from one, so this is where
    /// a token bound for a plain-HTTP server off this machine is refused.
    pub fn endpoint(&self, server: &str) -> Result<Endpoint> {
        self.endpoint_resolving(server, loopback::resolve)
    }

    /// [`Self::endpoint`], with names looked up by `resolve`.
    fn endpoint_resolving(
        &self,
        server: &str,
        resolve: impl FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Result<Endpoint> {
        // Without a scheme the URL parses, and only the first call fails ("invalid URL").
        if !server.starts_with("http://") && !server.starts_with("https://") {
            return Err(ClientError::Usage(format!(
                "the server address {server:?} (--server, CACHED_ADDR) needs a scheme: \
                 http://{server}, or https://{server} for a TLS server"
            )));
        }
        let endpoint = Endpoint::from_shared(server.to_owned())
            .map_err(|err| ClientError::Usage(format!("--server {server:?} is not a valid URL: {err}")))?;
        let tls_wanted = self.tls_ca.is_some() || self.tls_client_cert.is_some();
        if !server.starts_with("https://") {
            if tls_wanted {
                return Err(ClientError::Usage(format!(
                    "--tls-ca and --tls-client-cert need an https:// server, not {server:?}"
                )));
            }
            let uri = endpoint.uri().clone();
            return match self.check_cleartext(
                server,
                uri.host().unwrap_or_default(),
                uri.port_u16(),
                resolve,
            )? {
                // The connection goes where the check looked; the calls still name the server.
                Some(address) => Ok(Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|err| ClientError::Usage(format!("--server {server:?}: {err}")))?
                    .origin(uri)),
                None => Ok(endpoint),
            };
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read(path)?)),
            None => tls.with_native_roots(),
        };
        match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => {}
            _ => {
                return Err(ClientError::Usage(
                    "--tls-client-cert and --tls-client-key go together: give both or neither".to_owned(),
                ));
            }
        }
        endpoint.tls_config(tls).map_err(|err| ClientError::Usage(format!("TLS setup for {server}: {err}")))
    }

    /// Refuses to send the token in clear to `host` unless it is on loopback or the user
    /// opted in. A name that resolved to loopback comes back as the address it resolved to,
    /// which the connection must use.
    fn check_cleartext(
        &self,
        server: &str,
        host: &str,
        port: Option<u16>,
        resolve: impl FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Result<Option<SocketAddr>> {
        if self.token.is_none() || self.allow_insecure_token {
            return Ok(None);
        }
        let why = match loopback::place(host, port.unwrap_or(80), resolve) {
            Ok(Place::Here) => return Ok(None),
            Ok(Place::HereAt(address)) => return Ok(Some(address)),
            Ok(Place::Elsewhere) => format!("{host} is not a loopback address"),
            Err(reason) => format!("{reason}, so it cannot be told to be a loopback address"),
        };
        Err(ClientError::Usage(format!(
            "refusing to send the token in clear (http://) to {server}: {why}. Use https:// \
             (with --tls-ca if a private CA signed the server's certificate), or, if the network \
             path to the server is trusted, pass {ALLOW_INSECURE_TOKEN}"
        )))
    }

    /// The endpoint of each server of a comma list (one replica each), set up by `configure`.
    pub fn endpoints(
        &self,
        servers: &str,
        configure: impl Fn(Endpoint) -> Endpoint,
    ) -> Result<Vec<Endpoint>> {
        let list = crate::failover::servers(servers);
        if list.is_empty() {
            return Err(ClientError::Usage(format!(
                "no server address in {servers:?} (--server, CACHED_ADDR): give one, or several separated by commas"
            )));
        }
        list.into_iter().map(|server| self.endpoint(server).map(&configure)).collect()
    }

    /// The interceptor that puts the token on every call.
    pub fn credentials(&self) -> Result<Credentials> {
        let authorization = match &self.token {
            None => None,
            Some(secret) => {
                let mut value: AsciiMetadataValue =
                    MetadataValue::try_from(format!("Bearer {}", secret.expose())).map_err(|_| {
                        ClientError::Usage("the token holds characters a token cannot have".to_owned())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Credentials { authorization })
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(ClientError::file(path))
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What the service clients run over: a channel that adds the credentials.
pub type Transport = InterceptedService<Failover, Credentials>;

/// A connection to one cached server, with a client per service.
#[derive(Clone)]
pub struct Client {
    pub server: String,
    pub cas: CasClient<Transport>,
    pub go: GoCacheClient<Transport>,
    pub stats: StatsClient<Transport>,
    /// The whole-build cache (`cachectl go build`).
    pub builds: BuildsClient<Transport>,
    pub admin: AdminClient<Transport>,
    replicas: Failover,
}

impl Client {
    /// Connects to `server`, or to the first of a comma list of replicas that answers (the
    /// others take over if it stops answering).
    pub async fn connect(server: &str, options: &ConnectOptions) -> Result<Self> {
        let unreachable = |reason: String| ClientError::Unreachable { server: server.to_owned(), reason };
        let endpoints = options.endpoints(server, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
                .max_frame_size(MAX_FRAME_SIZE)
        })?;
        let replicas = Failover::connect(&endpoints).await.map_err(unreachable)?;
        Self::from_replicas(server, replicas, options)
    }

    /// Wraps a channel the caller made (e.g. a lazy one from [`ConnectOptions::endpoint`]).
    pub fn from_channel(server: &str, channel: Channel, options: &ConnectOptions) -> Result<Self> {
        Self::from_replicas(server, Failover::single(channel), options)
    }

    /// Wraps channels to the replicas of `server` (a comma list).
    pub fn from_replicas(server: &str, replicas: Failover, options: &ConnectOptions) -> Result<Self> {
        let credentials = options.credentials()?;
        let transport = InterceptedService::new(replicas.clone(), credentials);
        Ok(Self {
            server: server.to_owned(),
            cas: CasClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            go: GoCacheClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            stats: StatsClient::new(transport.clone()),
            admin: AdminClient::new(transport.clone()),
            builds: BuildsClient::new(transport)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            replicas,
        })
    }

    /// The same connections, each call carrying `token` instead: a runner agent acts for a
    /// lease with the lease's own credential, which dies with the lease, never with its own.
    pub fn with_token(&self, token: Secret) -> Result<Self> {
        let options = ConnectOptions { token: Some(token), ..ConnectOptions::default() };
        Self::from_replicas(&self.server, self.replicas.clone(), &options)
    }
}

/// The whole chain of an error, because tonic's top-level message ("transport error") alone
/// does not say what went wrong.
pub(crate) fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let options = ConnectOptions::with_token("cached_hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
        let mut credentials = options.credentials().unwrap();
        let request = credentials.call(tonic::Request::new(())).unwrap();
        let value = request.metadata().get("authorization").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer cached_hunter2");
        assert!(!format!("{:?}", request.metadata()).contains("hunter2"));
    }

    #[test]
    fn tls_options_need_https_and_come_in_pairs() {
        let ca = ConnectOptions { tls_ca: Some("/ca.pem".into()), ..ConnectOptions::default() };
        assert!(matches!(ca.endpoint("http://127.0.0.1:1"), Err(ClientError::Usage(_))));
        let half = ConnectOptions { tls_client_cert: Some("/c.pem".into()), ..ConnectOptions::default() };
        let err = half.endpoint("https://127.0.0.1:1").unwrap_err().to_string();
        assert!(err.contains("--tls-client-key"), "{err}");
        assert!(ConnectOptions::default().endpoint("https://127.0.0.1:1").is_ok());
        let err = ConnectOptions::with_token("a\u{7}b").credentials().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("token")));
    }

    #[test]
    fn a_token_goes_in_clear_only_to_loopback_unless_allowed() {
        let token = ConnectOptions::with_token("cached_hunter2");
        for server in
            ["http://127.0.0.1:7070", "http://[::1]:7070", "http://localhost:7070", "https://192.0.2.1"]
        {
            assert!(token.endpoint(server).is_ok(), "{server}");
        }
        let err = token.endpoint("http://192.0.2.1:7070").unwrap_err();
        assert!(matches!(err, ClientError::Usage(_)));
        let err = err.to_string();
        assert!(err.contains("192.0.2.1 is not a loopback address"), "{err}");
        assert!(err.contains(ALLOW_INSECURE_TOKEN) && err.contains("https://"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            ConnectOptions::default().endpoint("http://192.0.2.1:7070").is_ok(),
            "no token, nothing to leak"
        );
        let allowed = ConnectOptions { allow_insecure_token: true, ..token.clone() };
        assert!(allowed.endpoint("http://192.0.2.1:7070").is_ok());

        // A name is resolved: loopback only if every address is.
        let resolved = |ips: &'static [&'static str]| {
            move |_: &str, port: u16| {
                Ok(ips.iter().map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), port)).collect())
            }
        };
        let server = "http://cache.test:7070";
        let pinned = token.check_cleartext(server, "cache.test", Some(7070), resolved(&["127.0.0.1", "::1"]));
        assert_eq!(pinned.unwrap(), Some("127.0.0.1:7070".parse().unwrap()));
        let err = token
            .check_cleartext(server, "cache.test", Some(7070), resolved(&["127.0.0.1", "10.0.0.7"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.test is not a loopback address"), "{err}");
        let err = token
            .check_cleartext(server, "cache.test", None, |_, _| Err(std::io::Error::other("NXDOMAIN")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot resolve cache.test: NXDOMAIN"), "{err}");
    }

    /// A name checked to be on loopback is connected to at the address the check found: a
    /// resolver asked again could answer with another machine (DNS rebinding), and the token
    /// would go there in clear. `rebind.test` resolves nowhere, so a second lookup would fail.
    #[tokio::test]
    async fn a_name_checked_to_be_loopback_is_connected_to_where_the_check_found_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let token = ConnectOptions::with_token("cached_hunter2");
        let endpoint = token
            .endpoint_resolving(&format!("http://rebind.test:{}", address.port()), move |_, _| {
                Ok(vec![address])
            })
            .unwrap();
        let _connecting = crate::task::spawn_guarded("connect", async move { endpoint.connect().await });
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
        assert!(accepted.is_ok_and(|accepted| accepted.is_ok()), "nothing connected to {address}");
    }

    #[test]
    fn token_files_hold_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "cached_abc\n").unwrap();
        assert_eq!(ConnectOptions::read_token_file(&path).unwrap().expose(), "cached_abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(ConnectOptions::read_token_file(&path).is_err());
        assert!(ConnectOptions::read_token_file(&dir.path().join("missing")).is_err());
        let from_file = ConnectOptions::token_from_flags(None, Some(&path));
        assert!(from_file.is_err(), "the file holds no token now");
        let both = ConnectOptions::token_from_flags(Some("cached_abc"), Some(&path)).unwrap_err();
        assert!(both.to_string().contains("one way"), "{both}");
        let flag = ConnectOptions::token_from_flags(Some(" cached_abc\n"), None).unwrap();
        assert_eq!(flag.map(|secret| secret.expose().to_owned()).as_deref(), Some("cached_abc"));
        assert!(ConnectOptions::token_from_flags(None, None).unwrap().is_none());
    }
}
