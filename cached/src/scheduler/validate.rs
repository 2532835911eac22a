//! What a submitted job may ask of the agents. Agents run `go build` with what a job says, so
//! flags and environment are allow-listed: `-toolexec`, `-exec`, `-overlay` or a `CC` of the
//! submitter's choosing would run arbitrary programs on every agent.

use proto::v1::{ImageSpec, JobSpec, OciBlob, Target, TaskResult};
use proto::{Digest, Platform};

use crate::error::{Error, Result};

/// Targets in one job.
pub const MAX_TARGETS: usize = 64;
const MAX_PACKAGES: usize = 256;
const MAX_FLAGS: usize = 64;

/// `go build` flags a job may pass, with or without `=value`.
const ALLOWED_FLAGS: &[&str] = &[
    "-trimpath",
    "-ldflags",
    "-gcflags",
    "-asmflags",
    "-tags",
    "-buildmode",
    "-buildvcs",
    "-race",
    "-msan",
    "-asan",
    "-cover",
    "-covermode",
    "-coverpkg",
    "-v",
    "-x",
    "-a",
    "-pgo",
];

/// Environment variables a job may set for its builds. The target's GOOS, GOARCH, level
/// variable, CGO_ENABLED and CC come from the target, the rest from the agent.
const ALLOWED_ENV: &[&str] = &[
    "GOFLAGS",
    "GOEXPERIMENT",
    "GODEBUG",
    "CGO_CFLAGS",
    "CGO_CPPFLAGS",
    "CGO_CXXFLAGS",
    "CGO_FFLAGS",
    "CGO_LDFLAGS",
    "SOURCE_DATE_EPOCH",
];

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// Checks one build flag.
pub fn check_flag(flag: &str) -> Result<()> {
    let name = flag.split_once('=').map_or(flag, |(name, _)| name);
    let name = name.strip_prefix('-').map_or(name, |rest| if rest.starts_with('-') { rest } else { name });
    if !ALLOWED_FLAGS.contains(&name) {
        return Err(invalid(format!(
            "build flag {flag:?} is not allowed in a job; allowed: {} (with =value where go takes one)",
            ALLOWED_FLAGS.join(" ")
        )));
    }
    // A profile path would read a file of the submitter's choosing on the agent.
    if name == "-pgo" && !matches!(flag.split_once('=').map(|(_, v)| v), Some("off" | "auto")) {
        return Err(invalid(format!("build flag {flag:?}: only -pgo=off and -pgo=auto")));
    }
    Ok(())
}

fn check_relative(what: &str, path: &str) -> Result<()> {
    if path.starts_with('/') || path.split('/').any(|part| part == ".." || part.contains('\0')) {
        return Err(invalid(format!("{what} {path:?} must be a relative path inside the source tree")));
    }
    Ok(())
}

/// Checks a submitted spec and fills in defaults.
pub fn check_spec(spec: &mut JobSpec) -> Result<()> {
    Digest::from_wire(spec.source_root.as_ref())
        .map_err(|err| invalid(format!("source_root: {err}; upload the tree first")))?;
    if let Some(proxy) = &spec.module_proxy {
        Digest::from_wire(Some(proxy)).map_err(|err| invalid(format!("module_proxy: {err}")))?;
    }
    check_relative("module_dir", &spec.module_dir)?;
    if spec.packages.is_empty() {
        spec.packages.push(".".to_owned());
    }
    if spec.packages.len() > MAX_PACKAGES {
        return Err(invalid(format!("at most {MAX_PACKAGES} package patterns per job")));
    }
    for package in &spec.packages {
        if package.is_empty() || package.starts_with('-') || package.contains('\0') {
            return Err(invalid(format!("{package:?} is not a package pattern")));
        }
        if package.starts_with('.') || package.starts_with('/') {
            check_relative("package", package.trim_start_matches("./"))?;
        }
    }
    if spec.targets.is_empty() || spec.targets.len() > MAX_TARGETS {
        return Err(invalid(format!("a job needs 1 to {MAX_TARGETS} targets, got {}", spec.targets.len())));
    }
    let mut seen = Vec::new();
    for target in &spec.targets {
        check_target(target)?;
        let platform = Platform::from_wire(target).map_err(|err| invalid(err.to_string()))?;
        if seen.contains(&platform) {
            return Err(invalid(format!("target {platform} is listed twice")));
        }
        seen.push(platform);
    }
    if spec.build_flags.len() > MAX_FLAGS {
        return Err(invalid(format!("at most {MAX_FLAGS} build flags per job")));
    }
    for flag in &spec.build_flags {
        check_flag(flag)?;
    }
    for var in &spec.env {
        if !ALLOWED_ENV.contains(&var.name.as_str()) {
            return Err(invalid(format!(
                "environment variable {} is not allowed in a job; allowed: {}",
                var.name,
                ALLOWED_ENV.join(", ")
            )));
        }
        if var.name == "GOFLAGS" {
            for flag in var.value.split_whitespace() {
                check_flag(flag)?;
            }
        }
    }
    if spec.go_version.len() > 64 || spec.go_version.contains(char::is_whitespace) {
        return Err(invalid(format!("go_version {:?} is not a Go version", spec.go_version)));
    }
    if let Some(image) = &spec.image {
        check_image(image, &spec.targets)?;
    }
    Ok(())
}

