//! A job's GOFLAGS reaches the go command as cached checked it: Go's own quoting, never split
//! again by the agent.

use std::path::Path;
use std::process::Command;

use runner_agent::task::goflags_with;

/// Builds a program printing `main.v` with `goflags` as GOFLAGS, and runs it.
fn built_value(dir: &Path, goflags: &str) -> String {
    std::fs::write(dir.join("go.mod"), "module example.com/flags\n\ngo 1.21\n").unwrap();
    std::fs::write(dir.join("main.go"), "package main\n\nvar v string\n\nfunc main() { print(v) }\n")
        .unwrap();
    let go = |args: &[&str]| {
        let ran = Command::new("go")
            .args(args)
            .current_dir(dir)
            .env("GOFLAGS", goflags)
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOTELEMETRY", "off")
            .env("GOENV", "off")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("run go");
        assert!(ran.status.success(), "go {args:?}: {}", String::from_utf8_lossy(&ran.stderr));
    };
    go(&["build", "-o", "app", "."]);
    let ran = Command::new(dir.join("app")).output().unwrap();
    String::from_utf8_lossy(&ran.stderr).into_owned()
}

#[test]
fn a_jobs_goflags_reach_the_go_command_as_cached_checked_them() {
    // One field to Go's splitting (and to cached's check), with two spaces in its value.
    let job = r#"-trimpath '-ldflags=-X "main.v=a  b"'"#;
    let goflags = goflags_with(&["-modcacherw".to_owned()], Some(job));
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(built_value(dir.path(), &goflags), "a  b", "GOFLAGS was {goflags:?}");
    assert_eq!(goflags, format!("-modcacherw {job} -buildvcs=false"));
    assert_eq!(goflags_with(&[], None), "-buildvcs=false");
    assert_eq!(goflags_with(&[], Some("  ")), "-buildvcs=false");
}
