//! The one tower layer every gRPC call passes: authentication, scope, rate, upload slots,
//! deadlines. Refusals are answered here, before any handler runs or any body is read.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::body::Body;

use super::Grant;
use super::held::{HeldBody, HeldBytes};
use super::idle::IdleBody;
use super::lease::{CACHE_TOKEN_PREFIX, LeaseKeys, LiveLeases};
use super::open::{Holding, OpenStreams};
use super::rate::RateLimiter;
use super::refusals::{EVERY, RefusalLog};
use super::scopes::{self, Access, Method, Scope};
use super::slots::{CAS_STREAMS, SlotKind, TokenSlot, TokenSlots, WATCH};
use super::standing::{Secret, Standing};
use super::tokens::{TokenSpec, TokenTable};
use crate::caller::{self, ThreadShares};
use crate::config::Config;
use crate::error::Error;

/// Everything the layer checks, built from the configuration; the tokens are replaced whole
/// when SIGHUP reloads them (`auth::reload`).
pub struct AuthSettings {
    /// A call checks against the table it started with.
    tokens: RwLock<Arc<TokenTable>>,
    /// Lease credentials, once the scheduler is open.
    leases: OnceLock<Leases>,
    default_rate: Option<u32>,
    anonymous: Arc<Grant>,
    request_timeout: Duration,
    idle_timeout: Duration,
    min_transfer_rate: u64,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    /// Bumped by every reload, so streaming calls check their token again ([`Standing`]).
    reloads: watch::Sender<u64>,
    /// Health and reflection streams, which no token bounds.
    open: Arc<OpenStreams>,
    /// Per-token shares of long-lived slots (`auth::slots`).
    watches: Arc<TokenSlots>,
    token_uploads: Arc<TokenSlots>,
    token_streams: Arc<TokenSlots>,
    /// Bytes of unary requests each token has in flight (`max_request_bytes_per_token`).
    request_bytes: Arc<HeldBytes>,
    /// Per-token shares of the blocking thread pool (`max_blocking_threads_per_token`).
    threads: ThreadShares,
    refusals: RefusalLog,
}

impl AuthSettings {
    pub fn new(config: &Config) -> Self {
        Self::with_tokens(&config.tokens, config)
    }

    fn with_tokens(tokens: &[TokenSpec], config: &Config) -> Self {
        let limits = &config.limits;
        Self {
            tokens: RwLock::new(Arc::new(TokenTable::new(tokens, limits.rate_limit))),
            leases: OnceLock::new(),
            default_rate: limits.rate_limit,
            anonymous: Arc::new(Grant::anonymous()),
            request_timeout: limits.request_timeout,
            idle_timeout: limits.idle_timeout,
            min_transfer_rate: limits.min_transfer_rate,
            uploads: Arc::new(Semaphore::new(limits.max_concurrent_uploads)),
            max_uploads: limits.max_concurrent_uploads,
            reloads: watch::Sender::new(0),
            open: Arc::default(),
            watches: Arc::new(TokenSlots::new(SlotKind::Watches, limits.max_watches_per_token)),
            token_uploads: Arc::new(TokenSlots::of_pool(
                SlotKind::Uploads,
                limits.max_uploads_per_token,
                limits.max_concurrent_uploads,
            )),
            token_streams: Arc::new(TokenSlots::of_pool(
                SlotKind::Streams,
                limits.max_streams_per_token,
                limits.max_concurrent_streams,
            )),
            request_bytes: HeldBytes::new(limits.max_request_bytes_per_token),
            threads: ThreadShares::new(limits.max_blocking_threads_per_token),
            refusals: RefusalLog::default(),
        }
    }

    /// Who a call of `grant` works for: a token with limits of its own holds its share of the
    /// blocking threads (`crate::caller`). Lease credentials are a token each, so the leases of
    /// one submitter's jobs share one share rather than each taking a whole one.
    pub fn caller(&self, grant: &Grant) -> caller::Caller {
        let token = grant.token.as_str();
        if !Grant::has_own_limits(token) {
            return caller::Caller::unbounded(Arc::from(token));
        }
        self.threads.caller_sharing(token, &grant.budget())
    }

