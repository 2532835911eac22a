//! Several replicas on one bucket (issue 18), end to end: real `cached` replicas, a real
//! S3-compatible server on loopback (versitygw), the real go command through the bridge.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_client::connect::{Client, ConnectOptions};
use cached_e2e::s3::S3Server;
use cached_e2e::{Daemon, GoEnv, Running, binary, compile_actions, count_files, noise, run, wipe};
use proto::frames::FrameEncoder;
use proto::v1::{self, write_request};
use proto::{Digest, FRAME_SIZE};

fn cachectl(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(binary("cachectl")).args(["--server", &daemon.url()]).args(args).output().expect("cachectl")
}

/// `cachectl put` of one file; the digest it printed.
fn put(daemon: &Daemon, file: &Path) -> String {
    let out = cachectl(daemon, &["put", file.to_str().unwrap()]);
    assert!(out.status.success(), "put failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `cachectl get` into `dest`; whether the blob was served.
fn get(daemon: &Daemon, digest: &str, dest: &Path) -> bool {
    cachectl(daemon, &["get", digest, "-o", dest.to_str().unwrap()]).status.success()
}

fn shared_stats(daemon: &Daemon) -> serde_json::Value {
    let out = cachectl(daemon, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    stats["shared_store"].clone()
}

/// One token's local misses ask the bucket at most `max_shared_lookups` times a second (a
/// bucket of 16 seconds of them, which one batch may overdraw): past that they are misses
/// answered without the bucket, while another token's misses still reach it.
#[test]
fn a_tokens_lookups_of_the_bucket_are_bounded_and_others_keep_theirs() {
    let s3 = S3Server::start();
    let a = s3.replica();
    let dir = tempfile::tempdir().unwrap();
    let (tokens, secrets) = cached_e2e::mint_tokens(dir.path(), &[("pr", "read"), ("main", "read")]);
    let b =
        s3.replica_in(tempfile::tempdir().unwrap(), &["--tokens-file", &tokens, "--max-shared-lookups", "5"]);
    let file = dir.path().join("blob");
    std::fs::write(&file, noise(7, 100_000)).unwrap();
    let digest = put(&a, &file);
    let as_token = |name: &str, args: &[&str]| {
        let secret = &secrets.iter().find(|(token, _)| token == name).unwrap().1;
        let mut command = Command::new(binary("cachectl"));
        command.args(["--server", &b.url(), "--token-file", secret.to_str().unwrap()]).args(args);
        command.output().expect("cachectl")
    };
    let requests = || {
        let stats: serde_json::Value =
            serde_json::from_slice(&as_token("main", &["stats", "--json"]).stdout).unwrap();
        stats["shared_store"]["requests"].as_u64().expect("shared store requests")
    };

    let before = requests();
    let unknown: Vec<String> = (1..=1000).map(|i| format!("{i:064x}/100")).collect();
    let mut has = vec!["has"];
    has.extend(unknown.iter().map(String::as_str));
    for _ in 0..3 {
        let out = as_token("pr", &has);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let asked = requests() - before;
    assert!(asked <= 1010, "3 x 1000 misses of one token asked the bucket {asked} times");
    // The token's misses are answered without the bucket until it has paid back its batch...
    let fetched = dir.path().join("fetched");
    let out = as_token("pr", &["get", &digest, "-o", fetched.to_str().unwrap()]);
    assert!(!out.status.success(), "pr's read reached the bucket while over its lookups");
    // ...and another token's are not.
    let out = as_token("main", &["get", &digest, "-o", fetched.to_str().unwrap()]);
    assert!(out.status.success(), "main's read: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&file).unwrap());
}

/// Calls waiting on the bucket hold one of the replica's blocking threads each, and a token
/// whose calls held them all would stall every other tenant, whatever it asks: a token holds
/// at most its share (max_blocking_threads_per_token), the rest of its calls wait on none.
#[test]
fn a_token_waiting_on_a_hung_bucket_leaves_threads_to_the_others() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (tokens, secrets) =
        cached_e2e::mint_tokens(dir.path(), &[("pr", "read"), ("main", "read,cas-write")]);
    let flags = [
        "--tokens-file",
        &tokens,
        "--max-blocking-threads",
        "12",
        "--max-blocking-threads-per-token",
        "6",
        "--max-streams-per-token",
        "4",
        "--shared-store-timeout",
        "30s",
    ];
    let replica = s3.replica_in(tempfile::tempdir().unwrap(), &flags);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = |name: &str| {
        let secret = &secrets.iter().find(|(token, _)| token == name).unwrap().1;
        let secret = std::fs::read_to_string(secret).unwrap();
        runtime.block_on(Client::connect(&replica.url(), &ConnectOptions::with_token(secret.trim()))).unwrap()
    };
    let (pr, main) = (client("pr"), client("main"));
    let blob = Bytes::from(noise(11, 4096));
    let digest = Digest::of(&blob);
    runtime.block_on(cached_client::transfer::batch_write(&main, vec![(digest, blob)], 3)).unwrap();

    s3.pause();
    // Each asks the hung bucket about a blob nobody stored, on a thread of its own.
    let waiting: Vec<_> = (0..24u64)
        .map(|i| {
            let request = v1::FindMissingRequest { digests: vec![Digest::of(&noise(100 + i, 64)).to_wire()] };
            let mut cas = pr.cas.clone();
            runtime.spawn(async move { cas.find_missing(request).await })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let request = v1::FindMissingRequest { digests: vec![digest.to_wire()] };
    let mut cas = main.cas.clone();
    let answer = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), cas.find_missing(request)).await });
    let hung = waiting.iter().filter(|call| !call.is_finished()).count();
    s3.unpause();
    let answer = answer.expect("main's lookup of a blob the replica holds waited on pr's calls").unwrap();
    assert!(answer.into_inner().missing.is_empty(), "main's blob went missing");
    assert_eq!(
        hung,
        24,
        "pr's calls did not all wait on the bucket, so they proved nothing\n{}",
        replica.log()
    );
}

#[test]
fn a_blob_a_build_and_a_purge_through_one_replica_reach_another() {
    let s3 = S3Server::start();
    let (a, b) = (s3.replica(), s3.replica());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    // Three frames, so the object has several.
    std::fs::write(&file, noise(1, (2 << 20) + 12_345)).unwrap();
    let digest = put(&a, &file);
    let fetched = dir.path().join("fetched");
    assert!(get(&b, &digest, &fetched), "B did not serve what A stored");
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&file).unwrap(), "B served other bytes");

    let env = GoEnv::new();
    let tier = tempfile::tempdir().unwrap();
    let out = env.root.path().join("bin");
    let build = |daemon: &Daemon, args: &[&str]| {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-trimpath", "-o", out.to_str().unwrap(), "./cmd/app"]);
        run(env.go_bridged(&all, tier.path(), Some(&daemon.url()))).success("bridged build")
    };
    build(&a, &[]);
    let from_a = std::fs::read(&out).unwrap();
    // A fresh runner through B, whose local tier never saw the build.
    env.wipe_gocache();
    wipe(tier.path());
    std::fs::remove_file(&out).unwrap();
    let fresh = build(&b, &["-x"]);
    assert_eq!(compile_actions(&fresh.stderr), Vec::<&str>::new(), "the build through B compiled");
    assert!(std::fs::read(&out).unwrap() == from_a, "the binaries differ");
    let shared = shared_stats(&b);
    assert!(shared["shared_hits"].as_u64().unwrap() > 1, "{shared}");
    assert_eq!(shared["reachable"], true, "{shared}");

    // A purge through either replica reaches the bucket.
    assert!(s3.entries("default") > 0);
    let purged = cachectl(&a, &["admin", "purge", "--namespace", "default"]);
    assert!(purged.status.success(), "{}", String::from_utf8_lossy(&purged.stderr));
    assert_eq!(s3.entries("default"), 0, "the purge left entries in the bucket");

    // ... and B, which kept local copies of the entries its fresh runner used, drops them: a
    // fresh runner through B compiles again (B follows purges every few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        env.wipe_gocache();
        wipe(tier.path());
        let after = build(&b, &["-x"]);
        if !compile_actions(&after.stderr).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "B still answers with entries purged through A");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Without a database each replica keeps its own whole-build records: a purge through another
