//! A disk that fills up: cached keeps its free-space floor by refusing uploads and evicting,
//! and goes on storing; with the floor off, a full disk answers RESOURCE_EXHAUSTED and
//! corrupts nothing. Runs cached on small tmpfs mounts, which needs root (CI runs as root);
//! elsewhere the tests say they were skipped.

mod common;

use std::time::{Duration, Instant};

use cached_e2e::Tmpfs;
use common::{Server, noise};
use proto::Digest;
use proto::v1::Compression;

#[tokio::test]
async fn full_disk_is_resource_exhausted_and_stored_blobs_stay_intact() {
    let Some(disk) = Tmpfs::mount(40 << 20) else { return };
    let settings = [("max_size", "1GiB"), ("min_free_space", "0")];
    let server = Server::start(&disk.path().join("data"), &settings).await;
    let clients = server.clients().await;
    let mut stored = Vec::new();
    let mut refusal = None;
    for seed in 0..40 {
        let blob = noise(2 << 20, seed);
        let digest = proto::Digest::of(&blob);
        match clients.write_as(digest, common::frames(&blob)).await {
            Ok(_) => stored.push((digest, blob)),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.expect("a 40 MiB disk fills before 80 MiB are stored");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("disk is full"), "{}", status.message());
    assert!(!stored.is_empty());
    for (digest, blob) in &stored {
        let read =
            clients.read(*digest, 0, 0, Compression::Identity).await.expect("stored blobs stay readable");
        assert!(&read == blob, "blob {digest} came back different");
    }
    drop(server);
}

/// Uploads 2 MiB blobs of noise from `seed` on until one is refused; returns those stored and
/// the refusal.
async fn fill(clients: &common::Clients, seed: u64) -> (Vec<(Digest, Vec<u8>)>, tonic::Status) {
    let mut stored = Vec::new();
    for seed in seed..seed + 200 {
        let blob = noise(2 << 20, seed);
        let digest = Digest::of(&blob);
        match clients.write_as(digest, common::frames(&blob)).await {
            Ok(_) => stored.push((digest, blob)),
            Err(status) => return (stored, status),
        }
    }
    panic!("400 MiB fit on a 320 MiB disk");
}

#[tokio::test]
async fn below_the_free_space_floor_uploads_wait_for_eviction_and_the_store_never_wedges() {
    // RocksDB preallocates each write-ahead log (about 72 MiB here), and while it switches logs
    // two are on disk: the disk holds both, the floor and some rounds of blobs.
    let Some(disk) = Tmpfs::mount(320 << 20) else { return };
    // max_size far beyond the disk: only the floor stands between the store and a full disk.
    let settings = [("max_size", "10GiB"), ("min_free_space", "64MiB"), ("maintenance_interval", "200ms")];
    let server = Server::start(&disk.path().join("data"), &settings).await;
    let clients = server.clients().await;

    // Each round fills the disk to the floor, then waits until uploads are taken again: first
    // flushing the memtables frees the WAL; once the blobs alone reach the floor, housekeeping
    // evicts the oldest and compacts them away.
    let mut stored = Vec::new();
    for round in 0..8 {
        let (more, refusal) = fill(&clients, round * 1000).await;
        assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{}", refusal.message());
        assert!(refusal.message().contains("nearly full"), "the floor, not the disk: {}", refusal.message());
        stored.extend(more);
        let deadline = Instant::now() + Duration::from_secs(60);
        let retry = noise(2 << 20, round * 1000 + 999);
        while let Err(status) = clients.write_as(Digest::of(&retry), common::frames(&retry)).await {
            if Instant::now() >= deadline {
                panic!(
                    "round {round}: uploads were still refused after 60 s: {}\nstore: {:?}\n{}",
                    status.message(),
                    clients.store_stats().await,
                    files_and_sizes(&disk.path().join("data"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if clients.store_stats().await.evicted_blobs > 0 {
            break;
        }
    }
    assert!(clients.store_stats().await.evicted_blobs > 0, "8 rounds up to the floor and nothing evicted");
    // A cache may forget; it never serves wrong bytes.
    let mut kept = 0;
    for (digest, blob) in &stored {
        match clients.read(*digest, 0, 0, Compression::Identity).await {
            Ok(read) => {
                assert!(&read == blob, "blob {digest} came back different");
                kept += 1;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{}", status.message()),
        }
    }
    assert!(kept > 0, "every blob was evicted");
    drop(server);
}

/// What fills the disk, for a failure message.
fn files_and_sizes(dir: &std::path::Path) -> String {
    let mut files = walkdir(dir);
    files.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let mut lines = vec![format!("{} files, {total} bytes; the largest:", files.len())];
    for (path, size) in files.iter().take(12) {
        lines.push(format!("{size:>12} {}", path.display()));
    }
    lines.join("\n")
}

fn walkdir(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => found.extend(walkdir(&path)),
            Ok(meta) => found.push((path, meta.len())),
            Err(_) => {}
        }
    }
    found
}

/// The `min_free_space` of the tests that keep a floor.
const FLOOR: u64 = 64 << 20;

/// Bytes free on the disk under `dir` above `floor`.
fn room_above(dir: &std::path::Path, floor: u64) -> u64 {
    let stat = rustix::fs::statvfs(dir).unwrap();
    let free = stat.f_bavail * stat.f_frsize;
    assert!(free > floor, "{free} bytes free under {}: already below the floor", dir.display());
    free - floor
}

#[tokio::test]
async fn an_upload_larger_than_the_room_above_the_floor_is_refused_at_its_header() {
    let Some(disk) = Tmpfs::mount(256 << 20) else { return };
    let settings = [("max_size", "10GiB"), ("min_free_space", "64MiB"), ("idle_timeout", "1h")];
    let server = Server::start(&disk.path().join("data"), &settings).await;
    let clients = server.clients().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    // Sized from what is free once RocksDB has preallocated its log, which varies by filesystem.
    let room = room_above(disk.path(), FLOOR);
    let too_big = Digest { hash: [6; 32], size: room + (32 << 20) };
    sender.send(common::header(too_big, Compression::Zstd)).await.unwrap();
    let mut cas = clients.cas.clone();
    let upload = cas.write(tokio_stream::wrappers::ReceiverStream::new(receiver));
    // No body is ever sent: the header alone must settle it.
    let answer = tokio::time::timeout(Duration::from_secs(20), upload).await.expect("refused at the header");
    let err = answer.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("could ever take"), "{}", err.message());
    drop(sender);
    drop(server);
}

#[tokio::test]
async fn an_upload_that_crosses_the_floor_while_it_streams_is_cut_off_and_stores_nothing() {
    let Some(disk) = Tmpfs::mount(512 << 20) else { return };
    let settings = [("max_size", "10GiB"), ("min_free_space", "64MiB"), ("maintenance_interval", "200ms")];
    let server = Server::start(&disk.path().join("data"), &settings).await;
    let clients = server.clients().await;
    // Fits the room above the floor at its header; then something else fills the disk.
    let blob = noise(200 << 20, 77);
    let digest = Digest::of(&blob);
    let frames = common::frames(&blob);
    let total = frames.len();
    assert!(room_above(disk.path(), FLOOR) > blob.len() as u64, "the blob must fit at its header");
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut cas = clients.cas.clone();
    let upload = cached::task::spawn("upload", async move {
        cas.write(tokio_stream::wrappers::ReceiverStream::new(receiver)).await
    });
    sender.send(common::header(digest, Compression::Zstd)).await.unwrap();
    let mut sent = 0;
    let filler = disk.path().join("filler");
    for frame in frames {
        // The server measures the disk again every 64 MiB an upload writes, from a sample at
        // most 250 ms old: the disk fills just before the next measure, once the last sample
        // is stale, so the floor (not ENOSPC, 56 MiB on) is what the upload meets.
        if sent == 60 {
            let below_the_floor = room_above(disk.path(), FLOOR) + (8 << 20);
            std::fs::write(&filler, vec![1u8; below_the_floor as usize]).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if sender.send(common::data(frame)).await.is_err() {
            break; // The server answered and closed the stream.
        }
        sent += 1;
    }
    drop(sender);
    let err = upload.await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("nearly full"), "the floor, not a full disk: {}", err.message());
    assert!(sent < total, "refused only after all {total} frames were sent");
    assert!(!clients.is_stored(digest).await);
    assert_eq!(clients.store_stats().await.blobs, 0, "nothing was stored");
    // The store did not wedge: once the disk has room again, uploads are taken again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let small = noise(1 << 20, 78);
    while clients.write_as(Digest::of(&small), common::frames(&small)).await.is_err() {
        assert!(Instant::now() < deadline, "uploads were still refused after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
}