/// Entries of the image's env and labels.
const MAX_IMAGE_ENTRIES: usize = 64;
const MAX_IMAGE_TEXT: usize = 4096;

/// Checks an image spec. Agents check the rest (platforms, the binary) with the image library
/// itself; what is checked here fails a job at submission instead of on every agent.
fn check_image(image: &ImageSpec, targets: &[Target]) -> Result<()> {
    if !image.base.is_empty() {
        return Err(Error::FailedPrecondition(
            "base images are not supported in jobs yet; layer the outputs with `cachectl image --base`"
                .to_owned(),
        ));
    }
    // Container images are linux only; the other targets of the job are built, not imaged.
    let linux: Vec<&Target> = targets.iter().filter(|t| t.goos == "linux").collect();
    if linux.is_empty() {
        return Err(invalid("an image needs at least one linux target".to_owned()));
    }
    // cgo does not change the image platform.
    for (i, a) in linux.iter().enumerate() {
        if let Some(b) = linux[i + 1..].iter().find(|b| b.goarch == a.goarch && b.arch_level == a.arch_level)
        {
            return Err(invalid(format!(
                "targets {} and {} would be the same image platform",
                proto::platform::label(a),
                proto::platform::label(b)
            )));
        }
    }
    if !image.binary.is_empty() {
        proto::platform::check_entry_name(&image.binary).map_err(invalid)?;
    }
    if !image.dir.is_empty()
        && (!image.dir.starts_with('/')
            || image.dir.split('/').any(|part| part == ".." || part.contains('\0')))
    {
        return Err(invalid(format!("image dir {:?} must be an absolute path", image.dir)));
    }
    if !matches!(image.compression.as_str(), "" | "gzip" | "zstd") {
        return Err(invalid(format!("image compression {:?}: expected gzip or zstd", image.compression)));
    }
    if image.env.len() > MAX_IMAGE_ENTRIES || image.labels.len() > MAX_IMAGE_ENTRIES {
        return Err(invalid(format!("at most {MAX_IMAGE_ENTRIES} image env entries and labels")));
    }
    let texts = image.env.iter().chain(image.labels.keys()).chain(image.labels.values());
    for text in texts.chain([&image.user, &image.dir, &image.binary]) {
        if text.len() > MAX_IMAGE_TEXT || text.contains('\0') {
            return Err(invalid(format!("image spec entry {text:.40?}... is too long or holds NUL")));
        }
    }
    if image.env.iter().any(|entry| entry.split_once('=').is_none_or(|(key, _)| key.is_empty())) {
        return Err(invalid("image env entries are KEY=VALUE".to_owned()));
    }
    Ok(())
}