/// replica reaches them through the bucket's marker too, or the purged build would still be
/// restored here.
#[test]
fn a_purge_through_one_replica_reaches_anothers_whole_build_records() {
    let s3 = S3Server::start();
    let (a, mut b) = (s3.replica(), s3.replica());
    let module = cached_e2e::remote::TinyModule::new();
    let build = |b: &Daemon| {
        let built = run(module.cachectl(&b.url(), &["go", "build", "-trimpath", "-o", "app", "."]));
        built.success("cachectl go build").stderr
    };
    build(&b);
    assert!(build(&b).contains("cachectl: cache hit"), "the second build through B is a hit");
    let purged = cachectl(&a, &["admin", "purge", "--namespace", "default"]);
    assert!(purged.status.success(), "{}", String::from_utf8_lossy(&purged.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while build(&b).contains("cachectl: cache hit") {
        assert!(Instant::now() < deadline, "B still restores a build purged through A");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Recorded again since; a restart of B does not apply the purge once more.
    assert!(build(&b).contains("cachectl: cache hit"), "the build recorded after the purge is a hit");
    b = s3.replica_in(b.stop_keeping_data(), &[]);
    assert!(build(&b).contains("cachectl: cache hit"), "B's restart purged the namespace again");
}

/// `limit` bytes of `digest` from `offset`, read through `daemon` as they arrive.
fn read_part(daemon: &Daemon, digest: Digest, offset: u64, limit: u64) -> Result<Vec<u8>, tonic::Status> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect(&daemon.url(), &ConnectOptions::default()).await.unwrap();
        let request = v1::ReadRequest {
            digest: Some(digest.to_wire()),
            offset,
            limit,
            accept: v1::Compression::Identity as i32,
        };
        let mut stream = client.cas.clone().read(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(message) = futures::StreamExt::next(&mut stream).await {
            out.extend_from_slice(&message?.data);
        }
        Ok(out)
    })
}

/// A read of one byte of a blob a replica lacks made it copy the whole blob from the bucket
/// first, whatever its size: a part of a blob is served only where it is held, and the bytes
/// a replica fills are those of whole reads.
#[test]
fn a_read_of_one_byte_does_not_copy_a_blob_onto_a_replica() {
    let s3 = S3Server::start();
    let (a, b) = (s3.replica(), s3.replica());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    let raw = noise(12, 24 << 20);
    std::fs::write(&file, &raw).unwrap();
    let digest: Digest = put(&a, &file).parse().unwrap();

    for (offset, limit) in [(0, 1), (5 << 20, 1), (20 << 20, 0)] {
        let refused = read_part(&b, digest, offset, limit).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    }
    assert_eq!(shared_stats(&b)["fill_bytes"], 0, "B filled blobs it sent one byte of");

    let fetched = dir.path().join("fetched");
    assert!(get(&b, &digest.to_string(), &fetched), "B did not serve a whole read");
    assert!(std::fs::read(&fetched).unwrap() == raw, "B served other bytes");
    assert!(shared_stats(&b)["fill_bytes"].as_u64().unwrap() > 0, "a whole read fills");
    let part = read_part(&b, digest, 5 << 20, 100).unwrap();
    assert!(part == raw[5 << 20..(5 << 20) + 100], "B did not serve a part of what it holds");
}

/// Bytes free on the file system of `path`, as df says.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|line| line.trim().parse().ok()).unwrap_or_else(|| panic!("df said {text}"))
}

