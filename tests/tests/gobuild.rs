//! `cachectl go build` end to end: the real go command, the real cachectl and cached binaries,
//! on a copy of `fixtures/gobuild` (a main package, an internal package with an embedded file,
//! and a module from a local replace). One daemon and one module copy serve all the cause
//! checks, so the suite stays cheap.

use std::path::{Path, PathBuf};
use std::process::Command;

use cached_e2e::{Daemon, Finished, GoEnv, binary, free_port, run};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A module copy, a sealed go environment and a bridge tier, pointed at one server.
struct Workspace {
    env: GoEnv,
    module: PathBuf,
    tier: tempfile::TempDir,
    server: String,
}

impl Workspace {
    fn new(server: String) -> Self {
        let env = GoEnv::new();
        let module = env.root.path().join("module");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("gobuild"), &module);
        Self { env, module, tier: tempfile::tempdir().unwrap(), server }
    }

    /// cachectl in the module, with the sealed go environment (CGO_ENABLED=0, no proxy).
    fn cachectl(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let template = self.env.go(&[]);
        let mut command = Command::new(binary("cachectl"));
        command.env_clear();
        for (name, value) in template.get_envs() {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
        command
            .current_dir(&self.module)
            .env("CACHED_ADDR", &self.server)
            .env("CACHED_GOCACHE_DIR", self.tier.path())
            .args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// `cachectl go build [flags] -o bin/app ./cmd/app`.
    fn build(&self, flags: &[&str], env: &[(&str, &str)]) -> Finished {
        let mut args = vec!["go", "build"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", "bin/app", "./cmd/app"]);
        run(self.cachectl(&args, env))
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.module.join(relative)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let done = run(self.cachectl(args, &[])).success(&args.join(" "));
        serde_json::from_str(&done.stdout).unwrap_or_else(|err| panic!("{err}: {}", done.stdout))
    }
}

/// The wrapper's headline: `cachectl: cache hit ...` or `cachectl: cache miss ...`.
/// An amd64 program whose value comes from a header its assembly includes as `include`. It
/// prints with `println` (to stderr): without fmt, a build that compiles every package compiles
/// the runtime's, not fmt's too, which keeps these tests short.
fn asm_value_program(include: &str) -> [(&'static str, String); 2] {
    [
        (
            "cmd/asmval/main.go",
            "package main\n\nfunc value() int\n\nfunc main() { println(value()) }\n".to_owned(),
        ),
        (
            "cmd/asmval/val_amd64.s",
            format!(
                "#include \"textflag.h\"\n#include \"{include}\"\n\nTEXT ·value(SB), NOSPLIT, $0-8\n\tMOVQ $VALUE, ret+0(FP)\n\tRET\n"
            ),
        ),
    ]
}

impl Workspace {
    /// Writes `files` (paths in the module) with their directories.
    fn write<S: AsRef<str>>(&self, files: &[(&str, S)]) {
        for (path, contents) in files {
            std::fs::create_dir_all(self.path(path).parent().unwrap()).unwrap();
            std::fs::write(self.path(path), contents.as_ref()).unwrap();
        }
    }

    /// `cachectl <args>` with `env`, which must succeed: its stderr, and what the program it
    /// built at `binary` prints (on either stream).
    fn build_and_run(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        binary: &str,
        what: &str,
    ) -> (String, String) {
        let built = run(self.cachectl(args, env)).success(what);
        (built.stderr, self.printed(binary))
    }

    /// What the program at `binary` prints, on stdout and stderr.
    fn printed(&self, binary: &str) -> String {
        let output = Command::new(self.path(binary)).output().unwrap();
        let text = [output.stdout, output.stderr].concat();
        String::from_utf8_lossy(&text).trim().to_owned()
    }
}

fn headline(stderr: &str) -> &str {
    stderr.lines().find(|line| line.starts_with("cachectl: cache ")).unwrap_or("")
}

/// The explanation lines under a miss's headline.
fn causes(stderr: &str) -> Vec<&str> {
    stderr.lines().filter_map(|line| line.strip_prefix("cachectl:   ")).collect()
}

/// The 12 hex digits of the key the headline names.
fn short_key(stderr: &str) -> String {
    let line = headline(stderr);
    let start = line.find("key ").expect("a key in the headline") + 4;
    line[start..start + 12].to_owned()
}

#[test]
fn unchanged_builds_hit_and_every_miss_names_its_cause() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let binary_path = ws.path("bin/app");

    let first = ws.build(&[], &[]).success("first build");
    assert!(headline(&first.stderr).contains("first build of this target"), "{}", first.stderr);
    let first_binary = std::fs::read(&binary_path).unwrap();
    std::fs::remove_file(&binary_path).unwrap();

    // -x prints every command go runs: a hit runs none (no compiler, no linker).
    let hit = ws.build(&["-x"], &[]).success("unchanged build");
    assert!(
        headline(&hit.stderr)
            .starts_with("cachectl: cache hit for example.com/gobuild/cmd/app (linux/amd64)"),
        "{}",
        hit.stderr
    );
    assert_eq!(hit.stderr.lines().count(), 1, "one line on a hit: {}", hit.stderr);
    assert!(std::fs::read(&binary_path).unwrap() == first_binary, "the restored binary differs");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&binary_path).unwrap().permissions().mode() & 0o777, 0o755);
    }
    let output = Command::new(&binary_path).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("hello, cached dev"));

    // Each change misses, and the explanation names exactly that change.
    type Mutation<'a> =
        (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], Option<(&'a str, &'a str)>, &'a [&'a str]);
    let greet = std::fs::read_to_string(ws.path("internal/greet/greet.go")).unwrap();
    let edited_greet = greet.replace("hello, ", "hi, ");
    let go_sum = std::fs::read_to_string(ws.path("go.sum")).unwrap();
    let grown_go_sum =
        format!("{go_sum}example.com/other v1.2.3/go.mod h1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=\n");
    let lib = std::fs::read_to_string(ws.path("lib/lib.go")).unwrap();
    let edited_lib = lib.replace("\"cached\"", "\"gophers\"");
    let lib_go_mod = std::fs::read_to_string(ws.path("lib/go.mod")).unwrap();
    // go compiles the module's packages with the language version of its go.mod.
    let older_lib_go_mod = lib_go_mod.replace("go 1.24", "go 1.21");
    let mutations: Vec<Mutation<'_>> = vec![
        ("GOOS", &[], &[("GOOS", "windows")], None, &["GOOS: linux → windows"]),
        ("GOARCH", &[], &[("GOARCH", "arm64")], None, &["GOARCH: amd64 → arm64"]),
        ("CGO_ENABLED", &[], &[("CGO_ENABLED", "1")], None, &["CGO_ENABLED: 0 → 1"]),
        // With cgo on and without -trimpath every binary records the cgo flags: compared with
        // the build above.
        (
            "cgo flags",
            &[],
            &[("CGO_ENABLED", "1"), ("CGO_LDFLAGS", "-L/opt/lib")],
            None,
            &["CGO_LDFLAGS changed"],
        ),
        ("build tag", &["-tags=netgo"], &[], None, &["build tags: +netgo"]),
        ("-ldflags", &["-ldflags=-X main.version=2"], &[], None, &["-ldflags changed"]),
        (
            "edited source",
            &[],
            &[],
            Some(("internal/greet/greet.go", &edited_greet)),
            &["1 source file changed: internal/greet/greet.go"],
        ),
        (
            "added file",
            &[],
            &[],
            Some(("internal/greet/extra.go", "package greet\n")),
            &["1 source file added: internal/greet/extra.go"],
        ),
        (
            "embedded file",
            &[],
            &[],
            Some(("internal/greet/banner.txt", "== changed ==\n")),
            &["1 source file changed: internal/greet/banner.txt"],
        ),
        (
            "local replace",
            &[],
            &[],
            Some(("lib/lib.go", &edited_lib)),
            &["1 source file changed: lib/lib.go"],
        ),
        ("go.sum", &[], &[], Some(("go.sum", &grown_go_sum)), &["go.sum changed"]),
        (
            "a module's go version",
            &[],
            &[],
            Some(("lib/go.mod", &older_lib_go_mod)),
            &[
                "1 source file changed: lib/go.mod",
                "1 dependency changed: example.com/lib ./lib (go 1.24) → ./lib (go 1.21)",
            ],
        ),
    ];
    let mut keys = Vec::new();
    for (what, flags, env, file, expected) in &mutations {
        let saved = file.map(|(path, contents)| {
            let path = ws.path(path);
            let before = std::fs::read(&path).ok();
            std::fs::write(&path, contents).unwrap();
            (path, before)
        });
        let built = ws.build(flags, env).success(what);
        assert!(headline(&built.stderr).starts_with("cachectl: cache miss"), "{what}: {}", built.stderr);
        assert_eq!(causes(&built.stderr), *expected, "{what}: {}", built.stderr);
        keys.push((*what, short_key(&built.stderr)));
        if let Some((path, before)) = saved {
            match before {
                Some(bytes) => std::fs::write(&path, bytes).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
        }
    }
    let again = ws.build(&[], &[]).success("back to the original");
    assert!(headline(&again.stderr).contains("cache hit"), "{}", again.stderr);

    // A compile error: go's output and exit code pass through, and nothing is cached.
    std::fs::write(
        ws.path("internal/greet/greet.go"),
        format!("{greet}\nfunc broken() int {{ return \"x\" }}\n"),
    )
    .unwrap();
    let mut plain = ws.env.go(&["build", "-o", "bin/plain", "./cmd/app"]);
    plain.current_dir(&ws.module);
    let plain = run(plain);
    assert!(!plain.status.success());
    for attempt in 0..2 {
        let failed = ws.build(&[], &[]);
        assert_eq!(failed.status.code(), plain.status.code(), "attempt {attempt}: {}", failed.stderr);
        assert!(failed.stderr.contains("cannot use \"x\""), "{}", failed.stderr);
        assert!(
            headline(&failed.stderr).starts_with("cachectl: cache miss"),
            "never cached: {}",
            failed.stderr
        );
    }
    std::fs::write(ws.path("internal/greet/greet.go"), &greet).unwrap();

    // Flags the wrapper does not cache run plain go and say why.
    let forced = ws.build(&["-n"], &[]).success("go build -n");
    assert!(
        forced.stderr.contains("cachectl: not caching this build: -n only prints the commands"),
        "{}",
        forced.stderr
    );

    // go test passes through with the bridge.
    run(ws.cachectl(&["go", "test", "./..."], &[])).success("cachectl go test");

    let stats = ws.json(&["stats", "--json", "--since", "1h"]);
    let builds = &stats["builds"];
    assert_eq!(builds["since_seconds"], 3600);
    let ns = &builds["namespaces"][0];
    assert_eq!(ns["namespace"], "default", "{builds}");
    assert_eq!(ns["hits"], 2, "{ns}");
    assert_eq!(ns["misses"], 1 + mutations.len() as u64 + 2, "{ns}");
    assert_eq!(ns["records"], 1 + mutations.len() as u64, "{ns}");
    assert!(ns["time_saved_seconds"].as_f64().unwrap() > 0.0, "{ns}");
    assert!(ns["bytes_served"].as_u64().unwrap() > 0 && ns["bytes_stored"].as_u64().unwrap() > 0, "{ns}");
    assert!(ns["go_action_hit_rate"].is_number(), "{ns}");
    let counted: Vec<&str> =
        ns["top_miss_causes"].as_array().unwrap().iter().map(|c| c["cause"].as_str().unwrap()).collect();
    for cause in [
        "first build",
        "GOOS",
        "GOARCH",
        "CGO_ENABLED",
        "cgo flags",
        "build tags",
        "-ldflags",
        "source files",
        "go.sum",
        "dependencies",
    ] {
        assert!(counted.contains(&cause), "{cause} is not among {counted:?}");
    }
    assert_eq!(ns["top_miss_causes"][0]["cause"], "source files", "{ns}");
    assert_eq!(ns["top_miss_causes"][0]["misses"], 7, "{ns}");
    assert_eq!(ns["top_missed_targets"][0]["package"], "example.com/gobuild/cmd/app");
    assert_eq!(ns["top_missed_targets"][0]["goos"], "linux");
    let table = run(ws.cachectl(&["stats"], &[])).success("cachectl stats");
    assert!(table.stdout.contains("top miss causes:    source files (7)"), "{}", table.stdout);

    // explain: by target (the latest miss of it), by platform, and by key.
    let latest = ws.json(&["explain", "cmd/app", "--json"]);
    assert_eq!(latest["causes"], serde_json::json!(["source files"]), "{latest}");
    assert_eq!(latest["changes"][0]["component"], "file.internal/greet/greet.go");
    let windows = ws.json(&["explain", "example.com/gobuild/cmd/app", "windows/amd64", "--json"]);
    assert_eq!(windows["basis"], "same_package");
    assert_eq!(windows["causes"], serde_json::json!(["GOOS"]));
    assert_eq!(
        windows["changes"][0],
        serde_json::json!({"component": "env.GOOS", "kind": "changed", "before": "linux", "after": "windows"})
    );
    let (_, ldflags_key) = keys.iter().find(|(what, _)| *what == "-ldflags").unwrap();
    let text = run(ws.cachectl(&["explain", ldflags_key], &[])).success("explain by key");
    assert!(
        text.stdout.contains("flag.ldflags: changed") && text.stdout.contains("causes   -ldflags"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("main.version"), "ldflags values are never shown: {}", text.stdout);
    let unknown = run(ws.cachectl(&["explain", "cmd/nothing"], &[]));
    assert_eq!(unknown.status.code(), Some(2), "{}", unknown.stderr);
}

/// A read-only build (an untrusted pull request's, whose token may write) looks up but records
/// nothing: its binary, linked from what a read-only bridge served (its own untrusted local
/// records among them), is never a later build's hit, and its bridge uploads nothing.
#[test]
fn a_read_only_build_records_nothing() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    for read_only in ["1", "yes"] {
        let built = ws.build(&["-trimpath"], &[("CACHED_READ_ONLY", read_only)]).success("read-only build");
        assert!(headline(&built.stderr).contains("cache miss"), "{}", built.stderr);
        assert!(built.stderr.contains("read-only: the build was not recorded"), "{}", built.stderr);
    }
    let stats = ws.json(&["stats", "--json"]);
    let puts: u64 =
        stats["namespaces"].as_array().unwrap().iter().map(|ns| ns["go_puts"].as_u64().unwrap()).sum();
    assert_eq!(puts, 0, "a read-only bridge uploaded: {stats}");
    let after = ws.build(&["-trimpath"], &[]).success("trusted build");
    assert!(
        headline(&after.stderr).contains("cache miss"),
        "the read-only build was recorded: {}",
        after.stderr
    );
}

