//! cached's OCI registry (`registry_listen`) against the real clients: the distribution-spec
//! conformance suite (built by scripts/setup), and authorisation and bad input checked with
//! curl against a live cached on loopback.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cached_e2e::postgres::Postgres;
use cached_e2e::s3::S3Server;
use cached_e2e::{Daemon, binary, free_port, noise, tool};

/// A cached with the registry on its own port, and the secrets of its tokens by name.
struct Server {
    daemon: Daemon,
    registry: String,
    secrets: Vec<(String, String)>,
}

impl Server {
    /// Starts cached with one token per `(name, scopes)`.
    fn start(tokens: &[(&str, &str)]) -> Self {
        Self::start_with(tokens, &[])
    }

    /// As `start`, with more flags.
    fn start_with(tokens: &[(&str, &str)], flags: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let tokens_file = data.path().join("tokens.toml");
        let mut table = String::new();
        let mut secrets = Vec::new();
        for (name, scopes) in tokens {
            let secret_file = data.path().join(format!("{name}.secret"));
            let output = Command::new(binary("cached"))
                .args(["token", "new", "--name", name, "--scopes", scopes, "--secret-file"])
                .arg(&secret_file)
                .output()
                .unwrap();
            assert!(output.status.success(), "cached token new: {}", String::from_utf8_lossy(&output.stderr));
            table.push_str(&String::from_utf8(output.stdout).unwrap());
            let secret = std::fs::read_to_string(&secret_file).unwrap().trim().to_owned();
            secrets.push(((*name).to_owned(), secret));
        }
        std::fs::write(&tokens_file, table).unwrap();
        let registry = format!("127.0.0.1:{}", free_port());
        let tokens_flag = tokens_file.display().to_string();
        let mut all = vec!["--registry-listen", &registry, "--tokens-file", &tokens_flag];
        all.extend_from_slice(flags);
        let daemon = Daemon::start_in(data, &all);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&registry).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen on {registry} within 30s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { daemon, registry, secrets }
    }

    fn secret(&self, name: &str) -> &str {
        &self.secrets.iter().find(|(token, _)| token == name).expect("a token of that name").1
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.registry)
    }
}

/// One curl request: its status, headers and body.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

