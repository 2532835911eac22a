//! Stats as data (`StatsReport`, the stable `--json` form) and as a readable table.

use std::fmt::Write;
use std::io::Write as _;

use cached_client::size::human as bytes;
use proto::v1;
use serde::Serialize;

/// The `cachectl stats --json` document. Fields are only ever added, never renamed.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub server: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// Server-wide totals; null for a token limited to some namespaces.
    pub store: Option<StoreReport>,
    pub apis: Vec<ApiReport>,
    pub namespaces: Vec<NamespaceReport>,
    /// Whole builds (`cachectl go build`) over the `--since` window; null when the server has
    /// no Builds service.
    pub builds: Option<BuildsReport>,
    /// The shared tier (a bucket replicas share); null without one.
    pub shared_store: Option<SharedStoreReport>,
}

/// Blob reads per tier and the bucket's traffic.
#[derive(Debug, Serialize)]
pub struct SharedStoreReport {
    pub url: String,
    /// Whether the last request reached the bucket; false: degraded (local reads only).
    pub reachable: bool,
    pub local_hits: u64,
    pub shared_hits: u64,
    pub shared_misses: u64,
    pub fill_bytes: u64,
    pub uploads: u64,
    pub upload_bytes: u64,
    pub corrupt_objects: u64,
    pub errors: u64,
    pub requests: u64,
    /// Mean time of a request to the bucket; null before the first.
    pub mean_request_seconds: Option<f64>,
}

impl SharedStoreReport {
    fn new(shared: v1::SharedStoreStats) -> Self {
        Self {
            mean_request_seconds: (shared.requests > 0)
                .then(|| shared.request_nanos as f64 / 1e9 / shared.requests as f64),
            url: shared.url,
            reachable: shared.reachable,
            local_hits: shared.local_hits,
            shared_hits: shared.shared_hits,
            shared_misses: shared.shared_misses,
            fill_bytes: shared.fill_bytes,
            uploads: shared.uploads,
            upload_bytes: shared.upload_bytes,
            corrupt_objects: shared.corrupt_objects,
            errors: shared.errors,
            requests: shared.requests,
        }
    }

    fn write_table(&self, out: &mut String) {
        let _ = writeln!(out);
        let state = if self.reachable { "reachable" } else { "DEGRADED: not answering" };
        let _ = writeln!(out, "shared store {} ({state})", self.url);
        let _ = writeln!(
            out,
            "  blob reads {} local hits, {} shared hits (filled {}), {} misses",
            self.local_hits,
            self.shared_hits,
            bytes(self.fill_bytes),
            self.shared_misses
        );
        let _ = writeln!(out, "  uploads    {} blobs, {}", self.uploads, bytes(self.upload_bytes));
        let mean = self.mean_request_seconds.map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1e3));
        let _ = writeln!(
            out,
            "  requests   {} ({} failed), mean {mean}; {} corrupt objects deleted",
            self.requests, self.errors, self.corrupt_objects
        );
    }
}

/// Whole-build numbers over a window, per namespace.
#[derive(Debug, Serialize)]
pub struct BuildsReport {
    pub since_seconds: u64,
    pub namespaces: Vec<BuildNamespaceReport>,
}

#[derive(Debug, Serialize)]
pub struct BuildNamespaceReport {
    pub namespace: String,
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    /// hits / lookups; null without lookups.
    pub hit_rate: Option<f64>,
    /// Successful builds recorded.
    pub records: u64,
    /// Uncompressed output bytes restored by hits and uploaded by recorded builds.
    pub bytes_served: u64,
    pub bytes_stored: u64,
    /// The recorded durations of the builds that hit.
    pub time_saved_seconds: f64,
    /// The Go action hit rate of this namespace since cached started (what go commands saw
    /// through the bridge, else what cached answered); null without lookups.
    pub go_action_hit_rate: Option<f64>,
    pub top_miss_causes: Vec<CauseReport>,
    pub top_missed_targets: Vec<TargetReport>,
}

#[derive(Debug, Serialize)]
pub struct CauseReport {
    pub cause: String,
    pub misses: u64,
}

#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub module: String,
    pub package: String,
    pub goos: String,
    pub goarch: String,
    pub misses: u64,
}

#[derive(Debug, Serialize)]
pub struct StoreReport {
    pub blobs: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// raw_bytes / stored_bytes; null while the store is empty.
    pub compression_ratio: Option<f64>,
    pub max_bytes: u64,
    pub evicted_blobs: u64,
    pub evicted_bytes: u64,
    pub go_entries_dropped: u64,
    pub disk_free_bytes: u64,
    /// Below `disk_free_bytes` this, cached refuses uploads; 0 when the floor is off.
    pub min_free_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ApiReport {
    pub api: String,
    pub requests: u64,
    pub errors: u64,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); null when nothing was looked up.
    pub hit_rate: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Serialize)]