#[test]
fn with_the_server_down_go_still_builds() {
    let ws = Workspace::new(format!("http://127.0.0.1:{}", free_port()));
    let built = ws.build(&["-trimpath"], &[]).success("build with cached down");
    let warnings: Vec<&str> = built.stderr.lines().filter(|line| line.contains("unreachable")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", built.stderr);
    assert!(headline(&built.stderr).is_empty(), "{}", built.stderr);
    let output = Command::new(ws.path("bin/app")).output().unwrap();
    assert!(output.status.success());
    run(ws.cachectl(&["go", "test", "./..."], &[])).success("go test with cached down");
}

/// After a writer stored entries it should not have, an operator purges the namespace: its
/// whole builds and Go action entries are forgotten, so the next build there compiles again;
/// other namespaces, a longer one with the same start included, keep their hits.
#[test]
fn a_purged_namespace_builds_again_and_its_neighbours_keep_their_hits() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let namespaces = ["team", "team2", "team/linux"];
    let fresh_runner = || {
        ws.env.wipe_gocache();
        cached_e2e::wipe(ws.tier.path());
    };
    for ns in namespaces {
        // Each on a fresh runner, so each uploads every entry to its own namespace.
        fresh_runner();
        ws.build(&[], &[("CACHED_NAMESPACE", ns)]).success(&format!("first build in {ns}"));
    }
    let purge = |ns: &str| run(ws.cachectl(&["admin", "purge", "--namespace", ns], &[]));
    // "purged namespace `team`: N Go action entries, M whole-build records; J earlier jobs will
    // not be reused; K unfinished jobs cancelled"
    let counts = |ns: &str| -> Vec<u64> {
        let purged = purge(ns).success(&format!("purge {ns}")).stdout;
        purged.split(' ').filter_map(|word| word.parse().ok()).collect()
    };
    let team = counts("team");
    assert!(matches!(team[..], [entries, 1, 0, 0] if entries > 10), "{team:?}");
    assert_eq!(counts("team"), [0, 0, 0, 0]);

    for ns in namespaces {
        fresh_runner();
        let built = ws.build(&["-x"], &[("CACHED_NAMESPACE", ns)]).success(ns);
        let compiled = built.stderr.lines().any(|line| line.contains("/compile "));
        if ns == "team" {
            assert!(headline(&built.stderr).contains("first build of this target"), "{}", built.stderr);
            assert!(compiled, "the purged namespace reused an entry:\n{}", built.stderr);
        } else {
            assert!(headline(&built.stderr).starts_with("cachectl: cache hit"), "{ns}: {}", built.stderr);
        }
    }
    // team2 lost nothing to team's purge (its hit above stored nothing new).
    let team2 = counts("team2");
    assert!(matches!(team2[..], [entries, 1, 0, 0] if entries > 10), "{team2:?}");
    let empty = purge("");
    assert_eq!(empty.status.code(), Some(2), "{}", empty.stderr);
    assert!(empty.stderr.contains("name the namespace"), "{}", empty.stderr);
}

