//! The module store's disk: what one task makes the agent extract, and what the store and the
//! running tasks' links to it take together, measured on the real files.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proto::Digest;
use runner_agent::modules::{ModuleStore, ModuleZip};

const MIB: u64 = 1 << 20;

/// A module zip of `example.com/m<n>` holding one file of `bytes` zeros (a few KiB of zip):
/// the kind of zip a job may ship whether or not its build imports it.
fn bomb(dir: &Path, n: usize, bytes: u64) -> ModuleZip {
    let path = dir.join(format!("m{n}.zip"));
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    writer.start_file(format!("example.com/m{n}@v1.0.0/zeros.txt"), options).unwrap();
    let chunk = vec![0u8; MIB as usize];
    for _ in 0..bytes / MIB {
        writer.write_all(&chunk).unwrap();
    }
    writer.finish().unwrap();
    let digest = Digest::of(&std::fs::read(&path).unwrap());
    ModuleZip::from_proxy_path(&format!("example.com/m{n}/@v/v1.0.0.zip"), digest, path).unwrap()
}

/// Bytes the files under `dirs` take on disk, each file once however many links it has.
fn disk_use(dirs: &[&Path]) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = dirs.iter().map(|dir| dir.to_path_buf()).collect();
    while let Some(path) = stack.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        if metadata.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else if seen.insert((metadata.dev(), metadata.ino())) {
            total += metadata.blocks() * 512;
        }
    }
    total
}

fn task_cache(root: &Path, name: &str) -> PathBuf {
    let cache = root.join(name);
    std::fs::create_dir(&cache).unwrap();
    cache
}

#[test]
fn one_task_extracts_a_share_far_below_the_stores_cap() {
    let dir = tempfile::tempdir().unwrap();
    let zips: Vec<ModuleZip> = (0..8).map(|n| bomb(dir.path(), n, 3 * MIB)).collect();
    let cap = 64 * MIB;
    let store = ModuleStore::open(dir.path().join("store"), cap).unwrap();
    let first = task_cache(dir.path(), "first");
    let (prepared, _linked) = store.prepare(&zips, &first, None);
    let used = disk_use(&[&dir.path().join("store")]);
    assert!(
        used <= cap / 8,
        "one task made the agent extract {} MiB of zips its build may never open ({prepared:?}); at most {} MiB",
        used / MIB,
        cap / 8 / MIB
    );
    assert_eq!((prepared.extracted, prepared.left_to_go), (2, 6), "{prepared:?}");
    // The next task of the same modules links those and extracts its own share.
    let second = task_cache(dir.path(), "second");
    let (prepared, _linked) = store.prepare(&zips, &second, None);
    assert_eq!((prepared.linked, prepared.extracted, prepared.left_to_go), (4, 2, 4), "{prepared:?}");
}

#[test]
fn the_trees_running_tasks_have_linked_count_against_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 32 * MIB;
    let store_dir = dir.path().join("store");
    let store = ModuleStore::open(store_dir.clone(), cap).unwrap();
    // Twelve tasks run at once, each with a zip of its own within its share.
    let mut running = Vec::new();
    let mut caches = Vec::new();
    for n in 0..12 {
        let zip = bomb(dir.path(), n, 3 * MIB);
        let cache = task_cache(dir.path(), &format!("task{n}"));
        running.push(store.prepare(&[zip], &cache, None));
        caches.push(cache);
    }
    let mut dirs: Vec<&Path> = caches.iter().map(PathBuf::as_path).collect();
    dirs.push(&store_dir);
    let used = disk_use(&dirs);
    assert!(
        used <= cap,
        "the store and the running tasks' links to it take {} MiB, past the store's cap of {} MiB",
        used / MIB,
        cap / MIB
    );
    let extracted: usize = running.iter().map(|(prepared, _)| prepared.extracted).sum();
    assert_eq!(extracted, 10, "room for ten trees of 3 MiB");
    // Once the tasks are over, their trees may make room for the next.
    drop(running);
    for cache in &caches {
        std::fs::remove_dir_all(cache).unwrap();
    }
    let zip = bomb(dir.path(), 12, 3 * MIB);
    let (prepared, _linked) = store.prepare(&[zip], &task_cache(dir.path(), "next"), None);
    assert_eq!(prepared.extracted, 1, "{prepared:?}");
    assert!(disk_use(&[&store_dir]) <= cap);
}
