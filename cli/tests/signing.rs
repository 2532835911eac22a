//! cosign-compatible signatures end to end, against the real cosign (scripts/setup builds it
//! into the tools directory) and a real docker-registry on loopback: cosign verifies what
//! cachectl signs, cachectl verifies what cosign signs, and neither accepts another key, a
//! tampered payload or a signature of another image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cached_e2e::registry::{Registry, has_command};
use cached_oci::Reference;
use cached_oci::manifest::{self, Manifest};
use cached_oci::registry::{Registry as Client, RegistryOptions};
use cached_oci::signature::image::{SignatureImage, signature_tag};
use serde_json::Value;

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");
/// Where no cached listens: these commands need none.
const NO_SERVER: &str = "http://127.0.0.1:9";
const PASSWORD: &str = "test password";

struct Bench {
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        assert!(
            has_command("cosign"),
            "cosign is needed by this test; source scripts/setup, which builds it into the tools directory"
        );
        Self { registry: Registry::start(None), dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cosign ARGS`, kept away from the user's ~/.sigstore and from any network.
    fn cosign(&self, args: &[&str]) -> Output {
        Command::new("cosign")
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("DOCKER_CONFIG", self.path("docker"))
            .output()
            .expect("run cosign")
    }

    /// A key pair from `cosign generate-key-pair`: `<prefix>.key`, `<prefix>.pub`.
    fn keys(&self, prefix: &str) -> (PathBuf, PathBuf) {
        let output = self.cosign(&["generate-key-pair", "--output-key-prefix", prefix]);
        assert!(output.status.success(), "cosign generate-key-pair: {}", text(&output.stderr));
        (self.path(&format!("{prefix}.key")), self.path(&format!("{prefix}.pub")))
    }

    fn cachectl(&self, args: &[&str]) -> Output {
        Command::new(CACHECTL)
            .arg("--server")
            .arg(NO_SERVER)
            .args(args)
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("DOCKER_CONFIG", self.path("docker"))
            .output()
            .expect("run cachectl")
    }

    /// Pushes a one-platform image of `content` as `repo:tag`; its reference by digest.
    fn push(&self, repo_tag: &str, content: &str, extra: &[&str]) -> (String, Value) {
        let binary = self.path(&format!("{}.bin", repo_tag.replace([':', '/'], "-")));
        std::fs::write(&binary, content).unwrap();
        let platform = format!("linux/amd64={}", binary.display());
        let target = format!("{}/{repo_tag}", self.registry.host());
        let mut args = vec!["image", "--no-cache", "--json", "--name", "app", "--platform", &platform];
        args.extend(["--push", &target]);
        args.extend(extra);
        let output = self.cachectl(&args);
        assert!(output.status.success(), "cachectl {args:?}: {}", text(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let name = target.rsplit_once(':').unwrap().0;
        (format!("{name}@{}", report["index"].as_str().unwrap()), report)
    }

    fn cosign_verify(&self, public: &Path, reference: &str) -> Output {
        let public = public.to_str().unwrap();
        self.cosign(&[
            "verify",
            "--key",
            public,
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            reference,
        ])
    }

    fn cachectl_verify(&self, public: &Path, reference: &str) -> Output {
        self.cachectl(&["verify", reference, "--key", public.to_str().unwrap()])
    }

    fn client(&self) -> (tokio::runtime::Runtime, Client) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let scopes = [("signed".to_owned(), "pull,push")];
        let client = runtime
            .block_on(Client::connect(&self.registry.host(), &scopes, &RegistryOptions::default()))
            .unwrap();
        (runtime, client)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_fails(output: &Output, code: i32, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stdout {} stderr {stderr}", text(&output.stdout));
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn cosign_verifies_the_index_cachectl_image_signed() {
    let bench = Bench::new();
    let (key, public) = bench.keys("cosign");
    let (reference, report) = bench.push("signed:v1", "binary one", &["--sign-key", key.to_str().unwrap()]);
    assert_eq!(report["signature"]["added"], true, "{report}");
    assert_eq!(report["signature"]["image"], reference.as_str());

    let tagged = format!("{}/signed:v1", bench.registry.host());
    let output = bench.cosign_verify(&public, &tagged);
    assert!(output.status.success(), "cosign verify: {}", text(&output.stderr));
    let claims: Value = serde_json::from_slice(&output.stdout).expect("cosign verify prints the claims");
    let digest = reference.split_once('@').unwrap().1;
    assert_eq!(claims[0]["critical"]["image"]["docker-manifest-digest"], digest);
    let output = bench.cachectl_verify(&public, &tagged);
    assert!(output.status.success(), "cachectl verify: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("1 of 1 signature(s) hold"), "{}", text(&output.stdout));

    // Signing again is a no-op: the signature is deterministic and already there.
    let output = bench.cachectl(&["sign", &reference, "--key", key.to_str().unwrap()]);
    assert!(output.status.success(), "cachectl sign: {}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("already signed with this key"), "{}", text(&output.stdout));
}

#[test]
fn cachectl_verifies_what_cosign_signed_and_adds_its_own() {
    let bench = Bench::new();
    let (key, public) = bench.keys("cosign");
    let (reference, _) = bench.push("signed:v1", "binary two", &[]);
    assert_fails(&bench.cachectl_verify(&public, &reference), 1, "is not signed");

    let key_path = key.to_str().unwrap();
    let flags = ["sign", "--key", key_path, "--tlog-upload=false", "--allow-insecure-registry", "-y"];
    let output = bench.cosign(&[&flags[..], &[reference.as_str()]].concat());
    assert!(output.status.success(), "cosign sign: {}", text(&output.stderr));
    let output = bench.cachectl_verify(&public, &reference);
    assert!(output.status.success(), "cachectl verify: {}", text(&output.stderr));

    // A second key's signature goes next to cosign's; both tools accept each.
    let (second_key, second_public) = bench.keys("second");
    let output = bench.cachectl(&["sign", &reference, "--key", second_key.to_str().unwrap()]);
    assert!(output.status.success(), "cachectl sign: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("2 signature(s)"), "{}", text(&output.stdout));
    for public in [&public, &second_public] {
        let output = bench.cosign_verify(public, &reference);
        assert!(output.status.success(), "cosign verify {public:?}: {}", text(&output.stderr));
        let output = bench.cachectl_verify(public, &reference);
        assert!(text(&output.stdout).contains("1 of 2 signature(s) hold"), "{}", text(&output.stderr));
    }
}

#[test]
fn other_keys_tampered_payloads_and_borrowed_signatures_fail() {
    let bench = Bench::new();
    let (key, public) = bench.keys("cosign");
    let (_, other_public) = bench.keys("other");
    let sign_key = ["--sign-key", key.to_str().unwrap()];
    let (first, _) = bench.push("signed:first", "binary three", &sign_key);
    let (second, _) = bench.push("signed:second", "binary four", &[]);

    assert_fails(&bench.cachectl_verify(&other_public, &first), 1, "the signature does not match the key");
    assert!(!bench.cosign_verify(&other_public, &first).status.success());

    // The first image's signatures, tagged as the second's: signed, but for another digest.
    let (runtime, client) = bench.client();
    let digest_of = |reference: &str| Reference::parse(reference).unwrap().digest.unwrap();
    let first_tag = signature_tag(&digest_of(&first));
    let (signatures, media_type) = runtime.block_on(client.get_manifest("signed", &first_tag)).unwrap();
    let second_tag = signature_tag(&digest_of(&second));
    runtime
        .block_on(client.put_manifest("signed", &second_tag, &media_type, &signatures.clone().into()))
        .unwrap();
    assert_fails(&bench.cachectl_verify(&public, &second), 1, "the signed payload is for");
    assert!(!bench.cosign_verify(&public, &second).status.success());

    // The first image's payload changed after signing, its signature kept.
    let mut manifest: Manifest = manifest::parse(&signatures, "signature manifest").unwrap();
    let payload = runtime.block_on(client.get_blob("signed", &manifest.layers[0].digest)).unwrap();
    let tampered =
        String::from_utf8(payload).unwrap().replace("\"optional\":null", "\"optional\":{\"x\":\"y\"}");
    let tampered_path = bench.path("tampered.json");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let tampered_digest = cached_oci::Sha256::of(tampered.as_bytes());
    let session = runtime.block_on(client.start_upload("signed")).unwrap();
    runtime
        .block_on(client.upload(session, &tampered_digest, tampered.len() as u64, &tampered_path))
        .unwrap();
    manifest.layers[0].digest = tampered_digest;
    manifest.layers[0].size = tampered.len() as u64;
    let image = SignatureImage::new(manifest.layers);
    let config_path = bench.path("config.json");
    std::fs::write(&config_path, &image.config).unwrap();
    let config = image.config_descriptor();
    let session = runtime.block_on(client.start_upload("signed")).unwrap();
    runtime.block_on(client.upload(session, &config.digest, config.size, &config_path)).unwrap();
    runtime
        .block_on(client.put_manifest("signed", &first_tag, manifest::MEDIA_MANIFEST, &image.manifest))
        .unwrap();
    assert_fails(&bench.cachectl_verify(&public, &first), 1, "the signature does not match the key");
    assert!(!bench.cosign_verify(&public, &first).status.success());
}

#[test]
fn key_errors_are_clear_and_stop_before_the_push() {
    let bench = Bench::new();
    let (key, public) = bench.keys("cosign");
    let binary = bench.path("app.bin");
    std::fs::write(&binary, "binary five").unwrap();
    let platform = format!("linux/amd64={}", binary.display());
    let target = format!("{}/signed:v1", bench.registry.host());
    let args = ["image", "--no-cache", "--name", "app", "--platform", &platform, "--push", &target];
    let password_file = bench.path("password");
    std::fs::write(&password_file, "wrong\n").unwrap();
    let key_flags =
        ["--sign-key", key.to_str().unwrap(), "--sign-key-password-file", password_file.to_str().unwrap()];
    assert_fails(&bench.cachectl(&[&args[..], &key_flags[..]].concat()), 2, "wrong password");
    assert!(!bench.registry.requests().iter().any(|(method, _)| method == "PUT"), "nothing is pushed");

    let public_as_key = ["--sign-key", public.to_str().unwrap()];
    assert_fails(&bench.cachectl(&[&args[..], &public_as_key[..]].concat()), 2, "is not a private key");
    let output = bench.cachectl(&["image", "--name", "app", "--platform", &platform, "--sign-key", "k"]);
    assert_fails(&output, 2, "--push");

    // A digest the registry does not hold is not signed.
    let absent = format!("{}/signed@sha256:{}", bench.registry.host(), "0".repeat(64));
    assert_fails(&bench.cachectl(&["sign", &absent, "--key", key.to_str().unwrap()]), 1, "MANIFEST_UNKNOWN");
}
