//! Whole specs through [`check_spec`]: defaults, each class of refusal, and that messages name
//! what was refused.

use std::time::Duration;

use proto::v1::{EnvVar, ImageSpec};

use super::*;

fn spec() -> JobSpec {
    JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: vec!["linux/amd64".parse::<Platform>().unwrap().to_wire("")],
        ..JobSpec::default()
    }
}

fn check(mut job: JobSpec) -> Result<JobSpec> {
    check_spec(&mut job, &Settings::default())?;
    Ok(job)
}

fn refused(job: JobSpec) -> String {
    match check(job) {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

fn with_flags(flags: &[&str]) -> JobSpec {
    JobSpec { build_flags: flags.iter().map(|f| (*f).to_owned()).collect(), ..spec() }
}

fn with_env(name: &str, value: &str) -> JobSpec {
    JobSpec { env: vec![EnvVar { name: name.into(), value: value.into() }], ..spec() }
}

#[test]
fn defaults_and_refusals() {
    assert_eq!(check(spec()).unwrap().packages, ["."]);
    // The namespace as every check reads it: the lease credential's, reuse's and purges'.
    assert_eq!(check(spec()).unwrap().namespace, "default");
    check(with_flags(&["-trimpath", "-ldflags=-s -w", "--tags=netgo"])).unwrap();
    for bad in
        ["-toolexec=/bin/sh", "-exec", "-overlay=x.json", "-o=/etc/passwd", "-mod=mod", "-pgo=/x.pprof"]
    {
        assert!(check(with_flags(&[bad])).is_err(), "{bad}");
    }
    assert!(check(with_env("GOFLAGS", "-trimpath -toolexec=x")).is_err());
    assert!(check(with_env("CC", "sh")).is_err());

    let mut twice = spec();
    twice.targets.push(twice.targets[0].clone());
    assert!(refused(twice).contains("twice"));
    assert!(check(JobSpec { module_dir: "../x".into(), ..spec() }).is_err());
    assert!(check(JobSpec { packages: vec!["-toolexec=x".into()], ..spec() }).is_err());
    assert!(check(JobSpec { source_root: None, ..spec() }).is_err());
}

/// The attacks of the hardening issue, with the message each gets.
#[test]
fn values_that_run_programs_or_write_files() {
    let cases: &[(JobSpec, &str)] = &[
        (
            with_flags(&["-ldflags=-extld=./x"]),
            "build flag -ldflags=-extld=./x: -extld runs a program of the job's choosing on the agent; \
             a job may pass -ldflags with -s, -w, -X, -buildid, -B, -H, -compressdwarf and -linkmode only",
        ),
        (with_flags(&["-ldflags=-extldflags=-fuse-ld=./ld"]), "-extldflags passes flags to the C linker"),
        (with_flags(&["-ldflags=all=-s -extldflags '-B ./x'"]), "-extldflags passes flags"),
        (with_flags(&["-ldflags=-X @/etc/cached/token"]), "starts with @"),
        (
            with_flags(&["-gcflags=-cpuprofile=/tmp/x"]),
            "build flag -gcflags=-cpuprofile=/tmp/x: -cpuprofile writes a file",
        ),
        (with_flags(&["-gcflags=all=-importcfg=/x"]), "-importcfg reads files"),
        (with_flags(&["-asmflags=-o=/tmp/x"]), "-o writes a file"),
        (with_flags(&["-buildmode=plugin"]), "-buildmode may be default, exe, pie only"),
        (with_flags(&["-tags=a$b"]), "build tag \"a$b\""),
        (with_flags(&["-ldflags"]), "-ldflags takes its value after ="),
        (
            with_env("GOFLAGS", "'-ldflags=-extld=./x'"),
            "environment GOFLAGS='-ldflags=-extld=./x': -extld runs",
        ),
        (
            with_env("CGO_LDFLAGS", "-fplugin=./p.so"),
            "environment CGO_LDFLAGS=-fplugin=./p.so: \"-fplugin=./p.so\"",
        ),
        (with_env("CGO_LDFLAGS", "-wrapper /bin/sh,-c"), "\"-wrapper\" is not among the flags Go allows"),
        (with_env("CGO_CFLAGS", "@/etc/passwd"), "read more flags from that file"),
        (with_env("CGO_CFLAGS", "-O2 -B ./evil"), "\"-B\" is not among"),
        (with_env("CGO_LDFLAGS_ALLOW", ".*"), "widens Go's safe-flag rules"),
        (with_env("GOEXPERIMENT", "x;y"), "not an experiment name"),
        (with_env("GODEBUG", "a b"), "not a setting"),
        (with_env("SOURCE_DATE_EPOCH", "soon"), "decimal digits"),
    ];
    for (job, says) in cases {
        let message = refused(job.clone());
        assert!(message.contains(says), "{job:?}:\n  {message}\n  wanted: {says}");
    }
}

#[test]
fn bounds() {
    let huge = JobSpec { timeout_seconds: u64::MAX, ..spec() };
    assert!(refused(huge).contains("max_job_timeout (1day)"));
    let settings = Settings { max_job_timeout: Duration::from_secs(60), ..Settings::default() };
    let mut minute = JobSpec { timeout_seconds: 60, ..spec() };
    check_spec(&mut minute, &settings).unwrap();
    minute.timeout_seconds = 61;
    assert!(check_spec(&mut minute, &settings).is_err());
    check(JobSpec { timeout_seconds: 86400, priority: -1000, ..spec() }).unwrap();
    assert!(refused(JobSpec { priority: 1001, ..spec() }).contains("priority 1001 is out of range"));
    assert!(refused(JobSpec { priority: i32::MIN, ..spec() }).contains("out of range"));

    let long = "a".repeat(bounds::MAX_FLAG + 1);
    assert!(refused(with_flags(&[&format!("-tags={long}")])).contains("at most 8192"));
    assert!(refused(with_env("GODEBUG", &long)).contains("at most 8192"));
    // Each flag within its bounds, all of them together past the spec's.
    let tags = format!("-tags={}", "a".repeat(bounds::MAX_FLAG - 6));
    let within = with_flags(&[tags.as_str(); 7]);
    check(within).unwrap();
    let past = with_flags(&[tags.as_str(); 9]);
    assert!(refused(past).contains("at most 64 KiB"));
    let many = vec!["-v"; bounds::MAX_FLAGS + 1];
    assert!(refused(with_flags(&many)).contains("at most 64 build flags"));
    let packages = JobSpec { packages: vec![".".into(); MAX_PACKAGES + 1], ..spec() };
    assert!(refused(packages).contains("at most 256 package patterns"));
    let deep = JobSpec { module_dir: "a/".repeat(1000), ..spec() };
    assert!(refused(deep).contains("at most 1024"));
    let targets = JobSpec { targets: vec![spec().targets[0].clone(); MAX_TARGETS + 1], ..spec() };
    assert!(refused(targets).contains("1 to 64 targets"));
    assert!(refused(JobSpec { go_version: "go1.26 x".into(), ..spec() }).contains("not a Go version"));
    assert!(refused(JobSpec { go_version: "g".repeat(65), ..spec() }).contains("at most 64"));
    check(JobSpec { go_version: "go1.26.8".into(), ..spec() }).unwrap();
}

#[test]
fn control_characters_anywhere() {
    let cases = [
        JobSpec { module_dir: "a\0b".into(), ..spec() },
        JobSpec { packages: vec!["./x\n-toolexec=y".into()], ..spec() },
        with_flags(&["-ldflags=-s\n-extld=x"]),
        with_flags(&["-tags=a\tb"]),
        with_env("GODEBUG", "a=1\0"),
        with_env("GO\nFLAGS", ""),
        JobSpec { go_version: "go1.26\u{1b}[2J".into(), ..spec() },
    ];
    for job in cases {
        assert!(refused(job.clone()).contains("control character"), "{job:?}");
    }
    assert!(refused(with_flags(&["-ldflags=-s\u{a0}-w"])).contains("plain spaces"));
}

#[test]
fn c_compilers_are_names() {
    let cgo = |cc: &str| {
        let mut target = "linux/arm64+cgo".parse::<Platform>().unwrap().to_wire(cc);
        target.cgo = true;
        JobSpec { targets: vec![target], ..spec() }
    };
    check(cgo("aarch64-linux-gnu-gcc")).unwrap();
    check(cgo("clang++")).unwrap();
    for bad in ["/tmp/cc", "./cc", "cc -B/tmp", "-wrapper", "..", "c;c"] {
        assert!(refused(cgo(bad)).contains("command name"), "{bad}");
    }
}

#[test]
fn image_specs() {
    let imaged = |targets: &[&str], image: ImageSpec| {
        let targets = targets.iter().map(|t| t.parse::<Platform>().unwrap().to_wire("")).collect();
        check(JobSpec { targets, image: Some(image), ..spec() })
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
    imaged(&["linux/amd64"], ImageSpec { binary: "app".into(), ..plain.clone() }).unwrap();
    imaged(&["linux/amd64"], ImageSpec { epoch: 253_402_300_799, ..plain.clone() }).unwrap();
    let err = imaged(&["linux/amd64"], ImageSpec { epoch: 253_402_300_800, ..plain.clone() }).unwrap_err();
    assert!(err.to_string().contains("after 9999-12-31T23:59:59Z"), "{err}");
    for bad in [
        ImageSpec { dir: "app".into(), ..plain.clone() },
        ImageSpec { dir: "/app/../etc".into(), ..plain.clone() },
        ImageSpec { binary: "a/b".into(), ..plain.clone() },
        ImageSpec { binary: "..\\app".into(), ..plain.clone() },
        ImageSpec { binary: "CON".into(), ..plain.clone() },
        ImageSpec { compression: "xz".into(), ..plain.clone() },
        ImageSpec { env: vec!["NOVALUE".into()], ..plain.clone() },
        ImageSpec { env: vec!["A=b\nc".into()], ..plain.clone() },
        ImageSpec { user: "x".repeat(5000), ..plain.clone() },
        ImageSpec { epoch: 253_402_300_800, ..plain.clone() },
        ImageSpec { epoch: u64::MAX, ..plain.clone() },
    ] {
        assert!(imaged(&["linux/amd64"], bad.clone()).is_err(), "{bad:?}");
    }
}