/// A build the wrapper cannot key (here: a header named by a macro) still ran go through the
/// shared go cache, whose action ID for the cgo package does not hash that header: after the
/// header changed, go took the object built from the old one, and a build in a namespace
/// could so put objects under IDs honest builds look up. Such a build now uses no shared
/// go cache and compiles every package.
#[test]
fn a_build_whose_reads_are_not_known_uses_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let main = "package main\n\n// #define HEADER \"../../inc/val.h\"\n// #include HEADER\n\
                // static int value(void) { return VALUE; }\nimport \"C\"\n\n\
                func main() { println(int(C.value())) }\n";
    ws.write(&[("cmd/cgoval/main.go", main), ("inc/val.h", "#define VALUE 1\n")]);
    let build = |what: &str| {
        let args = ["go", "build", "-trimpath", "-o", "bin/cgoval", "./cmd/cgoval"];
        ws.build_and_run(&args, &[("CGO_ENABLED", "1")], "bin/cgoval", what)
    };
    let (first, printed) = build("first build");
    assert!(first.contains("not caching this build") && first.contains("named by a macro"), "{first}");
    assert!(first.contains("compiling every package without go's shared cache"), "{first}");
    assert_eq!(printed, "1");
    std::fs::write(ws.path("inc/val.h"), "#define VALUE 2\n").unwrap();
    let (_, printed) = build("build after the header changed");
    assert_eq!(printed, "2", "the object built from the old header was taken");
}

/// A build that must not use go's shared cache removed GOCACHEPROG from the environment only;
/// one `go env -w` wrote into go's env file still ran, and go wrote the objects of a build
/// whose reads are not known through it, under the IDs honest builds look up. The program
/// here is the bridge, and records which go command started it (the wrapper's own `go list`
/// may: it only reads).
#[test]
fn no_cache_program_from_the_go_env_file_runs_for_a_build_without_shared_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let main = "package main\n\n// #define HEADER \"../../inc/val.h\"\n// #include HEADER\n\
                // static int value(void) { return VALUE; }\nimport \"C\"\n\n\
                func main() { println(int(C.value())) }\n";
    let test = "package main\n\nimport \"testing\"\n\nfunc TestValue(t *testing.T) {}\n";
    ws.write(&[
        ("cmd/cgoval/main.go", main),
        ("cmd/cgoval/main_test.go", test),
        ("inc/val.h", "#define VALUE 1\n"),
    ]);
    let started = ws.path("cache-program-started");
    let program = ws.path("cache-program");
    let script = format!(
        "#!/bin/sh\ntr '\\0' ' ' < /proc/$PPID/cmdline >> '{}'\necho >> '{}'\nexec '{}' gocacheprog\n",
        started.display(),
        started.display(),
        binary("cachectl").display()
    );
    std::fs::write(&program, script).unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env_file = ws.path("go-env");
    std::fs::write(&env_file, format!("GOCACHEPROG={}\n", program.display())).unwrap();
    let env_file = env_file.display().to_string();
    let env = [("CGO_ENABLED", "1"), ("GOENV", env_file.as_str())];
    let args = ["go", "build", "-o", "bin/cgoval", "./cmd/cgoval"];
    let (built, printed) = ws.build_and_run(&args, &env, "bin/cgoval", "the build");
    assert!(built.contains("compiling every package without go's shared cache"), "{built}");
    assert_eq!(printed, "1");
    run(ws.cachectl(&["go", "test", "./cmd/cgoval"], &env)).success("the test run");
    let started = std::fs::read_to_string(&started).unwrap_or_default();
    let by_builds = started.lines().filter(|line| line.contains(" build ") || line.contains(" test "));
    assert_eq!(by_builds.count(), 0, "go started the cache program of its env file:\n{started}");
}

/// `cachectl go test` shares go's cache through the bridge as builds do, so it is held to the
/// same include scan: a test of a cgo package whose header (outside the package) changed and
/// now fails must not pass as `ok (cached)` from the object and result of the old header.
#[test]
fn go_test_after_an_included_header_changed_runs_again() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let files = [
        (
            "pkg/cval/val.go",
            "package cval\n\n// #include \"../../inc/val.h\"\n// static int value(void) { return VALUE; }\nimport \"C\"\n\n\
             func Value() int { return int(C.value()) }\n",
        ),
        (
            "pkg/cval/val_test.go",
            "package cval\n\nimport \"testing\"\n\nfunc TestValue(t *testing.T) {\n\tif Value() != 1 {\n\t\t\
             t.Fatalf(\"value %d\", Value())\n\t}\n}\n",
        ),
        ("inc/val.h", "#define VALUE 1\n"),
    ];
    ws.write(&files);
    let test = || run(ws.cachectl(&["go", "test", "./pkg/cval"], &[("CGO_ENABLED", "1")]));
    test().success("the first test run");
    let again = test().success("the test run again");
    assert!(again.stdout.contains("(cached)"), "an unchanged test is a cached result: {}", again.stdout);
    std::fs::write(ws.path("inc/val.h"), "#define VALUE 2\n").unwrap();
    let changed = test();
    assert!(!changed.status.success(), "the test passed with the old header's object:\n{}", changed.stdout);
    assert!(changed.stdout.contains("value 2"), "{}\n{}", changed.stdout, changed.stderr);
}

