//! Attacks on the registry by callers with a token, against the live registry listener:
//! `cas-write` (what developers hold on `*`) must not change what an existing name means, and
//! no caller may make the server hold memory or disk beyond its limits.

mod common;

use std::time::{Duration, Instant};

use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use common::Server;
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// A registry with the recommended split of tokens: `dev` (`read,cas-write` on `*`) and `ci`
/// (`read,cas-write,ac-write`, also on `*` so one server holds both).
struct Registry {
    server: Server,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn secret(name: &str) -> String {
    format!("test-secret-of-{name}")
}

fn token(name: &str, scopes: &str) -> String {
    let spec = TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list(scopes).unwrap(),
        namespaces: NamespacePattern::parse_list("*").unwrap(),
        secret_hash: SecretHash::new(&secret(name)).unwrap(),
        rate_limit: None,
        max_priority: None,
    };
    spec.to_toml()
}

/// One answer: status, Content-Type and body.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Registry {
    async fn start(settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        let specs = [
            token("dev", "read,cas-write"),
            token("ci", "read,cas-write,ac-write"),
            token("late", "read,cas-write"),
        ];
        std::fs::write(&tokens, specs.concat()).unwrap();
        let tokens = tokens.display().to_string();
        let mut all = vec![("registry_listen", "127.0.0.1:0"), ("tokens_file", tokens.as_str())];
        all.extend_from_slice(settings);
        let server = Server::start(&dir.path().join("data"), &all).await;
        let base = format!("http://{}", server.registry_addr.expect("the registry listens"));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().build().unwrap();
        Self { server, base, http, _dir: dir }
    }

    /// As `start`, with the registry's records in `db`.
    async fn on_postgres(db: &cached_e2e::postgres::Postgres) -> Self {
        Self::on_postgres_with(db, &[]).await
    }

    /// [`Registry::on_postgres`] with more `settings`.
    async fn on_postgres_with(db: &cached_e2e::postgres::Postgres, settings: &[(&str, &str)]) -> Self {
        let (url, password) = (db.url(), db.password_file().display().to_string());
        let mut all = settings.to_vec();
        all.extend([("database_url", url.as_str()), ("database_password_file", password.as_str())]);
        Self::start(&all).await
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        who: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(secret(who)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("the registry answers");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").map(|value| value.to_str().unwrap().to_owned());
        Reply { status, content_type: content_type.unwrap_or_default(), body: response.text().await.unwrap() }
    }

    async fn get(&self, path: &str, who: &str) -> Reply {
        self.send(reqwest::Method::GET, path, who, None, Vec::new()).await
    }

    /// PUTs `manifest` by digest (or by `tag`) into `main/app`.
    async fn put_manifest(&self, who: &str, manifest: &str, content_type: &str, tag: Option<&str>) -> Reply {
        let reference = tag.map_or_else(|| sha256(manifest.as_bytes()), str::to_owned);
        let path = format!("/v2/main/app/manifests/{reference}");
        self.send(reqwest::Method::PUT, &path, who, Some(content_type), manifest.as_bytes().to_vec()).await
    }

    /// Pushes the empty config blob (`{}`) to `main/app`, which artifact manifests name.
    async fn push_empty_config(&self) {
        let path = format!("/v2/main/app/blobs/uploads/?digest={}", sha256(b"{}"));
        let reply = self.send(reqwest::Method::POST, &path, "ci", None, b"{}".to_vec()).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }

    /// Pushes `bytes` as a blob of `main/app`, in one request.
    async fn push_blob(&self, who: &str, bytes: &[u8]) {
        let path = format!("/v2/main/app/blobs/uploads/?digest={}", sha256(bytes));
        let reply = self.send(reqwest::Method::POST, &path, who, None, bytes.to_vec()).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }

    /// CI's image `main/app:v1` (an empty image), returning its digest.
    async fn ci_image(&self) -> String {
        self.push_empty_config().await;
        let image = image_manifest();
        let reply = self.put_manifest("ci", &image, OCI_MANIFEST, Some("v1")).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        sha256(image.as_bytes())
    }

    async fn referrers(&self, subject: &str) -> serde_json::Value {
        let reply = self.get(&format!("/v2/main/app/referrers/{subject}"), "dev").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn empty_config() -> String {
    format!(r#"{{"mediaType":"{EMPTY}","digest":"{}","size":2}}"#, sha256(b"{}"))
}

/// An image whose one layer is `layer`.
fn image_with_layer(layer: &[u8]) -> String {
    let layer = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
        sha256(layer),
        layer.len()
    );
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{layer}]}}"#,
        empty_config()
    )
}

/// An index over one `child` manifest.
fn index_over(child: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}]}}"#,
        sha256(child.as_bytes()),
        child.len()
    )
}

fn image_manifest() -> String {
    format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[]}}"#, empty_config())
}