/// A fill from the bucket writes the local disk as an upload does: on a replica whose disk has
/// less room above its floor than the blob, the read is a miss rather than a write into the
/// floor (which a burst of reads would carry on to a full disk, where RocksDB wedges).
#[test]
fn a_replica_near_its_free_space_floor_does_not_fill_a_miss_it_has_no_room_for() {
    const FLOOR: u64 = 64 << 20;
    let Some(disk) = cached_e2e::Tmpfs::mount(256 << 20) else { return };
    let s3 = S3Server::start();
    let a = s3.replica();
    let b = s3.replica_in(tempfile::tempdir_in(disk.path()).unwrap(), &["--min-free-space", "64MiB"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, noise(7, 24 << 20)).unwrap();
    let digest = put(&a, &file);

    // 8 MiB above B's floor, after RocksDB preallocated its log.
    let filler = disk.path().join("filler");
    let room = free_bytes(disk.path()) - FLOOR;
    std::fs::write(&filler, vec![1u8; (room - (8 << 20)) as usize]).unwrap();
    let fetched = dir.path().join("fetched");
    assert!(!get(&b, &digest, &fetched), "B filled 24 MiB into a disk with 8 MiB above its floor");
    assert!(free_bytes(disk.path()) >= FLOOR, "B wrote below its floor");

    // With room again, the same read is filled and served.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(&b, &digest, &fetched) {
        assert!(Instant::now() < deadline, "B did not serve the blob once it had room");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&file).unwrap(), "B served other bytes");
}

