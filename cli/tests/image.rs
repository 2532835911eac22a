//! `cachectl image` end to end: real Go binaries (built here for three platforms), images
//! checked with skopeo and umoci, pushed to a real docker-registry (distribution 2.8) on
//! loopback, and layers cached in a real cached. Needs go, skopeo, umoci and docker-registry
//! (scripts/setup installs the last three).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use cached_e2e::registry::{Registry, require};
use serde_json::Value;

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");
/// Where no cached listens: image commands must work without a cache.
const NO_SERVER: &str = "http://127.0.0.1:9";
/// The htpasswd fixture's user and password.
const USER: &str = "ci";
const PASSWORD: &str = "correct horse";

/// The fixture program built for each platform, once per test process.
struct Fixture {
    binaries: Vec<(&'static str, PathBuf)>,
}

impl Fixture {
    fn path(&self, platform: &str) -> &Path {
        &self.binaries.iter().find(|(p, _)| *p == platform).expect("fixture platform").1
    }

    /// `--platform P=PATH` for every platform.
    fn platform_args(&self) -> Vec<String> {
        self.binaries
            .iter()
            .flat_map(|(p, path)| ["--platform".into(), format!("{p}={}", path.display())])
            .collect()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image/hello");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-fixture");
        let mut binaries = Vec::new();
        for (platform, goarch, goarm) in
            [("linux/amd64", "amd64", ""), ("linux/arm64", "arm64", ""), ("linux/arm/v7", "arm", "7")]
        {
            let path = out.join(platform.replace('/', "-")).join("hello");
            let status = Command::new("go")
                .args(["build", "-trimpath", "-o"])
                .arg(&path)
                .arg(".")
                .current_dir(&source)
                .env("CGO_ENABLED", "0")
                .env("GOOS", "linux")
                .env("GOARCH", goarch)
                .env("GOARM", goarm)
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "")
                .env_remove("GOCACHEPROG")
                .status()
                .expect("the go command is needed to build the image fixtures");
            assert!(status.success(), "go build for {platform} failed");
            binaries.push((platform, path));
        }
        Fixture { binaries }
    })
}

