//! The GOCACHEPROG bridge end to end: the real go command, `cachectl gocacheprog` and a real
//! `cached` on loopback, each test in its own temp dirs.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cached_e2e::{Daemon, GoEnv, Running, Tmpfs, binary, compile_actions, count_files, run, wipe};

fn summary(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|line| line.starts_with("cachectl gocacheprog: ") && line.contains(" gets "))
        .unwrap_or("")
}

/// The count the summary line gives right before `label` and a separator (so "preloaded"
/// does not match "preloaded hits"), or 0.
fn counted(summary: &str, label: &str) -> u64 {
    let pattern = format!(" {label}");
    summary
        .match_indices(&pattern)
        .filter(|(at, _)| summary[at + pattern.len()..].starts_with([',', ';', ')']))
        .find_map(|(at, _)| summary[..at].rsplit([' ', '(']).next()?.parse().ok())
        .unwrap_or(0)
}

/// The go command's lookups, the summary's first count.
fn gets(summary: &str) -> u64 {
    let count = summary.strip_prefix("cachectl gocacheprog: ").and_then(|rest| rest.split(' ').next());
    count.and_then(|count| count.parse().ok()).unwrap_or(0)
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|line| line.starts_with("cachectl gocacheprog: warning")).collect()
}

#[test]
fn a_fresh_runner_builds_from_cached_without_compiling_and_matches_plain_go() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let out = env.root.path().join("bin");
    let out = out.to_str().unwrap();

    let cold = run(env.go_bridged(
        &["build", "-trimpath", "-o", out, "./cmd/app"],
        tier.path(),
        Some(&daemon.url()),
    ))
    .success("cold build through the bridge");
    assert!(summary(&cold.stderr).contains(" puts"), "{}", cold.stderr);

    // A fresh runner: empty GOCACHE, empty local tier, warm cached.
    env.wipe_gocache();
    wipe(tier.path());
    std::fs::remove_file(out).unwrap();
    let warm = run(env.go_bridged(
        &["build", "-x", "-trimpath", "-o", out, "./cmd/app"],
        tier.path(),
        Some(&daemon.url()),
    ))
    .success("build from cached");
    assert_eq!(compile_actions(&warm.stderr), Vec::<&str>::new(), "the second build compiled");
    let line = summary(&warm.stderr);
    assert!(counted(line, "preloaded hits") + counted(line, "remote hits") > 0, "{line}");
    // The cold build left its session list: the fresh runner fetched ahead of the go command.
    assert!(counted(line, "preloaded") > 0, "{line}");
    assert!(warnings(&warm.stderr).is_empty(), "{}", warm.stderr);

    let plain_env = GoEnv::new();
    let plain_out = plain_env.root.path().join("bin");
    run(plain_env.go(&["build", "-trimpath", "-o", plain_out.to_str().unwrap(), "./cmd/app"]))
        .success("plain build");
    assert!(std::fs::read(out).unwrap() == std::fs::read(&plain_out).unwrap(), "binaries differ");

    // Both sessions reported what they saw, so stats show the hit rate the builds got.
    let stats = Command::new(binary("cachectl"))
        .args(["--server", &daemon.url(), "stats", "--json"])
        .output()
        .expect("cachectl stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let ns = &stats["namespaces"].as_array().expect("namespaces")[0];
    assert_eq!(ns["namespace"], "default");
    assert_eq!(ns["client_sessions"], 2, "{ns}");
    let gets = ns["client_gets"].as_u64().unwrap();
    let hits = ns["client_local_hits"].as_u64().unwrap() + ns["client_remote_hits"].as_u64().unwrap();
    assert!(gets > 0 && hits > 0 && hits < gets, "{ns}");
}

/// A go command run as on a fresh runner (empty GOCACHE and local tier) through the bridge;
/// its session summary.
fn fresh_build(env: &GoEnv, daemon: &Daemon, tier: &Path, args: &[&str]) -> String {
    env.wipe_gocache();
    wipe(tier);
    let built = run(env.go_bridged(args, tier, Some(&daemon.url()))).success("bridged build");
    summary(&built.stderr).to_owned()
}

