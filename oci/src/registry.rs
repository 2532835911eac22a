//! A client of the OCI distribution API: blob HEAD, cross-repository mount, monolithic or
//! chunked upload (with the acknowledged Range checked), manifest HEAD/GET/PUT, and the
//! basic or bearer authentication registries ask for. Plain HTTP is used for loopback
//! registries and when asked for; TLS (rustls, system roots) otherwise. Credentials go only
//! where [`origin`](super::origin) allows.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::auth::{self, Challenge, Credentials, Found};
use super::digest::{HashingWriter, Sha256};
use super::error::{OciError, Result};
use super::manifest::ACCEPT_MANIFESTS;
use super::origin::{self, MAX_REDIRECTS};
use super::reference::{api_host, is_loopback_host};

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
/// Manifests and configs are small; anything larger is refused rather than buffered.
const MAX_DOCUMENT: u64 = 8 << 20;
const READ_BUFFER: usize = 256 << 10;
/// Retries of a read after a transport error or an overloaded registry (0.25 s, then 1 s).
const READ_RETRIES: u32 = 2;

#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Plain HTTP for every registry (loopback registries always get it).
    pub insecure: bool,
    /// The docker config.json with credentials; `None` for `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config: Option<std::path::PathBuf>,
    pub chunk_size: u64,
    /// Blob uploads in flight at once.
    pub parallelism: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self { insecure: false, docker_config: None, chunk_size: DEFAULT_CHUNK_SIZE, parallelism: 4 }
    }
}

/// What was sent to a registry, for reports and for tests that check nothing was wasted.
#[derive(Debug, Default)]
pub struct PushCounters {
    pub requests: AtomicU64,
    pub blob_bytes_uploaded: AtomicU64,
    pub blobs_uploaded: AtomicU64,
    pub blobs_present: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub manifests_put: AtomicU64,
    pub manifests_present: AtomicU64,
}

/// A plain copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushCounts {
    pub requests: u64,
    pub blob_bytes_uploaded: u64,
    pub blobs_uploaded: u64,
    pub blobs_present: u64,
    pub blobs_mounted: u64,
    pub manifests_put: u64,
    pub manifests_present: u64,
}

