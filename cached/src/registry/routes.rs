//! The registry's routes: each request's path is parsed into what it names, its caller
//! checked for the scope that needs (see `auth`), and handed to the module that answers it.
//! Repository names hold slashes, so paths are parsed here rather than by axum's router.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method};

use super::auth::{self, TOKEN_PATH};
use super::errors::{Code, RegistryError, RegistryResult};
use super::listen::Peer;
use super::names::Repository;
use super::{Registry, blobs, manifests, referrers, tags, uploads};
use crate::auth::{Grant, Scope};

/// A JSON answer.
pub(super) fn json(value: serde_json::Value) -> JsonBody {
    JsonBody(value)
}

pub(super) struct JsonBody(serde_json::Value);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        ([(http::header::CONTENT_TYPE, "application/json")], self.0.to_string()).into_response()
    }
}

pub(super) fn router(registry: Arc<Registry>) -> Router {
    Router::new().fallback(dispatch).with_state(registry)
}

/// What a request's path names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Base,
    Token,
    Tags(Repository),
    Manifest(Repository, String),
    Blob(Repository, String),
    /// An upload session, or (`None`) the place to start one.
    Upload(Repository, Option<String>),
    Referrers(Repository, String),
}

impl Target {
    /// The label of the request's kind in metrics: one of a fixed set.
    fn label(&self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Token => "token",
            Self::Tags(_) => "tags",
            Self::Manifest(..) => "manifests",
            Self::Blob(..) => "blobs",
            Self::Upload(..) => "uploads",
            Self::Referrers(..) => "referrers",
        }
    }
}

fn parse(path: &str) -> RegistryResult<Target> {
    if path == TOKEN_PATH {
        return Ok(Target::Token);
    }
    let Some(rest) = path.strip_prefix("/v2") else { return Err(not_found(path)) };
    let rest = match rest {
        "" | "/" => return Ok(Target::Base),
        rest => rest.strip_prefix('/').ok_or_else(|| not_found(path))?,
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Target::Tags(Repository::parse(name)?));
    }
    let split = |marker: &str| rest.rsplit_once(marker).filter(|(_, last)| !last.contains('/'));
    if let Some((name, reference)) = split("/manifests/") {
        return Ok(Target::Manifest(Repository::parse(name)?, reference.to_owned()));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads").or_else(|| rest.strip_suffix("/blobs/uploads/")) {
        return Ok(Target::Upload(Repository::parse(name)?, None));
    }
    if let Some((name, id)) = split("/blobs/uploads/") {
        return Ok(Target::Upload(Repository::parse(name)?, Some(id.to_owned())));
    }
    if let Some((name, digest)) = split("/blobs/") {
        return Ok(Target::Blob(Repository::parse(name)?, digest.to_owned()));
    }
    if let Some((name, digest)) = split("/referrers/") {
        return Ok(Target::Referrers(Repository::parse(name)?, digest.to_owned()));
    }
    Err(not_found(path))
}

fn not_found(path: &str) -> RegistryError {
    RegistryError::new(Code::NameUnknown, format!("no such registry endpoint: {path}"))
}

fn unsupported(method: &Method) -> RegistryError {
    RegistryError::new(Code::Unsupported, format!("{method} is not supported here"))
}

/// A request as the handlers see it.
pub(super) struct Call {
    pub method: Method,
    pub headers: HeaderMap,
    /// The query string's pairs, decoded.
    pub query: Vec<(String, String)>,
    pub body: Body,
    pub grant: Arc<Grant>,
}

impl Call {
    pub(super) fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }
}