/// Modules of one repository may share headers above their go.mod files: within the
/// repository they are keyed like any include (beyond it the wrapper reads nothing).
#[test]
fn a_header_above_the_module_is_keyed_within_its_repository() {
    if std::env::consts::ARCH != "x86_64" {
        return; // The assembly is amd64's, and the test runs what it builds.
    }
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let repo = ws.module.parent().unwrap().to_owned();
    ws.write(&asm_value_program("../../../include/val.h"));
    std::fs::create_dir_all(repo.join("include")).unwrap();
    std::fs::write(repo.join("include/val.h"), "#define VALUE 1\n").unwrap();
    let git = Command::new("git").args(["init", "-q"]).arg(&repo).status().unwrap();
    assert!(git.success());
    let build = |what: &str| {
        let args = ["go", "build", "-trimpath", "-buildvcs=false", "-o", "bin/asmval", "./cmd/asmval"];
        ws.build_and_run(&args, &[("GOARCH", "amd64")], "bin/asmval", what)
    };
    let (first, printed) = build("first build");
    assert!(headline(&first).contains("first build of this target"), "{first}");
    assert_eq!(printed, "1");
    std::fs::write(repo.join("include/val.h"), "#define VALUE 2\n").unwrap();
    let (changed, printed) = build("build after the header changed");
    assert!(headline(&changed).starts_with("cachectl: cache miss"), "{changed}");
    assert_eq!(causes(&changed), ["1 source file changed: ../include/val.h"], "{changed}");
    assert_eq!(printed, "2");
    let (hit, printed) = build("unchanged build");
    assert!(headline(&hit).starts_with("cachectl: cache hit"), "{hit}");
    assert_eq!(printed, "2");
}

/// A header that an assembly file includes from outside its package is an input of the build
/// (go list does not name it): a build after it changed misses and names it, instead of
/// restoring the binary built with the old header, and records a binary built with the new one.
#[test]
fn a_header_included_from_outside_the_package_is_in_the_key() {
    if std::env::consts::ARCH != "x86_64" {
        return; // The assembly is amd64's, and the test runs what it builds.
    }
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&asm_value_program("../../inc/val.h"));
    ws.write(&[("inc/val.h", "#define VALUE 1\n")]);
    let build = |what: &str| {
        let args = ["go", "build", "-trimpath", "-o", "bin/asmval", "./cmd/asmval"];
        ws.build_and_run(&args, &[("GOARCH", "amd64")], "bin/asmval", what)
    };
    let (first, printed) = build("first build");
    assert!(headline(&first).contains("first build of this target"), "{first}");
    assert_eq!(printed, "1");
    let (hit, printed) = build("unchanged build");
    assert!(headline(&hit).starts_with("cachectl: cache hit"), "{hit}");
    assert_eq!(printed, "1");

    // go's own cache keys the assembly by its own text only: the miss rebuilds past it, so
    // what it records is built with the new header.
    std::fs::write(ws.path("inc/val.h"), "#define VALUE 666\n").unwrap();
    let (changed, printed) = build("build after the header changed");
    assert!(headline(&changed).starts_with("cachectl: cache miss"), "{changed}");
    assert_eq!(causes(&changed), ["1 source file changed: inc/val.h"], "{changed}");
    assert_eq!(printed, "666", "{changed}");
    let (hit, printed) = build("build with the changed header");
    assert!(headline(&hit).starts_with("cachectl: cache hit"), "{hit}");
    assert_eq!(printed, "666");

    // The included files key go's cache apart, nothing else does: a change to Go code alone
    // misses the whole build and compiles its own package only (`go build -a` compiled all).
    let main = std::fs::read_to_string(ws.path("cmd/asmval/main.go")).unwrap();
    std::fs::write(ws.path("cmd/asmval/main.go"), main.replace("println(value())", "println(value() + 1)"))
        .unwrap();
    let args = ["go", "build", "-x", "-trimpath", "-o", "bin/asmval", "./cmd/asmval"];
    let built = run(ws.cachectl(&args, &[("GOARCH", "amd64")])).success("build after a Go change");
    assert!(headline(&built.stderr).starts_with("cachectl: cache miss"), "{}", built.stderr);
    let compiled: Vec<&str> = built
        .stderr
        .lines()
        .filter(|line| line.contains("/compile -o"))
        .filter_map(|line| line.split(" -p ").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(compiled, ["main"], "{}", built.stderr);
    assert_eq!(ws.printed("bin/asmval"), "667");
}

/// A cgo package in `dir` (of the module) whose value is `V` from `v.h`, found in the directory
/// `include` names relative to the package (`-I${SRCDIR}/include`: go keys the flag's text,
/// not the header), with a test that logs the value.
fn cgo_header_package(ws: &Workspace, dir: &str, include: &str) {
    let source = format!(
        "package {name}\n\n// #cgo CFLAGS: -I${{SRCDIR}}/{include}\n// #include <v.h>\n\
         // static int value(void) {{ return V; }}\nimport \"C\"\n\nfunc V() int {{ return int(C.value()) }}\n",
        name = dir.rsplit('/').next().unwrap()
    );
    ws.write(&[(format!("{dir}/value.go").as_str(), source)]);
}

impl Workspace {
    /// `cachectl <args>` with cgo and `env` on a fresh runner: an empty local tier and GOCACHE,
    /// so that go's cache serves only what the server holds.
    fn on_a_fresh_runner(&self, args: &[&str], env: &[(&str, &str)]) -> Finished {
        let (tier, gocache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut all = vec![
            ("CGO_ENABLED", "1"),
            ("CACHED_GOCACHE_DIR", tier.path().to_str().unwrap()),
            ("GOCACHE", gocache.path().to_str().unwrap()),
        ];
        all.extend_from_slice(env);
        run(self.cachectl(args, &all))
    }

    /// The value a test logs (`V=<n>`) under `cachectl go test <args> -count=1 -v` with `env`,
    /// on a fresh runner.
    fn value_logged_on_a_fresh_runner(&self, args: &[&str], env: &[(&str, &str)], what: &str) -> String {
        let command = [&["go", "test"][..], args, &["-count=1", "-v"]].concat();
        let done = self.on_a_fresh_runner(&command, env).success(what);
        let logged = done.stdout.split_whitespace().find(|word| word.starts_with("V="));
        logged
            .unwrap_or_else(|| panic!("{what}: no value logged:\n{}\n{}", done.stdout, done.stderr))
            .to_owned()
    }
}

/// `cachectl go test -C sub` scanned the includes of the module it started in, not of the one
/// go tests: the nested module's header went unseen, go's cache was shared unsalted, and after
/// the header changed a fresh runner was served the object built from the old one.
#[test]
fn go_test_in_another_directory_scans_the_includes_there() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[
        ("sub/go.mod", "module example.com/sub\n\ngo 1.24\n"),
        (
            "sub/pkg/value_test.go",
            "package pkg\n\nimport \"testing\"\n\nfunc TestV(t *testing.T) { t.Logf(\"V=%d\", V()) }\n",
        ),
        ("sub/include/v.h", "#define V 1\n"),
    ]);
    cgo_header_package(&ws, "sub/pkg", "../include");
    let args = ["-C", "sub", "./pkg"];
    assert_eq!(ws.value_logged_on_a_fresh_runner(&args, &[], "the first test run"), "V=1");
    std::fs::write(ws.path("sub/include/v.h"), "#define V 2\n").unwrap();
    let value = ws.value_logged_on_a_fresh_runner(&args, &[], "the test run after the header changed");
    assert_eq!(value, "V=2", "the object built from the old header was served");
}

/// `-modfile` decides which modules a test builds: the scan read go.mod's, which lacks the
/// dependency whose cgo header changed, and the old header's object was served.
#[test]
fn go_test_with_another_go_mod_scans_the_modules_it_names() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let go_mod = std::fs::read_to_string(ws.path("go.mod")).unwrap();
    let alt_mod = format!("{go_mod}\nrequire example.com/dep v0.0.0\n\nreplace example.com/dep => ./dep\n");
    ws.write(&[
        ("alt.mod", alt_mod),
        ("alt.sum", std::fs::read_to_string(ws.path("go.sum")).unwrap()),
        ("dep/go.mod", "module example.com/dep\n\ngo 1.24\n".to_owned()),
        ("dep/include/v.h", "#define V 1\n".to_owned()),
        (
            "app/app_test.go",
            "package app\n\nimport (\n\t\"testing\"\n\n\t\"example.com/dep\"\n)\n\n\
             func TestV(t *testing.T) { t.Logf(\"V=%d\", dep.V()) }\n"
                .to_owned(),
        ),
    ]);
    cgo_header_package(&ws, "dep", "include");
    let args = ["-modfile=alt.mod", "./app"];
    assert_eq!(ws.value_logged_on_a_fresh_runner(&args, &[], "the first test run"), "V=1");
    std::fs::write(ws.path("dep/include/v.h"), "#define V 2\n").unwrap();
    let value = ws.value_logged_on_a_fresh_runner(&args, &[], "the test run after the header changed");
    assert_eq!(value, "V=2", "the object built from the old header was served");
}