impl PushCounters {
    pub fn snapshot(&self) -> PushCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PushCounts {
            requests: get(&self.requests),
            blob_bytes_uploaded: get(&self.blob_bytes_uploaded),
            blobs_uploaded: get(&self.blobs_uploaded),
            blobs_present: get(&self.blobs_present),
            blobs_mounted: get(&self.blobs_mounted),
            manifests_put: get(&self.manifests_put),
            manifests_present: get(&self.manifests_present),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Result of a mount attempt: done, or an ordinary upload session to use instead.
/// Where a mounted blob comes from.
#[derive(Clone, Copy, Debug)]
pub enum MountSource<'a> {
    /// Another repository on the same registry.
    Repository(&'a str),
    /// cached's CAS, by its digest there: a cached registry links it only if its own SHA-256 of
    /// those bytes is the digest asked for; other registries see a mount without a source and
    /// start an ordinary session.
    Cas(&'a proto::Digest),
}

pub enum Mount {
    Mounted,
    Session(Url),
}

enum Auth {
    None,
    /// The `Authorization` header to send: `Basic ...` or `Bearer <token>`.
    Header(String),
}

pub struct Registry {
    http: reqwest::Client,
    base: Url,
    /// `host[:port]` as written in references, for messages and credentials.
    pub host: String,
    found: Found,
    auth: Mutex<Auth>,
    /// `repository:<name>:<actions>` scopes asked of a token service.
    scopes: Vec<String>,
    chunk_size: u64,
    pub counters: Arc<PushCounters>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The whole chain of an error: reqwest's top level ("error sending request") alone says little.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

impl Registry {
    /// Connects to `host` and authenticates for `repositories` (each `(name, actions)`, like
    /// `("team/app", "pull,push")`).
    pub async fn connect(
        host: &str,
        repositories: &[(String, &str)],
        options: &RegistryOptions,
    ) -> Result<Self> {
        // Which provider does not matter to us; ring builds fastest. Another caller may have
        // installed one already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let loopback = is_loopback_host(host);
        let scheme = if options.insecure || loopback { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", api_host(host)))
            .map_err(|err| OciError::reference(host, format!("not a usable host: {err}")))?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("cachectl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .tcp_nodelay(true)
            // Redirects are followed by hand (`follow`): reqwest's own policy would resend a
            // POST body, an identity token, to wherever a 307 points.
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_rustls();
        if loopback {
            builder = builder.no_proxy();
        }
        let http =
            builder.build().map_err(|err| OciError::Registry(format!("HTTP client: {}", chain(&err))))?;

        let config_path = auth::docker_config_path(options.docker_config.as_deref());
        let registry_name = host.to_owned();
        let found = cached_client::task::spawn_blocking("read-credentials", move || {
            auth::credentials_for(&config_path, &registry_name)
        })
        .await
        .map_err(|err| OciError::Credentials(format!("reading credentials failed: {err}")))??;
        let scopes =
            repositories.iter().map(|(name, actions)| format!("repository:{name}:{actions}")).collect();
        let registry = Self {
            http,
            base,
            host: host.to_owned(),
            found,
            auth: Mutex::new(Auth::None),
            scopes,
            chunk_size: options.chunk_size.max(1),
            counters: Arc::new(PushCounters::default()),
        };
        registry.ping().await?;
        Ok(registry)
    }

    /// `GET /v2/`: learns how the registry wants us to authenticate, and gets the token or
    /// header ready, so no upload is ever sent only to be refused.
    async fn ping(&self) -> Result<()> {
        let url = self.url("v2/");
        let what = format!("GET {url}");
        let response = self.follow(&Method::GET, &url, &what, &|r| r).await?;
        match response.status() {
            status if status.is_success() => Ok(()),
            // Credentials are checked by the first real request: a token scoped to a
            // repository need not open /v2/ itself on every registry.
            StatusCode::UNAUTHORIZED => {
                self.check_challenger(&response, &what)?;
                self.authenticate(&response, None).await
            }
            _ => Err(self.error("GET /v2/", response).await),
        }
    }

    fn url(&self, path: &str) -> Url {
        // Paths we build are always valid relative URLs.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn auth_header(&self) -> Option<String> {
        match &*self.auth.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Auth::None => None,
            Auth::Header(header) => Some(header.clone()),
        }
    }

    async fn raw_send(&self, request: RequestBuilder, what: &str) -> Result<Response> {
        add(&self.counters.requests, 1);
        request.send().await.map_err(|err| {
            let mut message = format!("cannot reach registry {} ({what}): {}", self.host, chain(&err));
            if self.base.scheme() == "https" && message.contains("InvalidContentType") {
                message.push_str("\n  the registry seems to speak plain HTTP; pass --insecure to allow that");
            }
            OciError::Registry(message)
        })
    }

    /// Sends a request with our credentials; on a 401, authenticates for the scope the
    /// challenge names and tries once more. Reads (HEAD, GET) are also retried after a
    /// transport error or a 429/502/503/504, with backoff. `build` must be repeatable.
    async fn send(
        &self,
        method: Method,
        url: Url,
        what: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let idempotent = method == Method::HEAD || method == Method::GET;
        let mut reauthenticated = false;
        let mut retries = 0;
        loop {
            let result = self.follow(&method, &url, what, &build).await;
            let transient = match &result {
                Err(_) => true,
                Ok(response) => matches!(
                    response.status(),
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
            };
            if idempotent && transient && retries < READ_RETRIES {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(250 * 4u64.pow(retries - 1))).await;
                continue;
            }
            let response = result?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            self.check_challenger(&response, what)?;
            if reauthenticated {
                return Err(self.refused(what, response).await);
            }
            reauthenticated = true;
            let scope = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(auth::parse_challenge)
                .and_then(|c| c.params.get("scope").cloned());
            self.authenticate(&response, scope).await?;
        }
    }

    /// Sends one request, and for a read (HEAD, GET) follows its redirects. Credentials go
    /// only to the registry's own origin, and never again once a redirect has left it (the
    /// other origin chose every later hop): a blob redirected to a CDN or a pre-signed URL is
    /// fetched without them, and so is an upload session the registry placed elsewhere.
    async fn follow(
        &self,
        method: &Method,
        url: &Url,
        what: &str,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let follows = *method == Method::GET || *method == Method::HEAD;
        let mut url = url.clone();
        let mut left = false;
        for _ in 0..=MAX_REDIRECTS {
            left |= !origin::same_origin(&url, &self.base);
            let mut request = build(self.http.request(method.clone(), url.clone()));
            if !left && let Some(header) = self.auth_header() {
                request = request.header(header::AUTHORIZATION, header);
            }
            let response = self.raw_send(request, what).await?;
            if !follows {
                return Ok(response);
            }
            let next = origin::redirect_target(&response).map_err(|reason| {
                OciError::Registry(format!("registry {}: {what}: {} answered {reason}", self.host, url))
            })?;
            match next {
                Some(next) => url = next,
                None => return Ok(response),
            }
        }
        Err(OciError::Registry(format!(
            "registry {}: {what}: more than {MAX_REDIRECTS} redirects (the last to {url})",
            self.host
        )))
    }

    /// A 401 from another origin than the registry's (where a redirect or an upload session
    /// led) is an error: its challenge could name any token service, and the registry's
    /// credentials are not for it.
    fn check_challenger(&self, response: &Response, what: &str) -> Result<()> {
        if origin::same_origin(response.url(), &self.base) {
            return Ok(());
        }
        Err(OciError::Credentials(format!(
            "registry {}: {what}: {}, another origin than the registry's ({}), answered {}; the \
             registry's credentials go only to the registry and its token service, so cachectl \
             does not authenticate there",
            self.host,
            origin::show(response.url()),
            origin::show(&self.base),
            response.status()
        )))
    }

    /// Sets up credentials for the challenge in `response`.
    async fn authenticate(&self, response: &Response, extra_scope: Option<String>) -> Result<()> {
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(auth::parse_challenge)
            .ok_or_else(|| {
                OciError::Registry(format!(
                    "registry {} answered 401 without a WWW-Authenticate challenge",
                    self.host
                ))
            })?;
        let auth = match challenge.scheme.as_str() {
            "basic" => match &self.found.credentials {
                Credentials::Basic { username, password } => {
                    Auth::Header(auth::basic_header(username, password))
                }
                Credentials::Anonymous => {
                    return Err(OciError::Credentials(format!(
                        "registry {} requires a user name and password, and there are none for it ({}); \
                         run `docker login {}` or add them to config.json",
                        self.host, self.found.origin, self.host
                    )));
                }
                Credentials::IdentityToken(_) => {
                    return Err(OciError::Credentials(format!(
                        "registry {} asks for basic authentication, but {} holds an identity token",
                        self.host, self.found.origin
                    )));
                }
            },
            "bearer" => {
                let mut scopes = self.scopes.clone();
                if let Some(scope) = extra_scope.filter(|s| !scopes.contains(s)) {
                    scopes.push(scope);
                }
                let token = self.fetch_token(&challenge, &scopes).await?;
                Auth::Header(format!("Bearer {token}"))
            }
            other => {
                return Err(OciError::Registry(format!(
                    "registry {} asks for {other:?} authentication, which is not supported (basic and bearer are)",
                    self.host
                )));
            }
        };
        *self.auth.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = auth;
        Ok(())
    }

    /// Gets a bearer token from the challenge's realm for `scopes`.
    async fn fetch_token(&self, challenge: &Challenge, scopes: &[String]) -> Result<String> {
        let realm = challenge.params.get("realm").ok_or_else(|| {
            OciError::Registry(format!("registry {}'s bearer challenge names no realm", self.host))
        })?;
        let mut url = Url::parse(realm).map_err(|err| {
            OciError::Registry(format!("registry {}'s token realm {realm:?} is not a URL: {err}", self.host))
        })?;
        // Anonymous token requests carry nothing to protect.
        if self.found.credentials != Credentials::Anonymous {
            origin::check_realm(&self.base, &url).map_err(|reason| {
                OciError::Credentials(format!(
                    "registry {} names the token service {realm}, which gets no credentials: {reason}",
                    self.host
                ))
            })?;
        }
        let service = challenge.params.get("service");
        let request = match &self.found.credentials {
            Credentials::IdentityToken(token) => {
                let mut form = Url::parse("form:").unwrap_or_else(|_| url.clone());
                {
                    let mut pairs = form.query_pairs_mut();
                    pairs.append_pair("grant_type", "refresh_token").append_pair("refresh_token", token);
                    pairs.append_pair("client_id", "cachectl");
                    if let Some(service) = service {
                        pairs.append_pair("service", service);
                    }
                    pairs.append_pair("scope", &scopes.join(" "));
                }
                let body = form.query().unwrap_or_default().to_owned();
                self.http
                    .post(url.clone())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
            }
            credentials => {
                {
                    let mut pairs = url.query_pairs_mut();
                    if let Some(service) = service {
                        pairs.append_pair("service", service);
                    }
                    for scope in scopes {
                        pairs.append_pair("scope", scope);
                    }
                }
                let request = self.http.get(url.clone());
                match credentials {
                    Credentials::Basic { username, password } => request.basic_auth(username, Some(password)),
                    _ => request,
                }
            }
        };
        let response = self.raw_send(request, &format!("token from {realm}")).await?;
        let status = response.status();
        if let Ok(Some(next)) = origin::redirect_target(&response) {
            return Err(OciError::Credentials(format!(
                "the token service of registry {} ({realm}) redirected to {next}; cachectl does not \
                 follow a token service's redirects, which would carry the credentials there",
                self.host
            )));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(OciError::Credentials(format!(
                "the token service of registry {} ({realm}) refused {}: {status}",
                self.host,
                self.found.describe()
            )));
        }
        if !status.is_success() {
            return Err(self.error(&format!("token from {realm}"), response).await);
        }
        let body = response.bytes().await.map_err(|err| OciError::Registry(chain(&err)))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|err| {
            OciError::Registry(format!("registry {}'s token service answered no token: {err}", self.host))
        })?;
        answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
            OciError::Registry(format!("registry {}'s token service answered an empty token", self.host))
        })
    }

    async fn refused(&self, what: &str, response: Response) -> OciError {
        let status = response.status();
        let detail = error_text(response).await;
        OciError::Credentials(format!(
            "registry {} refused the credentials ({}) for {what}: {status}{detail}",
            self.host,
            self.found.describe()
        ))
    }

    async fn error(&self, what: &str, response: Response) -> OciError {
        let status = response.status();
        // Another origin (a CDN, a pre-signed URL that expired) was sent no credentials.
        let ours = origin::same_origin(response.url(), &self.base);
        if ours && (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN) {
            return self.refused(what, response).await;
        }
        let at = if ours { String::new() } else { format!(" from {}", origin::show(response.url())) };
        let detail = error_text(response).await;
        OciError::Registry(format!("registry {}: {what}: {status}{at}{detail}", self.host))
    }

    /// HEAD on a blob: is it in `repository`?
    pub async fn blob_exists(&self, repository: &str, digest: &Sha256) -> Result<bool> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let what = format!("HEAD blob {digest} in {repository}");
        let response = self.send(Method::HEAD, url, &what, |r| r).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error(&what, response).await),
        }
    }

    /// Asks the registry to mount `digest` into `repository` from `source`.
    pub async fn mount(&self, repository: &str, digest: &Sha256, source: MountSource<'_>) -> Result<Mount> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let (parameter, value, from) = match source {
            MountSource::Repository(from) => ("from", from.to_owned(), from.to_owned()),
            MountSource::Cas(cas) => ("cas", cas.to_string(), "the CAS".to_owned()),
        };
        url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair(parameter, &value);
        let what = format!("mount {digest} from {from} into {repository}");
        let response = self.send(Method::POST, url, &what, |r| r.header(header::CONTENT_LENGTH, 0)).await?;
        match response.status() {
            StatusCode::CREATED => {
                add(&self.counters.blobs_mounted, 1);
                Ok(Mount::Mounted)
            }
            // The registry could not mount and started an ordinary upload session instead.
            StatusCode::ACCEPTED => Ok(Mount::Session(self.location(&response, &what)?)),
            _ => Err(self.error(&what, response).await),
        }
    }

    /// Starts an upload session.
    pub async fn start_upload(&self, repository: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let what = format!("start an upload to {repository}");
        let response = self.send(Method::POST, url, &what, |r| r.header(header::CONTENT_LENGTH, 0)).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.error(&what, response).await);
        }
        self.location(&response, &what)
    }

    fn location(&self, response: &Response, what: &str) -> Result<Url> {
        let location =
            response.headers().get(header::LOCATION).and_then(|h| h.to_str().ok()).ok_or_else(|| {
                OciError::Registry(format!("registry {}: {what}: answer has no Location", self.host))
            })?;
        // The Location may be relative and may carry a query string.
        response.url().join(location).map_err(|err| {
            OciError::Registry(format!("registry {}: {what}: bad Location {location:?}: {err}", self.host))
        })
    }

    /// Uploads the file at `path` (holding `digest`, `size` bytes) through `session`: one PUT
    /// when it is at most the chunk size, else PATCH chunks whose acknowledged Range is
    /// checked after each, then the closing PUT with the digest of the whole blob.
    pub async fn upload(&self, session: Url, digest: &Sha256, size: u64, path: &Path) -> Result<()> {
        let what = format!("upload {digest}");
        let mut location = session;
        let mut chunk_size = self.chunk_size;
        if size > chunk_size {
            let mut offset = 0u64;
            while offset < size {
                let length = chunk_size.min(size - offset);
                let end = offset + length - 1;
                let url = location.clone();
                let response = self
                    .send(Method::PATCH, url, &what, |r| {
                        r.header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_RANGE, format!("{offset}-{end}"))
                            .header(header::CONTENT_LENGTH, length)
                            .body(file_body(path, offset, length))
                    })
                    .await?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(self.error(&format!("{what}: PATCH bytes {offset}-{end}"), response).await);
                }
                let range = response.headers().get(header::RANGE).and_then(|h| h.to_str().ok()).unwrap_or("");
                if range != format!("0-{end}") && range != format!("bytes=0-{end}") {
                    return Err(OciError::Registry(format!(
                        "registry {}: {what}: after sending bytes {offset}-{end} the registry holds {range:?}, \
                         not 0-{end}; giving up rather than pushing a corrupt blob",
                        self.host
                    )));
                }
                if let Some(min) = min_chunk(response.headers()) {
                    chunk_size = chunk_size.max(min);
                }
                location = self.location(&response, &what)?;
                add(&self.counters.blob_bytes_uploaded, length);
                offset += length;
            }
        }
        location.query_pairs_mut().append_pair("digest", &digest.to_string());
        let monolithic = size <= self.chunk_size;
        let response = self
            .send(Method::PUT, location, &what, |r| {
                let r = r.header(header::CONTENT_TYPE, "application/octet-stream");
                if monolithic {
                    r.header(header::CONTENT_LENGTH, size).body(file_body(path, 0, size))
                } else {
                    r.header(header::CONTENT_LENGTH, 0)
                }
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.error(&format!("{what}: closing PUT"), response).await);
        }
        check_digest_header(response.headers(), digest, &self.host, &what)?;
        if monolithic {
            add(&self.counters.blob_bytes_uploaded, size);
        }
        add(&self.counters.blobs_uploaded, 1);
        Ok(())
    }

    /// HEAD on a manifest: its digest when the registry has `reference` (a tag or digest).
    pub async fn manifest_digest(&self, repository: &str, reference: &str) -> Result<Option<Sha256>> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let what = format!("HEAD manifest {repository}:{reference}");
        let response =
            self.send(Method::HEAD, url, &what, |r| r.header(header::ACCEPT, ACCEPT_MANIFESTS)).await?;
        match response.status() {
            StatusCode::OK => Ok(response
                .headers()
                .get("docker-content-digest")
                .and_then(|h| h.to_str().ok())
                .and_then(|d| d.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.error(&what, response).await),
        }
    }

    /// PUTs a manifest or index under `reference` (a digest or tag), exactly these bytes.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let what = format!("PUT manifest {repository}:{reference}");
        let response = self
            .send(Method::PUT, url, &what, |r| r.header(header::CONTENT_TYPE, media_type).body(bytes.clone()))
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.error(&what, response).await);
        }
        check_digest_header(response.headers(), &Sha256::of(bytes), &self.host, &what)?;
        add(&self.counters.manifests_put, 1);
        Ok(())
    }

    /// GETs a manifest or index: its bytes and media type. A digest reference is verified.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<(Vec<u8>, String)> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let what = format!("GET manifest {repository}:{reference}");
        let response =
            self.send(Method::GET, url, &what, |r| r.header(header::ACCEPT, ACCEPT_MANIFESTS)).await?;
        if !response.status().is_success() {
            return Err(self.error(&what, response).await);
        }
        let media_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_owned())
            .unwrap_or_default();
        let bytes = self.read_small(response, &what).await?;
        if let Ok(expected) = reference.parse::<Sha256>()
            && Sha256::of(&bytes) != expected
        {
            return Err(OciError::Invalid(format!(
                "registry {}: {what}: the bytes hash to {}, not to the digest asked for",
                self.host,
                Sha256::of(&bytes)
            )));
        }
        Ok((bytes, media_type))
    }

    /// GETs a small blob (a config), verified.
    pub async fn get_blob(&self, repository: &str, digest: &Sha256) -> Result<Vec<u8>> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let what = format!("GET blob {digest} from {repository}");
        let response = self.send(Method::GET, url, &what, |r| r).await?;
        if !response.status().is_success() {
            return Err(self.error(&what, response).await);
        }
        let bytes = self.read_small(response, &what).await?;
        if Sha256::of(&bytes) != *digest {
            return Err(OciError::Invalid(format!(
                "registry {}: {what}: the bytes do not match the digest",
                self.host
            )));
        }
        Ok(bytes)
    }

    /// Downloads a blob into `dest`, which appears only once its digest checked out.
    pub async fn download_blob(&self, repository: &str, digest: &Sha256, dest: &Path) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let what = format!("GET blob {digest} from {repository}");
        let mut response = self.send(Method::GET, url, &what, |r| r).await?;
        if !response.status().is_success() {
            return Err(self.error(&what, response).await);
        }
        let dir = dest.parent().unwrap_or_else(|| Path::new("."));
        let temp = tempfile::NamedTempFile::new_in(dir).map_err(OciError::file(dir))?;
        let mut writer = HashingWriter::new(std::io::BufWriter::new(temp));
        while let Some(chunk) =
            response.chunk().await.map_err(|err| OciError::Registry(format!("{what}: {}", chain(&err))))?
        {
            std::io::Write::write_all(&mut writer, &chunk).map_err(OciError::file(dir))?;
        }
        let (buffered, actual, _, _) = writer.finish();
        if actual != *digest {
            return Err(OciError::Invalid(format!(
                "registry {}: {what}: the bytes hash to {actual}",
                self.host
            )));
        }
        let temp = buffered.into_inner().map_err(|err| OciError::file(dir)(err.into_error()))?;
        temp.persist(dest).map_err(|err| OciError::file(dest)(err.error))?;
        Ok(())
    }

    async fn read_small(&self, mut response: Response, what: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|err| OciError::Registry(format!("{what}: {}", chain(&err))))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_DOCUMENT {
                return Err(OciError::Invalid(format!(
                    "registry {}: {what}: larger than {MAX_DOCUMENT} bytes",
                    self.host
                )));
            }
        }
        Ok(bytes)
    }
}