/// An artifact (a signature, an SBOM) that refers to `subject`, told apart by `name`.
fn referrer(subject: &str, kind: &str, name: &str, annotations: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{kind}","config":{},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":1}},"annotations":{{"name":"{name}"{annotations}}}}}"#,
        empty_config()
    )
}

fn listed(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|descriptor| descriptor["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// A developer's `read,cas-write` token may push content by digest, but a manifest with a
/// `subject` is listed for that subject to everyone who asks for its signatures and SBOMs: it
/// would forge or (by pushing thousands that sort first) hide CI's.
#[tokio::test]
async fn a_cas_write_token_cannot_add_referrers_to_an_image() {
    let registry = Registry::start(&[]).await;
    let image = registry.ci_image().await;
    let forged = referrer(&image, "application/vnd.dev.sigstore.bundle", "forged", "");
    let refused = registry.put_manifest("dev", &forged, OCI_MANIFEST, None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("DENIED") && refused.body.contains("ac-write"), "{}", refused.body);
    assert_eq!(
        listed(&registry.referrers(&image).await),
        Vec::<String>::new(),
        "a forged referrer is listed"
    );

    let genuine = referrer(&image, "application/vnd.dev.sigstore.bundle", "genuine", "");
    let pushed = registry.put_manifest("ci", &genuine, OCI_MANIFEST, None).await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    assert_eq!(listed(&registry.referrers(&image).await), [sha256(genuine.as_bytes())]);
    registry.stop().await;
}

/// Past the most the referrers API lists, a push is refused rather than stored and silently
/// left out of the listing (where whoever sorts first decides what is listed).
async fn referrers_past_the_cap_are_refused(registry: &Registry) {
    let image = registry.ci_image().await;
    for n in 0..4096 {
        let manifest = referrer(&image, "application/x-note", &n.to_string(), "");
        let reply = registry.put_manifest("ci", &manifest, OCI_MANIFEST, None).await;
        assert_eq!(reply.status, 201, "referrer {n}: {}", reply.body);
    }
    let one_more = referrer(&image, "application/x-note", "one more", "");
    let refused = registry.put_manifest("ci", &one_more, OCI_MANIFEST, None).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("MANIFEST_INVALID") && refused.body.contains("4096"), "{}", refused.body);
    let listing = listed(&registry.referrers(&image).await);
    assert_eq!(listing.len(), 4096);
    assert!(!listing.contains(&sha256(one_more.as_bytes())));
    let again = referrer(&image, "application/x-note", "0", "");
    let repushed = registry.put_manifest("ci", &again, OCI_MANIFEST, None).await;
    assert_eq!(repushed.status, 201, "pushing a listed referrer again is no new one: {}", repushed.body);
}

#[tokio::test]
async fn referrers_past_the_cap_are_refused_in_rocksdb() {
    let registry = Registry::start(&[]).await;
    referrers_past_the_cap_are_refused(&registry).await;
    registry.stop().await;
}

#[tokio::test]
async fn referrers_past_the_cap_are_refused_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres(&db).await;
    referrers_past_the_cap_are_refused(&registry).await;
    registry.stop().await;
}

/// A manifest without `mediaType` is served with the Content-Type of its push. Pushing the
/// same bytes by digest again (`cas-write`) with another Content-Type must not relabel it for
/// every puller (as an index, say, which no client can then use as an image).
async fn a_repush_by_digest_cannot_relabel_a_manifest(registry: &Registry) {
    registry.push_empty_config().await;
    let manifest = format!(r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#, empty_config());
    let path = format!("/v2/main/app/manifests/{}", sha256(manifest.as_bytes()));
    let pushed = registry.put_manifest("ci", &manifest, OCI_MANIFEST, None).await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let relabelled = registry.put_manifest("dev", &manifest, OCI_INDEX, None).await;
    assert_eq!(relabelled.status, 400, "{}", relabelled.body);
    assert!(
        relabelled.body.contains("MANIFEST_INVALID") && relabelled.body.contains(OCI_MANIFEST),
        "the refusal names the stored media type: {}",
        relabelled.body
    );
    let pulled = registry.get(&path, "dev").await;
    assert_eq!((pulled.status, pulled.content_type.as_str()), (200, OCI_MANIFEST));
    let again = registry.put_manifest("dev", &manifest, OCI_MANIFEST, None).await;
    assert_eq!(again.status, 201, "the same push again is fine: {}", again.body);
}

#[tokio::test]
async fn a_repush_by_digest_cannot_relabel_a_manifest_in_rocksdb() {
    let registry = Registry::start(&[]).await;
    a_repush_by_digest_cannot_relabel_a_manifest(&registry).await;
    registry.stop().await;
}

#[tokio::test]
async fn a_repush_by_digest_cannot_relabel_a_manifest_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres(&db).await;
    a_repush_by_digest_cannot_relabel_a_manifest(&registry).await;
    registry.stop().await;
}