/// Two builds in one module: each fresh runner preloads what its own command line used, once
/// that command has run; until then, what any build of the module used.
#[test]
fn a_fresh_runner_preloads_what_its_own_command_used_not_every_build_of_the_module() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let fresh = |args: &[&str]| fresh_build(&env, &daemon, tier.path(), args);
    let everything = fresh(&["build", "./..."]);
    let first_small = fresh(&["build", "./internal/calc"]);
    let again_small = fresh(&["build", "./internal/calc"]);
    // Its first run had only the list `./...` left, and fetched all of it.
    assert!(counted(&first_small, "preloaded") > gets(&first_small), "{first_small}");
    // The next fetched what it uses, every lookup found it, and nothing else came.
    let (preloaded, gets) = (counted(&again_small, "preloaded"), gets(&again_small));
    assert!(preloaded > 0 && preloaded <= gets, "{again_small}");
    assert_eq!(counted(&again_small, "misses"), counted(&first_small, "misses"), "{again_small}");
    assert!(preloaded < counted(&first_small, "preloaded"), "{first_small}\n{again_small}");
    // And the list of `./...` is still its own.
    let everything_again = fresh(&["build", "./..."]);
    assert!(counted(&everything_again, "preloaded") > preloaded, "{everything}\n{everything_again}");
}

/// A build of another flavour (`-trimpath` changes every ActionID, as `-race` or other tags
/// do) does not fall back on the list a plain build wrote, whose bodies it would never ask
/// for; a new command line of its own flavour does fall back on that flavour's list.
#[test]
fn a_fresh_runner_falls_back_only_on_a_list_of_its_own_flavour() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let fresh = |args: &[&str]| fresh_build(&env, &daemon, tier.path(), args);
    fresh(&["build", "./..."]);
    let trimmed = fresh(&["build", "-trimpath", "./..."]);
    assert!(gets(&trimmed) > 0, "{trimmed}");
    assert_eq!(counted(&trimmed, "preloaded"), 0, "fetched the plain build's list: {trimmed}");
    let trimmed_small = fresh(&["build", "-trimpath", "./internal/calc"]);
    let (preloaded, hits) = (counted(&trimmed_small, "preloaded"), counted(&trimmed_small, "preloaded hits"));
    assert!(hits > 0 && preloaded >= hits, "{trimmed_small}");
}

/// A runner that builds in two namespaces with one local tier keeps their entries apart, as
/// cached does: the second namespace hits nothing the first recorded, builds, and uploads its
/// own, so its fresh runners hit.
#[test]
fn namespaces_sharing_a_local_tier_keep_their_entries_apart() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let build = |namespace: &str| {
        let mut go = env.go_bridged(&["build", "./..."], tier.path(), Some(&daemon.url()));
        go.env("CACHED_NAMESPACE", namespace);
        let built = run(go).success(&format!("build in {namespace}"));
        summary(&built.stderr).to_owned()
    };
    let first = build("team-a");
    assert!(counted(&first, "uploaded") > 0, "{first}");
    env.wipe_gocache();
    let other = build("team-b");
    assert_eq!(counted(&other, "local hits"), 0, "team-b used team-a's records: {other}");
    assert!(counted(&other, "uploaded") > 0, "{other}");
    // The same namespace on the same runner hits locally, as before.
    env.wipe_gocache();
    let again = build("team-a");
    assert!(counted(&again, "local hits") > 0 && counted(&again, "misses") < gets(&again), "{again}");
    // A fresh runner in team-b finds what team-b uploaded: it compiles and sends no more than
    // the warm runner did (go's index of the packages it loads stays on each machine).
    env.wipe_gocache();
    wipe(tier.path());
    let fresh = build("team-b");
    assert_eq!(counted(&fresh, "uploaded"), counted(&again, "uploaded"), "{fresh}\n{again}");
    assert!(counted(&fresh, "preloaded hits") + counted(&fresh, "remote hits") > 0, "{fresh}");
}

