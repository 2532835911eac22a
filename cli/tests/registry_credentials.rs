//! Registry credentials go to the registry's own origin and to a token realm it may name, and
//! nowhere else: not to a plain-HTTP realm on another host, not to the origin a blob download
//! is redirected to (a CDN, an object store's pre-signed URL), not to an upload session on
//! another origin, not through a token service's redirect. A real docker-registry stores the
//! images; small proxies in front of it play the registry and the "other origin" (another
//! loopback address, 127.0.0.2, so another host), which records everything it is sent.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cached_e2e::registry::Registry;

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");
/// Where no cached listens: image commands work without a cache.
const NO_SERVER: &str = "http://127.0.0.1:9";
const USER: &str = "ci";
const PASSWORD: &str = "correct horse";
/// An OAuth2 refresh token (docker config `identitytoken`).
const REFRESH: &str = "refresh-s3cret";
const TOKEN: &str = "t0k3n";

/// A request as a proxy saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

impl Seen {
    /// Whether it carries any credential of ours: a header, or a secret in the query or body.
    fn has_credentials(&self) -> bool {
        self.authorization.is_some()
            || [PASSWORD, &STANDARD.encode(format!("{USER}:{PASSWORD}")), REFRESH, TOKEN]
                .iter()
                .any(|secret| self.path.contains(*secret) || self.body.contains(*secret))
    }
}

/// What a proxy in front of the real registry does besides forwarding.
#[derive(Clone, Default)]
struct Plan {
    /// Demand `Bearer TOKEN`; the 401 challenge names this realm.
    realm: Option<String>,
    /// `/token` answers 307 to this URL instead of handing out the token.
    token_redirect: Option<String>,
    /// Blob GETs answer 307 to the same path on this origin (`http://host:port`).
    blob_redirect: Option<String>,
    /// Upload sessions (Location) continue on this origin instead of this proxy.
    uploads_at: Option<String>,
}