/// A referrer's annotations (up to the 4 MiB a manifest may take) were copied into its entry
/// and every listing of its subject: 4096 of them made one GET build gigabytes. Large
/// annotations are left out of the listing (the manifest keeps them), small ones stay.
#[tokio::test]
async fn a_referrer_with_huge_annotations_is_listed_without_them() {
    let registry = Registry::start(&[]).await;
    let image = registry.ci_image().await;
    let huge = format!(r#","padding":"{}""#, "x".repeat(1 << 20));
    let bulky = referrer(&image, "application/spdx+json", "bulky", &huge);
    let pushed = registry.put_manifest("ci", &bulky, OCI_MANIFEST, None).await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let signed = referrer(&image, "application/vnd.dev.sigstore.bundle", "signed", r#","created":"today""#);
    assert_eq!(registry.put_manifest("ci", &signed, OCI_MANIFEST, None).await.status, 201);

    let reply = registry.get(&format!("/v2/main/app/referrers/{image}"), "dev").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.len() < 16 << 10, "the listing takes {} bytes", reply.body.len());
    let index: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let find = |digest: String| {
        let manifests = index["manifests"].as_array().unwrap();
        manifests.iter().find(|descriptor| descriptor["digest"] == digest.as_str()).cloned().unwrap()
    };
    let bulky = find(sha256(bulky.as_bytes()));
    assert_eq!(bulky["artifactType"], "application/spdx+json");
    assert!(bulky.get("annotations").is_none(), "{bulky}");
    assert_eq!(find(sha256(signed.as_bytes()))["annotations"]["created"], "today");
    registry.stop().await;
}

/// However the referrers of one subject are made up, their listing is at most what a client
/// reads as an image index (4 MiB): a push past that is refused, not stored and left out.
async fn a_subjects_referrers_are_capped_in_bytes(registry: &Registry) {
    let image = registry.ci_image().await;
    let padding = format!(r#","padding":"{}""#, "x".repeat(3 << 10));
    let mut stored = Vec::new();
    let refused = loop {
        assert!(stored.len() < 4096, "4096 referrers of 3 KiB each were stored");
        let manifest = referrer(&image, "application/x-note", &stored.len().to_string(), &padding);
        let reply = registry.put_manifest("ci", &manifest, OCI_MANIFEST, None).await;
        if reply.status != 201 {
            break reply;
        }
        stored.push(sha256(manifest.as_bytes()));
    };
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("MANIFEST_INVALID"), "{}", refused.body);
    let reply = registry.get(&format!("/v2/main/app/referrers/{image}"), "dev").await;
    assert!(reply.body.len() <= (4 << 20) + 1024, "the listing takes {} bytes", reply.body.len());
    let index: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(listed(&index).len(), stored.len(), "every stored referrer is listed");
}

#[tokio::test]
async fn a_subjects_referrers_are_capped_in_bytes_in_rocksdb() {
    let registry = Registry::start(&[]).await;
    a_subjects_referrers_are_capped_in_bytes(&registry).await;
    registry.stop().await;
}

#[tokio::test]
async fn a_subjects_referrers_are_capped_in_bytes_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres(&db).await;
    a_subjects_referrers_are_capped_in_bytes(&registry).await;
    registry.stop().await;
}

/// Entries stored before descriptors were bounded are listed without their annotations, which
/// the database drops before sending them.
#[tokio::test]
async fn an_oversized_entry_stored_earlier_is_listed_without_annotations_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres(&db).await;
    let image = registry.ci_image().await;
    let manifest = referrer(&image, "application/spdx+json", "earlier", "");
    assert_eq!(registry.put_manifest("ci", &manifest, OCI_MANIFEST, None).await.status, 201);
    let digest = sha256(manifest.as_bytes());
    db.query(&format!(
        "UPDATE registry_referrers SET descriptor = convert_to('{{\"digest\":\"{digest}\",\
         \"artifactType\":\"application/spdx+json\",\"annotations\":{{\"pad\":\"' || repeat('x', 1 << 20) \
         || '\"}}}}', 'UTF8')"
    ));
    let reply = registry.get(&format!("/v2/main/app/referrers/{image}"), "dev").await;
    assert!(reply.body.len() < 4 << 10, "the listing takes {} bytes", reply.body.len());
    let index: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(listed(&index), [digest]);
    assert!(index["manifests"][0].get("annotations").is_none(), "{index}");
    registry.stop().await;
}

/// The location of a new upload session in `repo`.
async fn open_session_as(registry: &Registry, token: &str, repo: &str) -> Reply {
    let path = format!("/v2/{repo}/blobs/uploads/");
    registry.send(reqwest::Method::POST, &path, token, None, Vec::new()).await
}