fn curl(method: &str, url: &str, secret: Option<&str>, extra: &[&str], body: Option<&Path>) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let (headers, out) = (dir.path().join("headers"), dir.path().join("body"));
    let mut command = Command::new("curl");
    command.args(["-s", "-X", method, "-o"]).arg(&out).arg("-D").arg(&headers).args(["-w", "%{http_code}"]);
    if method == "HEAD" {
        command.args(["-I"]);
    }
    if let Some(secret) = secret {
        command.args(["-H", &format!("Authorization: Bearer {secret}")]);
    }
    if let Some(body) = body {
        command.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    let output = command.args(extra).arg(url).output().expect("curl runs");
    Reply {
        status: String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default().to_ascii_lowercase(),
        body: std::fs::read_to_string(&out).unwrap_or_default(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap())
}

#[test]
fn the_distribution_spec_conformance_suite_passes() {
    let server = Server::start(&[("ci", "read,cas-write,ac-write,admin")]);
    assert_conformance(&server);
}

/// The same suite with the registry's records in PostgreSQL, as replicas keep them (that they
/// are there is the next test's: the suite deletes what it pushed).
#[test]
fn the_conformance_suite_passes_with_the_records_in_postgresql() {
    let db = Postgres::start();
    let flags = db.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_with(&[("ci", "read,cas-write,ac-write,admin")], &flags);
    assert_conformance(&server);
}

/// Runs the conformance suite (every API, the optional ones included) against `server`.
fn assert_conformance(server: &Server) {
    let results = tempfile::tempdir().unwrap();
    let output = Command::new(tool("oci-conformance"))
        .current_dir(results.path())
        .env("OCI_REGISTRY", &server.registry)
        .env("OCI_TLS", "disabled")
        .env("OCI_REPO1", "conformance/repo1")
        .env("OCI_REPO2", "conformance/repo2")
        .env("OCI_USERNAME", "ci")
        .env("OCI_PASSWORD", server.secret("ci"))
        .env("OCI_RESULTS_DIR", results.path())
        // sha256 is the digest the registry serves (what the spec requires).
        .env("OCI_DATA_SHA512", "false")
        .env("OCI_API_BLOBS_UPLOAD_CANCEL", "true")
        .env("OCI_LOG", "warn")
        .output()
        .expect("the conformance suite runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the conformance suite failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let count = |outcome: &str| {
        let prefix = format!("{outcome}...");
        let line = report.lines().find(|line| line.trim_start().starts_with(&prefix)).unwrap_or_default();
        line.rsplit(':').next().unwrap_or_default().trim().parse::<u32>().unwrap_or(u32::MAX)
    };
    assert_eq!((count("FAIL"), count("Error")), (0, 0), "{report}");
    assert!(count("Pass") > 700, "the suite ran few tests:\n{report}");
    let apis = ["Blob chunked", "Blob mount", "Blob upload cancel", "Manifest put with subject", "Referrers"];
    for api in apis {
        let line = report.lines().find(|line| line.trim_start().starts_with(api)).unwrap_or_default();
        assert!(line.ends_with("Pass"), "{api} did not pass: {line:?}\n{report}");
    }
}

#[test]
fn tokens_decide_who_pulls_pushes_and_moves_tags() {
    let server =
        Server::start(&[("pull", "read"), ("push", "read,cas-write"), ("ci", "read,cas-write,ac-write")]);
    let ping = curl("GET", &server.url("/v2/"), None, &[], None);
    assert_eq!(ping.status, 401, "{}", ping.body);
    assert!(ping.headers.contains("www-authenticate: bearer realm=\"http://"), "{}", ping.headers);
    assert!(ping.body.contains("UNAUTHORIZED"), "{}", ping.body);
    // The token endpoint takes the token as a Basic password, as docker login sends it.
    let basic = format!("pull:{}", server.secret("pull"));
    let token = curl("GET", &server.url("/token"), None, &["-u", &basic], None);
    assert_eq!(token.status, 200, "{}", token.body);
    assert!(token.body.contains(server.secret("pull")), "{}", token.body);

    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"layer bytes").unwrap();
    let digest = sha256(b"layer bytes");
    let upload = format!("/v2/main/app/blobs/uploads/?digest={digest}");
    let denied = curl("POST", &server.url(&upload), Some(server.secret("pull")), &[], Some(&blob));
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.body.contains("DENIED"), "{}", denied.body);
    let anonymous = curl("POST", &server.url(&upload), None, &[], Some(&blob));
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    let pushed = curl("POST", &server.url(&upload), Some(server.secret("push")), &[], Some(&blob));
    assert_eq!(pushed.status, 201, "{}", pushed.body);
    let pulled = curl(
        "GET",
        &server.url(&format!("/v2/main/app/blobs/{digest}")),
        Some(server.secret("pull")),
        &[],
        None,
    );
    assert_eq!((pulled.status, pulled.body.as_str()), (200, "layer bytes"));
    let ranged = curl(
        "GET",
        &server.url(&format!("/v2/main/app/blobs/{digest}")),
        Some(server.secret("pull")),
        &["-H", "Range: bytes=6-"],
        None,
    );
    assert_eq!((ranged.status, ranged.body.as_str()), (206, "bytes"));

    // A manifest by tag moves a pointer: cas-write is not enough.
    let config = dir.path().join("config");
    std::fs::write(&config, b"{}").unwrap();
    let config_digest = sha256(b"{}");
    let config_upload = format!("/v2/main/app/blobs/uploads/?digest={config_digest}");
    assert_eq!(
        curl("POST", &server.url(&config_upload), Some(server.secret("push")), &[], Some(&config)).status,
        201
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":11}}]}}"#
    );
    let manifest_file = dir.path().join("manifest");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let content_type = ["-H", "Content-Type: application/vnd.oci.image.manifest.v1+json"];
    let tag = server.url("/v2/main/app/manifests/v1");
    let refused = curl("PUT", &tag, Some(server.secret("push")), &content_type, Some(&manifest_file));
    assert_eq!(refused.status, 403, "{}", refused.body);
    let by_digest = server.url(&format!("/v2/main/app/manifests/{}", sha256(manifest.as_bytes())));
    assert_eq!(
        curl("PUT", &by_digest, Some(server.secret("push")), &content_type, Some(&manifest_file)).status,
        201
    );
    assert_eq!(curl("PUT", &tag, Some(server.secret("ci")), &content_type, Some(&manifest_file)).status, 201);
    let got = curl("GET", &tag, Some(server.secret("pull")), &[], None);
    assert_eq!((got.status, got.body.as_str()), (200, manifest.as_str()), "the exact bytes pushed");
    // Deleting needs admin.
    assert_eq!(curl("DELETE", &tag, Some(server.secret("ci")), &[], None).status, 403);
}