pub struct NamespaceReport {
    pub namespace: String,
    /// Lookups the server answered, and its hit rate.
    pub go_hits: u64,
    pub go_misses: u64,
    pub go_puts: u64,
    pub hit_rate: Option<f64>,
    /// What `cachectl gocacheprog` sessions reported: every lookup of the go command, whichever
    /// tier answered it.
    pub client_sessions: u64,
    pub client_gets: u64,
    pub client_local_hits: u64,
    pub client_remote_hits: u64,
    pub client_misses: u64,
    /// (local + remote hits) / gets: the Go action hit rate the builds saw.
    pub client_hit_rate: Option<f64>,
    pub client_wait_seconds: f64,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn store_lines(out: &mut String, store: &StoreReport) {
    let _ = writeln!(out, "  blobs      {}", store.blobs);
    let _ = writeln!(
        out,
        "  stored     {} of {} budget ({} uncompressed, ratio {})",
        bytes(store.stored_bytes),
        bytes(store.max_bytes),
        bytes(store.raw_bytes),
        store.compression_ratio.map_or("-".to_owned(), |r| format!("{r:.2}x"))
    );
    let _ = writeln!(out, "  evicted    {} blobs, {}", store.evicted_blobs, bytes(store.evicted_bytes));
    let _ = writeln!(out, "  disk       {}", disk_line(store));
}

impl StatsReport {
    pub fn new(server: &str, stats: v1::StatsResponse) -> Self {
        Self {
            server: server.to_owned(),
            version: stats.version,
            uptime_seconds: stats.uptime_seconds,
            store: stats.store.map(|store| StoreReport {
                blobs: store.blobs,
                raw_bytes: store.raw_bytes,
                stored_bytes: store.stored_bytes,
                compression_ratio: (store.stored_bytes > 0)
                    .then(|| store.raw_bytes as f64 / store.stored_bytes as f64),
                max_bytes: store.max_bytes,
                evicted_blobs: store.evicted_blobs,
                evicted_bytes: store.evicted_bytes,
                go_entries_dropped: store.go_entries_dropped,
                disk_free_bytes: store.disk_free_bytes,
                min_free_bytes: store.min_free_bytes,
            }),
            apis: stats
                .apis
                .into_iter()
                .map(|api| ApiReport {
                    hit_rate: ratio(api.hits, api.hits + api.misses),
                    api: api.api,
                    requests: api.requests,
                    errors: api.errors,
                    hits: api.hits,
                    misses: api.misses,
                    bytes_in: api.bytes_in,
                    bytes_out: api.bytes_out,
                })
                .collect(),
            namespaces: stats
                .namespaces
                .into_iter()
                .map(|ns| NamespaceReport {
                    hit_rate: ratio(ns.go_hits, ns.go_hits + ns.go_misses),
                    client_hit_rate: ratio(ns.client_local_hits + ns.client_remote_hits, ns.client_gets),
                    client_wait_seconds: ns.client_wait_nanos as f64 / 1e9,
                    namespace: ns.namespace,
                    go_hits: ns.go_hits,
                    go_misses: ns.go_misses,
                    go_puts: ns.go_puts,
                    client_sessions: ns.client_sessions,
                    client_gets: ns.client_gets,
                    client_local_hits: ns.client_local_hits,
                    client_remote_hits: ns.client_remote_hits,
                    client_misses: ns.client_misses,
                })
                .collect(),
            builds: None,
            shared_store: stats.shared_store.map(SharedStoreReport::new),
        }
    }