async fn session_location(registry: &Registry, repo: &str) -> String {
    let path = format!("{}/v2/{repo}/blobs/uploads/", registry.base);
    let response = registry.http.post(path).bearer_auth(secret("dev")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// Below `min_free_space` the CAS refuses uploads; the registry's own writes (the spool of an
/// upload session, which a client may fill and never finish, and manifests) must too, or a
/// `cas-write` token fills the disk and wedges RocksDB.
#[tokio::test]
async fn below_min_free_space_spools_and_manifests_are_refused() {
    // No disk has a pebibyte free: the disk is always below this floor.
    let registry = Registry::start(&[("min_free_space", "1PiB")]).await;
    let location = session_location(&registry, "main/app").await;
    let chunk = registry.send(reqwest::Method::PATCH, &location, "dev", None, vec![7; 64 << 10]).await;
    assert_eq!(chunk.status, 429, "{}", chunk.body);
    assert!(
        chunk.body.contains("TOOMANYREQUESTS") && chunk.body.contains("min_free_space"),
        "{}",
        chunk.body
    );

    let index = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    let manifest = registry.put_manifest("dev", &index, OCI_INDEX, None).await;
    assert_eq!(manifest.status, 429, "{}", manifest.body);
    assert!(manifest.body.contains("min_free_space"), "{}", manifest.body);
    let path = format!("/v2/main/app/manifests/{}", sha256(index.as_bytes()));
    assert_eq!(registry.get(&path, "dev").await.status, 404, "nothing was stored");
    registry.stop().await;
}

/// `registry_max_uploads` holds per namespace, and a `*` token may name any namespace: one
/// token holds at most a quarter of the server's sessions, all together at most 1024, and
/// tokens holding some leave room for one holding none.
#[tokio::test]
async fn upload_sessions_are_capped_per_token_and_across_namespaces() {
    let registry = Registry::start(&[("registry_max_uploads", "1")]).await;
    for n in 0..256 {
        let opened = open_session_as(&registry, "dev", &format!("ns{n}/app")).await;
        assert_eq!(opened.status, 202, "session {n}: {}", opened.body);
    }
    let refused = open_session_as(&registry, "dev", "one-more/app").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("token `dev`") && refused.body.contains("256"), "{}", refused.body);
    let other = open_session_as(&registry, "ci", "one-more/app").await;
    assert_eq!(other.status, 202, "another token has its own share: {}", other.body);
    registry.stop().await;

    // With a larger registry_max_uploads a token may hold that many; a token holding some
    // leaves the last of the 1024 to tokens holding none: two tokens took them all before,
    // and every other tenant waited out the sessions' hour.
    let registry = Registry::start(&[("registry_max_uploads", "600")]).await;
    for n in 0..600 {
        let opened = open_session_as(&registry, "dev", &format!("ns{n}/app")).await;
        assert_eq!(opened.status, 202, "session {n} of dev: {}", opened.body);
    }
    let mut opened = 0;
    let refused = loop {
        let reply = open_session_as(&registry, "ci", &format!("ns{}/app", 600 + opened)).await;
        if reply.status != 202 {
            break reply;
        }
        opened += 1;
        assert!(opened < 424, "two tokens took all 1024 sessions");
    };
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("TOOMANYREQUESTS") && refused.body.contains("1024"), "{}", refused.body);
    let late = open_session_as(&registry, "late", "late/app").await;
    assert_eq!(late.status, 202, "a token holding none found no room: {}", late.body);
    registry.stop().await;
}

/// Asking where an upload stands sends no byte: it must not keep an abandoned session (and its
/// spool, and its slot) open past `registry_upload_timeout`.
#[tokio::test]
async fn asking_for_an_uploads_status_does_not_keep_it_open() {
    let registry = Registry::start(&[("registry_upload_timeout", "2s")]).await;
    let location = session_location(&registry, "main/app").await;
    let mut last = 0;
    for _ in 0..20 {
        last = registry.get(&location, "dev").await.status;
        if last == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(last, 404, "an upload asked about every 300 ms is still open after 6 s");
    registry.stop().await;
}

/// A manifest's bytes are a record, not a CAS blob: eviction under `max_size` never takes one,
/// and a `cas-write` token may push manifests of up to 4 MiB by digest without end, until the
/// disk (or the database) met its floor and every tenant's pushes were refused. Beyond
/// `max_registry_records` the oldest records are forgotten now, and the newest still pull.
async fn a_flood_of_manifests_forgets_the_oldest_and_keeps_the_newest(registry: &Registry) {
    registry.push_empty_config().await;
    let padding = "x".repeat(160 << 10);
    let mut digests = Vec::new();
    for n in 0..100 {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[],"annotations":{{"n":"{n}","pad":"{padding}"}}}}"#,
            empty_config()
        );
        let reply = registry.put_manifest("dev", &manifest, OCI_MANIFEST, None).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        digests.push(sha256(manifest.as_bytes()));
    }
    let oldest = registry.get(&format!("/v2/main/app/manifests/{}", digests[0]), "dev").await;
    assert_eq!(oldest.status, 404, "the oldest manifest is still stored");
    let newest = registry.get(&format!("/v2/main/app/manifests/{}", digests[99]), "dev").await;
    assert_eq!(newest.status, 200, "the newest manifest was forgotten");
    let metrics = registry.server.metrics().await;
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let bytes = value("cached_registry_record_bytes ");
    assert!(bytes <= 8 << 20, "the registry's records take {bytes} bytes, with max_registry_records 8MiB");
    assert!(value("cached_registry_records_forgotten_total") >= 40, "{metrics}");
}