/// A session that may build untrusted code (`--read-only`: a pull request on a shared runner)
/// reads what trusted sessions recorded in the local tier, but no trusted session reads what
/// it recorded: the go command's action IDs do not cover every file a compile reads, so its
/// objects could answer a trusted build of other sources, which would then upload them.
#[test]
fn a_trusted_build_never_hits_what_a_read_only_one_recorded_locally() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let build = |read_only: bool| {
        let mut go = env.go_bridged(&["build", "./..."], tier.path(), Some(&daemon.url()));
        go.env("CACHED_NAMESPACE", "main");
        if read_only {
            go.env("CACHED_READ_ONLY", "true");
        }
        let built = run(go).success(if read_only { "read-only build" } else { "trusted build" });
        summary(&built.stderr).to_owned()
    };
    let untrusted = build(true);
    assert!(counted(&untrusted, "misses") > 0 && counted(&untrusted, "uploaded") == 0, "{untrusted}");
    env.wipe_gocache();
    let trusted = build(false);
    assert_eq!(counted(&trusted, "local hits"), 0, "main used a read-only session's records: {trusted}");
    assert!(counted(&trusted, "uploaded") > 0, "{trusted}");
    // The read-only session finds what the trusted one recorded.
    env.wipe_gocache();
    let again = build(true);
    assert!(counted(&again, "local hits") > 0 && counted(&again, "misses") < gets(&again), "{again}");
}

/// A pull request's CI job run without `--read-only`, but with a token that may only read,
/// recorded what it built where main's next session on the runner read it. The bridge asks
/// cached what its token may do: one that may not record keeps its records its own.
#[test]
fn a_session_whose_token_may_not_record_keeps_its_records_from_trusted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, secrets) =
        cached_e2e::mint_tokens(dir.path(), &[("pr", "read"), ("main", "read,cas-write,ac-write")]);
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--tokens-file", &tokens]);
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let build = |token: &str| {
        let secret = &secrets.iter().find(|(name, _)| name == token).unwrap().1;
        let mut go = env.go_bridged(&["build", "./..."], tier.path(), Some(&daemon.url()));
        go.env("CACHED_NAMESPACE", "main").env("CACHED_TOKEN_FILE", secret);
        let built = run(go).success(token);
        (summary(&built.stderr).to_owned(), built.stderr)
    };
    let (pr, said) = build("pr");
    assert!(counted(&pr, "misses") > 0 && counted(&pr, "uploaded") == 0, "{pr}");
    assert!(said.contains("may not record Go cache entries"), "{said}");
    env.wipe_gocache();
    let (main, said) = build("main");
    assert_eq!(counted(&main, "local hits"), 0, "main used the pull request's records: {main}");
    assert!(counted(&main, "uploaded") > 0 && !said.contains("may not record"), "{said}");
}

/// The same pull request's job with a connection that fails (an audit: a CA file of its own
/// checkout, `CACHED_TLS_CA=ci/ca.pem`, made garbage) could not be asked, and a session cached
/// cannot answer was what it was told: trusted, recording where main read. It is trusted now
/// only if cached said yes to its token lately, which a read-only token never hears.
#[test]
fn a_session_that_cannot_reach_cached_keeps_its_records_unless_its_token_was_told_yes() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, secrets) =
        cached_e2e::mint_tokens(dir.path(), &[("pr", "read"), ("main", "read,cas-write,ac-write")]);
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--tokens-file", &tokens]);
    let tier = tempfile::tempdir().unwrap();
    let garbage_ca = dir.path().join("ca.pem");
    std::fs::write(&garbage_ca, "not a certificate").unwrap();
    let env = GoEnv::new();
    let build = |token: &str, broken: bool| {
        env.wipe_gocache();
        let secret = &secrets.iter().find(|(name, _)| name == token).unwrap().1;
        let mut go = env.go_bridged(&["build", "./..."], tier.path(), Some(&daemon.url()));
        go.env("CACHED_NAMESPACE", "main").env("CACHED_TOKEN_FILE", secret);
        if broken {
            go.env("CACHED_TLS_CA", &garbage_ca);
        }
        let built = run(go).success(token);
        (summary(&built.stderr).to_owned(), built.stderr)
    };
    let (pr, said) = build("pr", true);
    assert!(counted(&pr, "misses") > 0, "{pr}");
    assert!(said.contains("what this session records stays its own"), "{said}");
    let (main, _) = build("main", false);
    assert_eq!(counted(&main, "local hits"), 0, "main used the pull request's records: {main}");
    // Main's own token, told yes, stays trusted through a connection that fails.
    let (main_broken, said) = build("main", true);
    assert!(counted(&main_broken, "local hits") > 0, "{main_broken}");
    assert!(!said.contains("stays its own"), "{said}");
}

