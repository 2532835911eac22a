//! The byte budget: eviction keeps the store within it, least recently used first among the
//! blobs of the tokens holding more than their share, and Go entries whose blob went are
//! misses, never dangling hits.

mod common;

use std::time::Duration;

use common::tokens::{as_token, tokens_file};
use common::{Clients, Server, data, frames, header, noise};
use proto::v1::{self, Compression};
use proto::{Digest, OutputId};
use sha2::{Digest as _, Sha256};

const BLOB: usize = 256 << 10;
const BUDGET: &[(&str, &str)] = &[("max_size", "4MiB")];

async fn write_spaced(clients: &Clients, seeds: std::ops::Range<u64>) -> Vec<Digest> {
    let mut digests = Vec::new();
    for seed in seeds {
        digests.push(clients.write(&noise(BLOB, seed)).await);
        // Distinct access times make the expected order exact.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    digests
}

#[tokio::test]
async fn eviction_keeps_the_budget_and_takes_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BUDGET).await;
    let clients = server.clients().await;
    let first = write_spaced(&clients, 0..12).await;
    // Reading the two oldest makes them the most recently used.
    for digest in &first[..2] {
        clients.read(*digest, 0, 0, Compression::Zstd).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let second = write_spaced(&clients, 12..24).await;

    let store = clients.store_stats().await;
    assert!(store.stored_bytes <= 4 << 20, "stored {} > budget", store.stored_bytes);
    assert!(store.evicted_blobs > 0);
    assert!(
        clients.is_stored(first[0]).await && clients.is_stored(first[1]).await,
        "recently read blobs kept"
    );
    assert!(!clients.is_stored(first[2]).await, "the least recently used blob goes first");
    assert!(clients.is_stored(*second.last().unwrap()).await, "the newest blob is kept");
    let kept = futures::future::join_all(first.iter().chain(&second).map(|d| clients.is_stored(*d))).await;
    assert_eq!(kept.iter().filter(|k| **k).count() as u64, store.blobs);
    server.stop().await;
}

/// Uploads `data` with the token named `token`.
async fn write_with_token(clients: &Clients, token: &str, data_bytes: &[u8]) -> Digest {
    let digest = Digest::of(data_bytes);
    let mut messages = vec![header(digest, Compression::Zstd)];
    messages.extend(frames(data_bytes).into_iter().map(data));
    clients.cas.clone().write(as_token(futures::stream::iter(messages), token)).await.expect("write");
    digest
}

async fn is_stored_for(clients: &Clients, token: &str, digest: Digest) -> bool {
    let request = as_token(v1::FindMissingRequest { digests: vec![digest.to_wire()] }, token);
    clients.cas.clone().find_missing(request).await.expect("find missing").into_inner().missing.is_empty()
}

#[tokio::test]
async fn a_tokens_flood_of_blobs_evicts_its_own_not_another_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &["main", "pr-1"], "read,cas-write");
    let settings = [("max_size", "4MiB"), ("tokens_file", tokens.as_str())];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let clients = server.clients().await;
    let mut main = Vec::new();
    for seed in 0..4 {
        main.push(write_with_token(&clients, "main", &noise(BLOB, seed)).await);
    }
    // A pull request's token uploads four times the budget; with one order for everyone, main's
    // blobs, the oldest, went first.
    for seed in 100..164 {
        write_with_token(&clients, "pr-1", &noise(BLOB, seed)).await;
    }
    for digest in &main {
        assert!(is_stored_for(&clients, "main", *digest).await, "main's blob {digest} was evicted");
    }
    let pr_last = Digest::of(&noise(BLOB, 163));
    assert!(is_stored_for(&clients, "pr-1", pr_last).await, "the newest upload is kept");
    assert!(
        !is_stored_for(&clients, "pr-1", Digest::of(&noise(BLOB, 100))).await,
        "the flood lost its oldest"
    );
    server.stop().await;
}

#[tokio::test]
async fn go_entries_need_their_blob() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BUDGET).await;
    let clients = server.clients().await;
    let body = noise(BLOB, 100);
    let entry = |digest: Digest| v1::GoEntry {
        output_id: OutputId(Sha256::digest(&body).into()).0.to_vec().into(),
        size: digest.size,
        digest: Some(digest.to_wire()),
        time_unix_nanos: 1_700_000_000_000_000_000,
    };
    let put = |digest: Digest| v1::GoPutRequest {
        namespace: "team".into(),
        action_id: vec![1; 32].into(),
        entry: Some(entry(digest)),
    };
    let get = v1::GoGetRequest { namespace: "team".into(), action_id: vec![1; 32].into() };

    let err = clients.go.clone().put(put(Digest::of(&body))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());

    let digest = clients.write(&body).await;
    // An entry whose OutputID is not the SHA-256 of its blob would make every reader refuse it.
    let wrong = v1::GoPutRequest {
        entry: Some(v1::GoEntry { output_id: vec![7; 32].into(), ..entry(digest) }),
        ..put(digest)
    };
    let err = clients.go.clone().put(wrong).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not to its OutputID"), "{}", err.message());
    clients.go.clone().put(put(digest)).await.unwrap();
    let hit = clients.go.clone().get(get.clone()).await.unwrap().into_inner();
    assert_eq!(hit.entry, Some(entry(digest)));
    assert!(hit.body_inline);
    let inline = zstd::bulk::decompress(&hit.body_zstd, BLOB).unwrap();
    assert!(inline == body);
    let other_namespace = v1::GoGetRequest { namespace: "other".into(), ..get.clone() };
    assert!(clients.go.clone().get(other_namespace).await.unwrap().into_inner().entry.is_none());

    tokio::time::sleep(Duration::from_millis(3)).await;
    write_spaced(&clients, 0..24).await;
    assert!(!clients.is_stored(digest).await, "the entry's blob was evicted");
    let miss = clients.go.clone().get(get.clone()).await.unwrap().into_inner();
    assert_eq!(miss.entry, None);
    let stats = clients.stats().await;
    assert_eq!(stats.store.unwrap().go_entries_dropped, 1);
    let team = stats.namespaces.iter().find(|ns| ns.namespace == "team").unwrap();
    assert_eq!((team.go_hits, team.go_misses, team.go_puts), (1, 1, 1));
    server.stop().await;
}

#[tokio::test]
async fn housekeeping_drops_go_entries_whose_blob_was_evicted_without_a_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [BUDGET[0], ("maintenance_interval", "100ms")];
    let server = Server::start(dir.path(), &settings).await;
    let clients = server.clients().await;
    let body = noise(BLOB, 200);
    let digest = clients.write(&body).await;
    let entry = common::go_entry(&body);
    let put =
        v1::GoPutRequest { namespace: "team".into(), action_id: vec![9; 32].into(), entry: Some(entry) };
    clients.go.clone().put(put).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    write_spaced(&clients, 300..324).await;
    assert!(!clients.is_stored(digest).await, "the entry's blob was evicted");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while clients.store_stats().await.go_entries_dropped == 0 {
        assert!(std::time::Instant::now() < deadline, "housekeeping never dropped the entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = v1::GoGetRequest { namespace: "team".into(), action_id: vec![9; 32].into() };
    assert_eq!(clients.go.clone().get(get).await.unwrap().into_inner().entry, None);
    assert_eq!(clients.store_stats().await.go_entries_dropped, 1, "dropped once, by housekeeping");
    server.stop().await;
}