/// A single cached that joins a bucket keeps serving what it holds; a blob only it holds goes
/// up to the bucket once a Go entry naming it is recorded through it, and from then on another
/// replica serves both.
#[test]
fn a_single_cached_that_joins_a_bucket_copies_up_the_blob_of_an_entry_recorded_through_it() {
    let s3 = S3Server::start();
    let single = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, noise(11, (1 << 20) + 4_321)).unwrap();
    let digest = put(&single, &file);
    let a = s3.replica_in(single.stop_keeping_data(), &[]);
    let b = s3.replica();
    let fetched = dir.path().join("fetched");
    assert!(get(&a, &digest, &fetched), "A lost what it held before joining");
    assert!(!get(&b, &digest, &fetched), "the blob reached the bucket before any entry named it");

    let sha256 = Command::new("sha256sum").arg(&file).output().expect("sha256sum");
    let output_id = hex_bytes(String::from_utf8_lossy(&sha256.stdout).split_whitespace().next().unwrap());
    let action_id = vec![0xa5; 32];
    let parsed = digest.parse::<Digest>().expect("a digest as cachectl prints it");
    let entry =
        v1::GoEntry { output_id, size: parsed.size, digest: Some(parsed.to_wire()), time_unix_nanos: 1 };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let through_a = Client::connect(&a.url(), &ConnectOptions::default()).await.unwrap();
        let put = v1::GoPutRequest {
            namespace: "default".into(),
            action_id: action_id.clone().into(),
            entry: Some(entry),
        };
        through_a.go.clone().put(put).await.expect("the entry is recorded, its blob copied up");
        let through_b = Client::connect(&b.url(), &ConnectOptions::default()).await.unwrap();
        let get = v1::GoGetRequest { namespace: "default".into(), action_id: action_id.into() };
        let found = through_b.go.clone().get(get).await.unwrap().into_inner();
        assert!(
            found.entry.is_some_and(|entry| entry.digest == Some(parsed.to_wire())),
            "B misses the entry"
        );
    });
    assert!(get(&b, &digest, &fetched), "B cannot read the copied-up blob");
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&file).unwrap(), "B served other bytes");
}

