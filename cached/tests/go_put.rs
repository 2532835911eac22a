//! GoCache.Put checks an entry's OutputID without reading its blob: the store took the blob's
//! SHA-256 while it verified the upload. Before, a Put of a large blob hashed it on a blocking
//! thread that went on long after the client gave up, so a stream of cheap Puts could keep
//! the server's CPUs busy.

mod common;

use std::time::Duration;

use common::{Server, noise};
use proto::v1;
use tonic::Code;

/// The compressed bytes read from the store so far, from /metrics.
async fn store_read_bytes(server: &Server) -> u64 {
    let text = server.metrics().await;
    let line = text
        .lines()
        .find(|line| line.starts_with("cached_store_read_bytes"))
        .unwrap_or_else(|| panic!("no cached_store_read_bytes in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn put_reads_no_blob_even_when_its_client_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let body = noise(64 << 20, 7);
    let digest = clients.write(&body).await;
    let entry = common::go_entry(&body);
    let put = v1::GoPutRequest { namespace: "ns".into(), action_id: vec![1; 32].into(), entry: Some(entry) };
    let before = store_read_bytes(&server).await;

    // A client that gives up at once: its call is dropped (the stream reset) mid-request.
    let _ = tokio::time::timeout(Duration::from_micros(200), clients.go.clone().put(put.clone())).await;
    // One that waits for its answer.
    clients.go.clone().put(put.clone()).await.expect("put");
    let wrong = v1::GoPutRequest {
        entry: Some(v1::GoEntry { output_id: vec![9; 32].into(), ..put.entry.clone().unwrap() }),
        ..put.clone()
    };
    let err = clients.go.clone().put(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("not to its OutputID"), "{}", err.message());

    // Hashing the blob would read it, a frame at a time.
    let read = store_read_bytes(&server).await - before;
    assert_eq!(read, 0, "Puts read {} MiB of the blob to hash it", read >> 20);
    let get = v1::GoGetRequest { namespace: "ns".into(), action_id: vec![1; 32].into() };
    let hit = clients.go.clone().get(get).await.unwrap().into_inner();
    assert_eq!(hit.entry.map(|entry| entry.digest), Some(Some(digest.to_wire())));
    server.stop().await;
}

/// Entries are not blobs eviction could give back, and a job's lease may record them without
/// end: below the free-space floor none is stored, as no upload is.
#[tokio::test]
async fn below_the_free_space_floor_no_entry_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let body = noise(4096, 3);
    server.clients().await.write(&body).await;
    server.stop().await;

    // A floor no disk here has above it.
    let server = Server::start(dir.path(), &[("min_free_space", "1PiB")]).await;
    let entry = common::go_entry(&body);
    let put = v1::GoPutRequest { namespace: "ns".into(), action_id: vec![2; 32].into(), entry: Some(entry) };
    let err = server.clients().await.go.put(put).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("min_free_space"), "{}", err.message());
    let get = v1::GoGetRequest { namespace: "ns".into(), action_id: vec![2; 32].into() };
    assert!(server.clients().await.go.get(get).await.unwrap().into_inner().entry.is_none());
    server.stop().await;
}