/// go builds for `-o /dev/null` and writes nothing; the wrapper recorded /dev/null's nothing as
/// the binary, and a later build of the same key to a file restored an empty file.
#[test]
fn a_build_to_dev_null_records_no_binary() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let discard = ["go", "build", "-trimpath", "-o", "/dev/null", "./cmd/app"];
    // Once only: a hit of the old wrapper renamed its restored file over /dev/null.
    run(ws.cachectl(&discard, &[])).success("build to /dev/null");
    let to_file = ["go", "build", "-trimpath", "-o", "bin/app", "./cmd/app"];
    let built = run(ws.cachectl(&to_file, &[])).success("build to a file");
    let size = std::fs::metadata(ws.path("bin/app")).unwrap().len();
    assert!(size > 100_000, "bin/app is {size} bytes:\n{}", built.stderr);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

/// A cgo main package printing `V` from `header`, which the C compiler finds however the test
/// sets it up (the package names no include directory).
fn cgo_value_program(ws: &Workspace, header: &str) {
    let main = format!(
        "package main\n\n// #include <{header}>\n// static int value(void) {{ return V; }}\nimport \"C\"\n\n\
         func main() {{ println(int(C.value())) }}\n"
    );
    ws.write(&[("cmd/cgoval/main.go", main)]);
}

impl Workspace {
    /// `cachectl go build` of cmd/cgoval with cgo and `env`, on a fresh runner (an empty local
    /// tier and GOCACHE, so go's cache serves only what the server holds): its stderr, and
    /// what the binary prints.
    fn cgo_value_on_a_fresh_runner(&self, env: &[(&str, &str)], what: &str) -> (String, String) {
        let args = ["go", "build", "-trimpath", "-o", "bin/cgoval", "./cmd/cgoval"];
        let built = self.on_a_fresh_runner(&args, env).success(what);
        (built.stderr, self.printed("bin/cgoval"))
    }
}

/// CPATH is in the build key but not in go's action IDs: a miss after it changed took the
/// object compiled under the old value from the shared go cache, linked it, and recorded that
/// binary under the new key.
#[test]
fn a_compiler_setting_go_does_not_key_keeps_go_cache_entries_apart() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    cgo_value_program(&ws, "cpv.h");
    let headers = tempfile::tempdir().unwrap();
    for (dir, value) in [("a", 1), ("b", 2)] {
        std::fs::create_dir_all(headers.path().join(dir)).unwrap();
        std::fs::write(headers.path().join(dir).join("cpv.h"), format!("#define V {value}\n")).unwrap();
    }
    let cpath = |dir: &str| headers.path().join(dir).display().to_string();
    let (_, printed) = ws.cgo_value_on_a_fresh_runner(&[("CPATH", &cpath("a"))], "build with CPATH a");
    assert_eq!(printed, "1");
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[("CPATH", &cpath("b"))], "build with CPATH b");
    assert!(headline(&stderr).starts_with("cachectl: cache miss"), "{stderr}");
    assert_eq!(printed, "2", "the object compiled under CPATH a was served:\n{stderr}");
}

/// What `#cgo pkg-config:` hands the C compiler was keyed nowhere: after the `.pc` file
/// changed, the build hit and restored the binary built from the old flags.
#[test]
fn pkg_config_flags_are_in_the_key() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let main = "package main\n\n// #cgo pkg-config: cachedtest\n// static int value(void) { return V; }\n\
                import \"C\"\n\nfunc main() { println(int(C.value())) }\n";
    ws.write(&[("cmd/cgoval/main.go", main)]);
    let pc = tempfile::tempdir().unwrap();
    let write_pc = |value: u32| {
        let text = format!("Name: cachedtest\nDescription: t\nVersion: 1\nCflags: -DV={value}\nLibs:\n");
        std::fs::write(pc.path().join("cachedtest.pc"), text).unwrap();
    };
    let env = [("PKG_CONFIG_PATH", pc.path().to_str().unwrap())];
    write_pc(1);
    let (_, printed) = ws.cgo_value_on_a_fresh_runner(&env, "build with V=1");
    assert_eq!(printed, "1");
    write_pc(2);
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "build with V=2");
    assert!(headline(&stderr).starts_with("cachectl: cache miss"), "{stderr}");
    assert_eq!(printed, "2", "{stderr}");
}

/// A file edited while go compiled (here by the C compiler, as an editor saving or another
/// step of a job would) made a binary of other contents than the key derived before go ran:
/// it was recorded under that key, and every later build of the key restored it.
#[test]
fn a_file_changed_while_go_builds_is_not_recorded() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[
        (
            "cmd/cgoval/main.go",
            "package main\n\n// static int value(void) { return 1; }\nimport \"C\"\n\n\
             func main() { println(int(C.value()), note) }\n"
                .to_owned(),
        ),
        ("cmd/cgoval/note.go", "package main\n\nconst note = \"old\"\n".to_owned()),
    ]);
    let note = ws.path("cmd/cgoval/note.go");
    // The C compiler edits note.go when it compiles the package's cgo output, once: go env
    // runs it too, while the key is derived.
    let marker = ws.env.root.path().join("edit-once");
    let cc = ws.env.root.path().join("cc.sh");
    let script = format!(
        "#!/bin/sh\ncase \"$*\" in *cgo2.c*) [ -e '{marker}' ] && rm -f '{marker}' && sed -i s/old/new/ '{note}';; esac\n\
         exec gcc \"$@\"\n",
        marker = marker.display(),
        note = note.display()
    );
    std::fs::write(&cc, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = [("CC", cc.to_str().unwrap())];

    std::fs::write(&marker, "").unwrap();
    let (stderr, _) = ws.cgo_value_on_a_fresh_runner(&env, "build during which note.go changes");
    assert!(!marker.exists(), "the C compiler did not run during the build:\n{stderr}");
    assert!(stderr.contains("inputs changed while go ran"), "{stderr}");
    std::fs::write(&note, "package main\n\nconst note = \"old\"\n").unwrap();
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "build of the old note.go again");
    assert!(
        headline(&stderr).starts_with("cachectl: cache miss"),
        "a build of changed files was recorded:\n{stderr}"
    );
    assert_eq!(printed, "1 old");
}

/// A cgo package whose object shows a setting of the C compiler's that go's action IDs do
/// not hash: it returns `__DATE__`, which SOURCE_DATE_EPOCH sets.
const BUILT_PACKAGE: &str = "package built\n\n// static const char *date(void) { return __DATE__; }\nimport \"C\"\n\n\
                             func Date() string { return C.GoString(C.date()) }\n";

/// A main package in `dir` printing `built: <date>` from [`BUILT_PACKAGE`], importing `also`.
fn date_program(ws: &Workspace, dir: &str, also: &[&str]) {
    let imports: String = also.iter().map(|path| format!("\t_ \"example.com/gobuild/{path}\"\n")).collect();
    let main = format!(
        "package main\n\nimport (\n\t\"example.com/gobuild/pkg/built\"\n{imports})\n\n\
         func main() {{ println(\"built:\", built.Date()) }}\n"
    );
    ws.write(&[(format!("{dir}/main.go").as_str(), main.as_str()), ("pkg/built/built.go", BUILT_PACKAGE)]);
}

