//! `cachectl warm` end to end: a real cached, the real go command, a warm started before it
//! (as CI's first step) and the bridge the go command starts, which joins the warm.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cached_e2e::{Daemon, GoEnv, Running, binary, compile_actions, count_files, fixture, run, wipe};

const BUILD: &[&str] = &["build", "-x", "-trimpath", "./..."];

/// `cachectl warm -- go <args>` in the fixture module, with the go command's environment.
fn warm(env: &GoEnv, daemon: &Daemon, tier: &Path, args: &[&str]) -> Command {
    let go = env.go(&[]);
    let mut command = Command::new(binary("cachectl"));
    command.args(["warm", "--", "go"]).args(args).current_dir(fixture()).env_clear();
    for (name, value) in go.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command.env("CACHED_ADDR", daemon.url()).env("CACHED_GOCACHE_DIR", tier);
    command
}

fn summary<'a>(stderr: &'a str, prefix: &str) -> &'a str {
    stderr.lines().find(|line| line.starts_with(prefix)).unwrap_or("")
}

/// The count right before `label` in a summary line, or 0.
fn counted(line: &str, label: &str) -> u64 {
    line.match_indices(&format!(" {label}"))
        .find_map(|(at, _)| line[..at].rsplit([' ', '(']).next()?.parse().ok())
        .unwrap_or(0)
}