/// Another pull request's read-only session on the same runner does not take what one recorded
/// either (its objects answer action IDs that miss files its sources changed); sessions naming
/// one scope (a pull request's go commands) share what they record.
#[test]
fn a_read_only_build_never_hits_what_another_read_only_one_recorded_unless_they_share_a_scope() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let build = |scope: Option<&str>| {
        env.wipe_gocache();
        let mut go = env.go_bridged(&["build", "./..."], tier.path(), Some(&daemon.url()));
        go.env("CACHED_NAMESPACE", "main").env("CACHED_READ_ONLY", "true");
        if let Some(scope) = scope {
            go.env("CACHED_UNTRUSTED_SCOPE", scope);
        }
        summary(&run(go).success("read-only build").stderr).to_owned()
    };
    let first = build(Some("pr-1"));
    assert!(counted(&first, "misses") > 0 && counted(&first, "local hits") == 0, "{first}");
    let other = build(None);
    assert_eq!(counted(&other, "local hits"), 0, "another pull request used pr-1's records: {other}");
    let other_scope = build(Some("pr-2"));
    assert_eq!(counted(&other_scope, "local hits"), 0, "pr-2 used pr-1's records: {other_scope}");
    let same = build(Some("pr-1"));
    assert!(counted(&same, "local hits") > 0, "pr-1's next go command found nothing: {same}");
}

#[test]
fn go_test_after_a_wipe_reports_cached() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let first =
        run(env.go_bridged(&["test", "./..."], tier.path(), Some(&daemon.url()))).success("first go test");
    assert!(!first.stdout.contains("(cached)"), "{}", first.stdout);

    env.wipe_gocache();
    wipe(tier.path());
    let second =
        run(env.go_bridged(&["test", "./..."], tier.path(), Some(&daemon.url()))).success("second go test");
    let results: Vec<&str> = second.stdout.lines().filter(|line| line.starts_with("ok")).collect();
    assert_eq!(results.len(), 3, "{}", second.stdout);
    for line in results {
        assert!(line.contains("(cached)"), "not from the cache: {line}\n{}", second.stderr);
    }
}

/// A module whose test reads a golden file, committed to a new git repository at `dir`.
fn golden_repository(dir: &Path) {
    let files = [
        ("go.mod", "module example.com/golden\n\ngo 1.24\n"),
        ("testdata/golden.txt", "expected\n"),
        (
            "golden_test.go",
            "package golden\n\nimport (\n\t\"os\"\n\t\"testing\"\n)\n\n\
             func TestGolden(t *testing.T) {\n\
             \tgot, err := os.ReadFile(\"testdata/golden.txt\")\n\
             \tif err != nil || string(got) != \"expected\\n\" {\n\t\tt.Fatalf(\"%q %v\", got, err)\n\t}\n}\n",
        ),
    ];
    for (name, text) in files {
        std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }
    git(dir, &["init", "-q"]);
    git(dir, &["add", "."]);
    git(dir, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "golden"]);
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(dir).status().expect("git");
    assert!(status.success(), "git {args:?}");
}

/// A clone dates every file to the clone, so on a fresh runner a test that reads testdata
/// never comes from the cache; `cachectl restore-mtimes` after the checkout makes it a hit.
#[test]
fn a_test_that_reads_testdata_hits_on_a_fresh_clone_after_restore_mtimes() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let origin = tempfile::tempdir().unwrap();
    golden_repository(origin.path());
    // Every clone at the same path, as a CI system checks out: the path is part of the key.
    let checkout = env.root.path().join("checkout");
    let test_fresh_clone = |restore: bool| {
        wipe(&checkout);
        git(env.root.path(), &["clone", "-q", origin.path().to_str().unwrap(), "checkout"]);
        if restore {
            let mut restore = Command::new(binary("cachectl"));
            restore.arg("restore-mtimes").arg(&checkout);
            let said = run(restore).success("restore-mtimes").stdout;
            assert!(said.contains("3 files and 2 directories"), "{said}");
        }
        env.wipe_gocache();
        wipe(tier.path());
        let mut go = env.go_bridged(&["test", "./..."], tier.path(), Some(&daemon.url()));
        go.current_dir(&checkout);
        run(go).success("go test in a fresh clone").stdout
    };
    let first = test_fresh_clone(true);
    assert!(first.starts_with("ok") && !first.contains("(cached)"), "{first}");
    let unrestored = test_fresh_clone(false);
    assert!(!unrestored.contains("(cached)"), "a clone's own times hit: {unrestored}");
    let restored = test_fresh_clone(true);
    assert!(restored.contains("(cached)"), "{restored}");
}

