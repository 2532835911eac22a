//! Builds.Explain and Builds.Stats read a namespace's whole event log, which a `read` token
//! fills (every Lookup that misses appends an event of up to 24 KiB): they must go through it
//! an event at a time, so a call costs the server no more memory however long the log is.
//! Runs the real binary, whose peak resident memory (VmHWM) is the measure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::v1;
use proto::v1::builds_client::BuildsClient;
use tonic::transport::Channel;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A target of about 16 KB, different for each `n`.
fn target(n: usize) -> v1::BuildTarget {
    let long = |tag: &str| format!("{tag}{n:06}{}", "x".repeat(3990));
    v1::BuildTarget { module: long("m"), package: long("p"), goos: long("o"), goarch: long("a") }
}

fn lookup(n: usize) -> v1::BuildLookupRequest {
    let manifest = v1::BuildManifest {
        version: 1,
        components: vec![v1::ManifestComponent {
            name: "file.main.go".into(),
            hash: blake3::hash(&n.to_le_bytes()).as_bytes().to_vec().into(),
            display: String::new(),
        }],
    };
    v1::BuildLookupRequest {
        namespace: String::new(),
        target: Some(target(n)),
        key: cached::builds::manifest::key(&manifest).to_vec().into(),
        manifest: Some(manifest),
    }
}

#[tokio::test]
async fn explain_and_stats_do_not_hold_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_cached"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_clear()
        .env("HOME", std::env::temp_dir())
        // One malloc arena: what RocksDB's block cache frees on one thread is reused on the
        // next, so the peak measures what the calls hold rather than which threads ran them.
        .env("MALLOC_ARENA_MAX", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "cached did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let client = BuildsClient::new(channel);

    // 3,000 misses of different targets: about 48 MB of events in one namespace.
    let events = 3000;
    futures::stream::iter(0..events)
        .map(|n| {
            let mut client = client.clone();
            async move { assert!(!client.lookup(lookup(n)).await.expect("lookup").into_inner().hit) }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let before = peak_rss(daemon.0.id());
    let stats = v1::BuildStatsRequest { namespace: String::new(), since_seconds: 0, top: 0 };
    let reply = client.clone().stats(stats.clone()).await.expect("stats").into_inner();
    assert_eq!(reply.namespaces[0].misses, events as u64, "every miss was kept");
    assert_eq!(reply.namespaces[0].top_missed_targets.len(), 10);
    for _ in 0..3 {
        let query = v1::BuildExplainRequest { namespace: String::new(), query: "no/such/package".into() };
        assert!(!client.clone().explain(query).await.expect("explain").into_inner().found);
        client.clone().stats(stats.clone()).await.expect("stats");
    }
    let found = v1::BuildExplainRequest { namespace: String::new(), query: target(1234).package };
    let event = client.clone().explain(found).await.expect("explain").into_inner().event.expect("found");
    assert_eq!(event.target, Some(target(1234)));
    let growth = peak_rss(daemon.0.id()).saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB", growth >> 10);
    // RocksDB's block cache (16 MiB) may fill as the log is read; the log itself must not.
    assert!(growth < 24 << 20, "peak RSS grew by {} MiB reading a 48 MB log", growth >> 20);
}
