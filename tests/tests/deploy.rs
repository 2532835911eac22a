//! deploy/: the systemd units are what systemd accepts, every key known to it and every
//! command present (systemd-analyze verify, with the units pointing at the built binaries);
//! the Helm chart lints, renders with its default values and with every option on, and every
//! manifest it renders decodes strictly into the Kubernetes API's types, its alerts' PromQL
//! parsing (deploy/validate); the cached.toml it renders is one cached starts with.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cached_e2e::{binary, free_port, tool};

/// A unit as shipped, with its binary at the path this build put it.
fn install(unit: &str, dir: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd").join(unit);
    let mut text = std::fs::read_to_string(&shipped).expect("the shipped unit");
    for program in ["cached", "runner-agent"] {
        text =
            text.replace(&format!("/usr/local/bin/{program} "), &format!("{} ", binary(program).display()));
    }
    // Verifying loads the environment file; the shipped one is the operator's to write.
    text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/");
    let name = unit.replace("@.", "@test.");
    std::fs::write(dir.join(name), text).expect("unit copy");
}

#[test]
fn the_systemd_units_verify_without_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    install("cached.service", dir.path());
    install("runner-agent@.service", dir.path());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("cached.service"))
        .arg(dir.path().join("runner-agent@test.service"))
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed: {stderr}");
    // Unknown or misspelt keys are only warnings to systemd, which then ignores them.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned: {stderr}");
}

/// The chart as shipped.
fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/cached")
}

