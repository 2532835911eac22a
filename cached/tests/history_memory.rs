//! Builds.Explain and Builds.Stats read a namespace's whole event log, which a `read` token
//! fills (every Lookup that misses appends an event of up to 24 KiB): they must go through it
//! an event at a time, so a call costs the server no more memory however long the log is.
//! Runs the real binary, whose peak resident memory (VmHWM) is the measure.

mod common;

use common::process::Daemon;
use futures::StreamExt;
use proto::v1;
use proto::v1::builds_client::BuildsClient;

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
    // One malloc arena: what RocksDB's block cache frees on one thread is reused on the next,
    // so the peak measures what the calls hold rather than which threads ran them.
    let daemon = Daemon::start(dir.path(), &[], &[("MALLOC_ARENA_MAX", "1")]);
    let channel = daemon.channel().await;
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
    let before = daemon.peak_rss();
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
    let growth = daemon.peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB", growth >> 10);
    // RocksDB's block cache (16 MiB) may fill as the log is read; the log itself must not.
    assert!(growth < 24 << 20, "peak RSS grew by {} MiB reading a 48 MB log", growth >> 20);
}