/// go keys a cached test result by the size and time of the files the test opened, and
/// `restore-mtimes` gives a content only 30 bits of its time: a pull request that dates its
/// commit like main's and grinds a file of the same size to the same nanoseconds was told
/// main's run had passed. Its read-only session runs such tests; a test that reads no file
/// still comes from the cache.
#[test]
fn a_read_only_session_runs_a_test_whose_cached_result_is_keyed_by_file_times() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let origin = tempfile::tempdir().unwrap();
    golden_repository(origin.path());
    let pure = "package pure\n\nimport \"testing\"\n\nfunc TestPure(t *testing.T) {}\n";
    std::fs::create_dir_all(origin.path().join("pure")).unwrap();
    std::fs::write(origin.path().join("pure/pure_test.go"), pure).unwrap();
    git(origin.path(), &["add", "."]);
    git(origin.path(), &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pure"]);
    let checkout = env.root.path().join("checkout");
    let golden = checkout.join("testdata/golden.txt");
    // A fresh clone at the same path; a pull request's sessions (`scope`) keep the runner's
    // local tier from one push to the next.
    let test_fresh_clone = |read_only: bool, scope: Option<&str>, forge: Option<std::time::SystemTime>| {
        wipe(&checkout);
        git(env.root.path(), &["clone", "-q", origin.path().to_str().unwrap(), "checkout"]);
        let mut restore = Command::new(binary("cachectl"));
        restore.arg("restore-mtimes").arg(&checkout);
        run(restore).success("restore-mtimes");
        if let Some(time) = forge {
            // Same size, same time: what grinding the content and the commit date yields.
            std::fs::write(&golden, "EXPECTED\n").unwrap();
            std::fs::File::options().write(true).open(&golden).unwrap().set_modified(time).unwrap();
        }
        env.wipe_gocache();
        if scope.is_none() {
            wipe(tier.path());
        }
        let mut go = env.go_bridged(&["test", "./..."], tier.path(), Some(&daemon.url()));
        go.current_dir(&checkout).env("CACHED_NAMESPACE", "main");
        if read_only {
            go.env("CACHED_READ_ONLY", "true");
        }
        if let Some(scope) = scope {
            go.env("CACHED_UNTRUSTED_SCOPE", scope);
        }
        let done = run(go);
        (done.stdout, std::fs::metadata(&golden).unwrap().modified().unwrap())
    };
    let (main, time) = test_fresh_clone(false, None, None);
    assert!(main.starts_with("ok") && !main.contains("(cached)"), "{main}");
    let (forged, _) = test_fresh_clone(true, None, Some(time));
    assert!(forged.contains("FAIL\texample.com/golden"), "main's pass answered the forged file:\n{forged}");
    assert!(forged.contains("ok  \texample.com/golden/pure\t(cached)"), "{forged}");
    // The pull request's first push records the test's file list in its scope; its next push,
    // forged, computed main's inputs from that list and took main's pass.
    let (honest, _) = test_fresh_clone(true, Some("pr-1"), None);
    assert!(honest.starts_with("ok") && !honest.contains("ok  \texample.com/golden\t(cached)"), "{honest}");
    let (forged, _) = test_fresh_clone(true, Some("pr-1"), Some(time));
    assert!(forged.contains("FAIL\texample.com/golden"), "a pass answered the forged file:\n{forged}");
}