/// An action ID numbered `n`.
fn action(n: u32) -> bytes::Bytes {
    let mut id = vec![0; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id.into()
}

/// Puts `entry` under action `n` in `namespace`.
async fn put_entry(clients: &common::Clients, entry: &v1::GoEntry, namespace: &str, n: u32) {
    let request =
        v1::GoPutRequest { namespace: namespace.into(), action_id: action(n), entry: Some(entry.clone()) };
    clients.go.clone().put(request).await.expect("put");
}

/// How many of actions `numbers` are hits in `namespace`.
async fn hits_in(clients: &common::Clients, namespace: &str, numbers: std::ops::Range<u32>) -> usize {
    let request =
        v1::GoGetManyRequest { namespace: namespace.into(), action_ids: numbers.map(action).collect() };
    let results = clients.go.clone().get_many(request).await.unwrap().into_inner().results;
    results.iter().filter(|result| result.entry.is_some()).count()
}

/// A pull request's token may write any namespace of its pattern (`pr-1/*`): spread over 200
/// of them, a flood cut by namespace alone took `main` down to a 201st of the bound. Tenants (a
/// namespace's first path segment) share the bound first, then their namespaces theirs.
#[tokio::test]
async fn a_flood_spread_over_one_tenants_namespaces_is_cut_as_one_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("max_go_entries", "100")]).await;
    let clients = server.clients().await;
    let body = noise(512, 12);
    clients.write(&body).await;
    let entry = common::go_entry(&body);
    const BEFORE: u32 = 40;
    for n in 0..BEFORE {
        put_entry(&clients, &entry, "main", n).await;
    }
    for chunk in (0..1000u32).collect::<Vec<_>>().chunks(32) {
        let puts = chunk.iter().map(|n| {
            let namespace = format!("pr-1/ns{}", n % 200);
            let entry = &entry;
            let clients = &clients;
            async move { put_entry(clients, entry, &namespace, 1000 + n).await }
        });
        futures::future::join_all(puts).await;
    }
    let kept = hits_in(&clients, "main", 0..BEFORE).await;
    assert_eq!(kept, BEFORE as usize, "main kept {kept} of its {BEFORE} entries under pr-1's spread flood");
    server.stop().await;
}

/// Entries are not blobs: eviction under `max_size` never takes one whose blob stays, so a
/// writer (a pull request's token in its own namespace) could once record entries without end,
/// all pointing at one blob, until the disk reached its floor and every tenant's writes were
/// refused. They are bounded now: beyond `max_go_entries` the oldest puts of the namespaces
/// holding the most are forgotten, so the flood pushes out its own, and what was recorded last,
/// by anyone, is still a hit.
#[tokio::test]
async fn a_flood_of_entries_for_one_blob_forgets_its_own_oldest_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("max_go_entries", "100")]).await;
    let clients = server.clients().await;
    let body = noise(512, 11);
    clients.write(&body).await;
    let entry = common::go_entry(&body);
    let put = |namespace: &'static str, n: u32| put_entry(&clients, &entry, namespace, n);

    // Another namespace's build recorded entries before the flood.
    const BEFORE: u32 = 30;
    for n in 0..BEFORE {
        put("main", 1000 + n).await;
    }
    // The flood: 1000 entries, 32 puts at a time, all for the one blob.
    const FLOOD: u32 = 1000;
    for chunk in (0..FLOOD).collect::<Vec<_>>().chunks(32) {
        futures::future::join_all(chunk.iter().map(|n| put("pr-1", *n))).await;
    }
    // And one after it.
    put("main", 7).await;

    let request =
        v1::GoGetManyRequest { namespace: "pr-1".into(), action_ids: (0..FLOOD).map(action).collect() };
    let results = clients.go.clone().get_many(request).await.unwrap().into_inner().results;
    let hits: Vec<bool> = results.iter().map(|result| result.entry.is_some()).collect();
    let kept = hits.iter().filter(|hit| **hit).count();
    assert!(kept < 100, "{kept} of the flood's {FLOOD} entries are still stored, with max_go_entries 100");
    assert!(hits[FLOOD as usize - 50..].iter().all(|hit| *hit), "the flood's newest entries were forgotten");
    assert!(!hits[0], "the flood's oldest entry is still stored");
    let get = v1::GoGetRequest { namespace: "main".into(), action_id: action(7) };
    let hit = clients.go.clone().get(get).await.unwrap().into_inner();
    assert!(hit.entry.is_some(), "an entry recorded after the flood was forgotten");
    // The flood cost its own namespace: main's older entries are all still hits.
    let lost = BEFORE as usize - hits_in(&clients, "main", 1000..1000 + BEFORE).await;
    assert_eq!(lost, 0, "{lost} of main's {BEFORE} entries recorded before pr-1's flood were forgotten");

    let metrics = server.metrics().await;
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("cached_go_entries ") <= 100, "{metrics}");
    assert!(value("cached_go_entries_forgotten_total") > u64::from(FLOOD) - 100, "{metrics}");
    server.stop().await;
}