fn min_chunk(headers: &HeaderMap) -> Option<u64> {
    headers.get("oci-chunk-min-length").and_then(|h| h.to_str().ok()).and_then(|v| v.parse().ok())
}

fn check_digest_header(headers: &HeaderMap, expected: &Sha256, host: &str, what: &str) -> Result<()> {
    match headers.get("docker-content-digest").and_then(|h| h.to_str().ok()) {
        Some(text) if text != expected.to_string() => Err(OciError::Registry(format!(
            "registry {host}: {what}: the registry stored digest {text}, expected {expected}"
        ))),
        _ => Ok(()),
    }
}

/// `": CODE: message (detail)"` from a distribution error body, or the start of the body.
async fn error_text(response: Response) -> String {
    let body = response.bytes().await.unwrap_or_default();
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body)
        && !parsed.errors.is_empty()
    {
        return parsed
            .errors
            .iter()
            .map(|e| {
                let detail =
                    e.detail.as_ref().filter(|d| !d.is_null()).map(|d| format!(" ({d})")).unwrap_or_default();
                format!(": {}: {}{detail}", e.code, e.message)
            })
            .collect();
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() { String::new() } else { format!(": {}", text.chars().take(300).collect::<String>()) }
}

/// A request body streaming `length` bytes of the file from `offset`.
fn file_body(path: &Path, offset: u64, length: u64) -> reqwest::Body {
    let path = path.to_owned();
    let stream = futures::stream::unfold(
        (None::<tokio::fs::File>, length, path),
        move |(file, left, path)| async move {
            if left == 0 {
                return None;
            }
            let mut file = match file {
                Some(file) => file,
                None => match open_at(&path, offset).await {
                    Ok(file) => file,
                    Err(err) => return Some((Err(err), (None, 0, path))),
                },
            };
            let mut buffer = vec![0u8; READ_BUFFER.min(left as usize)];
            match file.read(&mut buffer).await {
                Ok(0) => Some((
                    Err(std::io::Error::other(format!("{} is shorter than expected", path.display()))),
                    (None, 0, path),
                )),
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok(Bytes::from(buffer)), (Some(file), left - n as u64, path)))
                }
                Err(err) => Some((Err(err), (None, 0, path))),
            }
        },
    );
    reqwest::Body::wrap_stream(stream)
}

async fn open_at(path: &Path, offset: u64) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    Ok(file)
}