#[tokio::test]
async fn a_flood_of_manifests_forgets_the_oldest_in_rocksdb() {
    let registry = Registry::start(&[("max_registry_records", "8MiB")]).await;
    a_flood_of_manifests_forgets_the_oldest_and_keeps_the_newest(&registry).await;
    registry.stop().await;
}

#[tokio::test]
async fn a_flood_of_manifests_forgets_the_oldest_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres_with(&db, &[("max_registry_records", "8MiB")]).await;
    a_flood_of_manifests_forgets_the_oldest_and_keeps_the_newest(&registry).await;
    registry.stop().await;
}

/// A token with `read,cas-write` may neither move a tag nor sign, but every manifest it pushed
/// by digest (up to 4 MiB each) counted against its namespace with the rest: past
/// `max_registry_records` the namespace forgot its oldest records, a tagged image and its
/// signature among them, in effect a tag delete, which needs `admin`. Now records no tag or
/// signature reaches go first: the flood pushes out only itself.
async fn a_cas_write_flood_forgets_nothing_a_tag_or_signature_reaches(registry: &Registry) {
    let image = registry.ci_image().await;
    // An index tagged by CI over a child pushed by digest, as multi-platform pushes go.
    let child = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[],"annotations":{{"os":"linux"}}}}"#,
        empty_config()
    );
    let pushed = registry.put_manifest("ci", &child, OCI_MANIFEST, None).await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}]}}"#,
        sha256(child.as_bytes()),
        child.len()
    );
    let pushed = registry.put_manifest("ci", &index, OCI_INDEX, Some("multi")).await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let signature = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json","config":{},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{image}","size":{}}}}}"#,
        empty_config(),
        image_manifest().len()
    );
    let signed = registry.put_manifest("ci", &signature, OCI_MANIFEST, None).await;
    assert_eq!(signed.status, 201, "{}", signed.body);

    let moved = registry.put_manifest("dev", &child, OCI_MANIFEST, Some("v1")).await;
    assert_eq!(moved.status, 403, "dev moved a tag: {}", moved.body);
    let padding = "x".repeat(3 << 20);
    let mut junk = Vec::new();
    for n in 0..6 {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"annotations":{{"n":"{n}","pad":"{padding}"}}}}"#
        );
        let digest = sha256(manifest.as_bytes());
        let path = format!("/v2/main/junk/manifests/{digest}");
        let reply = registry
            .send(reqwest::Method::PUT, &path, "dev", Some(OCI_MANIFEST), manifest.into_bytes())
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        junk.push(digest);
    }
    let oldest = registry.get(&format!("/v2/main/junk/manifests/{}", junk[0]), "dev").await;
    assert_eq!(oldest.status, 404, "nothing was forgotten: the flood did not pass max_registry_records");

    for reference in ["v1", "multi", &image, &sha256(child.as_bytes()), &sha256(signature.as_bytes())] {
        let pulled = registry.get(&format!("/v2/main/app/manifests/{reference}"), "dev").await;
        assert_eq!(pulled.status, 200, "main/app@{reference} was forgotten: {}", pulled.body);
    }
    let config = registry.get(&format!("/v2/main/app/blobs/{}", sha256(b"{}")), "dev").await;
    assert_eq!(config.status, 200, "the images' config blob was forgotten: {}", config.body);
    let tags = registry.get("/v2/main/app/tags/list", "dev").await;
    let tags: serde_json::Value = serde_json::from_str(&tags.body).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["multi", "v1"]));
    let referrers = registry.referrers(&image).await;
    assert_eq!(referrers["manifests"][0]["digest"], sha256(signature.as_bytes()), "{referrers}");
}

#[tokio::test]
async fn a_cas_write_flood_forgets_nothing_a_tag_or_signature_reaches_in_rocksdb() {
    let registry = Registry::start(&[("max_registry_records", "8MiB")]).await;
    a_cas_write_flood_forgets_nothing_a_tag_or_signature_reaches(&registry).await;
    registry.stop().await;
}

#[tokio::test]
async fn a_cas_write_flood_forgets_nothing_a_tag_or_signature_reaches_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres_with(&db, &[("max_registry_records", "8MiB")]).await;
    a_cas_write_flood_forgets_nothing_a_tag_or_signature_reaches(&registry).await;
    registry.stop().await;
}