/// A build without a whole-build key salted go's cache by included files only: one run with
/// SOURCE_DATE_EPOCH=0 stored its objects under the action IDs honest builds look up, and a
/// later build without it (a fresh runner) linked an object stamped `Jan  1 1970`. Here the
/// first build has no key through `-ldflags=-extldflags=-L/tmp`, or through a `#cgo
/// pkg-config:` option, which the toolchain's settings cannot be known past.
#[test]
fn a_build_without_a_key_keeps_go_cache_entries_of_other_compiler_settings_apart() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    date_program(&ws, "cmd/date", &[]);
    date_program(&ws, "cmd/static", &["pkg/static"]);
    let static_package = "package static\n\n// #cgo pkg-config: --static cachedtest\nimport \"C\"\n";
    ws.write(&[("pkg/static/static.go", static_package)]);
    let pc = tempfile::tempdir().unwrap();
    let pc_text = "Name: cachedtest\nDescription: t\nVersion: 1\nCflags: -DSTATIC=1\nLibs:\n";
    std::fs::write(pc.path().join("cachedtest.pc"), pc_text).unwrap();
    let pc_path = pc.path().to_str().unwrap();
    for (namespace, unkeyed) in [
        ("extldflags", &["-ldflags=-extldflags=-L/tmp", "-o", "bin/first", "./cmd/date"][..]),
        ("pkg-config", &["-o", "bin/first", "./cmd/static"]),
    ] {
        let env = [("CACHED_NAMESPACE", namespace), ("PKG_CONFIG_PATH", pc_path)];
        let args = [&["go", "build", "-trimpath"][..], unkeyed].concat();
        let epoch = [&env[..], &[("SOURCE_DATE_EPOCH", "0")]].concat();
        let first = ws.on_a_fresh_runner(&args, &epoch).success("the build without a key");
        assert!(first.stderr.contains("not caching this build"), "{namespace}: {}", first.stderr);
        assert!(ws.printed("bin/first").contains("1970"), "{namespace}: {}", ws.printed("bin/first"));
        let honest = ["go", "build", "-trimpath", "-o", "bin/date", "./cmd/date"];
        let built = ws.on_a_fresh_runner(&honest, &env[..1]).success("the build without SOURCE_DATE_EPOCH");
        let printed = ws.printed("bin/date");
        assert!(
            !printed.contains("1970"),
            "{namespace}: the object of SOURCE_DATE_EPOCH=0 was served: {printed}\n{}",
            built.stderr
        );
    }
}

/// `cachectl go test` decides go's cache as a build without a key does, so the same holds:
/// with CPATH changed a fresh runner was served the object compiled under the old value.
#[test]
fn go_test_keeps_go_cache_entries_of_other_compiler_settings_apart() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[
        (
            "pkg/cpv/cpv.go",
            "package cpv\n\n// #include <cpv.h>\n// static int value(void) { return V; }\nimport \"C\"\n\n\
             func V() int { return int(C.value()) }\n",
        ),
        (
            "pkg/cpv/cpv_test.go",
            "package cpv\n\nimport \"testing\"\n\nfunc TestV(t *testing.T) { t.Logf(\"V=%d\", V()) }\n",
        ),
    ]);
    let headers = tempfile::tempdir().unwrap();
    for (dir, value) in [("a", 1), ("b", 2)] {
        std::fs::create_dir_all(headers.path().join(dir)).unwrap();
        std::fs::write(headers.path().join(dir).join("cpv.h"), format!("#define V {value}\n")).unwrap();
    }
    let cpath = |dir: &str| headers.path().join(dir).display().to_string();
    let logged =
        ws.value_logged_on_a_fresh_runner(&["./pkg/cpv"], &[("CPATH", &cpath("a"))], "tests with CPATH a");
    assert_eq!(logged, "V=1");
    let logged =
        ws.value_logged_on_a_fresh_runner(&["./pkg/cpv"], &[("CPATH", &cpath("b"))], "tests with CPATH b");
    assert_eq!(logged, "V=2", "the object compiled under CPATH a was served");
}

/// `cachectl go test` checked GOFLAGS for -overlay and -toolexec only: with
/// `-gcflags=all=-pgoprofile=FILE` there, go's action IDs hash the flag's text, not the
/// profile, and a fresh runner passed on objects from the shared cache after the profile
/// turned to garbage, where plain go fails.
#[test]
fn go_test_with_goflags_naming_a_profile_uses_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[
        ("pkg/two/two.go", "package two\n\nfunc Two() int { return 2 }\n"),
        ("pkg/two/two_test.go", "package two\n\nimport \"testing\"\n\nfunc TestTwo(t *testing.T) {\n\tif Two() != 2 {\n\t\tt.Fatal()\n\t}\n}\n"),
        ("p.pgo", ""),
    ]);
    let goflags = format!("-gcflags=all=-pgoprofile={}", ws.path("p.pgo").display());
    let env = [("GOFLAGS", goflags.as_str())];
    let args = ["go", "test", "-count=1", "./pkg/two"];
    ws.on_a_fresh_runner(&args, &env).success("the tests with an empty profile");
    std::fs::write(ws.path("p.pgo"), "garbage\n").unwrap();
    let done = ws.on_a_fresh_runner(&args, &env);
    assert!(
        !done.status.success(),
        "passed with a profile the compiler cannot read:\n{}\n{}",
        done.stdout,
        done.stderr
    );
    let printed = format!("{}\n{}", done.stdout, done.stderr);
    assert!(printed.contains("PGO error"), "{printed}");
}

/// go refuses to write its output over a file that is not an object file ("build output
/// "app" already exists and is not an object file"); the wrapper deleted such a file (a
/// script named like the binary) before go ran, and a hit wrote over it.
#[test]
fn a_file_go_would_not_overwrite_stays_and_the_build_fails_as_go_does() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let script = "#!/bin/sh\necho a script\n";
    let build = || run(ws.cachectl(&["go", "build", "-trimpath", "./cmd/app"], &[]));
    for recorded in [false, true] {
        if recorded {
            std::fs::remove_file(ws.path("app")).unwrap();
            build().success("the build that records a binary");
        }
        std::fs::write(ws.path("app"), script).unwrap();
        let done = build();
        assert!(!done.status.success(), "recorded: {recorded}: the build succeeded:\n{}", done.stderr);
        assert!(done.stderr.contains("already exists and is not an object file"), "{}", done.stderr);
        assert_eq!(std::fs::read_to_string(ws.path("app")).unwrap(), script, "recorded: {recorded}");
    }
}

/// A hit writes its binary with the mode go gives one (0777 less the umask), as a build would:
/// it wrote 0755 whatever the umask, so under `umask 027` a restored binary was others' to run.
#[test]
fn a_restored_binary_has_the_mode_a_build_gives_it() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let build = |what: &str| {
        let inner = ws.cachectl(&["go", "build", "-trimpath", "./cmd/app"], &[]);
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "umask 027 && exec \"$0\" \"$@\""])
            .arg(inner.get_program())
            .args(inner.get_args());
        command.env_clear().envs(inner.get_envs().filter_map(|(name, value)| Some((name, value?))));
        command.current_dir(inner.get_current_dir().unwrap());
        run(command).success(what);
        std::fs::metadata(ws.path("app")).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(build("the build that records"), 0o750, "go's own mode under umask 027");
    std::fs::remove_file(ws.path("app")).unwrap();
    assert_eq!(build("the hit"), 0o750, "the restored binary's mode");
}

/// `-ldflags=-linkmode=external` on the command line builds runtime/cgo and links with the C
/// compiler, but the key's `go list` did not see the flag, listed no cgo package, and left
/// CGO_LDFLAGS out: a first build's `-Wl,-rpath` was in the binary a later build without it
/// restored.
#[test]
fn an_external_link_keys_the_cgo_flags() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[("cmd/plain/main.go", "package main\n\nfunc main() { println(\"plain\") }\n")]);
    let args = ["go", "build", "-trimpath", "-ldflags=-linkmode=external", "-o", "bin/plain", "./cmd/plain"];
    const RPATH: &[u8] = b"/tmp/cached-test-rpath";
    let rpath = format!("-Wl,-rpath,{}", std::str::from_utf8(RPATH).unwrap());
    ws.on_a_fresh_runner(&args, &[("CGO_LDFLAGS", &rpath)]).success("the build with an rpath");
    let holds_rpath =
        || std::fs::read(ws.path("bin/plain")).unwrap().windows(RPATH.len()).any(|w| w == RPATH);
    assert!(holds_rpath(), "the first build links with CGO_LDFLAGS");
    std::fs::remove_file(ws.path("bin/plain")).unwrap();
    let built = ws.on_a_fresh_runner(&args, &[]).success("the build without");
    assert!(headline(&built.stderr).starts_with("cachectl: cache miss"), "{}", built.stderr);
    assert!(!holds_rpath(), "the binary of the build with an rpath was restored:\n{}", built.stderr);
}

