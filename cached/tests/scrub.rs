//! Rot at rest: a stored frame whose bytes changed on disk. Readers refuse what they get (they
//! hash it), but nothing repaired the blob: its digest stayed "present", so uploads of it were
//! discarded, and every read kept it recently used. The scrub removes it, and so does a reader's
//! report (`Cas.Recheck`) at once; the next upload stores it whole.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Clients, Server, noise};
use proto::v1::Compression;
use proto::{Digest, FRAME_SIZE};

/// Flips one byte in the middle of the first frame of the largest stored blob (a build's
/// largest is a package archive every link reads; the first uploaded may be one a fresh build
/// never asks for). Chunk keys are (upload id, frame). Incompressible bytes are stored as raw
/// zstd blocks: the frame stays well formed and only hashing finds the change.
fn rot_first_frame(data_dir: &Path) {
    let db = cached::db::open(data_dir).unwrap();
    let chunks = cached::db::cf(&db, cached::db::CF_CHUNKS).unwrap();
    let mut stored: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for item in db.iterator_cf(chunks, rocksdb::IteratorMode::Start) {
        let (key, value) = item.unwrap();
        *stored.entry(key[..8].to_vec()).or_default() += value.len();
    }
    let (upload, _) = stored.into_iter().max_by_key(|(upload, bytes)| (*bytes, upload.clone())).unwrap();
    let first = db.iterator_cf(chunks, rocksdb::IteratorMode::From(&upload, rocksdb::Direction::Forward));
    let (key, value) = first.into_iter().next().unwrap().unwrap();
    let mut value = value.to_vec();
    let middle = value.len() / 2;
    value[middle] ^= 0x01;
    db.put_cf(chunks, key, value).unwrap();
}

async fn read_back(clients: &Clients, digest: Digest) -> Vec<u8> {
    clients.read(digest, 0, 0, Compression::Zstd).await.unwrap()
}

/// A store in `dir` with a blob whose first frame rotted on disk, and a sound one: each's
/// bytes and digest.
async fn rotten_and_sound(dir: &Path) -> ((Vec<u8>, Digest), (Vec<u8>, Digest)) {
    let rotten = noise(2 * FRAME_SIZE + 100, 7);
    let sound = noise(FRAME_SIZE / 2, 8);
    let server = Server::start(dir, &[]).await;
    let clients = server.clients().await;
    let (rotten_digest, sound_digest) = (clients.write(&rotten).await, clients.write(&sound).await);
    server.stop().await;
    rot_first_frame(dir);
    ((rotten, rotten_digest), (sound, sound_digest))
}

#[tokio::test]
async fn a_blob_that_rotted_at_rest_is_scrubbed_away_and_stored_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ((rotten, rotten_digest), (sound, sound_digest)) = rotten_and_sound(dir.path()).await;

    // Without a scrub (the embedded default) the rot stays, whatever is uploaded.
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    assert_ne!(Digest::of(&read_back(&clients, rotten_digest).await), rotten_digest);
    clients.write(&rotten).await;
    let read = read_back(&clients, rotten_digest).await;
    assert_ne!(Digest::of(&read), rotten_digest, "the upload was discarded: the digest was present");
    server.stop().await;

    let scrubbing = [("maintenance_interval", "200ms"), ("scrub_rate", "64MiB")];
    let server = Server::start(dir.path(), &scrubbing).await;
    let clients = server.clients().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients.is_stored(rotten_digest).await {
        assert!(Instant::now() < deadline, "the rotten blob was never scrubbed away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(clients.is_stored(sound_digest).await, "a sound blob stays");
    assert!(read_back(&clients, sound_digest).await == sound);
    let metrics = server.metrics().await;
    assert!(metrics.contains("cached_scrub_removed_blobs_total 1"), "{metrics}");
    clients.write(&rotten).await;
    assert!(read_back(&clients, rotten_digest).await == rotten, "stored again, whole");
    server.stop().await;
}

#[tokio::test]
async fn a_reader_that_finds_rot_has_cached_recheck_and_remove_the_blob_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ((rotten, rotten_digest), (sound, sound_digest)) = rotten_and_sound(dir.path()).await;

    // No scrub runs (the embedded default): only the reader's report can find the rot.
    let server = Server::start(dir.path(), &[]).await;
    let client = cached_client::Client::connect(&format!("http://{}", server.addr), &Default::default())
        .await
        .unwrap();
    let dest = dir.path().join("downloaded");
    let refused = cached_client::transfer::download_to_file(&client, rotten_digest, &dest).await;
    let Err(err @ cached_client::ClientError::Corrupt { .. }) = refused else {
        panic!("a rotten blob was not refused: {refused:?}")
    };
    assert!(err.to_string().contains("cached found its copy corrupt and removed it"), "{err}");
    assert!(!dest.exists(), "nothing of a corrupt download is written");
    let clients = server.clients().await;
    assert!(!clients.is_stored(rotten_digest).await, "the rotten blob is a miss at once");
    clients.write(&rotten).await;
    assert!(read_back(&clients, rotten_digest).await == rotten, "stored again, whole");

    // A report about a sound blob (damage on the way, or a false one) leaves it alone.
    let recheck = cached_client::recheck::recheck(&client, sound_digest).await.unwrap();
    assert_eq!(recheck, proto::v1::recheck_response::Outcome::Sound);
    assert!(read_back(&clients, sound_digest).await == sound);
    server.stop().await;
}

/// The bridge reports a body that lands wrong: the rotten blob goes at once, the lookup is a
/// miss that the go command fills again, and its upload stores the blob whole, so the next
/// fresh runner misses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_that_finds_rot_gets_it_removed_and_the_refill_stores_it_whole() {
    use cached_e2e::{GoEnv, run, wipe};
    let dir = tempfile::tempdir().unwrap();
    let (env, tier) = (GoEnv::new(), tempfile::tempdir().unwrap());
    // A fresh runner's build; the bridge's misses, from its summary line.
    let misses = |url: String| {
        env.wipe_gocache();
        wipe(tier.path());
        let args = ["build", "-buildvcs=false", "-o", "/dev/null", "./cmd/app"];
        let go = env.go_bridged(&args, tier.path(), Some(&url));
        let built = tokio::task::block_in_place(|| run(go).success("bridged build"));
        let summary = built.stderr.lines().find(|line| line.contains(" misses)")).unwrap_or("");
        let count = summary.split(" misses)").next().and_then(|head| head.rsplit(' ').next());
        count
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no summary: {}", built.stderr))
    };
    let server = Server::start(dir.path(), &[]).await;
    let url = format!("http://{}", server.addr);
    assert!(misses(url.clone()) > 0, "the first build fills the cache");
    // What a fresh runner misses of a sound cache (the go command asks for a few actions it
    // never stores).
    let sound = misses(url);
    server.stop().await;
    rot_first_frame(dir.path());

    let server = Server::start(dir.path(), &[]).await;
    let url = format!("http://{}", server.addr);
    assert!(misses(url.clone()) > sound, "a rotten body was not refused");
    assert_eq!(misses(url), sound, "the rotten blob was not stored again whole");
    server.stop().await;
}