/// An index names its children by digest, the same one as often as it likes: each was looked
/// up on its own, reading the child's bytes out (a 4 MiB index naming a 4 MiB manifest 26,000
/// times copied over 200 GB), and all were then marked used while every registry write
/// waited. What is named twice is looked up once now, without reading its bytes.
async fn an_index_naming_one_manifest_thousands_of_times_is_checked_once(registry: &Registry) {
    registry.push_empty_config().await;
    let padding = "x".repeat((4 << 20) - 1024);
    let child = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[],"annotations":{{"pad":"{padding}"}}}}"#,
        empty_config()
    );
    let pushed = registry.put_manifest("dev", &child, OCI_MANIFEST, None).await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let entry = format!(
        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
        sha256(child.as_bytes()),
        child.len()
    );
    let count = ((4 << 20) - 1024) / (entry.len() + 1);
    assert!(count > 25_000, "{count} entries");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        vec![entry; count].join(",")
    );
    let started = Instant::now();
    let push = registry.put_manifest("dev", &index, OCI_INDEX, None);
    let pushed = tokio::time::timeout(Duration::from_secs(10), push)
        .await
        .unwrap_or_else(|_| panic!("checking an index naming one manifest {count} times took over 10s"));
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_index_naming_one_manifest_thousands_of_times_is_checked_once_in_rocksdb() {
    let registry = Registry::start(&[]).await;
    an_index_naming_one_manifest_thousands_of_times_is_checked_once(&registry).await;
    registry.stop().await;
}

#[tokio::test]
async fn an_index_naming_one_manifest_thousands_of_times_is_checked_once_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let registry = Registry::on_postgres(&db).await;
    an_index_naming_one_manifest_thousands_of_times_is_checked_once(&registry).await;
    registry.stop().await;
}

/// Each distinct child or blob a manifest names is looked up, and marked used while every
/// registry write waits: past 4096 of them the push is refused before any lookup.
#[tokio::test]
async fn an_index_naming_more_than_4096_distinct_manifests_is_refused() {
    let registry = Registry::start(&[]).await;
    let image = registry.ci_image().await;
    let entries: Vec<String> = std::iter::once(image)
        .chain((0..4096).map(|n| sha256(n.to_string().as_bytes())))
        .map(|digest| format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":1}}"#))
        .collect();
    let index =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#, entries.join(","));
    let refused = registry.put_manifest("dev", &index, OCI_INDEX, None).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("MANIFEST_INVALID") && refused.body.contains("4096"), "{}", refused.body);
    registry.stop().await;
}

/// A blob download takes one of its token's CAS streams (max_streams_per_token), as a
/// Cas.Read does: one token's slow downloads cannot hold every stream of the server.
#[tokio::test]
async fn blob_downloads_count_against_their_tokens_streams() {
    let registry = Registry::start(&[("max_streams_per_token", "1")]).await;
    let blob: Vec<u8> = (0..32u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let digest = sha256(&blob);
    let pushed = registry
        .send(
            reqwest::Method::POST,
            &format!("/v2/main/app/blobs/uploads/?digest={digest}"),
            "dev",
            None,
            blob,
        )
        .await;
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let url = format!("{}/v2/main/app/blobs/{digest}", registry.base);
    let open = |who: &str| registry.http.get(&url).bearer_auth(secret(who)).send();

    // Its body is not read: the download holds its stream.
    let held = open("dev").await.unwrap();
    assert_eq!(held.status(), 200);
    let refused = registry.get(&format!("/v2/main/app/blobs/{digest}"), "dev").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("max_streams_per_token"), "{}", refused.body);
    let other = open("ci").await.unwrap();
    assert_eq!(other.status(), 200, "another token has its own streams");
    drop(other);

    drop(held);
    let mut again = 0;
    for _ in 0..50 {
        again = open("dev").await.unwrap().status().as_u16();
        if again == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(again, 200, "the stream came back once the download ended");
    registry.stop().await;
}

/// How cached reaches `db`.
fn pg_settings(db: &cached_e2e::postgres::Postgres) -> cached::postgres::DatabaseSettings {
    let password = db.password_file().display().to_string();
    cached::postgres::DatabaseSettings::from_config(&db.url(), &password, "", &|_| None).unwrap().unwrap()
}

/// The registry's records on `db`, and the runtime their queries run on (called from outside it).
fn pg_records(
    db: &cached_e2e::postgres::Postgres,
) -> (tokio::runtime::Runtime, cached::registry::PgRegistry) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(cached::postgres::Database::open(&pg_settings(db))).unwrap();
    let records = {
        let _inside = runtime.enter();
        cached::registry::PgRegistry::new(database)
    };
    (runtime, records)
}