fn hex_bytes(hex: &str) -> Bytes {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

/// Every blob replica A acknowledged before it was killed (SIGKILL, mid-storm) reads back
/// byte-identical through replica B.
#[test]
fn every_put_a_killed_replica_acknowledged_reads_back_through_another() {
    const PUTS: u64 = 500;
    let s3 = S3Server::start();
    let mut a = s3.replica();
    let b = s3.replica();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let acknowledged: Arc<Mutex<Vec<u64>>> = Arc::default();
    // Why puts were refused before A was killed, and how often: worth seeing when too few
    // succeed.
    let refused: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let client = Client::connect(&a.url(), &ConnectOptions::default()).await.unwrap();
        let puts: Vec<_> = (0..PUTS)
            .map(|seed| {
                let (client, acknowledged) = (client.clone(), Arc::clone(&acknowledged));
                let (refused, killed) = (Arc::clone(&refused), Arc::clone(&killed));
                cached_client::task::spawn("put", async move {
                    let data = Bytes::from(noise(seed, 16 << 10));
                    let blob = vec![(Digest::of(&data), data)];
                    // A refused put is tried again, as clients do (most are refused at first:
                    // A takes 128 uploads at once), until A is killed.
                    while !killed.load(Ordering::Relaxed) {
                        match cached_client::transfer::batch_write(&client, blob.clone(), 1).await {
                            Ok(_) => {
                                acknowledged.lock().unwrap().push(seed);
                                return;
                            }
                            Err(err) => *refused.lock().unwrap().entry(err.to_string()).or_default() += 1,
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        // Generous: the other tests of this file run beside this one, and the 1 GiB one keeps
        // the bucket's disk busy (a full suite once took over a minute for these 100).
        let deadline = Instant::now() + Duration::from_secs(240);
        while acknowledged.lock().unwrap().len() < (PUTS / 5) as usize {
            let count = acknowledged.lock().unwrap().len();
            assert!(
                Instant::now() < deadline,
                "A acknowledged {count} of {PUTS} puts in 240 s; refused (why: how often): {:?}\nA's log:\n{}\nversitygw's log:\n{}",
                refused.lock().unwrap(),
                a.log(),
                s3.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        killed.store(true, Ordering::Relaxed);
        a.kill();
        for put in puts {
            put.await.unwrap();
        }
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    let readable = runtime.block_on(async {
        let client = Client::connect(&b.url(), &ConnectOptions::default()).await.unwrap();
        let mut readable = 0;
        for &seed in &acknowledged {
            let data = noise(seed, 16 << 10);
            match cached_client::tree::read_blob(&client, Digest::of(&data)).await {
                Ok(read) if read == data => readable += 1,
                other => eprintln!("blob {seed}: {:?}", other.map(|read| read.len())),
            }
        }
        readable
    });
    eprintln!("acknowledged / readable: {} / {readable} (of {PUTS} puts)", acknowledged.len());
    assert_eq!(readable, acknowledged.len());
}

/// The bucket gone in the middle of a build through the bridge: the build succeeds on the
/// local tiers (the bridge goes on without uploads), the replica says it is degraded, and
/// once the bucket is back, uploads go through again without restarting cached.
#[test]
fn a_bucket_stopped_mid_build_costs_no_failure_and_uploads_resume_when_it_returns() {
    let mut s3 = S3Server::start();
    let a = s3.replica();
    let env = GoEnv::new();
    let tier = tempfile::tempdir().unwrap();
    let out = env.root.path().join("bin");
    let mut build = Running::start(env.go_bridged(
        &["build", "-trimpath", "-o", out.to_str().unwrap(), "./cmd/app"],
        tier.path(),
        Some(&a.url()),
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_files(&tier.path().join("o")) < 20 {
        assert!(build.is_running() && Instant::now() < deadline, "the build ended before the bucket stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    s3.stop();
    build.finish().success("build with the bucket stopped");
    assert!(out.is_file());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, noise(7, 1000)).unwrap();
    let refused = cachectl(&a, &["put", file.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("shared store s3://cache/ci"), "{message}");
    assert_eq!(shared_stats(&a)["reachable"], false);

    s3.resume();
    let uploads_before = shared_stats(&a)["uploads"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cachectl(&a, &["put", file.to_str().unwrap()]).status.success() {
        assert!(Instant::now() < deadline, "uploads did not resume after the bucket returned");
        std::thread::sleep(Duration::from_millis(200));
    }
    let shared = shared_stats(&a);
    assert_eq!(shared["reachable"], true, "{shared}");
    assert!(shared["uploads"].as_u64().unwrap() > uploads_before, "{shared}");
}

/// One flipped byte in a bucket object: never served, counted, and the next put repairs it.
#[test]
fn a_corrupt_object_is_not_served_is_counted_and_a_new_put_repairs_it() {
    let s3 = S3Server::start();
    let (a, b) = (s3.replica(), s3.replica());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, noise(3, 300_000)).unwrap();
    let digest = put(&a, &file);
    let object = s3.blob_object(&digest);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[1000] ^= 0x10;
    std::fs::write(&object, bytes).unwrap();

    let fetched = dir.path().join("fetched");
    assert!(!get(&b, &digest, &fetched), "B served a corrupt object");
    assert_eq!(shared_stats(&b)["corrupt_objects"], 1);
    assert!(!object.exists(), "the corrupt object was left in the bucket");

    assert_eq!(put(&b, &file), digest);
    let c = s3.replica();
    assert!(get(&c, &digest, &fetched), "the repaired object was not served");
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&file).unwrap());
}

/// The peak RSS of a process while it is sampled, from a thread of its own.
struct PeakRss {
    sampling: Arc<std::sync::atomic::AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).unwrap_or(0) * 1024
}

impl PeakRss {
    fn sample(pid: u32) -> Self {
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = Arc::clone(&sampling);
        let sampler = std::thread::Builder::new()
            .name("rss sampler".into())
            .spawn(move || {
                let mut peak = 0;
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss(pid));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            })
            .expect("start the RSS sampler");
        Self { sampling, sampler }
    }

    fn peak(self) -> u64 {
        self.sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        self.sampler.join().unwrap()
    }
}

/// A blob of `frames` copies of one incompressible frame made of `block`, as one Write
/// through `url`: the server still decompresses, hashes and stores each one, while the test
/// stays cheap.
fn write_repeated(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    block: &[u8],
    frames: usize,
) -> (Digest, Bytes) {
    let frame = Bytes::from(FrameEncoder::new(1).unwrap().encode(block).unwrap());
    let mut hasher = blake3::Hasher::new();
    (0..frames).for_each(|_| {
        hasher.update(block);
    });
    let digest = Digest::from_hasher(&hasher, (frames * block.len()) as u64);
    runtime.block_on(async {
        let client = Client::connect(url, &ConnectOptions::default()).await.unwrap();
        let header = v1::WriteRequest {
            kind: Some(write_request::Kind::Header(v1::WriteHeader {
                digest: Some(digest.to_wire()),
                compression: v1::Compression::Zstd as i32,
            })),
        };
        let sent = frame.clone();
        let data = (0..frames)
            .map(move |_| v1::WriteRequest { kind: Some(write_request::Kind::Data(Bytes::clone(&sent))) });
        client.cas.clone().write(futures::stream::iter(std::iter::once(header).chain(data))).await.unwrap();
    });
    (digest, frame)
}

/// Reads `digest` through `url`, checking every frame is `frame`; how many there were.
fn read_repeated(runtime: &tokio::runtime::Runtime, url: &str, digest: Digest, frame: &Bytes) -> usize {
    runtime.block_on(async {
        let client = Client::connect(url, &ConnectOptions::default()).await.unwrap();
        let request = v1::ReadRequest {
            digest: Some(digest.to_wire()),
            accept: v1::Compression::Zstd as i32,
            ..Default::default()
        };
        let mut stream = client.cas.clone().read(request).await.unwrap().into_inner();
        let mut frames_read = 0;
        while let Some(message) = futures::StreamExt::next(&mut stream).await {
            assert!(message.unwrap().data == *frame, "B served another frame");
            frames_read += 1;
        }
        frames_read
    })
}

/// A 1 GiB blob written through A (a multipart upload) and read through B (a fill from the
/// bucket): neither replica's memory grows by more than 64 MiB. A 64 MiB blob goes through
/// first, so RocksDB's memtables and block cache (32 MiB together, whatever the blob) and the
/// allocator's arenas are at their working size before the measurement: what is measured is
/// what grows with the blob.
#[test]
fn memory_stays_flat_while_a_1gib_blob_goes_through_the_bucket() {
    const FRAMES: usize = 1024;
    let s3 = S3Server::start();
    let (a, b) = (s3.replica(), s3.replica());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (warm, warm_frame) = write_repeated(&runtime, &a.url(), &noise(8, FRAME_SIZE), 64);
    assert_eq!(read_repeated(&runtime, &b.url(), warm, &warm_frame), 64);
    std::thread::sleep(Duration::from_millis(300));

    let (idle, writing) = (rss(a.pid()), PeakRss::sample(a.pid()));
    let (digest, frame) = write_repeated(&runtime, &a.url(), &noise(9, FRAME_SIZE), FRAMES);
    let written = writing.peak().saturating_sub(idle);

    let (idle, reading) = (rss(b.pid()), PeakRss::sample(b.pid()));
    let frames_read = read_repeated(&runtime, &b.url(), digest, &frame);
    let read = reading.peak().saturating_sub(idle);
    assert_eq!(frames_read, FRAMES);
    eprintln!("RSS growth: {} MiB writing through A, {} MiB reading through B", written >> 20, read >> 20);
    assert!(written <= 64 << 20, "A's RSS grew by {} MiB while writing 1 GiB", written >> 20);
    assert!(read <= 64 << 20, "B's RSS grew by {} MiB while reading 1 GiB", read >> 20);
}