/// Every registry refusal wrote a log line naming the repository the token chose (an audit
/// grew the log by 4.6 MB/s from one connection): they are logged once per token and reason
/// per interval, with the count of the rest.
#[test]
fn registry_refusals_are_logged_once_per_interval() {
    let server = Server::start(&[("pull", "read")]);
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"layer bytes").unwrap();
    for n in 0..20 {
        let upload = format!("/v2/main/app{n}/blobs/uploads/?digest={}", sha256(b"layer bytes"));
        let denied = curl("POST", &server.url(&upload), Some(server.secret("pull")), &[], Some(&blob));
        assert_eq!(denied.status, 403, "{}", denied.body);
    }
    let log = server.daemon.log();
    let lines = log.lines().filter(|line| line.contains("registry scope denied")).count();
    assert_eq!(lines, 1, "{log}");
}

#[test]
fn bad_input_stores_nothing() {
    let server = Server::start(&[("ci", "read,cas-write,ac-write")]);
    let secret = Some(server.secret("ci"));
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"some bytes").unwrap();
    let wrong = sha256(b"other bytes");
    let bad = curl(
        "POST",
        &server.url(&format!("/v2/main/app/blobs/uploads/?digest={wrong}")),
        secret,
        &[],
        Some(&blob),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("DIGEST_INVALID"), "{}", bad.body);
    assert_eq!(
        curl("HEAD", &server.url(&format!("/v2/main/app/blobs/{wrong}")), secret, &[], None).status,
        404
    );
    let right = sha256(b"some bytes");
    assert_eq!(
        curl("HEAD", &server.url(&format!("/v2/main/app/blobs/{right}")), secret, &[], None).status,
        404
    );

    // A chunk that leaves a gap is refused at once, with where the upload ends.
    let started = curl("POST", &server.url("/v2/main/app/blobs/uploads/"), secret, &[], None);
    assert_eq!(started.status, 202, "{}", started.body);
    let location =
        started.headers.lines().find_map(|line| line.strip_prefix("location: ")).unwrap().trim().to_owned();
    let gap = curl("PATCH", &server.url(&location), secret, &["-H", "Content-Range: 5-14"], Some(&blob));
    assert_eq!(gap.status, 416, "{}", gap.body);
    assert!(gap.headers.contains("range: 0-0"), "{}", gap.headers);

    let absent = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{right}","size":10}},"layers":[]}}"#
    );
    let manifest = dir.path().join("manifest");
    std::fs::write(&manifest, &absent).unwrap();
    let content_type = ["-H", "Content-Type: application/vnd.oci.image.manifest.v1+json"];
    let tag = server.url("/v2/main/app/manifests/v1");
    let unknown = curl("PUT", &tag, secret, &content_type, Some(&manifest));
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert!(unknown.body.contains("MANIFEST_BLOB_UNKNOWN"), "{}", unknown.body);
    assert_eq!(curl("GET", &tag, secret, &[], None).status, 404, "nothing was tagged");

    // Go clients read field names without case: "Layers" named a blob the registry never
    // checked (and "Subject" passed the scope check of a referrer), so both are refused.
    for cased in ["Config", "\u{17f}ubject"] {
        let cased = absent.replace("\"config\"", &format!("\"{cased}\""));
        std::fs::write(&manifest, &cased).unwrap();
        let by_case = curl("PUT", &tag, secret, &content_type, Some(&manifest));
        assert_eq!(by_case.status, 400, "{cased}: {}", by_case.body);
        assert!(by_case.body.contains("MANIFEST_INVALID"), "{}", by_case.body);
    }
    assert_eq!(curl("GET", &tag, secret, &[], None).status, 404, "nothing was tagged");

    std::fs::write(&manifest, format!("{{\"pad\":\"{}\"}}", "x".repeat(5 << 20))).unwrap();
    let oversized = curl("PUT", &tag, secret, &content_type, Some(&manifest));
    assert_eq!(oversized.status, 413, "{}", oversized.body);
    assert!(oversized.body.contains("MANIFEST_INVALID"), "{}", oversized.body);
    let tags = curl("GET", &server.url("/v2/main/app/tags/list"), secret, &[], None);
    assert_eq!(tags.status, 200, "{}", tags.body);
    assert!(tags.body.contains("\"tags\":[]"), "{}", tags.body);
}