fn cachectl(args: &[String]) -> Output {
    Command::new(CACHECTL).arg("--server").arg(NO_SERVER).args(args).output().expect("run cachectl")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `cachectl image ... --json` and returns the parsed report.
fn image(args: &[String]) -> Value {
    let mut all = strings(&["image", "--json"]);
    all.extend_from_slice(args);
    let output = cachectl(&all);
    assert!(output.status.success(), "cachectl {all:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

fn image_failure(args: &[String]) -> String {
    let mut all = strings(&["image", "--no-cache"]);
    all.extend_from_slice(args);
    let output = cachectl(&all);
    assert!(!output.status.success(), "cachectl {all:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `skopeo copy` of every platform of `reference` from the registry into an OCI layout, with
/// the digests kept, so tests can compare them with what was pushed.
fn copy_back(reference: &str, layout: &Path, tag: &str) {
    let source = format!("docker://{reference}");
    let dest = format!("oci:{}:{tag}", layout.display());
    let flags = ["copy", "--all", "--preserve-digests", "--insecure-policy", "--src-tls-verify=false"];
    run("skopeo", &[&flags[..], &[source.as_str(), dest.as_str()]].concat());
}

fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_str(&run("skopeo", args)).expect("skopeo prints JSON")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every blob name in a layout, sorted.
fn blobs(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Two OCI layouts hold the same blobs, byte for byte, and the same index.
fn assert_same_layout(a: &Path, b: &Path) {
    assert_eq!(blobs(a), blobs(b));
    for name in blobs(a) {
        assert_eq!(
            std::fs::read(a.join("blobs/sha256").join(&name)).unwrap(),
            std::fs::read(b.join("blobs/sha256").join(&name)).unwrap()
        );
    }
    assert_eq!(std::fs::read(a.join("index.json")).unwrap(), std::fs::read(b.join("index.json")).unwrap());
}

fn index_entry(layout: &Path) -> Value {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "one image in {}", layout.display());
    entries[0].clone()
}

/// Requests that upload blob bytes or start doing so.
fn blob_writes(requests: &[(String, String)]) -> Vec<&(String, String)> {
    requests
        .iter()
        .filter(|(method, path)| method != "HEAD" && method != "GET" && path.contains("/blobs/"))
        .collect()
}

#[test]
fn layouts_are_byte_identical_across_directories_and_flag_order() {
    let fixture = fixture();
    let mut reports = Vec::new();
    let mut layouts = Vec::new();
    for (run, reversed) in [(0, false), (1, true)] {
        // Copies of the binaries in a different directory each time, and a different output.
        let dir = tempfile::tempdir().unwrap();
        let mut args = Vec::new();
        let mut binaries = fixture.binaries.clone();
        if reversed {
            binaries.reverse();
        }
        for (platform, path) in &binaries {
            let copy = dir.path().join(format!("in-{run}")).join(platform.replace('/', "_")).join("bin");
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(path, &copy).unwrap();
            args.extend(["--platform".to_owned(), format!("{platform}={}", copy.display())]);
        }
        let layout = dir.path().join(format!("layout-{run}"));
        args.extend(strings(&["--name", "hello", "--no-cache", "--tag", "v1", "--oci-layout", s(&layout)]));
        reports.push(image(&args));
        layouts.push((dir, layout));
    }
    let (first, second) = (&reports[0], &reports[1]);
    assert_eq!(first["index"], second["index"]);
    for (a, b) in first["images"].as_array().unwrap().iter().zip(second["images"].as_array().unwrap()) {
        assert_eq!(a["manifest"], b["manifest"]);
        assert_eq!(a["layer"], b["layer"]);
        assert_eq!(a["layer_cached"], false);
    }
    let (a, b) = (&layouts[0].1, &layouts[1].1);
    assert_same_layout(a, b);
    assert_eq!(index_entry(a)["digest"], first["index"]);
    assert_eq!(index_entry(a)["annotations"]["org.opencontainers.image.ref.name"], "v1");
}

/// Writes `contents` at `path` under `root`, making its directories.
fn write_file(root: &Path, path: &str, contents: &str) {
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, contents).unwrap();
}

/// A blob of the layout, parsed as JSON.
fn blob_json(layout: &Path, digest: &Value) -> Value {
    let name = digest.as_str().unwrap().trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(name)).unwrap()).unwrap()
}

/// The paths of the regular files in a gzip layer of the layout, without a leading `./`.
fn layer_files(layout: &Path, digest: &Value) -> Vec<String> {
    let name = digest.as_str().unwrap().trim_start_matches("sha256:");
    let blob = layout.join("blobs/sha256").join(name);
    // `tar -tv` lines start with the entry's type; the fixtures' paths have no spaces.
    run("tar", &["-tvzf", s(&blob)])
        .lines()
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split_whitespace().last())
        .map(|entry| entry.trim_start_matches("./").to_owned())
        .collect()
}

/// `--layer OS/ARCH=DIR` puts a tree in that platform's image only, a plain `--layer DIR` in
/// every platform's: each manifest has exactly the shared trees and its own, in command-line
/// order, under the binary. From copies of the trees elsewhere and with the platforms given in
/// the other order, the layout is byte for byte the same.
#[test]
fn per_platform_layers_go_into_their_own_platform_image_only() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    let mut layouts = Vec::new();
    for (run, reversed) in [(0, false), (1, true)] {
        let trees = dir.path().join(format!("trees-{run}"));
        write_file(&trees.join("shared"), "etc/passwd", "nonroot:x:65532:65532::/:/sbin/nologin\n");
        write_file(&trees.join("amd64"), "lib/x86_64-linux-gnu/libc.so.6", "amd64 libc");
        write_file(&trees.join("arm64"), "lib/aarch64-linux-gnu/libc.so.6", "arm64 libc");
        write_file(&trees.join("arm64-go"), "usr/local/go/VERSION", "go1.26 linux/arm64");
        let mut platforms = ["linux/amd64", "linux/arm64"];
        if reversed {
            platforms.reverse();
        }
        let mut args = Vec::new();
        for platform in platforms {
            args.extend([
                "--platform".to_owned(),
                format!("{platform}={}", fixture.path(platform).display()),
            ]);
        }
        for layer in [
            format!("linux/arm64={}", trees.join("arm64").display()),
            trees.join("shared").display().to_string(),
            format!("linux/amd64={}", trees.join("amd64").display()),
            format!("linux/arm64={}", trees.join("arm64-go").display()),
        ] {
            args.extend(["--layer".to_owned(), layer]);
        }
        let layout = dir.path().join(format!("layout-{run}"));
        args.extend(strings(&["--name", "hello", "--no-cache", "--tag", "v1", "--oci-layout", s(&layout)]));
        reports.push(image(&args));
        layouts.push(layout);
    }

    let (report, layout) = (&reports[0], &layouts[0]);
    let trees = report["layers"].as_array().unwrap();
    let scopes: Vec<&Value> = trees.iter().map(|tree| &tree["platform"]).collect();
    assert_eq!(
        scopes,
        [&Value::from("linux/arm64"), &Value::Null, &Value::from("linux/amd64"), &Value::from("linux/arm64")]
    );
    let digest = |n: usize| trees[n]["digest"].clone();
    for (platform, own, files) in [
        ("linux/amd64", vec![1, 2], vec!["etc/passwd", "lib/x86_64-linux-gnu/libc.so.6", "app/hello"]),
        (
            "linux/arm64",
            vec![0, 1, 3],
            vec!["lib/aarch64-linux-gnu/libc.so.6", "etc/passwd", "usr/local/go/VERSION", "app/hello"],
        ),
    ] {
        let image = report["images"].as_array().unwrap().iter().find(|i| i["platform"] == platform).unwrap();
        let expected_trees: Vec<Value> = own.iter().map(|&n| digest(n)).collect();
        assert_eq!(image["tree_layers"], Value::from(expected_trees.clone()), "{platform}");

        let manifest = blob_json(layout, &image["manifest"]);
        let layers: Vec<Value> =
            manifest["layers"].as_array().unwrap().iter().map(|layer| layer["digest"].clone()).collect();
        let mut expected = expected_trees;
        expected.push(image["layer"].clone());
        assert_eq!(layers, expected, "{platform}: the shared trees and its own, in order, then the binary");

        let config = blob_json(layout, &manifest["config"]["digest"]);
        assert_eq!(config["architecture"], platform.trim_start_matches("linux/"));
        let mut diff_ids: Vec<Value> = own.iter().map(|&n| trees[n]["diff_id"].clone()).collect();
        diff_ids.push(image["diff_id"].clone());
        assert_eq!(config["rootfs"]["diff_ids"], Value::from(diff_ids), "{platform}");
        assert_eq!(config["history"].as_array().unwrap().len(), own.len() + 1);

        // What the image holds, layer by layer: its own libraries, never the other platform's.
        let held: Vec<String> = layers.iter().flat_map(|layer| layer_files(layout, layer)).collect();
        assert_eq!(held, files, "{platform}");
    }

    // The same inputs, the same image, whatever the trees' paths and the --platform order.
    assert_eq!(reports[0]["index"], reports[1]["index"]);
    assert_eq!(reports[0]["layers"], reports[1]["layers"]);
    assert_eq!(reports[0]["images"], reports[1]["images"]);
    let (a, b) = (&layouts[0], &layouts[1]);
    assert_same_layout(a, b);
    // One manifest per platform in the index, and a blob per tree, binary, config and manifest.
    let index = blob_json(a, &reports[0]["index"]);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(blobs(a).len(), 4 + 2 + 2 + 2 + 1);
}