/// `sha256:<64 lowercase hex>`.
fn is_sha256(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn check_blob(blob: Option<&OciBlob>, what: &str) -> Result<()> {
    let blob = blob.ok_or_else(|| invalid(format!("{what} is missing")))?;
    let cas = Digest::from_wire(blob.cas.as_ref()).map_err(|err| invalid(format!("{what}: {err}")))?;
    if !is_sha256(&blob.digest) || cas.size != blob.size || blob.media_type.is_empty() {
        return Err(invalid(format!("{what} is not a valid OCI blob")));
    }
    Ok(())
}

/// Checks what an agent reports of a successful task: output names and digests, and the image
/// blobs it recorded.
pub fn check_result(result: &TaskResult) -> Result<()> {
    for output in &result.outputs {
        Digest::from_wire(output.digest.as_ref())?;
        proto::platform::check_entry_name(&output.name).map_err(Error::InvalidArgument)?;
    }
    if let Some(image) = &result.image {
        check_blob(image.manifest.as_ref(), "the image manifest")?;
        check_blob(image.config.as_ref(), "the image config")?;
        check_blob(image.layer.as_ref(), "the image layer")?;
        if image.os.is_empty() || image.architecture.is_empty() {
            return Err(invalid("the image has no platform".to_owned()));
        }
    }
    if let Some(index) = &result.index {
        check_blob(Some(index), "the image index")?;
    }
    Ok(())
}

fn check_target(target: &Target) -> Result<()> {
    if !target.cc.is_empty() && !target.cgo {
        return Err(invalid(format!(
            "target {}/{} names a C compiler but not cgo",
            target.goos, target.goarch
        )));
    }
    // The C compiler is matched against the ones agents report by name; it is never a path
    // the submitter chooses.
    if target.cc.contains('/') || target.cc.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "C compiler {:?} must be a command name such as aarch64-linux-gnu-gcc",
            target.cc
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::EnvVar;

    fn spec() -> JobSpec {
        JobSpec {
            source_root: Some(Digest::of(b"tree").to_wire()),
            targets: vec!["linux/amd64".parse::<Platform>().unwrap().to_wire("")],
            ..JobSpec::default()
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let mut ok = spec();
        check_spec(&mut ok).unwrap();
        assert_eq!(ok.packages, ["."]);

        let mut flags = spec();
        flags.build_flags = vec!["-trimpath".into(), "-ldflags=-s -w".into(), "--tags=netgo".into()];
        check_spec(&mut flags).unwrap();
        for bad in
            ["-toolexec=/bin/sh", "-exec", "-overlay=x.json", "-o=/etc/passwd", "-mod=mod", "-pgo=/x.pprof"]
        {
            let mut job = spec();
            job.build_flags = vec![bad.to_owned()];
            assert!(check_spec(&mut job).is_err(), "{bad}");
        }
        let mut env = spec();
        env.env = vec![EnvVar { name: "GOFLAGS".into(), value: "-trimpath -toolexec=x".into() }];
        assert!(check_spec(&mut env).is_err());
        env.env = vec![EnvVar { name: "CC".into(), value: "sh".into() }];
        assert!(check_spec(&mut env).is_err());

        let mut twice = spec();
        twice.targets.push(twice.targets[0].clone());
        assert!(check_spec(&mut twice).unwrap_err().to_string().contains("twice"));
        let mut escape = spec();
        escape.module_dir = "../x".into();
        assert!(check_spec(&mut escape).is_err());
        let mut package = spec();
        package.packages = vec!["-toolexec=x".into()];
        assert!(check_spec(&mut package).is_err());
        let mut none = spec();
        none.source_root = None;
        assert!(check_spec(&mut none).is_err());
    }

    #[test]
    fn image_specs() {
        let imaged = |targets: &[&str], image: ImageSpec| {
            let mut job = spec();
            job.targets = targets.iter().map(|t| t.parse::<Platform>().unwrap().to_wire("")).collect();
            job.image = Some(image);
            check_spec(&mut job)
        };
        let plain = ImageSpec::default();
        imaged(&["linux/amd64", "linux/arm64", "darwin/arm64"], plain.clone()).unwrap();
        imaged(&["linux/amd64", "linux/amd64/v3"], plain.clone()).unwrap();
        let err = imaged(&["darwin/arm64", "windows/amd64"], plain.clone()).unwrap_err();
        assert!(err.to_string().contains("linux target"), "{err}");
        let err = imaged(&["linux/amd64", "linux/amd64+cgo"], plain.clone()).unwrap_err();
        assert!(err.to_string().contains("same image platform"), "{err}");
        let based = ImageSpec { base: "cgr.dev/chainguard/static".into(), ..plain.clone() };
        assert!(matches!(imaged(&["linux/amd64"], based), Err(Error::FailedPrecondition(_))));
        for bad in [
            ImageSpec { dir: "app".into(), ..plain.clone() },
            ImageSpec { dir: "/app/../etc".into(), ..plain.clone() },
            ImageSpec { binary: "a/b".into(), ..plain.clone() },
            ImageSpec { compression: "xz".into(), ..plain.clone() },
            ImageSpec { env: vec!["NOVALUE".into()], ..plain.clone() },
        ] {
            assert!(imaged(&["linux/amd64"], bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn task_results_with_images() {
        let blob = |bytes: &[u8]| OciBlob {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: bytes.len() as u64,
            cas: Some(Digest::of(bytes).to_wire()),
        };
        let image = proto::v1::PlatformImage {
            os: "linux".into(),
            architecture: "amd64".into(),
            manifest: Some(blob(b"m")),
            config: Some(blob(b"c")),
            layer: Some(blob(b"l")),
            ..Default::default()
        };
        let good =
            TaskResult { image: Some(image.clone()), index: Some(blob(b"i")), ..TaskResult::default() };
        check_result(&good).unwrap();
        let short = OciBlob { digest: "sha256:abc".into(), ..blob(b"m") };
        let bad = TaskResult {
            image: Some(proto::v1::PlatformImage { manifest: Some(short), ..image }),
            ..TaskResult::default()
        };
        assert!(check_result(&bad).is_err());
    }
}