/// On PostgreSQL, a forget that read rows just before a tagged push made one kept, or a push
/// used one, leaves what they name: the push relies on it. An unchanged row goes.
#[test]
fn a_forget_leaves_rows_a_push_changed_since_it_read_them_in_postgresql() {
    use cached::registry::{RegistryRecords, Repository, Sha256Digest};

    let db = cached_e2e::postgres::Postgres::start();
    let (_runtime, records) = pg_records(&db);
    let repo = Repository::parse("teama/app").unwrap();
    let blobs: Vec<Sha256Digest> = (0..3u8).map(|n| Sha256Digest::of(&[n])).collect();
    for sha in &blobs {
        records.link_blob(&repo, sha, &proto::Digest::of(&sha.0)).unwrap();
    }
    let read = records.oldest(None, 10).unwrap();
    assert!(read.len() == 3 && read.iter().all(|row| row.loose), "{read:?}");
    let recorded = |n: usize| read[n].recorded.clone().unwrap();
    assert_eq!(records.keep(&[recorded(0)]).unwrap(), [], "held: nothing missing");
    records.touch(&[recorded(1)]).unwrap();

    let forgotten = records.forget(&read).unwrap();
    assert_eq!((forgotten.records, forgotten.bytes), (1, read[2].size));
    assert!(records.blob(&repo, &blobs[0]).unwrap().is_some(), "made kept since: stays");
    assert!(records.blob(&repo, &blobs[1]).unwrap().is_some(), "used since: stays");
    assert_eq!(records.blob(&repo, &blobs[2]).unwrap(), None);
    assert_eq!(records.oldest(None, 10).unwrap().len(), 2, "the changed rows stay");
}