/// go matches `-gcflags=./...=-N -l` in the directory it runs in, but the key held the text
/// alone: built from internal/ (its packages unoptimised), the binary was restored to a build
/// from the module's root (every package unoptimised), and the other way round.
#[test]
fn a_relative_package_pattern_is_keyed_with_the_directory_go_runs_in() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let build = |dir: &str, target: &str, output: &str| {
        let args = ["go", "build", "-trimpath", "-gcflags=./...=-N -l", "-o", output, target];
        let mut command = ws.cachectl(&args, &[]);
        command.current_dir(ws.path(dir));
        run(command).success(&format!("the build in {dir:?}")).stderr
    };
    build("internal", "../cmd/app", "../bin/from-internal");
    let stderr = build(".", "./cmd/app", "bin/from-root");
    assert!(headline(&stderr).starts_with("cachectl: cache miss"), "{stderr}");
    let (internal, root) = (
        std::fs::read(ws.path("bin/from-internal")).unwrap(),
        std::fs::read(ws.path("bin/from-root")).unwrap(),
    );
    assert_ne!(internal, root, "go builds other binaries from the two directories");
}

/// Writes an executable script at `path` in the module.
fn write_script(ws: &Workspace, path: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    ws.write(&[(path, text)]);
    std::fs::set_permissions(ws.path(path), std::fs::Permissions::from_mode(0o755)).unwrap();
    ws.path(path).display().to_string()
}

/// A cgo main package printing `V`, which the C compiler's settings define (1 when none does).
fn cgo_define_program(ws: &Workspace, preamble: &str) {
    let main = format!(
        "package main\n\n{preamble}// #ifndef V\n// #define V 1\n// #endif\n\
         // static int value(void) {{ return V; }}\nimport \"C\"\n\nfunc main() {{ println(int(C.value())) }}\n"
    );
    ws.write(&[("cmd/cgoval/main.go", main)]);
}

/// A C compiler in the tree was keyed by its command, path and `--version` output only: a
/// tenant's tools/cc.sh defining V=2 recorded its binary, and an honest build with the plain
/// cc.sh hit and printed 2; go's action IDs do not see the script either, so its objects
/// poisoned the shared go cache. Such a build has no key and no shared go cache.
#[test]
fn a_c_compiler_in_the_tree_gives_no_key_and_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    cgo_define_program(&ws, "");
    let cc = write_script(&ws, "tools/cc.sh", "#!/bin/sh\nexec gcc -DV=2 \"$@\"\n");
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[("CC", &cc)], "the tenant's build");
    assert_eq!(printed, "2", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    write_script(&ws, "tools/cc.sh", "#!/bin/sh\nexec gcc \"$@\"\n");
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[("CC", &cc)], "the honest build");
    assert_eq!(printed, "1", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("CC"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
}

/// gcc runs the assembler it finds on PATH, which the build key and go's action IDs do not
/// read: with PATH=$PWD/bin:$PATH a tenant's bin/as turned `V` into 2 in the assembly, and an
/// honest build with bin/as only running the system one hit the same key and printed 2. A
/// PATH into the tree with only other tools there keeps its key.
#[test]
fn an_assembler_on_a_path_into_the_tree_gives_no_key_and_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    cgo_define_program(&ws, "");
    write_script(&ws, "bin/mytool", "#!/bin/sh\n");
    let path = format!("{}:{}", ws.path("bin").display(), std::env::var("PATH").unwrap());
    let env = [("PATH", path.as_str())];
    let evil = "#!/bin/sh\nfor arg; do case \"$arg\" in *.s) grep -q _Cfunc_value \"$arg\" && \
                sed -i 's/\\$1,/$2,/' \"$arg\";; esac; done\nexec /usr/bin/as \"$@\"\n";
    write_script(&ws, "bin/as", evil);
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "the tenant's build");
    assert_eq!(printed, "2", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    write_script(&ws, "bin/as", "#!/bin/sh\nexec /usr/bin/as \"$@\"\n");
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "the honest build");
    assert_eq!(printed, "1", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("PATH"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
    std::fs::remove_file(ws.path("bin/as")).unwrap();
    ws.cgo_value_on_a_fresh_runner(&env, "a build with only bin/mytool");
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "that build again");
    assert_eq!(printed, "1", "{stderr}");
    assert!(
        headline(&stderr).starts_with("cachectl: cache hit"),
        "an unrelated tool lost the key:\n{stderr}"
    );
}

/// A pkg-config in the tree printed one thing to the wrapper and another to go (its parent
/// there): the tenant's binary, built with V=2, was recorded under the key of V=1's flags and
/// restored to an honest build.
#[test]
fn a_pkg_config_in_the_tree_gives_no_key_and_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    cgo_define_program(&ws, "// #cgo pkg-config: cachedfoo\n");
    let evil = "#!/bin/sh\ncase \"$1\" in --cflags) ;; *) echo; exit 0;; esac\n\
                if [ \"$(cat /proc/$PPID/comm)\" = go ]; then echo -DV=2; else echo -DV=1; fi\n";
    let pkg_config = write_script(&ws, "tools/pkg-config", evil);
    let env = [("PKG_CONFIG", pkg_config.as_str())];
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "the tenant's build");
    assert_eq!(printed, "2", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    write_script(
        &ws,
        "tools/pkg-config",
        "#!/bin/sh\ncase \"$1\" in --cflags) echo -DV=1;; *) echo;; esac\n",
    );
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "the honest build");
    assert_eq!(printed, "1", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("PKG_CONFIG"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
}

/// CGO_CFLAGS=-I<module>/include was keyed as text: a quoted include found only there counted
/// as a system header, so the tenant's header (V=2) was recorded and an honest one hit.
#[test]
fn cgo_flags_from_the_environment_naming_the_tree_give_no_key() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    cgo_define_program(&ws, "// #include \"greet.h\"\n");
    ws.write(&[("include/greet.h", "#define V 2\n")]);
    let flags = format!("-I{}", ws.path("include").display());
    let env = [("CGO_CFLAGS", flags.as_str())];
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "the tenant's build");
    assert_eq!(printed, "2", "{stderr}");
    ws.write(&[("include/greet.h", "#define V 3\n")]);
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&env, "the honest build");
    assert_eq!(printed, "3", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("CGO_CFLAGS"), "{stderr}");
    // And the CPATH family, the same way.
    let cpath = ws.path("include").display().to_string();
    let (stderr, _) = ws.cgo_value_on_a_fresh_runner(&[("CPATH", &cpath)], "a build with CPATH in the tree");
    assert!(stderr.contains("not caching this build") && stderr.contains("CPATH"), "{stderr}");
}