/// A manifest is read whole before it is checked: a token pushing many 4 MiB manifests and
/// sending their bodies slowly held 4 MiB per connection, up to `max_connections` (16384) of
/// them. Its bodies in flight are held to its share; another token pushes meanwhile. Room is
/// taken as bytes arrive: a declared length alone (an audit held every push and pull of the
/// server with 64 of them, at 3 bytes/s) holds nothing.
#[test]
fn a_token_holds_at_most_its_share_of_manifest_bodies_in_flight() {
    use std::io::{Read, Write};
    let server = Server::start(&[("flood", "read,cas-write,ac-write"), ("ci", "read,cas-write,ac-write")]);
    // Pushes `tag` declaring 4 MiB and sending all but the last `held_back` bytes.
    let open_push = |tag: usize, held_back: usize| {
        let mut stream = TcpStream::connect(&server.registry).unwrap();
        let head = format!(
            "PUT /v2/main/app/manifests/t{tag} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
            server.secret("flood"),
            4 << 20
        );
        stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        // A refused body is not read to its end: the write may fail.
        let _ = stream.write_all(&vec![b' '; (4 << 20) - held_back]);
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        stream
    };
    let answer = |stream: &mut TcpStream| {
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    };
    // Declared, not sent: more than the share's sixteen, and nothing is refused.
    let mut declared: Vec<TcpStream> = (0..32).map(|tag| open_push(100 + tag, 4 << 20)).collect();
    for stream in &mut declared {
        assert_eq!(answer(stream), "", "the server waits for the body");
    }
    // A quarter of the 256 MiB the registry buffers for pushes: sixteen bodies of 4 MiB.
    let mut held: Vec<TcpStream> = (0..16).map(|tag| open_push(tag, 1)).collect();
    for stream in &mut held {
        assert_eq!(answer(stream), "", "the server waits for the rest of the body");
    }
    let mut over = open_push(16, 1);
    let refused = answer(&mut over);
    assert!(refused.starts_with("HTTP/1.1 429"), "a 17th body in flight: {refused:?}");
    assert!(refused.to_ascii_lowercase().contains("retry-after:"), "{refused}");
    assert!(refused.contains("token `flood`"), "{refused}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, b"{}").unwrap();
    let config_digest = sha256(b"{}");
    let secret = Some(server.secret("ci"));
    let upload = server.url(&format!("/v2/main/app/blobs/uploads/?digest={config_digest}"));
    assert_eq!(curl("POST", &upload, secret, &[], Some(&config)).status, 201);
    let manifest = dir.path().join("manifest");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[]}}"#
        ),
    )
    .unwrap();
    let content_type = ["-H", "Content-Type: application/vnd.oci.image.manifest.v1+json"];
    let pushed =
        curl("PUT", &server.url("/v2/main/app/manifests/ci"), secret, &content_type, Some(&manifest));
    assert_eq!(pushed.status, 201, "another token pushes meanwhile: {}", pushed.body);

    // Connections closed give their room back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flood = Some(server.secret("flood"));
        let again =
            curl("PUT", &server.url("/v2/main/app/manifests/f"), flood, &content_type, Some(&manifest));
        if again.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "the share did not come back: {} {}", again.status, again.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A manifest body trickled (a byte now and then) held its room for as long as the client