/// On PostgreSQL, a push that found a blob's link while a forget was removing it moved the
/// forgotten link's row back (a row for nothing, counted twice) and answered that the blob was
/// there: the manifest naming it then failed. The push now waits for the forget and links the
/// blob anew. Here the forget is held just before it deletes the link, with the push waiting.
#[test]
fn a_push_racing_a_forget_of_its_blob_links_it_anew_in_postgresql() {
    use std::sync::Arc;

    use cached::registry::{RegistryRecords, Repository, Sha256Digest};

    let db = cached_e2e::postgres::Postgres::start();
    let (runtime, records) = pg_records(&db);
    let records = Arc::new(records);
    let holder = runtime.block_on(cached::postgres::Database::open(&pg_settings(&db))).unwrap();
    let repo = Repository::parse("teama/app").unwrap();
    let sha = Sha256Digest::of(b"layer");
    let digest = proto::Digest::of(b"layer");
    records.link_blob(&repo, &sha, &digest).unwrap();
    let read = records.oldest(None, 10).unwrap();

    // Holds the link's row, so the forget stops after deleting its order row and pointer.
    let client = runtime.block_on(holder.client()).unwrap();
    runtime.block_on(async {
        client.batch_execute("BEGIN").await.unwrap();
        let locked = "SELECT 1 FROM registry_blobs WHERE repository = $1 AND sha256 = $2 FOR UPDATE";
        client.execute(locked, &[&repo.as_str(), &sha.0.as_slice()]).await.unwrap();
    });
    let forget = {
        let records = Arc::clone(&records);
        let forget = move || records.forget(&read).unwrap();
        std::thread::Builder::new().name("forget".into()).spawn(forget).unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    let push = {
        let (records, repo) = (Arc::clone(&records), repo.clone());
        let push = move || records.link_blob(&repo, &sha, &digest).unwrap();
        std::thread::Builder::new().name("push".into()).spawn(push).unwrap()
    };
    std::thread::sleep(Duration::from_millis(500));
    runtime.block_on(client.batch_execute("COMMIT")).unwrap();
    assert_eq!(forget.join().unwrap().records, 1, "the forget went ahead");
    push.join().unwrap();
    assert!(records.blob(&repo, &sha).unwrap().is_some(), "the push answered that the blob is linked");
    let rows = records.oldest(None, 10).unwrap();
    assert_eq!(rows.len(), 1, "one row, for the new link: {rows:?}");
}

/// The order row of `recorded` among `rows` (oldest first): its place, and whether it is loose.
fn row_of(rows: &[cached::registry::OrderRow], recorded: &cached::registry::Recorded) -> (usize, bool) {
    let place = rows.iter().position(|row| row.recorded.as_ref() == Some(recorded));
    let place = place.unwrap_or_else(|| panic!("no row for {recorded:?} among {rows:?}"));
    (place, rows[place].loose)
}

/// A child pushed by digest is loose, and so are its blobs: a flood may forget a layer of it
/// (older than the child) while the child stays. An index tagged over the child then named an
/// image whose pull failed (blob unknown); now the push is refused, so the client pushes the
/// layer again. And once tagged, all the image reaches is kept and newer than the tag: the
/// oldest go first, so a forget takes the tag before any part of what it names (the config
/// and layers of a child stayed older than the index and its tag before).
#[test]
fn an_index_over_a_child_that_lost_a_layer_is_refused_in_postgresql() {
    use cached::registry::{Recorded, RegistryRecords, Repository, Sha256Digest};

    let db = cached_e2e::postgres::Postgres::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = runtime.block_on(Registry::on_postgres(&db));
    let (_records_runtime, records) = pg_records(&db);
    let (layer, child) = (b"a layer".to_vec(), image_with_layer(b"a layer"));
    let index = index_over(&child);
    let push_child = || async {
        registry.push_blob("dev", &layer).await;
        let pushed = registry.put_manifest("dev", &child, OCI_MANIFEST, None).await;
        assert_eq!(pushed.status, 201, "{}", pushed.body);
    };
    runtime.block_on(async {
        registry.push_empty_config().await;
        push_child().await;
    });
    let repo = Repository::parse("main/app").unwrap();
    let layer_link = Recorded::Blob { repo: repo.clone(), sha256: Sha256Digest::of(&layer) };
    let rows = records.oldest(None, 100).unwrap();
    let read = rows[row_of(&rows, &layer_link).0].clone();
    assert_eq!(records.forget(&[read]).unwrap().records, 1);

    runtime.block_on(async {
        let pushed = registry.put_manifest("ci", &index, OCI_INDEX, Some("multi")).await;
        assert_eq!(pushed.status, 400, "the tag names an image whose layer is gone: {}", pushed.body);
        assert!(pushed.body.contains("MANIFEST_BLOB_UNKNOWN"), "{}", pushed.body);
        assert_eq!(registry.get("/v2/main/app/manifests/multi", "dev").await.status, 404);
        push_child().await;
        let pushed = registry.put_manifest("ci", &index, OCI_INDEX, Some("multi")).await;
        assert_eq!(pushed.status, 201, "{}", pushed.body);
    });

    let rows = records.oldest(None, 100).unwrap();
    let manifest = |json: &str| Recorded::Manifest {
        repo: repo.clone(),
        digest: Sha256Digest::of(json.as_bytes()),
        subject: None,
    };
    let tag =
        Recorded::Tag { repo: repo.clone(), tag: "multi".into(), digest: Sha256Digest::of(index.as_bytes()) };
    let config = Recorded::Blob { repo: repo.clone(), sha256: Sha256Digest::of(b"{}") };
    let [tag, index, child, config, layer] = [tag, manifest(&index), manifest(&child), config, layer_link]
        .map(|recorded| row_of(&rows, &recorded));
    for (part, (place, loose)) in [("child", child), ("config", config), ("layer", layer)] {
        assert!(!loose, "the {part} is loose though a tag reaches it: {rows:?}");
        assert!(place > tag.0 && place > index.0, "the {part} goes before the tag: {rows:?}");
    }
    runtime.block_on(registry.stop());
}

/// A tagged push found its layer, then a forget that had read the layer's row earlier removed
/// it before the push stored the manifest: the tag named an image whose pull failed. The push
/// now keeps what it names in one step with checking it is there, before storing. Here the
/// push is held just before it stores (the manifests table is locked) while the forget runs.
#[test]
fn a_forget_between_a_pushs_check_and_its_store_leaves_what_it_names_in_postgresql() {
    use std::sync::Arc;

    use cached::registry::{Recorded, RegistryRecords, Repository, Sha256Digest};

    let db = cached_e2e::postgres::Postgres::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = Arc::new(runtime.block_on(Registry::on_postgres(&db)));
    let (records_runtime, records) = pg_records(&db);
    let layer = b"a layer".to_vec();
    runtime.block_on(async {
        registry.push_empty_config().await;
        registry.push_blob("dev", &layer).await;
    });
    let repo = Repository::parse("main/app").unwrap();
    let layer_link = Recorded::Blob { repo, sha256: Sha256Digest::of(&layer) };
    let rows = records.oldest(None, 100).unwrap();
    let read = rows[row_of(&rows, &layer_link).0].clone();

    let holder = records_runtime.block_on(cached::postgres::Database::open(&pg_settings(&db))).unwrap();
    let client = records_runtime.block_on(holder.client()).unwrap();
    records_runtime.block_on(async {
        client
            .batch_execute("BEGIN; LOCK TABLE registry_manifests IN SHARE ROW EXCLUSIVE MODE")
            .await
            .unwrap();
    });
    let push = {
        let registry = Arc::clone(&registry);
        let image = image_with_layer(&layer);
        runtime.spawn(async move { registry.put_manifest("ci", &image, OCI_MANIFEST, Some("v1")).await })
    };
    std::thread::sleep(Duration::from_millis(500));
    records.forget(&[read]).unwrap();
    records_runtime.block_on(client.batch_execute("COMMIT")).unwrap();
    let pushed = runtime.block_on(push).unwrap();

    runtime.block_on(async {
        assert!(pushed.status == 201 || pushed.status == 400, "{} {}", pushed.status, pushed.body);
        if pushed.status == 201 {
            let pulled = registry.get(&format!("/v2/main/app/blobs/{}", sha256(&layer)), "dev").await;
            assert_eq!(pulled.status, 200, "main/app:v1 names a layer the registry forgot: {}", pulled.body);
        }
    });
    let registry = Arc::into_inner(registry).expect("the push is done");
    runtime.block_on(registry.stop());
}