/// helm, pinned by scripts/setup, with its own empty home: no repository, no plugin, no network.
fn helm(args: &[&str], home: &Path) -> Output {
    Command::new(tool("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm (scripts/setup builds it)")
}

/// The chart rendered with `values` arguments (`-f FILE`, `--set K=V`); the render must succeed.
fn render(values: &[&str]) -> String {
    let home = tempfile::tempdir().expect("temp dir");
    let chart = chart();
    let mut args = vec!["template", "release", chart.to_str().expect("utf-8 path"), "--namespace", "builds"];
    args.extend_from_slice(values);
    let output = helm(&args, home.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "helm template {values:?} failed: {stderr}");
    String::from_utf8(output.stdout).expect("utf-8 manifests")
}

/// The render's error, for values the chart must refuse.
fn render_error(values: &[&str]) -> String {
    let home = tempfile::tempdir().expect("temp dir");
    let chart = chart();
    let mut args = vec!["template", "release", chart.to_str().expect("utf-8 path")];
    args.extend_from_slice(values);
    let output = helm(&args, home.path());
    assert!(!output.status.success(), "helm template {values:?} rendered values it must refuse");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn all_options() -> String {
    chart().join("ci/all-options-values.yaml").display().to_string()
}

/// deploy/validate's verdict on a stream of manifests.
fn validate(manifests: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).expect("manifests file");
    Command::new(tool("cached-validate-manifests"))
        .arg(&file)
        .output()
        .expect("cached-validate-manifests (scripts/setup builds it)")
}

fn assert_valid(manifests: &str) {
    let output = validate(manifests);
    assert!(
        output.status.success(),
        "rendered manifests are not valid Kubernetes objects:\n{}\n{manifests}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The kinds of a render, one per document, sorted.
fn kinds(manifests: &str) -> Vec<&str> {
    let mut kinds: Vec<&str> = manifests.lines().filter_map(|line| line.strip_prefix("kind: ")).collect();
    kinds.sort_unstable();
    kinds
}

#[test]
fn the_chart_lints_strictly_with_default_values_and_with_every_option() {
    let home = tempfile::tempdir().expect("temp dir");
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let all_options = all_options();
    for args in [vec!["lint", "--strict", chart], vec!["lint", "--strict", chart, "-f", &all_options]] {
        let output = helm(&args, home.path());
        assert!(
            output.status.success(),
            "helm {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn default_values_render_one_cached_and_valid_manifests() {
    let manifests = render(&[]);
    assert_eq!(
        kinds(&manifests),
        [
            "ConfigMap",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet"
        ]
    );
    assert!(manifests.contains("replicas: 1\n"), "one replica by default:\n{manifests}");
    assert!(manifests.contains("service: cached.v1.Cas"), "readiness on cached's gRPC health:\n{manifests}");
    assert_valid(&manifests);
}

#[test]
fn every_option_renders_valid_manifests() {
    let all_options = all_options();
    let values = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let set = std::fs::read_to_string(&all_options).expect("all-options values");
    // A map or list a default leaves empty (`nodeSelector: {}`) is set when it has entries.
    let set: Vec<String> = value_keys(&set).into_iter().map(|(path, _)| path).collect();
    let unset: Vec<String> = value_paths(&values).into_iter().filter(|path| !set.contains(path)).collect();
    assert!(unset.is_empty(), "ci/all-options-values.yaml leaves values at their defaults: {unset:?}");
    let manifests = render(&["-f", &all_options]);
    assert_eq!(
        kinds(&manifests),
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "PrometheusRule",
            "ScaledObject",
            "Service",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet"
        ]
    );
    assert!(
        manifests.contains("registry_listen = \"0.0.0.0:5000\"")
            && manifests.contains("sessionAffinity: ClientIP"),
        "the registry's listener and its Service, one replica per client:\n{manifests}"
    );
    assert_valid(&manifests);
    // KEDA makes its own autoscaler; without it the chart's HorizontalPodAutoscaler takes over.
    let manifests = render(&["-f", &all_options, "--set", "agents.keda.enabled=false"]);
    let kinds = kinds(&manifests);
    assert!(kinds.contains(&"HorizontalPodAutoscaler") && !kinds.contains(&"ScaledObject"), "{kinds:?}");
    assert_valid(&manifests);
}

#[test]
fn the_validator_refuses_misspelt_duplicated_and_mistyped_fields_and_unknown_kinds() {
    let manifests = render(&[]);
    assert_valid(&manifests);
    for (right, wrong, named) in [
        // The API server matches field names case-sensitively (encoding/json would not).
        ("containerPort:", "containerport:", "containerport"),
        ("  replicas: 1\n", "  replicas: 1\n  replicas: 2\n", "key \"replicas\" already set"),
        ("  volumeClaimTemplates:", "  volumeClaimTemplate:", "volumeClaimTemplate"),
        ("  maxUnavailable: 1", "  maxUnavailable: [1]", "maxUnavailable"),
        ("kind: PodDisruptionBudget", "kind: PodDisruptionBudgets", "PodDisruptionBudgets"),
    ] {
        assert!(manifests.contains(right), "the default render has no {right:?}");
        let broken = manifests.replacen(right, wrong, 1);
        let output = validate(&broken);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the validator accepted {wrong:?} for {right:?}");
        assert!(stderr.contains(named), "the validator's error does not name {named}: {stderr}");
    }
}

#[test]
fn the_validator_refuses_promql_prometheus_would_not_load() {
    let manifests = render(&["-f", &all_options()]);
    assert_valid(&manifests);
    assert!(manifests.contains(" offset 1d"), "the hit-rate alert compares with a day earlier");
    let output = validate(&manifests.replacen(" offset 1d", " ofset 1d", 1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the validator accepted broken PromQL");
    assert!(stderr.contains("CachedHitRateFalling") && stderr.contains("parse error"), "{stderr}");
}

#[test]
fn more_than_one_replica_needs_the_shared_store_and_the_database() {
    let bucket = "sharedStore.url=s3://cache/team";
    let database = "database.url=postgres://cached@db:5432/cached";
    for values in [
        &["--set", "replicas=2"][..],
        &["--set", "replicas=3", "--set", bucket],
        &["--set", "replicas=3", "--set", database],
    ] {
        let error = render_error(values);
        assert!(error.contains("replicas > 1 needs both sharedStore.url"), "{values:?}: {error}");
    }
    let manifests = render(&["--set", "replicas=3", "--set", bucket, "--set", database]);
    assert!(manifests.contains("replicas: 3\n"), "{manifests}");
    assert_valid(&manifests);
}

#[test]
fn the_chart_refuses_a_setting_it_manages_and_an_open_server_by_mistake() {
    let error = render_error(&["--set", "config.listen=0.0.0.0:9999"]);
    assert!(error.contains("config.listen is set by the chart"), "{error}");
    let error = render_error(&["--set", "auth.tokensSecret="]);
    assert!(error.contains("auth.allowAnonymous=true"), "{error}");
    let error = render_error(&["--set", "agents.enabled=true", "--set", "agents.tokenSecret=agent"]);
    assert!(error.contains("agents.allowInsecureToken=true"), "{error}");
}

#[test]
fn keda_scales_the_agents_on_cacheds_own_queue_metric_unless_given_a_query() {
    let agents = ["agents.enabled=true", "agents.tokenSecret=agent", "agents.allowInsecureToken=true"];
    let mut flags: Vec<&str> = agents.iter().flat_map(|value| ["--set", value]).collect();
    flags.extend(["--set", "agents.keda.enabled=true"]);
    let manifests = render(&flags);
    assert!(
        manifests.contains(r#"query: "max(cached_scheduler_queued_tasks{job=\"release-cached-metrics\"})""#),
        "{manifests}"
    );
    assert_valid(&manifests);
}

/// The `cached.toml` of a render's ConfigMap, unindented.
fn cached_toml(manifests: &str) -> String {
    let mut lines = manifests.lines().skip_while(|line| line.trim() != "cached.toml: |").skip(1);
    let mut toml = String::new();
    for line in lines.by_ref() {
        let Some(line) = line.strip_prefix("    ") else { break };
        toml.push_str(line);
        toml.push('\n');
    }
    assert!(!toml.is_empty(), "no cached.toml in the render:\n{manifests}");
    toml
}

/// cached refuses an unknown key or a bad value at start, so starting it on the rendered file
/// proves the chart writes only settings cached has. Paths of Secrets the test has not got
/// (TLS, the bucket, the database) are emptied by flags, which win over the file, and the
/// listeners are moved to loopback.
#[test]
fn cached_starts_with_the_config_the_chart_renders() {
    let all_options = all_options();
    for values in [&[][..], &["-f", &all_options]] {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("cached.toml");
        let toml = cached_toml(&render(values));
        std::fs::write(&config, &toml).expect("config file");
        let tokens = dir.path().join("tokens.toml");
        let made = Command::new(binary("cached"))
            .args(["token", "new", "--name", "ci", "--scopes", "read", "--namespaces", "*", "--secret-file"])
            .arg(dir.path().join("ci.token"))
            .output()
            .expect("cached token new");
        assert!(made.status.success(), "cached token new: {}", String::from_utf8_lossy(&made.stderr));
        std::fs::write(&tokens, &made.stdout).expect("tokens file");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(binary("cached"));
        command
            .arg("--config")
            .arg(&config)
            .arg("--tokens-file")
            .arg(&tokens)
            .arg("--data-dir")
            .arg(dir.path().join("db"))
            .args(["--listen", &listen, "--metrics-listen", "off"]);
        if toml.contains("registry_listen") {
            command.args(["--registry-listen", &format!("127.0.0.1:{}", free_port())]);
        }
        for setting in [
            "--tls-cert",
            "--tls-key",
            "--tls-client-ca",
            "--shared-store",
            "--database-url",
            "--database-password-file",
        ] {
            command.args([setting, ""]);
        }
        assert_starts(command, &listen, &dir.path().join("cached.log"), values);
    }
}

/// Waits until `command` listens on `listen`, failing with its log if it exits first.
fn assert_starts(mut command: Command, listen: &str, log: &Path, values: &[&str]) {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().expect("start cached");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(listen).is_err() {
        if let Some(status) = child.try_wait().expect("cached's status") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("cached refused the cached.toml rendered with {values:?} ({status}): {log}");
        }
        assert!(Instant::now() < deadline, "cached did not listen on {listen} within 30s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Dotted paths of the leaves of a values file (`agents.keda.query`); lists and comments skipped.
fn value_paths(values: &str) -> Vec<String> {
    value_keys(values).into_iter().filter_map(|(path, leaf)| leaf.then_some(path)).collect()
}

/// Dotted paths of every key of a values file, each with whether it is a leaf (has a value on
/// its own line) rather than the parent of the keys or list items below it.
fn value_keys(values: &str) -> Vec<(String, bool)> {
    let mut parents: Vec<&str> = Vec::new();
    let mut keys = Vec::new();
    for line in values.lines() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') || body.starts_with("- ") {
            continue;
        }
        let Some((key, rest)) = body.split_once(':') else { continue };
        let depth = (line.len() - body.len()) / 2;
        parents.truncate(depth);
        let path = parents.iter().chain([&key]).copied().collect::<Vec<_>>().join(".");
        let leaf = !rest.trim().is_empty();
        keys.push((path, leaf));
        if !leaf {
            parents.push(key);
        }
    }
    keys
}

#[test]
fn every_value_is_in_the_table_of_docs_deploy_md() {
    let values = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md");
    let docs = std::fs::read_to_string(docs).expect("docs/deploy.md");
    let rows: Vec<&str> = docs.lines().filter(|line| line.starts_with("| `")).collect();
    let paths = value_paths(&values);
    assert!(paths.len() > 50, "values.yaml read wrong: {paths:?}");
    // A free-form map (config, resources) is documented as a whole.
    let documented = |path: &str| {
        let parts: Vec<&str> = path.split('.').collect();
        (1..=parts.len()).any(|n| {
            let name = format!("`{}`", parts[..n].join("."));
            rows.iter().any(|row| row.contains(&name))
        })
    };
    let missing: Vec<&String> = paths.iter().filter(|path| !documented(path)).collect();
    assert!(missing.is_empty(), "values without a row in docs/deploy.md's table: {missing:?}");
}