/// liked, and one sent but for its last bytes for as long as those earned under
/// `min_transfer_rate`: a whole body must come within `idle_timeout`, or it is cut off and
/// nothing is stored.
#[test]
fn a_manifest_slower_than_idle_timeout_is_cut_off() {
    use std::io::{Read, Write};
    let flags = ["--idle-timeout", "2s", "--min-transfer-rate", "64KiB"];
    let server = Server::start_with(&[("ci", "read,cas-write,ac-write")], &flags);
    let mut stream = TcpStream::connect(&server.registry).unwrap();
    let head = format!(
        "PUT /v2/main/app/manifests/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\n\r\n{{",
        server.secret("ci")
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("cut off") && started.elapsed() < Duration::from_secs(30)
    {
        // A byte a second: never idle for 2 s, far under 64 KiB/s.
        let _ = stream.write_all(b" ");
        if let Ok(n) = stream.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400") && reply.contains("idle_timeout"), "{reply}");
    let tag = server.url("/v2/main/app/manifests/slow");
    assert_eq!(curl("GET", &tag, Some(server.secret("ci")), &[], None).status, 404, "nothing was stored");
}

/// A client trickling an upload (a byte now and then, never idle for `idle_timeout`) would
/// hold an upload slot for ever: below `min_transfer_rate` it is cut off, and the blob it was
/// sending is not stored.
#[test]
fn an_upload_slower_than_min_transfer_rate_is_cut_off() {
    let flags = ["--idle-timeout", "2s", "--min-transfer-rate", "64KiB"];
    let server = Server::start_with(&[("ci", "read,cas-write")], &flags);
    let secret = Some(server.secret("ci"));
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    let bytes = vec![7u8; 256 << 10];
    std::fs::write(&blob, &bytes).unwrap();
    let digest = sha256(&bytes);
    let upload = server.url(&format!("/v2/main/app/blobs/uploads/?digest={digest}"));
    // 4 KiB/s: 64 s for the blob, never a second without a byte.
    let started = Instant::now();
    let slow = curl("POST", &upload, secret, &["--limit-rate", "4K", "--max-time", "40"], Some(&blob));
    assert_eq!(slow.status, 400, "{:?} after {:?}", slow.body, started.elapsed());
    assert!(
        slow.body.contains("BLOB_UPLOAD_INVALID") && slow.body.contains("min_transfer_rate"),
        "{}",
        slow.body
    );
    let head = server.url(&format!("/v2/main/app/blobs/{digest}"));
    assert_eq!(curl("HEAD", &head, secret, &[], None).status, 404, "nothing was stored");
    // At full speed the same upload goes through.
    assert_eq!(curl("POST", &upload, secret, &[], Some(&blob)).status, 201);
    assert_eq!(curl("HEAD", &head, secret, &[], None).status, 200);
}

/// A client that reads a large blob a little at a time (never idle for `idle_timeout`, far
/// below `min_transfer_rate`) would hold one of the server's `max_concurrent_streams` slots,
/// its reader and its buffered frames for ever: the server cuts it off once the pace is
/// spent, and the slot is free again.
#[test]
fn a_download_slower_than_min_transfer_rate_is_cut_off_and_frees_its_slot() {
    let flags = ["--idle-timeout", "5s", "--min-transfer-rate", "8MiB", "--max-concurrent-streams", "1"];
    let server = Server::start_with(&[("ci", "read,cas-write")], &flags);
    let secret = server.secret("ci").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    // Bytes that do not compress, so the CAS read is as large as the response.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..(48usize << 20) / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    std::fs::write(&blob, &bytes).unwrap();
    let digest = sha256(&bytes);
    let upload = server.url(&format!("/v2/main/app/blobs/uploads/?digest={digest}"));
    assert_eq!(curl("POST", &upload, Some(&secret), &[], Some(&blob)).status, 201);
    let path = format!("/v2/main/app/blobs/{digest}");
    let url = server.url(&path);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (read, elapsed, slot_held) = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(256 << 10).unwrap();
        let mut stream = socket.connect(server.registry.parse().unwrap()).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (mut read, mut buf, mut slot_held) = (0usize, vec![0u8; 64 << 10], None);
        // 64 KiB every 100 ms: about 640 KiB/s, over a minute for the blob, and the server's
        // writes never wait near idle_timeout (before the fix it served the whole blob so).
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
            if slot_held.is_none() && started.elapsed() > Duration::from_secs(1) {
                // While it reads, the one stream slot is taken (curl answers at once: the
                // pause in reading is a few milliseconds).
                slot_held = Some(curl("GET", &url, Some(&secret), &[], None).status);
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "the slow download was not cut off within 40s ({read} bytes read)"
            );
        }
        (read, started.elapsed(), slot_held)
    });
    assert!(read < bytes.len(), "the whole blob was read ({read} bytes)");
    assert_eq!(slot_held, Some(429), "a second download while the slow one held the only slot");
    // The server cuts it off after the grace (5 s) and what the bytes taken earn at 8 MiB/s
    // (a second or so); the client sees the end once it has read what the kernel's socket
    // buffers still held, a few MiB.
    assert!(elapsed < Duration::from_secs(30), "cut off only after {elapsed:?}");
    let again = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "30", "-w", "%{http_code} %{size_download}", "-H"])
        .arg(format!("Authorization: Bearer {secret}"))
        .arg(&url)
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert_eq!(again, format!("200 {}", bytes.len()), "the slot came back");
}