/// go's index of a package (its files, build constraints and imports) is keyed by where the
/// files are and their names, sizes and times, never their contents. Served from cached, main's
/// index told a runner building another tree at the same path, of the same names, sizes and
/// times (a pull request's forged commit, or any runner's edited module cache), to leave out
/// a file that tree compiles. No index crosses machines: each runner indexes its own files.
#[test]
fn no_runner_builds_from_the_package_index_of_another() {
    let daemon = Daemon::start();
    let env = GoEnv::new();
    let tree = env.root.path().join("tree");
    // The times `cachectl restore-mtimes` gives a commit's files.
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let check_out = |constraint: &str| {
        wipe(&tree);
        let extra = format!("//go:build {constraint}\n\npackage main\n\nfunc init() {{ msg = \"extra\" }}\n");
        let files = [
            ("go.mod", "module example.com/forged\n\ngo 1.22\n".to_owned()),
            ("main.go", "package main\n\nvar msg = \"main\"\n\nfunc main() { println(msg) }\n".to_owned()),
            ("extra.go", extra),
        ];
        std::fs::create_dir_all(&tree).unwrap();
        for (name, text) in files {
            std::fs::write(tree.join(name), text).unwrap();
            std::fs::File::options().write(true).open(tree.join(name)).unwrap().set_modified(when).unwrap();
        }
    };
    let build_and_run = |read_only: bool| {
        let (tier, out) = (tempfile::tempdir().unwrap(), env.root.path().join("app"));
        env.wipe_gocache();
        let mut go =
            env.go_bridged(&["build", "-o", out.to_str().unwrap(), "."], tier.path(), Some(&daemon.url()));
        go.current_dir(&tree).env("CACHED_NAMESPACE", "main");
        if read_only {
            go.env("CACHED_READ_ONLY", "true");
        }
        let built = run(go).success("bridged build");
        let printed = Command::new(&out).output().unwrap();
        (String::from_utf8_lossy(&printed.stderr).trim().to_owned(), summary(&built.stderr).to_owned())
    };
    check_out("ignore");
    let (printed, line) = build_and_run(false);
    assert_eq!(printed, "main");
    // The package's index entry is put in the local tier, not sent.
    let sent = counted(&line, "uploaded") + counted(&line, "not uploaded");
    assert!(sent < counted(&line, "puts"), "{line}");
    // The same names, sizes and times; extra.go is compiled now.
    check_out("!nope1");
    assert_eq!(build_and_run(true).0, "extra", "a pull request's session listed main's files");
    assert_eq!(build_and_run(false).0, "extra", "a fresh runner listed another runner's files");
}

#[test]
fn go_list_export_paths_stay_readable_after_the_bridge_exits() {
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let listed = run(env.go_bridged(
        &["list", "-export", "-f", "{{.ImportPath}} {{.Export}}", "./...", "fmt"],
        tier.path(),
        None,
    ))
    .success("go list -export");
    let root = std::fs::canonicalize(tier.path()).unwrap();
    let mut count = 0;
    for line in listed.stdout.lines() {
        let (package, export) = line.split_once(' ').unwrap();
        let export = Path::new(export);
        assert!(export.is_absolute() && export.starts_with(&root), "{package}: {}", export.display());
        assert_eq!(export.extension(), None, "{package}: {}", export.display());
        let bytes =
            std::fs::read(export).unwrap_or_else(|err| panic!("{package}: {}: {err}", export.display()));
        assert!(!bytes.is_empty(), "{package}: empty export data");
        count += 1;
    }
    assert_eq!(count, 5, "{}", listed.stdout);
}