/// `#cgo CFLAGS: -I/proc/self/cwd/inc` is the package's inc to gcc, which compiles the
/// package's C files in its directory: the absolute path counted as the machine's, the header
/// found only there as a system header, and the tenant's binary and objects (V=2) were served
/// to an honest build with the same key (V=3). Such a flag gives no key and no shared go cache.
#[test]
fn a_cgo_flag_reaching_the_tree_through_proc_gives_no_key_and_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let main = "package main\n\n// #cgo CFLAGS: -I/proc/self/cwd/inc\n// int value(void);\nimport \"C\"\n\n\
                func main() { println(int(C.value())) }\n";
    ws.write(&[
        ("cmd/cgoval/main.go", main),
        ("cmd/cgoval/value.c", "#include \"greet.h\"\nint value(void) { return V; }\n"),
        ("cmd/cgoval/inc/greet.h", "#define V 2\n"),
    ]);
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[], "the tenant's build");
    assert_eq!(printed, "2", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    ws.write(&[("cmd/cgoval/inc/greet.h", "#define V 3\n")]);
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[], "the honest build");
    assert_eq!(printed, "3", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("/proc/self/cwd/inc"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
}

/// gcc takes `lnk/../inc` through the link: with `lnk` a link to `a/b` it is `a/inc`. The
/// scan cleaned the path as text, the package's `inc`, so a tenant's `a/inc/greet.h` (666) was
/// read unkeyed and its binary served to an honest tree with the same files (2) whose `lnk`
/// leads to `a`. A `..` after a link gives no key and no shared go cache.
#[test]
fn a_cgo_flag_going_up_from_a_link_gives_no_key_and_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let main = "package main\n\n// #cgo CFLAGS: -I${SRCDIR}/lnk/../inc\n// int value(void);\nimport \"C\"\n\n\
                func main() { println(int(C.value())) }\n";
    ws.write(&[
        ("cmd/cgoval/main.go", main),
        ("cmd/cgoval/value.c", "#include \"greet.h\"\nint value(void) { return V; }\n"),
        ("cmd/cgoval/inc/greet.h", "#define V 2\n"),
        ("cmd/cgoval/a/b/keep", ""),
        ("cmd/cgoval/a/inc/greet.h", "#define V 666\n"),
    ]);
    let link = ws.module.join("cmd/cgoval/lnk");
    std::os::unix::fs::symlink("a/b", &link).unwrap();
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[], "the tenant's build");
    assert_eq!(printed, "666", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("a", &link).unwrap();
    std::fs::remove_file(ws.module.join("cmd/cgoval/a/inc/greet.h")).unwrap();
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&[], "the honest build");
    assert_eq!(printed, "2", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("a symbolic link"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
}

/// With clang's `-fmodules`, `#include "greet.h"` imports the module the package's
/// `module.modulemap` declares, and clang reads every header the map names: a tenant's map
/// naming `zz/evil.h` (V 666) was keyed by nothing, so its binary went to an honest tree with
/// the same keyed files and no map (2). Module flags give no key and no shared go cache.
#[test]
fn clang_modules_give_no_key_and_no_shared_go_cache() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    let main = "package main\n\n// #cgo CFLAGS: -fmodules\n// #include \"greet.h\"\n\
                // #ifndef V\n// #define V 2\n// #endif\n// static int value(void) { return V; }\n\
                import \"C\"\n\nfunc main() { println(int(C.value())) }\n";
    ws.write(&[
        ("cmd/cgoval/main.go", main),
        ("cmd/cgoval/greet.h", "#pragma once\nint greet(void);\n"),
        ("cmd/cgoval/module.modulemap", "module M { header \"greet.h\" header \"zz/evil.h\" export * }\n"),
        ("cmd/cgoval/zz/evil.h", "#define V 666\n"),
    ]);
    let clang = [("CC", "clang")];
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&clang, "the tenant's build");
    assert_eq!(printed, "666", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    for tenants in ["cmd/cgoval/module.modulemap", "cmd/cgoval/zz/evil.h"] {
        std::fs::remove_file(ws.module.join(tenants)).unwrap();
    }
    let (stderr, printed) = ws.cgo_value_on_a_fresh_runner(&clang, "the honest build");
    assert_eq!(printed, "2", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("-fmodules"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
}

/// go's assembler reads `#include "inc\x2fval.h"` as a Go string, inc/val.h; the scan read the
/// name as written, found nothing and took it for a system header: the tenant's binary and
/// objects (666) were served to an honest build with the same key (42). A name with a
/// backslash gives no key and no shared go cache.
#[test]
fn an_assembly_include_spelled_with_an_escape_gives_no_key_and_no_shared_go_cache() {
    if std::env::consts::ARCH != "x86_64" {
        return; // The assembly is amd64's, and the test runs what it builds.
    }
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&asm_value_program("inc\\x2fval.h"));
    ws.write(&[("cmd/asmval/inc/val.h", "#define VALUE 666\n")]);
    let args = ["go", "build", "-trimpath", "-o", "bin/asmval", "./cmd/asmval"];
    let env = [("GOARCH", "amd64"), ("CGO_ENABLED", "0")];
    let build = |what: &str| {
        let built = ws.on_a_fresh_runner(&args, &env).success(what);
        (built.stderr, ws.printed("bin/asmval"))
    };
    let (stderr, printed) = build("the tenant's build");
    assert_eq!(printed, "666", "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "the tenant's objects were shared:\n{stderr}");
    ws.write(&[("cmd/asmval/inc/val.h", "#define VALUE 42\n")]);
    let (stderr, printed) = build("the honest build");
    assert_eq!(printed, "42", "the tenant's binary or objects were served:\n{stderr}");
    assert!(stderr.contains("not caching this build") && stderr.contains("backslash"), "{stderr}");
    assert!(stderr.contains("without go's shared cache"), "{stderr}");
}

/// Whether the ELF executable at `path` asks for an executable stack (PT_GNU_STACK with PF_X).
fn executable_stack(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).map(|n| phoff + n * size).any(|at| u32_at(at) == 0x6474_e551 && u32_at(at + 4) & 1 != 0)
}

/// `-extldflags=--specs=link.specs` read a file the key did not name: the tenant's specs
/// (`-z execstack`) were recorded and restored to an honest build with other specs.
#[test]
fn extldflags_not_known_to_read_no_files_give_no_key() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[
        ("cmd/plain/main.go", "package main\n\nfunc main() { println(\"plain\") }\n"),
        ("link.specs", "*link:\n+ -z execstack\n"),
    ]);
    let args = [
        "go",
        "build",
        "-trimpath",
        "-ldflags=-linkmode=external -extldflags=--specs=link.specs",
        "-o",
        "bin/plain",
        "./cmd/plain",
    ];
    ws.on_a_fresh_runner(&args, &[]).success("the tenant's build");
    assert!(executable_stack(&ws.path("bin/plain")), "the specs file was not used");
    ws.write(&[("link.specs", "*link:\n+ -z noexecstack\n")]);
    // As on another runner: go itself keeps an output whose build ID (the flags' text) matches.
    std::fs::remove_file(ws.path("bin/plain")).unwrap();
    let built = ws.on_a_fresh_runner(&args, &[]).success("the honest build");
    assert!(!executable_stack(&ws.path("bin/plain")), "the tenant's binary was restored:\n{}", built.stderr);
    assert!(built.stderr.contains("not caching this build"), "{}", built.stderr);
}

/// Without -trimpath go records `-pgo=` by its absolute path, which `-C` changes: the key held
/// the flag's text and the profile's contents, so a build from b/ restored the binary built
/// from a/, whose build info names a/'s profile.
#[test]
fn a_pgo_profile_is_keyed_by_the_path_a_binary_records() {
    let daemon = Daemon::start();
    let ws = Workspace::new(daemon.url());
    ws.write(&[("a/p.pprof", ""), ("b/p.pprof", "")]);
    let recorded_profile = |dir: &str| {
        let args = ["go", "build", "-C", dir, "-pgo=p.pprof", "-o", "../bin/app", "../cmd/app"];
        let built = run(ws.cachectl(&args, &[])).success(&format!("the build in {dir}"));
        let binary = ws.path("bin/app").display().to_string();
        let info = run(ws.env.go(&["version", "-m", &binary])).success("go version -m").stdout;
        let line = info.lines().find(|line| line.contains("-pgo=")).unwrap_or("").trim().to_owned();
        (line, built.stderr)
    };
    let (from_a, _) = recorded_profile("a");
    assert!(from_a.ends_with("/a/p.pprof"), "{from_a}");
    let (from_b, stderr) = recorded_profile("b");
    assert!(from_b.ends_with("/b/p.pprof"), "the binary built from a/ was restored: {from_b}\n{stderr}");
}