    /// Adds the whole-build section (`Builds.Stats`).
    pub fn with_builds(mut self, builds: v1::BuildStatsResponse) -> Self {
        let namespaces = builds
            .namespaces
            .into_iter()
            .map(|ns| {
                let go = self.namespaces.iter().find(|n| n.namespace == ns.namespace);
                BuildNamespaceReport {
                    hit_rate: ratio(ns.hits, ns.lookups),
                    lookups: ns.lookups,
                    hits: ns.hits,
                    misses: ns.misses,
                    records: ns.records,
                    bytes_served: ns.bytes_served,
                    bytes_stored: ns.bytes_stored,
                    time_saved_seconds: ns.time_saved_ms as f64 / 1000.0,
                    go_action_hit_rate: go.and_then(|go| go.client_hit_rate.or(go.hit_rate)),
                    top_miss_causes: ns
                        .top_miss_causes
                        .into_iter()
                        .map(|c| CauseReport { cause: c.cause, misses: c.count })
                        .collect(),
                    top_missed_targets: ns
                        .top_missed_targets
                        .into_iter()
                        .map(|t| {
                            let target = t.target.unwrap_or_default();
                            TargetReport {
                                module: target.module,
                                package: target.package,
                                goos: target.goos,
                                goarch: target.goarch,
                                misses: t.count,
                            }
                        })
                        .collect(),
                    namespace: ns.namespace,
                }
            })
            .collect();
        self.builds = Some(BuildsReport { since_seconds: builds.since_seconds, namespaces });
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|err| format!("{{\"error\": \"{err}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "cached {} at {}, up {}", self.version, self.server, duration(self.uptime_seconds));
        let _ = writeln!(out);
        let _ = writeln!(out, "store");
        match &self.store {
            Some(store) => store_lines(&mut out, store),
            None => {
                let _ = writeln!(out, "  (server-wide totals are shown to tokens of every namespace)");
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>7} {:>9} {:>9} {:>8} {:>11} {:>11}",
            "API", "requests", "errors", "hits", "misses", "hit rate", "bytes in", "bytes out"
        );
        for api in &self.apis {
            let _ = writeln!(
                out,
                "{:<20} {:>9} {:>7} {:>9} {:>9} {:>8} {:>11} {:>11}",
                api.api,
                api.requests,
                api.errors,
                api.hits,
                api.misses,
                percent(api.hit_rate),
                bytes(api.bytes_in),
                bytes(api.bytes_out)
            );
        }
        if !self.namespaces.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<24} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>11} {:>10}",
                "Go namespace",
                "hits",
                "misses",
                "puts",
                "hit rate",
                "sessions",
                "build gets",
                "local hits",
                "build rate"
            );
            for ns in &self.namespaces {
                let _ = writeln!(
                    out,
                    "{:<24} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>11} {:>10}",
                    ns.namespace,
                    ns.go_hits,
                    ns.go_misses,
                    ns.go_puts,
                    percent(ns.hit_rate),
                    ns.client_sessions,
                    ns.client_gets,
                    ns.client_local_hits,
                    percent(ns.client_hit_rate)
                );
            }
            let _ = writeln!(
                out,
                "(hits, misses, puts: what cached answered; build gets and rate: what go commands \
                 saw through cachectl gocacheprog, local-tier hits included)"
            );
        }
        if let Some(shared) = &self.shared_store {
            shared.write_table(&mut out);
        }
        if let Some(builds) = &self.builds {
            builds.write_table(&mut out);
        }
        out
    }
}

impl BuildsReport {
    fn write_table(&self, out: &mut String) {
        let window = window(self.since_seconds);
        let _ = writeln!(out);
        if self.namespaces.is_empty() {
            let _ = writeln!(out, "whole builds (cachectl go build), last {window}: none");
            return;
        }
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>6} {:>7} {:>8} {:>10} {:>10} {:>11} {:>9}",
            format!("builds, last {window}"),
            "lookups",
            "hits",
            "misses",
            "hit rate",
            "served",
            "stored",
            "time saved",
            "Go hits"
        );
        for ns in &self.namespaces {
            let _ = writeln!(
                out,
                "{:<24} {:>8} {:>6} {:>7} {:>8} {:>10} {:>10} {:>11} {:>9}",
                ns.namespace,
                ns.lookups,
                ns.hits,
                ns.misses,
                percent(ns.hit_rate),
                bytes(ns.bytes_served),
                bytes(ns.bytes_stored),
                seconds(ns.time_saved_seconds),
                percent(ns.go_action_hit_rate)
            );
            if !ns.top_miss_causes.is_empty() {
                let causes: Vec<String> =
                    ns.top_miss_causes.iter().map(|c| format!("{} ({})", c.cause, c.misses)).collect();
                let _ = writeln!(out, "  top miss causes:    {}", causes.join(", "));
            }
            if !ns.top_missed_targets.is_empty() {
                let targets: Vec<String> = ns
                    .top_missed_targets
                    .iter()
                    .map(|t| format!("{} {}/{} ({})", t.package, t.goos, t.goarch, t.misses))
                    .collect();
                let _ = writeln!(out, "  top missed targets: {}", targets.join(", "));
            }
        }
    }
}