/// Builds the fixture through the bridge and does `meddle` to the daemon once the build is
/// well under way (bodies being stored and uploaded); returns what the build printed.
fn build_while(what: &str, meddle: impl FnOnce(&mut Daemon)) -> cached_e2e::Finished {
    let mut daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let out = env.root.path().join("bin");
    let mut build = Running::start(env.go_bridged(
        &["build", "-trimpath", "-o", out.to_str().unwrap(), "./cmd/app"],
        tier.path(),
        Some(&daemon.url()),
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_files(&tier.path().join("o")) < 20 {
        assert!(build.is_running() && Instant::now() < deadline, "the build ended before {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(build.is_running(), "the build ended before {what}");
    meddle(&mut daemon);
    let finished = build.finish().success(&format!("build with {what}"));
    assert!(out.is_file());
    finished
}

#[test]
fn a_daemon_killed_mid_build_costs_one_warning_and_no_failure() {
    let finished = build_while("the daemon killed", Daemon::kill);
    assert_eq!(warnings(&finished.stderr).len(), 1, "{}", finished.stderr);
}

/// A hung server (stopped with SIGSTOP mid-build: connections open, no answers) is a slow one:
/// requests time out, the breaker trips, and the build finishes on the local tier (a stall
/// would run into `GO_DEADLINE`).
#[test]
fn a_daemon_stopped_mid_build_costs_one_warning_and_no_stall() {
    let finished = build_while("the daemon stopped", |daemon| daemon.pause());
    let warned = warnings(&finished.stderr);
    assert_eq!(warned.len(), 1, "{}", finished.stderr);
    assert!(warned[0].contains("not answering"), "{}", warned[0]);
}

/// A misconfigured address is a cache problem too: one warning, and the build goes on.
#[test]
fn an_unusable_server_address_costs_one_warning_and_no_failure() {
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let built =
        run(env.go_bridged(&["build", "-o", "/dev/null", "./cmd/app"], tier.path(), Some("127.0.0.1:7070")))
            .success("build with a server address that lacks its scheme");
    let warned = warnings(&built.stderr);
    assert_eq!(warned.len(), 1, "{}", built.stderr);
    assert!(warned[0].contains("needs a scheme: http://127.0.0.1:7070"), "{}", warned[0]);
}

#[test]
fn two_builds_sharing_one_local_tier_both_succeed() {
    let daemon = Daemon::start();
    let tier = tempfile::tempdir().unwrap();
    let (one, two) = (GoEnv::new(), GoEnv::new());
    let out_one = one.root.path().join("bin");
    let out_two = two.root.path().join("bin");
    let start = |env: &GoEnv, out: &Path| {
        Running::start(env.go_bridged(
            &["build", "-trimpath", "-o", out.to_str().unwrap(), "./cmd/app"],
            tier.path(),
            Some(&daemon.url()),
        ))
    };
    let (first, second) = (start(&one, &out_one), start(&two, &out_two));
    let first = first.finish().success("first concurrent build");
    let second = second.finish().success("second concurrent build");
    assert!(warnings(&first.stderr).is_empty() && warnings(&second.stderr).is_empty());
    assert!(std::fs::read(&out_one).unwrap() == std::fs::read(&out_two).unwrap(), "binaries differ");
    let ran = Command::new(&out_one).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello, Cached\nsum: 10 (mean 5)\n");
}

#[test]
fn malformed_input_exits_non_zero_with_a_clear_error() {
    let tier = tempfile::tempdir().unwrap();
    let mut bridge = Command::new(binary("cachectl"))
        .args(["gocacheprog", "--local-only", "--dir"])
        .arg(tier.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut handshake = String::new();
    BufReader::new(bridge.stdout.take().unwrap()).read_line(&mut handshake).unwrap();
    assert_eq!(handshake, "{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n");
    bridge.stdin.take().unwrap().write_all(b"{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"!!\"}\n").unwrap();
    let output = bridge.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("malformed input from the go command at line 1"), "{stderr}");
}

/// cached's disk at its free-space floor: uploads are refused, which is no outage. The bridge
/// says so once and keeps reading from cached.
#[test]
fn a_server_refusing_uploads_for_want_of_disk_is_still_read() {
    let Some(disk) = Tmpfs::mount(100 << 20) else { return };
    // The floor is higher than what the empty store leaves free: every upload is refused.
    let data = tempfile::tempdir_in(disk.path()).unwrap();
    let daemon = Daemon::start_in(data, &["--min-free-space", "100MiB"]);
    let tier = tempfile::tempdir().unwrap();
    let env = GoEnv::new();
    let built =
        run(env.go_bridged(&["build", "-o", "/dev/null", "./cmd/app"], tier.path(), Some(&daemon.url())))
            .success("build against a full server");
    let warned = warnings(&built.stderr);
    assert_eq!(warned.len(), 1, "{}", built.stderr);
    assert!(warned[0].contains("refuses uploads") && warned[0].contains("nearly full"), "{}", warned[0]);
    assert!(warned[0].contains("reading from it only"), "{}", warned[0]);
    // No breaker tripped: every lookup of the go command was asked of cached.
    let gets = gets(summary(&built.stderr));
    assert!(gets > 0, "{}", built.stderr);
    let stats = Command::new(binary("cachectl"))
        .args(["--server", &daemon.url(), "stats", "--json"])
        .output()
        .expect("cachectl stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let asked = stats["apis"].as_array().unwrap().iter().find(|api| api["api"] == "GoCache.Get").unwrap();
    assert!(asked["requests"].as_u64().unwrap() >= gets, "{gets} gets, cached saw {asked}");
}

/// Fills `tier`'s disk with 1 MiB bodies last used `age` ago; returns how many fit.
fn fill_with_old_bodies(tier: &Path, age: Duration) -> usize {
    let shard = tier.join("o").join("ab");
    std::fs::create_dir_all(&shard).unwrap();
    let used = std::time::SystemTime::now() - age;
    let body = vec![7u8; 1 << 20];
    (0..)
        .map_while(|i| {
            let path = shard.join(format!("ab{i:062}"));
            std::fs::write(&path, &body).ok()?;
            std::fs::File::open(&path).unwrap().set_modified(used).unwrap();
            Some(())
        })
        .count()
}

/// Without room for the module index, `go test` fails with "package testing is not in std";
/// the bridge forgets entries nobody used for hours instead, and says so once.
#[test]
fn a_full_disk_under_the_local_tier_costs_old_entries_not_the_build() {
    let Some(disk) = Tmpfs::mount(128 << 20) else { return };
    let tier = disk.path().join("tier");
    let old = fill_with_old_bodies(&tier, Duration::from_secs(3 * 3600));
    assert!(old > 100, "only {old} bodies filled the disk");
    let env = GoEnv::new();
    let tested =
        run(env.go_bridged(&["test", "-count=1", "./..."], &tier, None)).success("go test on a full disk");
    let warned = warnings(&tested.stderr);
    assert_eq!(warned.len(), 1, "{}", tested.stderr);
    assert!(warned[0].contains("no space left") && warned[0].contains("to make room"), "{}", warned[0]);
    let left = count_files(&tier.join("o").join("ab"));
    assert!(left < old, "no old body was removed ({left} of {old} left)");
    assert_eq!(counted(summary(&tested.stderr), "failed"), 0, "{}", tested.stderr);
}

/// The server's go-cache misses in `namespace` so far.
fn server_misses(daemon: &Daemon, namespace: &str) -> u64 {
    let stats = Command::new(binary("cachectl"))
        .args(["--server", &daemon.url(), "stats", "--json"])
        .output()
        .expect("cachectl stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let namespaces = stats["namespaces"].as_array().expect("namespaces");
    let ns = namespaces.iter().find(|ns| ns["namespace"] == namespace);
    ns.and_then(|ns| ns["go_misses"].as_u64()).unwrap_or(0)
}

/// Under a salt (`cachectl go build` passes one for builds whose sources include files go's
/// action IDs miss) the `stdout` subkey the go command asks after each hit is prefetched as it
/// will be asked: a fresh runner sends cached no more lookups that miss than without a salt
/// (the prefetch asked for the subkey of the salted ID, which nobody stores).
#[test]
fn under_a_salt_the_subkeys_prefetched_are_the_ones_go_asks() {
    let daemon = Daemon::start();
    let env = GoEnv::new();
    let mut fresh_misses = Vec::new();
    for (namespace, salt) in [("plain", None), ("salted", Some("ab".repeat(32)))] {
        let tier = tempfile::tempdir().unwrap();
        // Each its own output: go skips linking one whose build ID it would produce.
        let out = env.root.path().join(format!("bin-{namespace}"));
        let build = |what: &str| {
            let args = ["build", "-x", "-trimpath", "-o", out.to_str().unwrap(), "./cmd/app"];
            let mut go = env.go_bridged(&args, tier.path(), Some(&daemon.url()));
            go.env("CACHED_NAMESPACE", namespace).env("CACHED_PRELOAD", "0");
            if let Some(salt) = &salt {
                go.env("CACHED_ACTION_SALT", salt);
            }
            run(go).success(what)
        };
        env.wipe_gocache();
        build("cold build");
        let before = server_misses(&daemon, namespace);
        env.wipe_gocache();
        wipe(tier.path());
        std::fs::remove_file(&out).unwrap();
        let fresh = build("fresh runner");
        assert_eq!(
            compile_actions(&fresh.stderr),
            Vec::<&str>::new(),
            "{namespace}: the fresh runner compiled"
        );
        fresh_misses.push(server_misses(&daemon, namespace) - before);
    }
    assert_eq!(fresh_misses[1], fresh_misses[0], "misses of the fresh runner, salted against plain");
}