#[test]
fn without_tokens_the_registry_stays_on_loopback() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(binary("cached"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--registry-listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "cached served the registry beyond loopback without tokens");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("registry_listen") && stderr.contains("--allow-anonymous"), "{stderr}");
}

/// The image fixture program (cli's), built for `goarch` into `out`.
fn hello_binary(goarch: &str, out: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/fixtures/image/hello");
    let path = out.join(goarch).join("hello");
    let status = Command::new(cached_e2e::go())
        .args(["build", "-trimpath", "-o"])
        .arg(&path)
        .arg(".")
        .current_dir(&source)
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env("GOARCH", goarch)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env_remove("GOCACHEPROG")
        .status()
        .expect("the go command builds the image fixture");
    assert!(status.success(), "go build for {goarch} failed");
    path
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// docker's config directory after `docker login -u NAME -p <token>` to the server's registry.
fn docker_login(server: &Server, name: &str, dir: &Path) -> PathBuf {
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{}", server.secret(name)))
    };
    let auths = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, server.registry);
    std::fs::write(docker.join("config.json"), auths).unwrap();
    docker
}

#[test]
fn skopeo_and_crane_pull_what_cachectl_pushed_and_the_amd64_binary_runs() {
    cached_e2e::registry::require("skopeo");
    cached_e2e::registry::require("umoci");
    let server = Server::start(&[("ci", "read,cas-write,ac-write")]);
    let dir = tempfile::tempdir().unwrap();
    let (amd64, arm64) = (hello_binary("amd64", dir.path()), hello_binary("arm64", dir.path()));
    let docker = docker_login(&server, "ci", dir.path());

    let reference = format!("{}/main/hello:v1", server.registry);
    run(Command::new(binary("cachectl"))
        .args(["--server", "http://127.0.0.1:9", "image", "--name", "hello", "--no-cache"])
        .arg("--platform")
        .arg(format!("linux/amd64={}", amd64.display()))
        .arg("--platform")
        .arg(format!("linux/arm64={}", arm64.display()))
        .args(["--push", &reference, "--docker-config"])
        .arg(docker.join("config.json")));

    // skopeo: every platform into an OCI layout, then the amd64 image alone for umoci.
    let creds = format!("ci:{}", server.secret("ci"));
    let skopeo_copy = |layout: &Path, extra: &[&str]| {
        run(Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--src-tls-verify=false", "--src-creds", &creds])
            .args(extra)
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", layout.display())));
    };
    skopeo_copy(&dir.path().join("all"), &["--all", "--preserve-digests"]);
    let single = dir.path().join("amd64");
    skopeo_copy(&single, &["--override-arch", "amd64"]);
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", single.display()))
        .arg(&bundle));
    let unpacked = bundle.join("rootfs/app/hello");
    assert_eq!(run(&mut Command::new(&unpacked)), "hello from linux/amd64\n");

    // crane, with the same docker config: the index lists both platforms, and the amd64
    // filesystem it exports holds the binary.
    let crane = |args: &[&str]| {
        run(Command::new(tool("crane")).env("DOCKER_CONFIG", &docker).arg("--insecure").args(args))
    };
    let index = crane(&["manifest", &reference]);
    assert!(index.contains("\"arm64\"") && index.contains("\"amd64\""), "{index}");
    let tar = dir.path().join("fs.tar");
    crane(&["export", "--platform", "linux/amd64", &reference, &tar.display().to_string()]);
    let root = dir.path().join("crane-root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&root));
    assert_eq!(std::fs::read(root.join("app/hello")).unwrap(), std::fs::read(&amd64).unwrap());
    assert_eq!(run(&mut Command::new(root.join("app/hello"))), "hello from linux/amd64\n");
}

#[test]
fn with_tls_the_registry_serves_https_from_the_grpc_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let (cert_flag, key_flag) = (cert.display().to_string(), key.display().to_string());
    let server = Server::start_with(&[("ci", "read")], &["--tls-cert", &cert_flag, "--tls-key", &key_flag]);
    let url = format!("https://{}/v2/", server.registry);
    let cacert = ["--cacert", cert_flag.as_str()];
    let challenge = curl("GET", &url, None, &cacert, None);
    assert_eq!(challenge.status, 401, "{}", challenge.body);
    assert!(challenge.headers.contains("realm=\"https://"), "{}", challenge.headers);
    assert_eq!(curl("GET", &url, Some(server.secret("ci")), &cacert, None).status, 200);
    assert_eq!(curl("GET", &url.replace("https", "http"), None, &[], None).status, 0, "no plain HTTP");
}