/// Bytes cached has sent so far (inline bodies, CAS reads, session lists).
fn bytes_sent(daemon: &Daemon) -> u64 {
    let stats = Command::new(binary("cachectl"))
        .args(["--server", &daemon.url(), "stats", "--json"])
        .output()
        .expect("cachectl stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    stats["apis"].as_array().expect("apis").iter().filter_map(|api| api["bytes_out"].as_u64()).sum()
}

/// A daemon that has seen the cold build (so it holds its entries and session list) and what a
/// fresh runner without a warm gets from it, in bytes.
fn daemon_after_a_cold_build(env: &GoEnv, tier: &Path) -> (Daemon, u64) {
    let daemon = Daemon::start();
    run(env.go_bridged(BUILD, tier, Some(&daemon.url()))).success("cold build");
    fresh_runner(env, tier);
    let before = bytes_sent(&daemon);
    let fresh = run(env.go_bridged(BUILD, tier, Some(&daemon.url()))).success("fresh runner");
    assert!(compile_actions(&fresh.stderr).is_empty(), "{}", fresh.stderr);
    let fetched = bytes_sent(&daemon) - before;
    fresh_runner(env, tier);
    (daemon, fetched)
}

fn fresh_runner(env: &GoEnv, tier: &Path) {
    env.wipe_gocache();
    wipe(tier);
}

#[test]
fn a_warm_that_finished_leaves_the_go_command_nothing_to_fetch() {
    let env = GoEnv::new();
    let tier = tempfile::tempdir().unwrap();
    let (daemon, _) = daemon_after_a_cold_build(&env, tier.path());
    let warmed = run(warm(&env, &daemon, tier.path(), BUILD)).success("warm");
    let line = summary(&warmed.stderr, "cachectl warm: ");
    assert!(counted(line, "preloaded") > 0 && line.contains("its list is walked"), "{}", warmed.stderr);

    let built = run(env.go_bridged(BUILD, tier.path(), Some(&daemon.url()))).success("build after warm");
    assert!(compile_actions(&built.stderr).is_empty(), "{}", built.stderr);
    // The warm computed the keys the bridge did: every lookup was on local disk.
    let bridge = summary(&built.stderr, "cachectl gocacheprog: ");
    assert!(bridge.contains(" 0 B down"), "{bridge}");
    assert_eq!(counted(bridge, "remote hits"), 0, "{bridge}");
    assert!(counted(bridge, "local hits") > 0, "{bridge}");
}

#[test]
fn a_bridge_that_starts_while_the_warm_lands_joins_it_and_nothing_is_fetched_twice() {
    let env = GoEnv::new();
    let tier = tempfile::tempdir().unwrap();
    let (daemon, alone) = daemon_after_a_cold_build(&env, tier.path());
    let before = bytes_sent(&daemon);
    let warming = Running::start(warm(&env, &daemon, tier.path(), BUILD));
    let built = run(env.go_bridged(BUILD, tier.path(), Some(&daemon.url()))).success("build during warm");
    let warmed = warming.finish().success("warm");
    assert!(compile_actions(&built.stderr).is_empty(), "{}", built.stderr);
    let (warm_line, bridge) =
        (summary(&warmed.stderr, "cachectl warm: "), summary(&built.stderr, "cachectl gocacheprog: "));
    assert!(!warm_line.is_empty(), "{}", warmed.stderr);
    // Both fetched what one fresh runner does, give or take the session lists the bridge
    // reads again: a body fetched twice would show as far more.
    let together = bytes_sent(&daemon) - before;
    assert!(
        together <= alone + alone / 20,
        "{together} bytes sent, {alone} without a warm\n{warm_line}\n{bridge}"
    );
    assert!(
        together >= alone - alone / 20,
        "{together} bytes sent, {alone} without a warm\n{warm_line}\n{bridge}"
    );
    assert!(
        counted(warm_line, "preloaded") + counted(warm_line, "lookups of the go command answered") > 0,
        "{warm_line}"
    );
    assert!(!built.stderr.contains("warning"), "{}", built.stderr);
}

/// Waits until the warm has landed a body, then kills it.
fn kill_once_landing(mut warm: Child, tier: &Path) {
    let start = Instant::now();
    while count_files(&tier.join("o")) == 0 && start.elapsed() < Duration::from_secs(60) {
        if matches!(warm.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    warm.kill().expect("SIGKILL the warm");
    warm.wait().expect("reap the warm");
}

#[test]
fn a_warm_killed_half_way_leaves_the_bridge_correct_bytes() {
    let env = GoEnv::new();
    let tier = tempfile::tempdir().unwrap();
    let (daemon, _) = daemon_after_a_cold_build(&env, tier.path());
    let out = env.root.path().join("app");
    let args = ["build", "-trimpath", "-o", out.to_str().unwrap(), "./cmd/app"];
    run(env.go_bridged(&args, tier.path(), Some(&daemon.url()))).success("cold build of the app");
    fresh_runner(&env, tier.path());
    std::fs::remove_file(&out).unwrap();

    let warming = warm(&env, &daemon, tier.path(), &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    kill_once_landing(warming.expect("start the warm"), tier.path());
    // What a kill in the middle of a write leaves: a part file beside the bodies, and the socket.
    let shard = tier.path().join("o").join("00");
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(".part-killed"), b"half a body").unwrap();
    let built =
        run(env.go_bridged(&args, tier.path(), Some(&daemon.url()))).success("build after a killed warm");
    assert!(!built.stderr.contains("warning"), "{}", built.stderr);

    let plain_env = GoEnv::new();
    let plain_out = plain_env.root.path().join("app");
    run(plain_env.go(&["build", "-trimpath", "-o", plain_out.to_str().unwrap(), "./cmd/app"]))
        .success("plain build");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&plain_out).unwrap(), "binaries differ");
}

#[test]
fn a_warm_killed_while_the_bridge_waits_on_it_costs_the_build_nothing() {
    let env = GoEnv::new();
    let tier = tempfile::tempdir().unwrap();
    let (daemon, _) = daemon_after_a_cold_build(&env, tier.path());
    let mut warming =
        warm(&env, &daemon, tier.path(), BUILD).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let building = Running::start(env.go_bridged(BUILD, tier.path(), Some(&daemon.url())));
    std::thread::sleep(Duration::from_millis(50));
    let _ = warming.kill();
    let _ = warming.wait();
    let built = building.finish().success("build while the warm is killed");
    assert!(compile_actions(&built.stderr).is_empty(), "{}", built.stderr);
}