struct Proxy {
    origin: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds `ip:0` now, so the address is known before the plan that may name it.
    async fn bind(ip: &str) -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind a loopback address");
        let origin = format!("http://{}", listener.local_addr().unwrap());
        (listener, origin)
    }

    fn start(listener: tokio::net::TcpListener, origin: String, upstream: String, plan: Plan) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let me = origin.clone();
        let handler = move |request: Request| {
            let (record, http, upstream, plan, me) =
                (record.clone(), http.clone(), upstream.clone(), plan.clone(), me.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
                let authorization =
                    parts.headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).map(str::to_owned);
                record.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: path.clone(),
                    authorization: authorization.clone(),
                    body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                });
                if parts.uri.path() == "/token" {
                    return token(&plan, authorization.as_deref(), &body);
                }
                if let Some(realm) = &plan.realm
                    && authorization.as_deref() != Some(&format!("Bearer {TOKEN}"))
                {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header(header::WWW_AUTHENTICATE, format!(r#"Bearer realm="{realm}",service="test""#))
                        .body(Body::from(
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
                        ))
                        .unwrap();
                }
                if let Some(elsewhere) = &plan.blob_redirect
                    && parts.method == axum::http::Method::GET
                    && parts.uri.path().contains("/blobs/sha256:")
                {
                    return redirect(&format!("{elsewhere}{path}"));
                }
                let mut forward = http.request(parts.method.clone(), format!("http://{upstream}{path}"));
                for (name, value) in &parts.headers {
                    if name != header::HOST && name != header::AUTHORIZATION {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.body(body).send().await.unwrap();
                let sessions = plan.uploads_at.as_deref().unwrap_or(&me);
                let mut response = Response::builder().status(answer.status().as_u16());
                for (name, value) in answer.headers() {
                    let value = match value.to_str() {
                        Ok(text) if name == header::LOCATION => {
                            HeaderValue::from_str(&text.replace(&format!("http://{upstream}"), sessions))
                                .unwrap()
                        }
                        _ => value.clone(),
                    };
                    response = response.header(name, value);
                }
                response.body(Body::from(answer.bytes().await.unwrap())).unwrap()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let task = cached_client::task::spawn("registry", async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { origin, seen, task }
    }

    fn host(&self) -> &str {
        self.origin.trim_start_matches("http://")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Fails the test when any request this proxy received carried a credential of ours.
    fn assert_no_credentials(&self, what: &str) {
        let leaked: Vec<Seen> = self.seen().into_iter().filter(Seen::has_credentials).collect();
        assert!(leaked.is_empty(), "{what}: credentials reached {}: {leaked:#?}", self.origin);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The token service: a token for the right user and password, or for the refresh token.
fn token(plan: &Plan, authorization: Option<&str>, body: &[u8]) -> Response {
    if let Some(target) = &plan.token_redirect {
        return redirect(target);
    }
    let basic = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let refresh = String::from_utf8_lossy(body).contains(&format!("refresh_token={REFRESH}"));
    if authorization != Some(basic.as_str()) && !refresh {
        return Response::builder().status(StatusCode::UNAUTHORIZED).body(Body::empty()).unwrap();
    }
    Response::new(Body::from(format!(r#"{{"token": "{TOKEN}"}}"#)))
}

fn redirect(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .unwrap()
}

/// A docker config.json for `host`: the password, or an identity token.
fn docker_config(dir: &Path, host: &str, identity: bool) -> String {
    let entry = if identity {
        format!(r#"{{"identitytoken": "{REFRESH}"}}"#)
    } else {
        format!(r#"{{"username": "{USER}", "password": "{PASSWORD}"}}"#)
    };
    let path = dir.join(if identity { "identity.json" } else { "password.json" });
    std::fs::write(&path, format!(r#"{{"auths": {{"{host}": {entry}}}}}"#)).unwrap();
    path.display().to_string()
}

/// `cachectl image` of one small file for linux/amd64, with `args` added.
async fn image(dir: &Path, name: &str, args: &[&str]) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, format!("{name} for linux/amd64\n")).unwrap();
    let mut command = Command::new(CACHECTL);
    command
        .args(["--server", NO_SERVER, "image", "--no-cache", "--name", name])
        .arg("--platform")
        .arg(format!("linux/amd64={}", file.display()))
        .args(args);
    cached_client::task::spawn_blocking("cachectl", move || command.output().expect("run cachectl"))
        .await
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The real registry, a proxy on 127.0.0.1 that plays the registry per `front`, and one on
/// 127.0.0.2 (another host, so another origin) per `other`. Both plans are given both
/// origins: `(front, other)`.
struct World {
    registry: Registry,
    front: Proxy,
    other: Proxy,
}

async fn world(front: impl FnOnce(&str, &str) -> Plan, other: impl FnOnce(&str, &str) -> Plan) -> World {
    let registry = Registry::start(None);
    let (front_listener, front_origin) = Proxy::bind("127.0.0.1").await;
    let (other_listener, other_origin) = Proxy::bind("127.0.0.2").await;
    let front_plan = front(&front_origin, &other_origin);
    let other_plan = other(&front_origin, &other_origin);
    World {
        front: Proxy::start(front_listener, front_origin, registry.host(), front_plan),
        other: Proxy::start(other_listener, other_origin, registry.host(), other_plan),
        registry,
    }
}

/// A front that wants bearer tokens from its own token service.
fn own_realm(front: &str) -> Option<String> {
    Some(format!("{front}/token"))
}

impl World {
    /// Pushes a base image straight into the registry, then builds on it through the front
    /// (`--base FRONT/base:v1`) into a layout, which downloads the base's blobs.
    async fn build_on_base(&self, dir: &Path) -> Output {
        let base = format!("{}/base:v1", self.registry.host());
        let pushed = image(dir, "base", &["--push", &base]).await;
        assert!(pushed.status.success(), "{}", stderr(&pushed));
        let config = docker_config(dir, self.front.host(), false);
        let layout = dir.join("layout");
        let base = format!("{}/base:v1", self.front.host());
        image(
            dir,
            "app",
            &["--base", &base, "--oci-layout", layout.to_str().unwrap(), "--docker-config", &config],
        )
        .await
    }

    /// Pushes through the front with a password or an identity token.
    async fn push(&self, dir: &Path, identity: bool) -> Output {
        let config = docker_config(dir, self.front.host(), identity);
        let target = format!("{}/team/app:v1", self.front.host());
        image(dir, "app", &["--push", &target, "--docker-config", &config]).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_token_realm_on_another_host_gets_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(
        |_, other| Plan { realm: Some(format!("{other}/token")), ..Plan::default() },
        |_, _| Plan::default(),
    )
    .await;
    for identity in [false, true] {
        let output = world.push(dir.path(), identity).await;
        world.other.assert_no_credentials(&format!("identity token: {identity}"));
        assert!(!output.status.success(), "the push cannot authenticate");
        let err = stderr(&output);
        assert!(err.contains(&format!("{}/token", world.other.origin)) && err.contains("https"), "{err}");
        assert!(!err.contains(PASSWORD) && !err.contains(REFRESH), "{err}");
    }
    assert!(world.other.seen().is_empty(), "nothing at all was sent to that realm: {:?}", world.other.seen());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_service_redirect_does_not_carry_credentials_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    // The realm is the registry's own origin; only its answer points to the other origin,
    // which would hand out the token too.
    let world = world(
        |front, other| Plan {
            realm: own_realm(front),
            token_redirect: Some(format!("{other}/token")),
            ..Plan::default()
        },
        |_, _| Plan::default(),
    )
    .await;
    for identity in [true, false] {
        let output = world.push(dir.path(), identity).await;
        world.other.assert_no_credentials(&format!("identity token: {identity}"));
        assert!(!output.status.success(), "no token, no push");
        let err = stderr(&output);
        assert!(err.contains("redirect") && err.contains(&world.other.origin), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_downloads_follow_redirects_to_another_origin_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    // Blob downloads are sent to the other origin, as registries do with a CDN.
    let world = world(
        |front, other| Plan {
            realm: own_realm(front),
            blob_redirect: Some(other.to_owned()),
            ..Plan::default()
        },
        |_, _| Plan::default(),
    )
    .await;
    let output = world.build_on_base(dir.path()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = world.other.seen();
    let fetched = seen.iter().filter(|s| s.method == "GET" && s.path.contains("/blobs/")).count();
    assert!(fetched >= 2, "the base's config and layer came from the other origin: {seen:?}");
    world.other.assert_no_credentials("redirected blob downloads");
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        world.front.seen().iter().any(|s| s.authorization.as_deref() == Some(bearer.as_str())),
        "the registry itself did get the token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_target_that_asks_for_credentials_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    // The other origin answers 401 with a challenge of its own, naming its own token service.
    let world = world(
        |front, other| Plan {
            realm: own_realm(front),
            blob_redirect: Some(other.to_owned()),
            ..Plan::default()
        },
        |_, other| Plan { realm: own_realm(other), ..Plan::default() },
    )
    .await;
    let output = world.build_on_base(dir.path()).await;
    world.other.assert_no_credentials("a redirect target's challenge");
    assert!(!output.status.success(), "the blob cannot be fetched");
    let err = stderr(&output);
    assert!(err.contains(&world.other.origin) && err.contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_sessions_on_another_origin_get_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    // The registry hands out upload sessions on the other origin (which keeps them there).
    let world = world(
        |front, other| Plan {
            realm: own_realm(front),
            uploads_at: Some(other.to_owned()),
            ..Plan::default()
        },
        |_, _| Plan::default(),
    )
    .await;
    let output = world.push(dir.path(), false).await;
    world.other.assert_no_credentials("upload sessions");
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = world.other.seen();
    let uploads = seen.iter().filter(|s| s.method == "PUT" && s.path.contains("digest=")).count();
    assert_eq!(uploads, 2, "the layer and the config went up through the other origin: {seen:?}");
}