    fn table(&self) -> Arc<TokenTable> {
        Arc::clone(&self.tokens.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether callers need a token (otherwise everyone is `anonymous`).
    pub fn requires_tokens(&self) -> bool {
        !self.table().is_empty()
    }

    pub fn token_count(&self) -> usize {
        self.table().len()
    }

    /// Accepts the cache credentials of leases from now on: `keys` checks them, `live` says
    /// whether their lease is still current. Minting follows whether the server has tokens.
    pub fn attach_leases(&self, keys: Arc<LeaseKeys>, live: Arc<dyn LiveLeases>) {
        keys.set_minting(self.requires_tokens());
        let leases =
            Leases { keys, live, limiters: DashMap::new(), prune_at: AtomicUsize::new(PRUNE_LIMITERS_AT) };
        if self.leases.set(leases).is_err() {
            tracing::warn!("lease credentials attached twice; keeping the first");
        }
    }

    /// Serves `specs` from now on (calls already admitted keep their grants). Returns the
    /// names of the tokens added and removed.
    pub fn replace_tokens(&self, specs: &[TokenSpec]) -> (Vec<String>, Vec<String>) {
        let table = Arc::new(TokenTable::new(specs, self.default_rate));
        if let Some(leases) = self.leases.get() {
            leases.keys.set_minting(!specs.is_empty());
        }
        let old = std::mem::replace(&mut *self.tokens.write().unwrap_or_else(PoisonError::into_inner), table);
        self.reloads.send_modify(|generation| *generation += 1);
        let before: BTreeSet<&str> = old.names().collect();
        let after: BTreeSet<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        let only = |these: &BTreeSet<&str>, those: &BTreeSet<&str>| {
            these.difference(those).map(|name| (*name).to_owned()).collect()
        };
        (only(&after, &before), only(&before, &after))
    }

    /// Whether a call admitted with `secret` and `grant` for `scope` may go on under the tokens
    /// served now. Lease credentials are left to their lease, which ends on its own.
    pub(super) fn recheck(&self, secret: Option<&Secret>, grant: &Grant, scope: Scope) -> Result<(), Error> {
        let tokens = self.table();
        if tokens.is_empty() {
            return Ok(());
        }
        let Some(Secret(secret)) = secret else {
            return Err(Error::Unauthenticated(
                "this server requires a token since its tokens were reloaded; reconnect with one".to_owned(),
            ));
        };
        if secret.starts_with(CACHE_TOKEN_PREFIX) {
            return Ok(());
        }
        let name = &grant.token;
        match tokens.verify(secret) {
            None => Err(Error::Unauthenticated(format!(
                "token `{name}` was revoked (the server's tokens were reloaded)"
            ))),
            Some(token) if !token.grant.scopes.contains(scope) => Err(Error::PermissionDenied(format!(
                "token `{name}` no longer has the `{scope}` scope (the server's tokens were reloaded)"
            ))),
            Some(token) if *token.grant != *grant => Err(Error::PermissionDenied(format!(
                "token `{name}` changed (the server's tokens were reloaded); reconnect to go on with its new grant"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// What a streaming call admitted with `grant` for `scope` is checked against on reloads,
    /// the ones after `reloads` was taken.
    fn standing<B>(
        self: &Arc<Self>,
        reloads: watch::Receiver<u64>,
        request: &http::Request<B>,
        grant: &Arc<Grant>,
        scope: Scope,
    ) -> Standing {
        let header = request.headers().get(http::header::AUTHORIZATION);
        let secret =
            header.and_then(|value| bearer(value.as_bytes())).map(|secret| Secret(secret.to_owned()));
        Standing { settings: Arc::clone(self), secret, grant: Arc::clone(grant), scope, reloads }
    }

    /// The grant of a caller outside gRPC (the registry's HTTP API) that presented `secret`,
    /// within its rate limit: the same tokens and lease credentials as gRPC, and `anonymous`
    /// when the server has no tokens. `peer` is for the audit log.
    pub fn grant_for_secret(&self, secret: Option<&str>, api: &str, peer: &str) -> Result<Arc<Grant>, Error> {
        let tokens = self.table();
        if tokens.is_empty() {
            return Ok(Arc::clone(&self.anonymous));
        }
        let Some(secret) = secret else {
            if let Some(unlogged) = self.refusals.admit(peer, "no token") {
                tracing::info!(target: "audit", api, peer, unlogged, "request without a token refused{EVERY}");
            }
            return Err(Error::Unauthenticated("this server requires a token".to_owned()));
        };
        let caller = self.authenticate_secret(&tokens, secret, api, peer)?;
        within_rate(caller)
    }

    /// Decides whether the call may run. What it returns is held for the whole call.
    fn admit<B>(&self, request: &http::Request<B>, method: &Method, scope: Scope) -> Result<Admitted, Error> {
        let api = crate::stats::api_name(request.uri().path());
        let tokens = self.table();
        let grant = if tokens.is_empty() {
            Arc::clone(&self.anonymous)
        } else {
            within_rate(self.authenticate(&tokens, request, &api)?)?
        };
        if !grant.scopes.contains(scope) {
            if let Some(unlogged) = self.refusals.admit(&peer(request), "scope denied") {
                tracing::warn!(target: "audit", token = %grant.token, api, scope = %scope, unlogged, "scope denied{EVERY}");
            }
            return Err(Error::PermissionDenied(format!(
                "token `{}` lacks the `{scope}` scope that {api} needs (it has: {})",
                grant.token, grant.scopes
            )));
        }
        let upload = if method.upload {
            Some(Arc::clone(&self.uploads).try_acquire_owned().map_err(|_| Error::Busy {
                message: format!(
                    "the server is already receiving {} uploads (max_concurrent_uploads); retry shortly",
                    self.max_uploads
                ),
                retry_after: POOL_RETRY,
            })?)
        } else {
            None
        };
        Ok(Admitted { grant, _upload: upload })
    }

    /// One of the token's CAS streams, for a stream served outside the gRPC layer (a registry
    /// blob download); none to take without tokens.
    pub fn stream_slot(&self, token: &str) -> Result<Option<TokenSlot>, Error> {
        if !Grant::has_own_limits(token) {
            return Ok(None);
        }
        self.token_streams.open(token).map(Some)
    }

    /// The token's shares of long-lived slots this call takes, held until its response body is
    /// dropped. Without tokens every caller is `anonymous`, one party: only its watches are
    /// capped, as they always were.
    fn token_slots(&self, method: &Method, grant: &Grant) -> Result<Vec<TokenSlot>, Error> {
        let token = grant.token.as_str();
        let shared = Grant::has_own_limits(token);
        let mut slots = Vec::new();
        // The leases of one submitter's jobs hold the pools together, as one token would.
        let holder = grant.budget();
        let holder = holder.as_str();
        if method.path == WATCH {
            slots.push(self.watches.open(holder)?);
        }
        if shared && method.upload {
            slots.push(self.token_uploads.open(holder)?);
        }
        if shared && CAS_STREAMS.contains(&method.path) {
            slots.push(self.token_streams.open(holder)?);
        }
        Ok(slots)
    }

    /// The caller of `request`: a configured token, or the cache credential of a live lease.
    fn authenticate<B>(
        &self,
        tokens: &TokenTable,
        request: &http::Request<B>,
        api: &str,
    ) -> Result<Caller, Error> {
        let header = request.headers().get(http::header::AUTHORIZATION);
        let Some(secret) = header.and_then(|value| bearer(value.as_bytes())) else {
            let peer = peer(request);
            if let Some(unlogged) = self.refusals.admit(&peer, "no token") {
                tracing::info!(target: "audit", api, peer, unlogged, "call without a token refused{EVERY}");
            }
            let reason = if header.is_some() {
                "the authorization header must be `Bearer <token>`"
            } else {
                "this server requires a token"
            };
            return Err(Error::Unauthenticated(format!(
                "{reason}: pass --token, --token-file or CACHED_TOKEN (from `cached token new`)"
            )));
        };
        self.authenticate_secret(tokens, secret, api, &peer(request))
    }

    /// The caller whose credential is `secret`: a configured token or a lease's.
    fn authenticate_secret(
        &self,
        tokens: &TokenTable,
        secret: &str,
        api: &str,
        peer: &str,
    ) -> Result<Caller, Error> {
        if secret.starts_with(CACHE_TOKEN_PREFIX) {
            return self.lease_caller(secret, peer, api);
        }
        let token = tokens.verify(secret).ok_or_else(|| {
            if let Some(unlogged) = self.refusals.admit(peer, "unknown token") {
                tracing::warn!(target: "audit", api, peer, unlogged, "unknown token refused{EVERY}");
            }
            Error::Unauthenticated(
                "the token is not known to this server (mistyped, revoked, or meant for another server)"
                    .to_owned(),
            )
        })?;
        Ok(Caller { grant: Arc::clone(&token.grant), limiter: token.limiter.clone() })
    }

    /// The build of a lease, if its credential is genuine, unexpired and its lease current.
    fn lease_caller(&self, credential: &str, peer: &str, api: &str) -> Result<Caller, Error> {
        let refuse = |reason: String| {
            if let Some(unlogged) = self.refusals.admit(peer, "lease credential") {
                tracing::warn!(target: "audit", api, peer, %reason, unlogged, "lease credential refused{EVERY}");
            }
            Error::Unauthenticated(reason)
        };
        let Some(leases) = self.leases.get() else {
            return Err(refuse(
                "this server does not accept lease credentials yet; retry shortly".to_owned(),
            ));
        };
        let claims = leases.keys.verify(credential, now_ms()).map_err(refuse)?;
        if !leases.live.is_live(&claims.lease) {
            return Err(refuse(format!(
                "the lease credential of {} is no longer valid: its lease ended (the task finished, was \
                 cancelled or requeued, or the agent stopped heartbeating); only the build of a current \
                 lease may use it",
                claims.lease.grant_name()
            )));
        }
        let grant = claims.grant();
        let limiter = self.default_rate.map(|rate| leases.limiter(&grant.budget(), rate));
        Ok(Caller { grant: Arc::new(grant), limiter })
    }
}

/// Who is calling, and the rate limit that applies.
struct Caller {
    grant: Arc<Grant>,
    limiter: Option<Arc<RateLimiter>>,
}

/// The caller's grant, unless it is over its rate limit.
fn within_rate(caller: Caller) -> Result<Arc<Grant>, Error> {
    if let Some(limiter) = &caller.limiter
        && let Err(wait) = limiter.check()
    {
        return Err(Error::Busy {
            message: format!(
                "{} is over its rate limit of {} requests per second (rate_limit); retry in {} ms",
                Grant::describe_budget(&caller.grant.budget()),
                limiter.rate(),
                wait.as_millis().max(1)
            ),
            retry_after: wait,
        });
    }
    Ok(caller.grant)
}

/// When a caller refused a place in a full pool (uploads, streams) may try again: most calls
/// holding one end within a second.
pub(crate) const POOL_RETRY: Duration = Duration::from_millis(500);

/// Limiters of lease credentials are dropped, for leases that ended, once this many exist.
const PRUNE_LIMITERS_AT: usize = 1024;

/// What the layer needs to accept lease credentials.
struct Leases {
    keys: Arc<LeaseKeys>,
    live: Arc<dyn LiveLeases>,
    /// One bucket per lease share ([`Grant::budget`]) at the server's `rate_limit`.
    limiters: DashMap<String, Arc<RateLimiter>>,
    prune_at: AtomicUsize,
}

impl Leases {
    fn limiter(&self, share: &str, rate: u32) -> Arc<RateLimiter> {
        if let Some(limiter) = self.limiters.get(share) {
            return Arc::clone(&limiter);
        }
        if self.limiters.len() >= self.prune_at.load(Ordering::Relaxed) {
            // Only buckets no call holds now go: a tenant whose calls all ended starts full.
            self.limiters.retain(|_, limiter| Arc::strong_count(limiter) > 1);
            self.prune_at.store(PRUNE_LIMITERS_AT.max(2 * self.limiters.len()), Ordering::Relaxed);
        }
        Arc::clone(
            &self.limiters.entry(share.to_owned()).or_insert_with(|| Arc::new(RateLimiter::per_second(rate))),
        )
    }
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The secret of `Bearer <secret>` (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, secret) = text.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

fn peer<B>(request: &http::Request<B>) -> String {
    peer_addr(request).map_or_else(|| "unknown".to_owned(), |addr| addr.to_string())
}

fn peer_addr<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    peer_addr_of(request.extensions())
}

/// The client's address, from what the transport attached to its request.
pub(super) fn peer_addr_of(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref))
        .and_then(TcpConnectInfo::remote_addr)
}

struct Admitted {
    grant: Arc<Grant>,
    _upload: Option<OwnedSemaphorePermit>,
}

fn refuse(err: Error) -> http::Response<Body> {
    tonic::Status::from(err).into_http()
}

/// Tower layer installed beside the metrics layer in `lib::run`.
#[derive(Clone)]
pub struct AuthLayer {
    settings: Arc<AuthSettings>,
}

impl AuthLayer {
    pub fn new(settings: Arc<AuthSettings>) -> Self {
        Self { settings }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, settings: Arc::clone(&self.settings) }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    settings: Arc<AuthSettings>,
}

impl<S, ResBody> tower::Service<http::Request<Body>> for Auth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = Arc::clone(&self.settings);
        let method = scopes::lookup(request.uri().path());
        let Access::Needs(scope) = method.access else {
            return open_call(inner, request, &method, settings);
        };
        // Before the token table is read: a reload landing between the two is seen as one
        // after it, so a stream admitted under a token just revoked is ended too.
        let reloads = settings.reloads.subscribe();
        let admitted = match settings.admit(&request, &method, scope) {
            Ok(admitted) => admitted,
            Err(err) => return Box::pin(async move { Ok(refuse(err)) }),
        };
        let slots = match settings.token_slots(&method, &admitted.grant) {
            Ok(slots) => slots,
            Err(err) => return Box::pin(async move { Ok(refuse(err)) }),
        };
        request.extensions_mut().insert(Arc::clone(&admitted.grant));
        if !method.unary {
            let standing = settings.standing(reloads, &request, &admitted.grant, scope);
            request.extensions_mut().insert(standing);
        }
        // Uploads must keep up min_transfer_rate too; other streams (heartbeats) send now and then.
        let min_rate = if method.upload { settings.min_transfer_rate } else { 0 };
        let pace = crate::conn::Pace { idle: settings.idle_timeout, min_rate };
        let held = method.unary && Grant::has_own_limits(&admitted.grant.token);
        let budget = admitted.grant.budget();
        let request = request.map(|body| {
            let body = IdleBody::new(body, pace);
            if held {
                Body::new(HeldBody::new(body, Arc::clone(&settings.request_bytes), &budget))
            } else {
                Body::new(body)
            }
        });
        // The handler, and what it spawns, is work for this token (`crate::caller`).
        let call = caller::scope_caller(Some(settings.caller(&admitted.grant)), inner.call(request));
        Box::pin(async move {
            let response = if method.unary {
                match tokio::time::timeout(settings.request_timeout, call).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(refuse(Error::DeadlineExceeded(format!(
                            "the call took longer than {} (request_timeout)",
                            humantime::format_duration(settings.request_timeout)
                        ))));
                    }
                }
            } else {
                call.await?
            };
            // A streaming upload's reply comes after its last byte, so the slot is held until
            // the upload is over.
            drop(admitted);
            Ok(if slots.is_empty() {
                response.map(Body::new)
            } else {
                response.map(|body| Body::new(Holding::new(body, slots)))
            })
        })
    }
}

/// A call to a service that needs no token (health, reflection). A unary one (Health/Check)
/// keeps to `request_timeout`; a stream holds one of the few open-service slots
/// (`auth::open`) for as long as it lasts, and its client must keep to `idle_timeout` while
/// it sends.
fn open_call<S, ResBody>(
    mut inner: S,
    request: http::Request<Body>,
    method: &Method,
    settings: Arc<AuthSettings>,
) -> BoxFuture<'static, Result<http::Response<Body>, S::Error>>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    let pace = crate::conn::Pace { idle: settings.idle_timeout, min_rate: 0 };
    if method.unary {
        let call = inner.call(request.map(|body| Body::new(IdleBody::new(body, pace))));
        return Box::pin(async move {
            match tokio::time::timeout(settings.request_timeout, call).await {
                Ok(response) => Ok(response?.map(Body::new)),
                Err(_) => Ok(refuse(Error::DeadlineExceeded(format!(
                    "the call took longer than {} (request_timeout)",
                    humantime::format_duration(settings.request_timeout)
                )))),
            }
        });
    }
    let slot = match settings.open.open(peer_addr(&request)) {
        Ok(slot) => slot,
        Err(err) => return Box::pin(async move { Ok(refuse(err)) }),
    };
    let call = inner.call(request.map(|body| Body::new(IdleBody::new(body, pace))));
    Box::pin(async move { Ok(call.await?.map(|body| Body::new(Holding::new(body, slot)))) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(&[0xff, b' ', b'a']), None);
    }

