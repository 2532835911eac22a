//! The cachectl binary against a real cached on loopback.

use std::path::Path;
use std::process::{Command, Output};

use cached::embedded::Embedded;

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");

fn cachectl(server: &str, args: &[&str]) -> Output {
    Command::new(CACHECTL).arg("--server").arg(server).args(args).output().expect("run cachectl")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "cachectl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A file of `mib` MiB that compresses somewhat, written without holding it all in memory.
fn write_sample(path: &Path, mib: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = if state.is_multiple_of(4) { state.to_le_bytes() } else { (i as u64).to_le_bytes() };
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        file.write_all(&block).unwrap();
    }
}

async fn server(dir: &Path) -> Embedded {
    Embedded::start(dir, &[]).await.expect("cached starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn put_then_get_round_trips_a_200mib_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let url = server.url();
    let file = dir.path().join("big.bin");
    write_sample(&file, 200);
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"hello\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();

    let printed = stdout(&cachectl(
        &url,
        &["put", file.to_str().unwrap(), small.to_str().unwrap(), empty.to_str().unwrap()],
    ));
    let digests: Vec<&str> = printed.lines().collect();
    assert_eq!(digests.len(), 3, "{printed}");
    assert!(digests[0].ends_with(&format!("/{}", 200 << 20)), "{printed}");
    assert_eq!(digests[1], format!("{}/6", blake3::hash(b"hello\n").to_hex()));

    for (digest, original) in digests.iter().zip([&file, &small, &empty]) {
        let copy = dir.path().join("copy");
        stdout(&cachectl(&url, &["get", digest, "-o", copy.to_str().unwrap()]));
        assert!(std::fs::read(&copy).unwrap() == std::fs::read(original).unwrap(), "{digest} differs");
    }
    // Many at once, as stored frames or decoded by the server: the same bytes either way.
    for compression in ["zstd", "none", "auto"] {
        let out = dir.path().join(format!("many-{compression}"));
        std::fs::create_dir(&out).unwrap();
        let mut args =
            vec!["get", "--transfer-compression", compression, "--output-dir", out.to_str().unwrap()];
        args.extend(digests.iter().copied());
        stdout(&cachectl(&url, &args));
        for (digest, original) in digests.iter().zip([&file, &small, &empty]) {
            let landed = out.join(digest.split('/').next().unwrap());
            assert!(std::fs::read(&landed).unwrap() == std::fs::read(original).unwrap(), "{digest} differs");
        }
    }

    // A second put uploads nothing: the stats count no new writes.
    let writes = |json: &serde_json::Value| {
        json["apis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["api"].as_str().unwrap().starts_with("Cas."))
            .map(|a| a["bytes_in"].as_u64().unwrap())
            .sum::<u64>()
    };
    let before: serde_json::Value =
        serde_json::from_str(&stdout(&cachectl(&url, &["stats", "--json"]))).unwrap();
    stdout(&cachectl(&url, &["put", file.to_str().unwrap()]));
    let after: serde_json::Value =
        serde_json::from_str(&stdout(&cachectl(&url, &["stats", "--json"]))).unwrap();
    assert_eq!(writes(&before), writes(&after));
    assert_eq!(after["store"]["blobs"], 3);
    assert_eq!(after["store"]["raw_bytes"], (200 << 20) + 6);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn has_reports_presence_and_stats_reflect_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let url = server.url();
    let file = dir.path().join("f");
    std::fs::write(&file, b"some bytes").unwrap();
    let digest = stdout(&cachectl(&url, &["put", file.to_str().unwrap()])).trim().to_owned();
    let absent = format!("{}/3", "0".repeat(64));

    assert_eq!(stdout(&cachectl(&url, &["has", &digest])), format!("{digest} present\n"));
    let output = cachectl(&url, &["has", &digest, &absent]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{digest} present\n{absent} missing\n"));

    let output = cachectl(&url, &["get", &absent, "-o", dir.path().join("x").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("not in the cache"), "{}", stderr(&output));
    assert!(!dir.path().join("x").exists());

    let table = stdout(&cachectl(&url, &["stats"]));
    assert!(table.contains("blobs      1"), "{table}");
    assert!(table.contains("Cas.Read"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&cachectl(&url, &["stats", "--json"]))).unwrap();
    let read = json["apis"].as_array().unwrap().iter().find(|a| a["api"] == "Cas.Read").unwrap();
    assert_eq!((read["requests"].as_u64(), read["misses"].as_u64()), (Some(1), Some(1)));
    assert_eq!(json["store"]["raw_bytes"], 10);
    assert!(table.contains("(uploads stop below 1.0 GiB)"), "{table}");
    assert_eq!(json["store"]["min_free_bytes"], 1u64 << 30);
    assert!(json["store"]["disk_free_bytes"].as_u64().unwrap() > 0, "{json}");
    server.stop().await.unwrap();
}

/// `cachectl stats | head -1` closes the pipe before cachectl is done: cachectl stops quietly,
/// as other commands do, instead of panicking about a failed print.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_closes_the_pipe_ends_cachectl_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(CACHECTL)
        .args(["--server", &server.url(), "stats"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "{:?}: {}", output.status, stderr(&output));
    assert_eq!(stderr(&output), "");
    server.stop().await.unwrap();
}

#[test]
fn errors_are_clear_and_exit_codes_distinct() {
    let dead = format!("http://127.0.0.1:{}", cached_e2e::free_port());
    let output = cachectl(&dead, &["stats"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("cannot reach cached at") && stderr(&output).contains("CACHED_ADDR"),
        "{}",
        stderr(&output)
    );

    let output = cachectl(&dead, &["get", "abc/1", "-o", "/tmp/never"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("<64 hex digits>/<size in bytes>"), "{}", stderr(&output));

    let output = cachectl(&dead, &["put", "/definitely/not/here"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/definitely/not/here"), "{}", stderr(&output));

    let bare = dead.trim_start_matches("http://");
    let output = cachectl(bare, &["stats"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains(&format!("needs a scheme: {dead}")), "{}", stderr(&output));
}