/// The human report says which platform a per-platform layer is for; a per-platform layer
/// with no binary of its platform, or a platform that is none, is refused before any work.
#[test]
fn a_per_platform_layer_is_named_and_needs_a_binary_of_its_platform() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    write_file(&tree, "etc/os-release", "ID=fixture\n");
    // A directory whose path has a platform and = in it is a plain tree all the same.
    let odd = dir.path().join("linux/arm64=odd");
    write_file(&odd, "etc/odd", "odd");
    let amd64 = format!("linux/amd64={}", fixture.path("linux/amd64").display());
    let arm64 = format!("linux/arm64={}", fixture.path("linux/arm64").display());

    let mut args =
        strings(&["image", "--no-cache", "--name", "hello", "--platform", &amd64, "--platform", &arm64]);
    args.extend(strings(&["--layer", &format!("linux/arm64={}", tree.display()), "--layer", s(&odd)]));
    let output = cachectl(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("--layer #1 (linux/arm64 only)  sha256:"), "{stdout}");
    assert!(lines[1].starts_with("--layer #2  sha256:"), "{stdout}");

    let refusals = [
        (
            format!("linux/arm64={}", tree.display()),
            format!(
                "--layer linux/arm64={}: no --platform binary for linux/arm64, so no image to put it in (the platforms are linux/amd64)",
                tree.display()
            ),
        ),
        (
            format!("windows/amd64={}", tree.display()),
            "neither OS/ARCH=DIR (platform \"windows/amd64\": only linux images".to_owned(),
        ),
    ];
    for (layer, expected) in refusals {
        let err = image_failure(&strings(&["--name", "hello", "--platform", &amd64, "--layer", &layer]));
        assert!(err.contains(&expected), "{err}");
    }
    let err = image_failure(&strings(&["--name", "hello", "--platform", &amd64, "--layer", "linux/amd64="]));
    assert!(err.contains("expected OS/ARCH=DIR"), "{err}");
}