    /// Each lease credential counted as one more holder of the stream and upload pools, and
    /// every other token's room in them shrank with the fleet's running tasks: the leases of
    /// one submitter hold them as one token.
    #[test]
    fn the_leases_of_one_submitter_hold_the_pools_as_one_token() {
        let flags = [("max_streams_per_token", "3"), ("max_concurrent_streams", "8")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .into_iter()
            .collect();
        let config = Config::load(&flags, None, &|_| None).unwrap();
        let auth = AuthSettings::new(&config);
        let read = crate::auth::scopes::lookup(CAS_STREAMS[0]);
        let lease = |task| {
            let lease = crate::auth::LeaseId { job_id: "1a2b-cc".into(), task, attempt: 1 };
            // Jobs in namespaces of their own, by one submitter.
            let namespace = format!("pr-{task}/x");
            let submitter = "ci".to_owned();
            crate::auth::lease::CacheClaims { lease, namespace, expires_unix_ms: 1, submitter }.grant()
        };
        let held: Vec<TokenSlot> =
            (0..3).map(|task| auth.token_slots(&read, &lease(task)).unwrap().remove(0)).collect();
        let Err(err) = auth.token_slots(&read, &lease(3)) else { panic!("a fourth stream of ci's leases") };
        assert!(err.to_string().contains("the job leases of `ci`"), "{err}");
        drop(held);
    }
}