/// A `--since` window as it was probably typed: `24h`, `7d`, `90m`.
fn window(seconds: u64) -> String {
    match seconds {
        0 => "all kept".to_owned(),
        s if s % 3600 == 0 && s <= 72 * 3600 => format!("{}h", s / 3600),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `83.2` → `1m 23.2s`.
fn seconds(value: f64) -> String {
    if value < 60.0 {
        format!("{value:.1}s")
    } else {
        format!("{}m {:.0}s", (value / 60.0).floor(), value % 60.0)
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// The data disk's free space against the floor, with a warning once uploads are refused.
fn disk_line(store: &StoreReport) -> String {
    let free = format!("{} free", bytes(store.disk_free_bytes));
    match store.min_free_bytes {
        0 => format!("{free} (no floor)"),
        floor if store.disk_free_bytes < floor => {
            format!(
                "{free}, below min_free_space {}: uploads are refused while blobs are evicted",
                bytes(floor)
            )
        }
        floor => format!("{free} (uploads stop below {})", bytes(floor)),
    }
}

fn duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// Writes to stdout. A reader that closed the pipe (`| head`) asked for no more: cachectl ends
/// quietly, as `head` expects, instead of the panic `print!` gives.
pub fn print_out(text: std::fmt::Arguments<'_>) {
    if let Err(err) = std::io::stdout().lock().write_fmt(text) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        panic!("failed printing to stdout: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_computes_rates() {
        let response = v1::StatsResponse {
            version: "1".into(),
            store: Some(v1::StoreStats { raw_bytes: 300, stored_bytes: 100, ..Default::default() }),
            apis: vec![v1::ApiStats { api: "Cas.Read".into(), hits: 3, misses: 1, ..Default::default() }],
            ..Default::default()
        };
        let report = StatsReport::new("http://x", response);
        assert_eq!(report.store.as_ref().unwrap().compression_ratio, Some(3.0));
        assert_eq!(report.apis[0].hit_rate, Some(0.75));
        assert!(report.to_table().contains("75.0%"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["apis"][0]["hits"], 3);
        assert!(json["builds"].is_null());
    }

    #[test]
    fn the_shared_store_section_shows_tiers_and_degradation() {
        let response = v1::StatsResponse {
            shared_store: Some(v1::SharedStoreStats {
                url: "s3://cache/ci".into(),
                reachable: false,
                local_hits: 30,
                shared_hits: 4,
                requests: 4,
                request_nanos: 8_000_000,
                corrupt_objects: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let report = StatsReport::new("http://x", response);
        let table = report.to_table();
        assert!(table.contains("shared store s3://cache/ci (DEGRADED: not answering)"), "{table}");
        assert!(
            table.contains("30 local hits, 4 shared hits") && table.contains("mean 2.0 ms; 1 corrupt"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["shared_store"]["mean_request_seconds"], 0.002);
        let one_machine = StatsReport::new("http://x", v1::StatsResponse::default());
        assert!(!one_machine.to_table().contains("shared store"));
        assert!(
            serde_json::from_str::<serde_json::Value>(&one_machine.to_json()).unwrap()["shared_store"]
                .is_null()
        );
    }

    #[test]
    fn the_disk_line_says_when_uploads_stop() {
        let store = |free: u64, floor: u64| {
            let response = v1::StatsResponse {
                store: Some(v1::StoreStats {
                    disk_free_bytes: free,
                    min_free_bytes: floor,
                    ..Default::default()
                }),
                ..Default::default()
            };
            StatsReport::new("http://x", response).to_table()
        };
        assert!(store(5 << 30, 1 << 30).contains("disk       5.0 GiB free (uploads stop below 1.0 GiB)"));
        assert!(store(512 << 20, 1 << 30).contains("below min_free_space 1.0 GiB: uploads are refused"));
        assert!(store(5 << 30, 0).contains("(no floor)"));
    }

    #[test]
    fn builds_section_reports_rates_causes_and_targets() {
        let response = v1::StatsResponse {
            namespaces: vec![v1::NamespaceStats {
                namespace: "ci".into(),
                client_gets: 10,
                client_local_hits: 6,
                client_remote_hits: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let builds = v1::BuildStatsResponse {
            since_seconds: 86_400,
            namespaces: vec![v1::BuildNamespaceStats {
                namespace: "ci".into(),
                lookups: 4,
                hits: 1,
                misses: 3,
                time_saved_ms: 2500,
                top_miss_causes: vec![v1::CauseCount { cause: "GOOS".into(), count: 2 }],
                top_missed_targets: vec![v1::TargetCount {
                    target: Some(v1::BuildTarget {
                        module: "m".into(),
                        package: "m/cmd/app".into(),
                        goos: "linux".into(),
                        goarch: "amd64".into(),
                    }),
                    count: 3,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let report = StatsReport::new("http://x", response).with_builds(builds);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let ns = &json["builds"]["namespaces"][0];
        assert_eq!(ns["hit_rate"], 0.25);
        assert_eq!(ns["go_action_hit_rate"], 0.8);
        assert_eq!(ns["time_saved_seconds"], 2.5);
        assert_eq!(ns["top_miss_causes"][0]["cause"], "GOOS");
        assert_eq!(ns["top_missed_targets"][0]["misses"], 3);
        let table = report.to_table();
        assert!(table.contains("builds, last 24h"), "{table}");
        assert!(table.contains("GOOS (2)") && table.contains("m/cmd/app linux/amd64 (3)"), "{table}");
    }
}