/// A tenant that pushes another's next blob first (a cosign signature's payload and public
/// layers are predictable) held it on its own account, and its flood of its own pushes then
/// evicted it: the other tenant's pull failed BLOB_UNKNOWN (its signature did not verify)
/// although it had pushed the blob too. The blob now passes to that tenant's account.
#[test]
fn a_blob_pushed_first_by_a_flooder_stays_pullable_by_a_tenant_that_pushed_it_too() {
    let server =
        Server::start_with(&[("pr", "read,cas-write"), ("main", "read,cas-write")], &["--max-size", "4MiB"]);
    let dir = tempfile::tempdir().unwrap();
    let push = |token: &str, repo: &str, bytes: &[u8]| {
        let file = dir.path().join("blob");
        std::fs::write(&file, bytes).unwrap();
        let url = server.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(bytes)));
        let pushed = curl("POST", &url, Some(server.secret(token)), &[], Some(&file));
        assert_eq!(pushed.status, 201, "{}", pushed.body);
    };
    let payload = noise(1, 64 << 10);
    push("pr", "pr/decoy", &payload);
    push("main", "main/app", &payload);
    // 12 MiB of the flooder's own blobs through a 4 MiB store.
    for seed in 0..200 {
        push("pr", "pr/flood", &noise(1000 + seed, 64 << 10));
    }
    let pulled = curl(
        "GET",
        &server.url(&format!("/v2/main/app/blobs/{}", sha256(&payload))),
        Some(server.secret("main")),
        &[],
        None,
    );
    assert_eq!(pulled.status, 200, "the flood evicted a blob main pushed: {}", pulled.body);
    let first = curl(
        "GET",
        &server.url(&format!("/v2/pr/flood/blobs/{}", sha256(&noise(1000, 64 << 10)))),
        Some(server.secret("pr")),
        &[],
        None,
    );
    assert_eq!(first.status, 404, "the flood lost its own oldest blobs");
}

#[test]
fn a_layer_already_in_the_cas_is_published_by_a_mount_not_uploaded_again() {
    let server = Server::start(&[("ci", "read,cas-write")]);
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer");
    std::fs::write(&layer, b"a layer the image builder stored over gRPC").unwrap();
    let put = run(Command::new(binary("cachectl"))
        .args(["put", "--server", &format!("http://{}", server.daemon.addr), "--token", server.secret("ci")])
        .arg(&layer));
    let cas = put.trim();
    let sha = sha256(b"a layer the image builder stored over gRPC");
    let secret = Some(server.secret("ci"));
    let mount = |sha: &str| server.url(&format!("/v2/main/app/blobs/uploads/?mount={sha}&cas={cas}"));

    // The server's own SHA-256 of the CAS blob decides: another digest is not linked.
    let other = sha256(b"something else");
    assert_eq!(curl("POST", &mount(&other), secret, &[], None).status, 202, "an upload session instead");
    assert_eq!(
        curl("HEAD", &server.url(&format!("/v2/main/app/blobs/{other}")), secret, &[], None).status,
        404
    );

    let mounted = curl("POST", &mount(&sha), secret, &[], None);
    assert_eq!(mounted.status, 201, "{}", mounted.body);
    let pulled = curl("GET", &server.url(&format!("/v2/main/app/blobs/{sha}")), secret, &[], None);
    assert_eq!((pulled.status, pulled.body.as_str()), (200, "a layer the image builder stored over gRPC"));
}