async fn dispatch(
    State(registry): State<Arc<Registry>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let (label, response) = match parse(request.uri().path()) {
        Ok(target) => (target.label(), serve(&registry, target, request, &peer.to_string()).await),
        Err(err) => ("other", err.into_response()),
    };
    registry.metrics.observe_registry(
        label,
        method_label(&method),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

async fn serve(registry: &Registry, target: Target, request: Request, peer: &str) -> Response {
    let (parts, body) = request.into_parts();
    match target {
        Target::Base => return auth::base(registry, &parts.headers, peer).await,
        Target::Token => return auth::token(registry, &parts.headers, peer).await,
        _ => {}
    }
    let grant = match registry.caller(&parts.headers, &format!("registry/{}", target.label()), peer) {
        Ok(grant) => grant,
        Err(err) => return err.into_response(),
    };
    let query = parts.uri.query().map(form_urlencoded).unwrap_or_default();
    let caller = Some(registry.auth.caller(&grant));
    let call = Call { method: parts.method, headers: parts.headers, query, body, grant };
    // Work for this token, as gRPC calls are (`crate::caller`): its bucket lookups count.
    match crate::caller::scope_caller(caller, answer(registry, target, call)).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn answer(registry: &Registry, target: Target, call: Call) -> RegistryResult<Response> {
    let method = call.method.clone();
    let is = |m: &Method| method == *m;
    match target {
        Target::Tags(repo) if is(&Method::GET) => {
            auth::check(&call.grant, Scope::Read, &repo)?;
            tags::list(registry, &repo, call).await
        }
        Target::Manifest(repo, reference) => match method {
            Method::GET | Method::HEAD => {
                auth::check(&call.grant, Scope::Read, &repo)?;
                manifests::get(registry, &repo, &reference, &call.grant.budget(), method == Method::HEAD)
                    .await
            }
            Method::PUT => manifests::put(registry, &repo, &reference, call).await,
            Method::DELETE => {
                auth::check(&call.grant, Scope::Admin, &repo)?;
                manifests::delete(registry, &repo, &reference).await
            }
            _ => Err(unsupported(&method)),
        },
        Target::Blob(repo, digest) => match method {
            Method::GET | Method::HEAD => {
                auth::check(&call.grant, Scope::Read, &repo)?;
                let budget = call.grant.budget();
                let request = blobs::BlobRequest { headers: &call.headers, token: &budget };
                blobs::get(registry, &repo, &digest, request, method == Method::HEAD).await
            }
            Method::DELETE => {
                auth::check(&call.grant, Scope::Admin, &repo)?;
                blobs::delete(registry, &repo, &digest).await
            }
            _ => Err(unsupported(&method)),
        },
        Target::Upload(repo, session) => {
            auth::check(&call.grant, Scope::CasWrite, &repo)?;
            match (method, session) {
                (Method::POST, None) => uploads::start(registry, &repo, call).await,
                (Method::PATCH, Some(id)) => uploads::patch(registry, &repo, &id, call).await,
                (Method::PUT, Some(id)) => uploads::finish(registry, &repo, &id, call).await,
                (Method::GET, Some(id)) => uploads::status(registry, &repo, &id, &call.grant.token),
                (Method::DELETE, Some(id)) => uploads::cancel(registry, &repo, &id, &call.grant.token).await,
                (method, _) => Err(unsupported(&method)),
            }
        }
        Target::Referrers(repo, digest) if is(&Method::GET) => {
            auth::check(&call.grant, Scope::Read, &repo)?;
            referrers::list(registry, &repo, &digest, call).await
        }
        _ => Err(unsupported(&method)),
    }
}

/// `a=1&b=x%2Fy` as pairs, percent-decoded (`+` is a space).
fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => match (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    index += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> Repository {
        Repository::parse(name).unwrap()
    }

    #[test]
    fn paths_name_what_they_serve() {
        assert_eq!(parse("/v2/").unwrap(), Target::Base);
        assert_eq!(parse("/v2").unwrap(), Target::Base);
        assert_eq!(parse("/token").unwrap(), Target::Token);
        assert_eq!(parse("/v2/main/app/tags/list").unwrap(), Target::Tags(repo("main/app")));
        assert_eq!(
            parse("/v2/main/a/b/manifests/v1").unwrap(),
            Target::Manifest(repo("main/a/b"), "v1".to_owned())
        );
        assert_eq!(parse("/v2/main/app/blobs/uploads/").unwrap(), Target::Upload(repo("main/app"), None));
        assert_eq!(
            parse("/v2/main/app/blobs/uploads/abc").unwrap(),
            Target::Upload(repo("main/app"), Some("abc".to_owned()))
        );
        assert_eq!(
            parse("/v2/main/app/blobs/sha256:00").unwrap(),
            Target::Blob(repo("main/app"), "sha256:00".to_owned())
        );
        assert_eq!(
            parse("/v2/main/app/referrers/sha256:00").unwrap(),
            Target::Referrers(repo("main/app"), "sha256:00".to_owned())
        );
        assert_eq!(parse("/v2/Main/app/tags/list").unwrap_err().code, Code::NameInvalid);
        assert_eq!(parse("/metrics").unwrap_err().code, Code::NameUnknown);
    }

    #[test]
    fn queries_are_decoded() {
        let pairs = form_urlencoded("mount=sha256%3Aab&from=main%2Fapp&n=&x");
        assert_eq!(pairs[0], ("mount".to_owned(), "sha256:ab".to_owned()));
        assert_eq!(pairs[1], ("from".to_owned(), "main/app".to_owned()));
        assert_eq!(pairs[2], ("n".to_owned(), String::new()));
        assert_eq!(pairs[3], ("x".to_owned(), String::new()));
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