#[test]
fn skopeo_reads_the_layout_and_each_platform_config() {
    require("skopeo");
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let mut args = fixture.platform_args();
    args.extend(strings(&["--name", "hello", "--no-cache", "--oci-layout", s(&layout), "--tag", "v1"]));
    args.extend(strings(&[
        "--env",
        "MODE=test",
        "--label",
        "org.opencontainers.image.source=https://example.invalid",
    ]));
    let report = image(&args);
    let target = format!("oci:{}:v1", layout.display());

    let index = skopeo_json(&["inspect", "--raw", &target]);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let manifests = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            let p = &m["platform"];
            match p["variant"].as_str() {
                Some(v) => {
                    format!("{}/{}/{v}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap())
                }
                None => format!("{}/{}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap()),
            }
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm/v7", "linux/arm64"], "sorted, arm with its variant");

    for image in report["images"].as_array().unwrap() {
        let platform = image["platform"].as_str().unwrap();
        let parts: Vec<&str> = platform.split('/').collect();
        let mut args = vec!["inspect", "--config", "--override-os", parts[0], "--override-arch", parts[1]];
        if let Some(variant) = parts.get(2) {
            args.extend(["--override-variant", variant]);
        }
        args.push(&target);
        let config = skopeo_json(&args);
        assert_eq!(config["os"], parts[0]);
        assert_eq!(config["architecture"], parts[1]);
        assert_eq!(config["variant"].as_str(), parts.get(2).copied());
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/app/hello"]));
        assert_eq!(config["config"]["User"], "65532");
        let env: Vec<&str> =
            config["config"]["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(env[0].starts_with("PATH=") && env[0].ends_with(":/app"), "{env:?}");
        assert!(env.contains(&"MODE=test"));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.source"], "https://example.invalid");
        assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([image["diff_id"]]));
        assert_eq!(config["history"].as_array().unwrap().len(), 1);

        // And skopeo's own view of the image for that platform.
        args.remove(1);
        let summary = skopeo_json(&args);
        assert_eq!(summary["Layers"], serde_json::json!([image["layer"]]));
        let digest = image["manifest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(digest)).unwrap())
                .unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    }
}

#[test]
fn umoci_unpacks_the_amd64_image_and_its_binary_runs() {
    require("umoci");
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    // umoci reads single-platform images only; the amd64 layer is the same as in the
    // multi-platform image, since layers depend only on the binary and the layer options.
    let layout = dir.path().join("layout");
    let binary = fixture.path("linux/amd64");
    let single = image(&strings(&[
        "--platform",
        &format!("linux/amd64={}", binary.display()),
        "--name",
        "hello",
        "--no-cache",
        "--oci-layout",
        s(&layout),
        "--tag",
        "amd64",
    ]));
    let mut args = fixture.platform_args();
    args.extend(strings(&["--name", "hello", "--no-cache"]));
    let multi = image(&args);
    let amd64 = multi["images"].as_array().unwrap().iter().find(|i| i["platform"] == "linux/amd64").unwrap();
    assert_eq!(single["images"][0]["layer"], amd64["layer"]);
    assert_eq!(single["images"][0]["manifest"], amd64["manifest"]);

    let bundle = dir.path().join("bundle");
    run("umoci", &["unpack", "--rootless", "--image", &format!("{}:amd64", layout.display()), s(&bundle)]);
    let unpacked = bundle.join("rootfs/app/hello");
    assert_eq!(std::fs::read(&unpacked).unwrap(), std::fs::read(binary).unwrap());
    assert_eq!(run(s(&unpacked), &[]), "hello from linux/amd64\n");
    let config: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["/app/hello"]));
}

#[test]
fn push_copy_back_and_an_unchanged_repush_uploads_no_blob() {
    require("skopeo");
    let fixture = fixture();
    let registry = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let target = format!("{}/hello:v1", registry.host());
    let mut args = fixture.platform_args();
    args.extend(strings(&["--name", "hello", "--no-cache", "--oci-layout", s(&layout), "--push", &target]));

    let first = image(&args);
    let push = &first["push"];
    assert_eq!(push["reference"], target);
    assert_eq!(push["blobs_uploaded"], 6, "a layer and a config per platform: {push}");
    assert_eq!(push["manifests_put"], 4, "three manifests and the index");
    let uploaded_first = blob_writes(&registry.requests()).len();
    assert!(uploaded_first >= 12, "POST and PUT per blob");

    // skopeo copies it back with the same digests, and the same blobs as our layout.
    let back = dir.path().join("back");
    copy_back(&target, &back, "v1");
    assert_eq!(index_entry(&back)["digest"], first["index"]);
    assert_eq!(blobs(&back), blobs(&layout));

    // The same image again: HEADs only, no blob and no manifest written.
    let before = registry.requests().len();
    let second = image(&args);
    assert_eq!(second["index"], first["index"]);
    let push = &second["push"];
    assert_eq!((push["blobs_uploaded"].as_u64(), push["blob_bytes_uploaded"].as_u64()), (Some(0), Some(0)));
    assert_eq!(push["manifests_put"], 0);
    let requests = registry.requests()[before..].to_vec();
    assert!(blob_writes(&requests).is_empty(), "second push wrote blobs: {requests:?}");
    assert!(requests.iter().all(|(method, _)| method == "HEAD" || method == "GET"), "{requests:?}");
    assert_eq!(requests.len() as u64, push["requests"].as_u64().unwrap(), "the registry saw what we counted");
    assert_eq!(
        requests.len(),
        2,
        "GET /v2/, then HEAD on the tag, which already names the index: {requests:?}"
    );

    // Chunked upload (PATCH with Content-Range, Range checked) into another repository.
    let chunked = format!("{}/chunked:v1", registry.host());
    let mut args = fixture.platform_args();
    args.extend(strings(&["--name", "hello", "--no-cache", "--push", &chunked, "--chunk-size", "256KiB"]));
    let before = registry.requests().len();
    let third = image(&args);
    assert_eq!(third["index"], first["index"]);
    let patches = registry.requests()[before..].iter().filter(|(method, _)| method == "PATCH").count();
    assert!(patches >= 15, "1.2+ MiB layers in 256 KiB chunks: {patches} PATCHes");
    let back = dir.path().join("back-chunked");
    copy_back(&chunked, &back, "v1");
    assert_eq!(blobs(&back), blobs(&layout));
}

#[test]
fn zstd_layers_are_read_by_skopeo_and_survive_a_registry_round_trip() {
    require("skopeo");
    let fixture = fixture();
    let registry = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (gzip, zstd) = (dir.path().join("gzip"), dir.path().join("zstd"));
    let mut args = fixture.platform_args();
    args.extend(strings(&["--name", "hello", "--no-cache", "--oci-layout", s(&gzip)]));
    let gzip_report = image(&args);
    let target = format!("{}/hello:zstd", registry.host());
    let mut args = fixture.platform_args();
    args.extend(strings(&["--name", "hello", "--no-cache", "--compression", "zstd"]));
    args.extend(strings(&["--oci-layout", s(&zstd), "--tag", "zstd", "--push", &target]));
    let zstd_report = image(&args);
    assert_ne!(zstd_report["index"], gzip_report["index"]);
    for (z, g) in
        zstd_report["images"].as_array().unwrap().iter().zip(gzip_report["images"].as_array().unwrap())
    {
        assert_eq!(z["diff_id"], g["diff_id"], "the same tar under either codec");
        assert_ne!(z["layer"], g["layer"]);
        let digest = z["manifest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(zstd.join("blobs/sha256").join(digest)).unwrap()).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    }
    let config = skopeo_json(&[
        "inspect",
        "--config",
        "--override-arch",
        "arm64",
        &format!("oci:{}:zstd", zstd.display()),
    ]);
    assert_eq!(config["architecture"], "arm64");
    let back = dir.path().join("back");
    copy_back(&target, &back, "zstd");
    assert_eq!(index_entry(&back)["digest"], zstd_report["index"]);
    assert_eq!(blobs(&back), blobs(&zstd));
}

#[test]
fn a_base_image_from_an_oci_layout_is_honoured() {
    require("umoci");
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    // A base image made of one file per platform, with its own environment and user.
    let release = dir.path().join("os-release");
    std::fs::write(&release, "ID=fixture\n").unwrap();
    let base = dir.path().join("base");
    let mut args = Vec::new();
    for (platform, _) in &fixture.binaries {
        args.extend(["--platform".to_owned(), format!("{platform}={}", release.display())]);
    }
    args.extend(strings(&["--name", "os-release", "--dir", "/etc", "--user", "1000", "--env", "BASE=1"]));
    args.extend(strings(&["--no-cache", "--oci-layout", s(&base), "--tag", "base"]));
    let base_report = image(&args);

    let layout = dir.path().join("app");
    let amd64 = fixture.path("linux/amd64");
    let report = image(&strings(&[
        "--platform",
        &format!("linux/amd64={}", amd64.display()),
        "--name",
        "hello",
        "--base",
        &format!("oci:{}:base", base.display()),
        "--no-cache",
        "--oci-layout",
        s(&layout),
        "--tag",
        "app",
    ]));
    let base_amd64 =
        base_report["images"].as_array().unwrap().iter().find(|i| i["platform"] == "linux/amd64").unwrap();

    let target = format!("oci:{}:app", layout.display());
    let manifest = skopeo_json(&["inspect", "--raw", "--override-arch", "amd64", &target]);
    let manifest = if manifest["manifests"].is_array() {
        let digest =
            manifest["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(digest)).unwrap()).unwrap()
    } else {
        manifest
    };
    let layers: Vec<&Value> = manifest["layers"].as_array().unwrap().iter().map(|l| &l["digest"]).collect();
    assert_eq!(
        layers,
        [&base_amd64["layer"], &report["images"][0]["layer"]],
        "base layer first, ours on top"
    );
    assert_eq!(manifest["annotations"]["org.opencontainers.image.base.digest"], base_amd64["manifest"]);
    let config = skopeo_json(&["inspect", "--config", "--override-arch", "amd64", &target]);
    assert_eq!(config["config"]["User"], "1000", "the base's user is kept");
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.contains(&Value::from("BASE=1")), "{env:?}");
    assert!(env[0].as_str().unwrap().ends_with(":/etc:/app"), "{env:?}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(config["history"].as_array().unwrap().len(), 2);

    let bundle = dir.path().join("bundle");
    run("umoci", &["unpack", "--rootless", "--image", &format!("{}:app", layout.display()), s(&bundle)]);
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/etc/os-release")).unwrap(), "ID=fixture\n");
    assert_eq!(run(s(&bundle.join("rootfs/app/hello")), &[]), "hello from linux/amd64\n");

    // A platform the base lacks is named in the error.
    let err = image_failure(&strings(&[
        "--platform",
        &format!("linux/s390x={}", amd64.display()),
        "--name",
        "hello",
        "--base",
        &format!("oci:{}:base", base.display()),
    ]));
    assert!(err.contains("has no linux/s390x (it has: linux/amd64, linux/arm/v7, linux/arm64)"), "{err}");
}

#[test]
fn a_base_image_in_the_same_registry_is_mounted_not_uploaded() {
    let fixture = fixture();
    let registry = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/base:v1", registry.host());
    let mut args = Vec::new();
    for (platform, _) in &fixture.binaries {
        // A different file per platform, so that each has a base layer of its own to mount.
        let release = dir.path().join(platform.replace('/', "-"));
        std::fs::write(&release, format!("ID=fixture-{platform}\n")).unwrap();
        args.extend(["--platform".to_owned(), format!("{platform}={}", release.display())]);
    }
    args.extend(strings(&["--name", "os-release", "--dir", "/etc", "--no-cache", "--push", &base]));
    image(&args);

    let mut args = fixture.platform_args();
    let app = format!("{}/app:v1", registry.host());
    args.extend(strings(&["--name", "hello", "--no-cache", "--base", &base, "--push", &app]));
    let report = image(&args);
    let push = &report["push"];
    assert_eq!(push["blobs_mounted"], 3, "each platform's base layer is mounted from base: {push}");
    assert_eq!(push["blobs_uploaded"], 6, "our layers and configs are uploaded: {push}");
    let mounts = registry.requests().iter().filter(|(m, p)| m == "POST" && p.contains("mount=")).count();
    assert_eq!(mounts, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_are_cached_in_cached_and_never_rebuilt_or_reuploaded() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let server =
        cached::embedded::Embedded::start(&dir.path().join("data"), &[]).await.expect("cached starts");
    let url = server.url();
    let run_image = |layout: &Path| {
        let mut args =
            strings(&["--server", &url, "image", "--json", "--name", "hello", "--oci-layout", s(layout)]);
        args.extend(fixture.platform_args());
        let output = Command::new(CACHECTL).args(&args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.stderr.is_empty(), "no warnings: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let stats = || {
        let output = Command::new(CACHECTL).args(["--server", &url, "stats", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let first = run_image(&dir.path().join("one"));
    assert!(first["images"].as_array().unwrap().iter().all(|i| i["layer_cached"] == false));
    let blobs_after_first = stats()["store"]["blobs"].as_u64().unwrap();
    assert_eq!(blobs_after_first, 6, "three layers and three records");

    let second = run_image(&dir.path().join("two"));
    assert!(second["images"].as_array().unwrap().iter().all(|i| i["layer_cached"] == true), "{second}");
    assert_eq!(second["index"], first["index"]);
    assert_eq!(blobs(&dir.path().join("one")), blobs(&dir.path().join("two")));
    let stats = stats();
    assert_eq!(stats["store"]["blobs"].as_u64().unwrap(), blobs_after_first, "nothing uploaded again");
    let namespace =
        stats["namespaces"].as_array().unwrap().iter().find(|n| n["namespace"] == "default").unwrap();
    assert_eq!(
        (namespace["go_hits"].as_u64(), namespace["go_puts"].as_u64()),
        (Some(3), Some(3)),
        "{namespace}"
    );
    server.stop().await.unwrap();
}

/// `cachectl image --name hello` of `binary` for linux/amd64 in `namespace`, written to
/// `layout`; its JSON report.
fn image_in(url: &str, namespace: &str, binary: &Path, layout: &Path) -> Value {
    let platform = format!("linux/amd64={}", binary.display());
    let args = ["--server", url, "image", "--json", "--namespace", namespace, "--name", "hello"];
    let output = Command::new(CACHECTL)
        .args(args)
        .args(["--oci-layout", s(layout), "--platform", &platform])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout).unwrap()
}

/// The layer cache key of `binary` as `image_in` builds it.
fn hello_layer_key(binary: &Path) -> [u8; 32] {
    let options = cached_oci::layer::LayerOptions {
        path: "/app/hello".into(),
        uid: 0,
        gid: 0,
        mode: 0o755,
        mtime: 0,
        compression: cached_oci::Compression::Gzip,
    };
    cached_oci::cache::layer_key(&cached_client::transfer::hash_file(binary).unwrap(), &options)
}

/// Layer records are kept per namespace: whoever may write `pr-1`'s action cache cannot choose
/// the layer `main`'s image gets. (With one namespace for every caller's records, the forged
/// record below was what `main` got.)
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_record_written_in_one_namespace_is_never_used_in_another() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let server =
        cached::embedded::Embedded::start(&dir.path().join("data"), &[]).await.expect("cached starts");
    let url = server.url();
    let image_in = |namespace: &str, binary: &Path, name: &str| {
        image_in(&url, namespace, binary, &dir.path().join(name))
    };
    let (wanted, other) = (fixture.path("linux/amd64"), fixture.path("linux/arm64"));
    let honest = image_in("main", wanted, "honest");

    // In pr-1: the layer of other bytes, recorded under the key of the wanted binary's layer.
    image_in("pr-1", other, "other");
    let client = cached_client::Client::connect(&url, &Default::default()).await.unwrap();
    let forger = cached_oci::LayerCache::new(client, "pr-1");
    let forged =
        forger.lookup(&[hello_layer_key(other)]).await.unwrap()[0].clone().expect("pr-1 cached its layer");
    forger.store(hello_layer_key(wanted), &forged, Path::new("/nonexistent")).await.unwrap();
    let in_pr = image_in("pr-1", wanted, "pr-1");
    assert_eq!(in_pr["images"][0]["layer_cached"], true, "the forged record is pr-1's own: {in_pr}");
    assert_ne!(in_pr["index"], honest["index"]);

    // main's next build of the wanted binary never sees pr-1's record.
    let again = image_in("main", wanted, "again");
    assert_eq!(again["images"][0]["layer_cached"], true, "main's own record: {again}");
    assert_eq!(again["index"], honest["index"], "main got a layer pr-1 recorded");
    server.stop().await.unwrap();
}

/// A layer record is a few hundred bytes: an entry that names a large blob as the record (any
/// writer of the namespace can make one) is a miss, and the blob is never fetched.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_naming_a_huge_record_is_a_miss_and_never_fetched() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let server =
        cached::embedded::Embedded::start(&dir.path().join("data"), &[]).await.expect("cached starts");
    let url = server.url();
    let metrics = server.metrics_addr;
    let store_reads = || async move {
        let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let line = text.lines().find(|line| line.starts_with("cached_store_read_bytes")).unwrap().to_owned();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };

    let client = cached_client::Client::connect(&url, &Default::default()).await.unwrap();
    // Bytes zstd cannot shrink, so what the store reads is what the blob holds.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let huge: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let digest =
        cached_client::transfer::upload_files(&client, &[write_temp(dir.path(), &huge)], 1).await.unwrap()[0];
    let binary = fixture.path("linux/amd64");
    let key = hello_layer_key(binary);
    let entry = proto::v1::GoEntry {
        output_id: cached_oci::Sha256::of(&huge).0.to_vec().into(),
        size: digest.size,
        digest: Some(digest.to_wire()),
        time_unix_nanos: 1,
    };
    let put = proto::v1::GoPutRequest {
        namespace: "main".into(),
        action_id: key.to_vec().into(),
        entry: Some(entry),
    };
    client.go.clone().put(put).await.unwrap();

    let before = store_reads().await;
    let report = image_in(&url, "main", binary, &dir.path().join("layout"));
    assert_eq!(report["images"][0]["layer_cached"], false, "{report}");
    let read = store_reads().await - before;
    assert!(read < 1 << 20, "the image build read {read} bytes from the store: it fetched the huge record");
    server.stop().await.unwrap();
}

fn write_temp(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("huge-record");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn platforms_with_one_binary_share_a_cached_layer() {
    // Their layer keys are equal, and cached refuses a GetMany that names a key twice.
    let binary = fixture().path("linux/amd64");
    let dir = tempfile::tempdir().unwrap();
    let server =
        cached::embedded::Embedded::start(&dir.path().join("data"), &[]).await.expect("cached starts");
    for run in ["one", "two"] {
        let layout = dir.path().join(run);
        let mut args = strings(&["--server", &server.url(), "image", "--json", "--name", "hello"]);
        args.extend(strings(&["--oci-layout", s(&layout)]));
        for platform in ["linux/amd64", "linux/arm64"] {
            args.extend(["--platform".to_owned(), format!("{platform}={}", binary.display())]);
        }
        let output = Command::new(CACHECTL).args(&args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.stderr.is_empty(), "no warnings: {}", String::from_utf8_lossy(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let cached = report["images"].as_array().unwrap().iter().all(|i| i["layer_cached"] == true);
        assert_eq!(cached, run == "two", "{report}");
    }
    server.stop().await.unwrap();
}

#[test]
fn without_a_server_images_still_build_with_one_warning() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut args = strings(&["image", "--name", "hello", "--oci-layout", s(&dir.path().join("layout"))]);
    args.extend(fixture.platform_args());
    let output = cachectl(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("cachectl: warning: layer cache off: cannot reach cached"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("linux/arm/v7  sha256:")
            && stdout.contains("(built)")
            && stdout.contains("index sha256:"),
        "{stdout}"
    );
}

#[test]
fn malformed_references_and_credentials_give_clear_errors() {
    let fixture = fixture();
    let amd64 = format!("linux/amd64={}", fixture.path("linux/amd64").display());
    let push = |target: &str, extra: &[&str]| {
        let mut args = strings(&["--platform", &amd64, "--name", "hello", "--push", target]);
        args.extend(strings(extra));
        image_failure(&args)
    };
    for (target, expected) in [
        ("Bad/Repo:v1", "invalid image reference \"Bad/Repo:v1\": repository \"Bad/Repo\" must be lowercase"),
        ("127.0.0.1:5000/app:", "tag \"\" must be 1 to 128"),
        ("https://127.0.0.1:5000/app", "leave out the scheme"),
        ("127.0.0.1:5000/app@sha256:1234", "64 lowercase hex digits"),
        ("127.0.0.1:99999/app", "registry port \"99999\""),
    ] {
        let err = push(target, &[]);
        assert!(err.contains(expected), "{target}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    for (platform, expected) in [
        ("windows/amd64=x", "only linux images are supported"),
        ("linux/amd64", "expected OS/ARCH=PATH"),
        ("linux/amd64=/no/such/binary", "/no/such/binary: No such file"),
    ] {
        let err = image_failure(&strings(&["--platform", platform, "--name", "hello"]));
        assert!(err.contains(expected), "{platform}: {err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let htpasswd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image/htpasswd");
    let registry = Registry::start(Some(&htpasswd));
    let target = format!("{}/app:v1", registry.host());
    let config = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let auth = |user_password: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(user_password)
    };
    let host = registry.host();

    let none = config("none.json", "{}");
    let err = push(&target, &["--docker-config", &none]);
    assert!(err.contains(&format!("registry {host} requires a user name and password")), "{err}");
    assert!(err.contains(&format!("docker login {host}")), "{err}");

    let bad = config("bad.json", &format!(r#"{{"auths": {{"{host}": {{"auth": "not base64!"}}}}}}"#));
    let err = push(&target, &["--docker-config", &bad]);
    assert!(err.contains("bad.json auths[") && err.contains("is not valid base64"), "{err}");

    let colon = config("colon.json", &format!(r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#, auth("ci")));
    let err = push(&target, &["--docker-config", &colon]);
    assert!(err.contains("decodes to text without a ':'"), "{err}");

    let broken = config("broken.json", "{\"auths\": ");
    let err = push(&target, &["--docker-config", &broken]);
    assert!(err.contains("broken.json is not a valid docker config.json"), "{err}");

    let wrong =
        config("wrong.json", &format!(r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#, auth("ci:wrong")));
    let err = push(&target, &["--docker-config", &wrong]);
    assert!(err.contains(&format!("registry {host} refused the credentials (user \"ci\" from ")), "{err}");
    assert!(!err.contains("wrong\""), "the password is never printed: {err}");

    // The right password, given as username and password this time, pushes.
    let right = config(
        "right.json",
        &format!(r#"{{"auths": {{"http://{host}": {{"username": "{USER}", "password": "{PASSWORD}"}}}}}}"#),
    );
    let report = image(&strings(&[
        "--platform",
        &amd64,
        "--name",
        "hello",
        "--no-cache",
        "--push",
        &target,
        "--docker-config",
        &right,
    ]));
    assert_eq!(report["push"]["blobs_uploaded"], 2);
}

/// A front before a plain registry that forwards everything, and either
/// - demands bearer tokens, as Docker Hub, GHCR and most hosted registries do: a request
///   without `Bearer <token>` gets a 401 challenge naming the token realm, and the realm hands
///   out the token for the right basic credentials; or
/// - acknowledges less than was sent in chunked uploads (a `Range` short of the chunk), the
///   kind of answer a client must check since distribution 2.8 accepts a gap until the end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bearer,
    ShortRange,
}

struct Front {
    addr: std::net::SocketAddr,
    scopes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

const TOKEN: &str = "t0k3n";

impl Front {
    async fn start(upstream: String, mode: Mode) -> Self {
        use axum::body::Body;
        use axum::extract::Request;
        use axum::http::{HeaderValue, StatusCode, header};
        use axum::response::Response;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scopes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = scopes.clone();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let handler = move |request: Request| {
            let (seen, http, upstream) = (seen.clone(), http.clone(), upstream.clone());
            async move {
                let auth =
                    request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).unwrap_or("");
                let auth = auth.to_owned();
                if mode == Mode::Bearer && request.uri().path() == "/token" {
                    use base64::Engine;
                    let basic = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
                    );
                    if auth != basic {
                        return Response::builder()
                            .status(StatusCode::UNAUTHORIZED)
                            .body(Body::empty())
                            .unwrap();
                    }
                    let query = request.uri().query().unwrap_or("").to_owned();
                    seen.lock().unwrap().push(query);
                    return Response::new(Body::from(format!(r#"{{"token": "{TOKEN}"}}"#)));
                }
                if mode == Mode::Bearer && auth != format!("Bearer {TOKEN}") {
                    let challenge = format!(r#"Bearer realm="http://{addr}/token",service="front""#);
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header(header::WWW_AUTHENTICATE, challenge)
                        .body(Body::from(
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
                        ))
                        .unwrap();
                }
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let url = format!(
                    "http://{upstream}{}",
                    parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                );
                let mut forward = http.request(parts.method.clone(), url);
                for (name, value) in &parts.headers {
                    if name != header::HOST && name != header::AUTHORIZATION {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.body(body).send().await.unwrap();
                let mut response = Response::builder().status(answer.status().as_u16());
                let patch = parts.method == axum::http::Method::PATCH;
                for (name, value) in answer.headers() {
                    if mode == Mode::ShortRange && patch && name == header::RANGE {
                        response = response.header(name, "0-0");
                        continue;
                    }
                    // Upload sessions must come back through the front.
                    let value = match value.to_str() {
                        Ok(text) if name == header::LOCATION => {
                            HeaderValue::from_str(&text.replace(&upstream, &addr.to_string())).unwrap()
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
        Self { addr, scopes, task }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_are_fetched_with_the_config_credentials() {
    let fixture = fixture();
    let registry = Registry::start(None);
    let front = Front::start(registry.host(), Mode::Bearer).await;
    let dir = tempfile::tempdir().unwrap();
    let host = front.addr.to_string();
    let target = format!("{host}/team/app:v1");
    let amd64 = format!("linux/amd64={}", fixture.path("linux/amd64").display());
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"auths": {{"{host}": {{"username": "{USER}", "password": "{PASSWORD}"}}}}}}"#),
    )
    .unwrap();
    let args = strings(&[
        "--platform",
        &amd64,
        "--name",
        "hello",
        "--no-cache",
        "--push",
        &target,
        "--docker-config",
        s(&config),
    ]);
    let report = cached_client::task::spawn_blocking("cachectl image", move || image(&args)).await.unwrap();
    assert_eq!(report["push"]["blobs_uploaded"], 2, "{report}");
    let scopes = front.scopes.lock().unwrap().clone();
    assert!(!scopes.is_empty() && scopes.iter().all(|q| q.contains("service=front")), "{scopes:?}");
    assert!(scopes[0].contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush"), "{scopes:?}");
    // What landed in the registry behind the front is what we pushed.
    let manifest =
        registry.requests().iter().filter(|(m, p)| m == "PUT" && p == "/v2/team/app/manifests/v1").count();
    assert_eq!(manifest, 1);

    // A wrong password is refused at the token service, and said so.
    std::fs::write(
        &config,
        format!(r#"{{"auths": {{"{host}": {{"username": "{USER}", "password": "nope"}}}}}}"#),
    )
    .unwrap();
    let args =
        strings(&["--platform", &amd64, "--name", "hello", "--push", &target, "--docker-config", s(&config)]);
    let err =
        cached_client::task::spawn_blocking("cachectl image", move || image_failure(&args)).await.unwrap();
    assert!(err.contains(&format!("the token service of registry {host}")), "{err}");
    assert!(err.contains("refused user \"ci\" from"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_the_registry_did_not_fully_take_stops_the_push() {
    let fixture = fixture();
    let registry = Registry::start(None);
    let front = Front::start(registry.host(), Mode::ShortRange).await;
    let target = format!("{}/app:v1", front.addr);
    let amd64 = format!("linux/amd64={}", fixture.path("linux/amd64").display());
    let args =
        strings(&["--platform", &amd64, "--name", "hello", "--push", &target, "--chunk-size", "256KiB"]);
    let err =
        cached_client::task::spawn_blocking("cachectl image", move || image_failure(&args)).await.unwrap();
    assert!(err.contains("the registry holds \"0-0\", not 0-262143"), "{err}");
    assert!(err.contains("rather than pushing a corrupt blob"), "{err}");
    let manifests =
        registry.requests().iter().filter(|(m, p)| m == "PUT" && p.contains("/manifests/")).count();
    assert_eq!(manifests, 0, "nothing that references the blob was pushed");
}
