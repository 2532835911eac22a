//! A full disk answers RESOURCE_EXHAUSTED and corrupts nothing. Runs cached on a small tmpfs,
//! which needs root (CI runs as root); elsewhere the test says it was skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, noise};
use proto::v1::Compression;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| Self(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn full_disk_is_resource_exhausted_and_stored_blobs_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "40m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let server = Server::start(&disk.0.join("data"), &[("max_size", "1GiB")]).await;
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