#[test]
fn publishing_to_cached_sends_no_blob_the_cas_already_holds() {
    let server = Server::start(&[("ci", "read,cas-write,ac-write")]);
    let dir = tempfile::tempdir().unwrap();
    let amd64 = hello_binary("amd64", dir.path());
    let docker = docker_login(&server, "ci", dir.path());
    let publish = |repository: &str| -> serde_json::Value {
        let reference = format!("{}/main/{repository}:v1", server.registry);
        let printed = run(Command::new(binary("cachectl"))
            .args(["--server", &format!("http://{}", server.daemon.addr), "--token", server.secret("ci")])
            .args(["image", "--json", "--name", "hello"])
            .arg("--platform")
            .arg(format!("linux/amd64={}", amd64.display()))
            .args(["--push", &reference, "--docker-config"])
            .arg(docker.join("config.json")));
        serde_json::from_str(&printed).unwrap_or_else(|err| panic!("{err}: {printed}"))
    };
    // The first build makes the layer and stores it in the layer cache, in the CAS.
    let first = publish("hello");
    assert_eq!(first["images"][0]["layer_cached"], false, "{first}");
    // Into another repository: the registry has no link there, the CAS has the layer.
    let second = publish("other");
    assert_eq!(second["images"][0]["layer_cached"], true, "{second}");
    let push = &second["push"];
    // The layer cache stored the config too, so both are linked and no byte goes up.
    assert_eq!(push["blobs_mounted"], 2, "the layer and config were linked from the CAS: {push}");
    assert_eq!(push["blobs_uploaded"], 0, "{push}");
    assert_eq!(push["blob_bytes_uploaded"], 0, "{push}");
    let layer = second["images"][0]["layer"].as_str().unwrap();
    let pulled = curl(
        "GET",
        &server.url(&format!("/v2/main/other/blobs/{layer}")),
        Some(server.secret("ci")),
        &[],
        None,
    );
    assert_eq!(pulled.status, 200, "the linked layer is pullable at once");
}

/// A replica on `s3`'s bucket and `db`, its registry on a port of its own (no tokens: loopback).
fn registry_replica(s3: &S3Server, db: &Postgres) -> (Daemon, String) {
    let registry = format!("127.0.0.1:{}", free_port());
    let mut flags = vec!["--registry-listen".to_owned(), registry.clone()];
    flags.extend(db.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = s3.replica_in(tempfile::tempdir().unwrap(), &flags);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&registry).is_err() {
        assert!(Instant::now() < deadline, "the registry did not listen on {registry} within 30s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, registry)
}

/// Replicas share the registry: blobs are in the bucket, manifests and tags in PostgreSQL, so
/// what is pushed, tagged or deleted through one replica is what the other serves.
#[test]
fn an_image_pushed_through_one_replica_is_pulled_tagged_and_deleted_through_another() {
    let (s3, db) = (S3Server::start(), Postgres::start());
    let ((a, a_registry), (_b, b_registry)) = (registry_replica(&s3, &db), registry_replica(&s3, &db));
    let dir = tempfile::tempdir().unwrap();
    let amd64 = hello_binary("amd64", dir.path());
    run(Command::new(binary("cachectl"))
        .args(["--server", &a.url(), "image", "--name", "hello"])
        .arg("--platform")
        .arg(format!("linux/amd64={}", amd64.display()))
        .args(["--push", &format!("{a_registry}/main/hello:v1")]));

    let crane = |args: &[&str]| run(Command::new(tool("crane")).arg("--insecure").args(args));
    let (through_a, through_b) = (format!("{a_registry}/main/hello"), format!("{b_registry}/main/hello"));
    let index = crane(&["manifest", &format!("{through_a}:v1")]);
    assert_eq!(crane(&["manifest", &format!("{through_b}:v1")]), index, "the same bytes through B");
    let tar = dir.path().join("fs.tar");
    crane(&["export", "--platform", "linux/amd64", &format!("{through_b}:v1"), &tar.display().to_string()]);
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&root));
    assert_eq!(std::fs::read(root.join("app/hello")).unwrap(), std::fs::read(&amd64).unwrap());

    crane(&["tag", &format!("{through_b}:v1"), "v2"]);
    assert_eq!(crane(&["ls", &through_a]), "v1\nv2\n", "a tag made through B is listed through A");
    let digest = crane(&["digest", &format!("{through_b}:v2")]);
    crane(&["delete", &format!("{through_a}@{}", digest.trim())]);
    let gone =
        Command::new(tool("crane")).arg("--insecure").args(["manifest", &format!("{through_b}:v1")]).output();
    let gone = gone.unwrap();
    assert!(!gone.status.success(), "deleted through A, still served through B");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("MANIFEST_UNKNOWN"), "{gone:?}");
    assert_eq!(crane(&["ls", &through_b]), "", "its tags went with it");
}
