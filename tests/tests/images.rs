//! scripts/images: the container images of cached and runner-agent come out with the same
//! digests twice, and the cached image, unpacked with umoci and started in its own root
//! filesystem as its non-root user, serves: gRPC health and a `cachectl put`/`get` from outside.
//! Built from the debug binaries the suite already has (`--bin-dir`), so nothing is rebuilt.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cached_e2e::remote::{TinyModule, finished, succeeded_with_outputs};
use cached_e2e::{Daemon, binary, free_port, is_root, run};

/// Runs scripts/images into `out`, returning each image's index digest by name.
fn build_images(out: &Path) -> Vec<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/images");
    let bin_dir = binary("cached").parent().expect("bin dir").to_owned();
    let mut command = Command::new(script);
    command.arg("--bin-dir").arg(&bin_dir).arg("--out").arg(out);
    run(command).success("scripts/images");
    ["cached", "runner-agent"]
        .into_iter()
        .map(|name| {
            let index = std::fs::read(out.join(name).join("index.json")).expect("index.json of the layout");
            let index: serde_json::Value = serde_json::from_slice(&index).expect("index.json is JSON");
            let digest = index["manifests"][0]["digest"].as_str().expect("an image in the layout").to_owned();
            (name.to_owned(), digest)
        })
        .collect()
}

/// An image unpacked by umoci: its root filesystem and runtime config.
struct Unpacked {
    rootfs: PathBuf,
    config: serde_json::Value,
}

impl Unpacked {
    fn new(layout: &Path, into: &Path) -> Self {
        let image = format!("{}:latest", layout.display());
        let mut unpack = Command::new("umoci");
        unpack.args(["unpack", "--rootless", "--image", &image]).arg(into);
        run(unpack).success("umoci unpack (scripts/setup installs umoci)");
        let config = std::fs::read(into.join("config.json")).expect("runtime config");
        let config = serde_json::from_slice(&config).expect("config.json is JSON");
        Self { rootfs: into.join("rootfs"), config }
    }

    fn user(&self) -> (u64, u64) {
        let user = &self.config["process"]["user"];
        (user["uid"].as_u64().expect("uid"), user["gid"].as_u64().expect("gid"))
    }

    fn entrypoint(&self) -> &str {
        self.config["process"]["args"][0].as_str().expect("an entrypoint")
    }

    fn env(&self) -> Vec<(String, String)> {
        let env = self.config["process"]["env"].as_array().expect("an environment");
        env.iter()
            .filter_map(|entry| entry.as_str()?.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }
}

/// The image's entrypoint with `args`, as a runtime would start it: in new mount and PID
/// namespaces with /proc mounted and the host's /dev, chrooted to the root filesystem, as the
/// image's user with the image's environment; the host's network, so its loopback is ours.
struct Contained {
    unshare: Child,
}

impl Contained {
    fn start(image: &Unpacked, args: &[&str], log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let root = &image.rootfs;
        for mount_point in ["proc", "dev"] {
            std::fs::create_dir_all(root.join(mount_point)).expect("mount point");
        }
        let (uid, gid) = image.user();
        let unshare = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child", "sh", "-euc"])
            .arg(r#"root=$1; shift; mount -t proc proc "$root/proc"; mount --rbind /dev "$root/dev"; exec chroot "$@""#)
            .arg("sh")
            .arg(root)
            .arg(format!("--userspec={uid}:{gid}"))
            .arg(root)
            .arg(image.entrypoint())
            .args(args)
            .env_clear()
            .envs(image.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux)");
        Self { unshare }
    }

    fn wait_listening(&mut self, addr: &str, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            let log = || std::fs::read_to_string(log).unwrap_or_default();
            if let Ok(Some(status)) = self.unshare.try_wait() {
                panic!("cached in the image exited ({status}):\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "cached in the image did not listen on {addr} within 30s:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        // The contained process is PID 1 of its namespace: killing it ends everything in there.
        // unshare's --kill-child does not reach it, because a death signal is cleared when
        // chroot --userspec changes the credentials.
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.unshare.id().to_string()]).status();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn health(url: &str) -> i32 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to cached in the image");
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        client.check(request).await.expect("grpc.health.v1.Health/Check").into_inner().status
    })
}

fn cachectl(url: &str) -> Command {
    let mut command = Command::new(binary("cachectl"));
    command.arg("--server").arg(url);
    command
}

#[test]
fn the_images_are_reproducible_and_the_cached_image_serves_as_nonroot() {
    // chroot and new mount and PID namespaces need root (CI runs the suite as root).
    assert!(is_root(), "this test starts the image in a chroot and namespaces: run it as root");
    let work = tempfile::tempdir().expect("temp dir");
    let first = build_images(&work.path().join("first"));
    let second = build_images(&work.path().join("second"));
    assert_eq!(first, second, "the same binaries and commit must give the same image digests");

    let cached = Unpacked::new(&work.path().join("first/cached"), &work.path().join("cached"));
    assert_eq!(cached.user(), (65532, 65532));
    assert_eq!(cached.entrypoint(), "/usr/local/bin/cached");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = work.path().join("cached.log");
    let args = ["--listen", &addr, "--metrics-listen", "off", "--data-dir", "/tmp/data"];
    let mut server = Contained::start(&cached, &args, &log);
    server.wait_listening(&addr, &log);
    let url = format!("http://{addr}");
    assert_eq!(health(&url), tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let file = work.path().join("blob");
    std::fs::write(&file, b"stored by cached running from its own image").expect("write blob");
    let mut put = cachectl(&url);
    put.arg("put").arg(&file);
    let put = run(put).success("cachectl put");
    let digest = put.stdout.trim().to_owned();
    let fetched = work.path().join("fetched");
    let mut get = cachectl(&url);
    get.arg("get").arg(&digest).arg("-o").arg(&fetched);
    run(get).success("cachectl get");
    assert_eq!(std::fs::read(&fetched).expect("fetched blob"), std::fs::read(&file).expect("blob"));

    // The store is on the image's /tmp, written by the image's non-root user.
    let data = cached.rootfs.join("tmp/data");
    let owner = std::fs::metadata(&data).expect("the data dir inside the image");
    assert_eq!((owner.uid(), owner.gid()), (65532, 65532));
}

#[test]
fn the_runner_agent_image_completes_a_build_from_a_live_cached() {
    // The agent runs builds as build uids from a chroot and namespaces: root only.
    assert!(is_root(), "this test starts the image in a chroot and namespaces: run it as root");
    let work = tempfile::tempdir().expect("temp dir");
    build_images(&work.path().join("images"));
    let agent = Unpacked::new(&work.path().join("images/runner-agent"), &work.path().join("agent"));
    assert_eq!(agent.user(), (0, 0), "the agent's sandbox needs root to switch to build uids");
    let go = agent.rootfs.join("usr/local/go/bin/go");
    assert!(go.is_file(), "the Go toolchain layer puts go at {}", go.display());

    let daemon = Daemon::start();
    let url = daemon.url();
    let log = work.path().join("agent.log");
    // A range of build uids of its own: remote.rs's agents start at 63000.
    let args = ["--server", &url, "--name", "image", "--grace", "2s", "--work-dir", "/tmp/work"];
    let _agent = Contained::start(&agent, &[&args[..], &["--build-uids", "62000-62003"]].concat(), &log);

    let tiny = TinyModule::new();
    let job = tiny.submit(&url);
    // Polled here rather than by wait_finished, so that a job left queued shows the agent's log.
    let deadline = Instant::now() + Duration::from_secs(180);
    let job = loop {
        let listed = tiny.jobs(&url).into_iter().find(|listed| listed["job_id"] == job.as_str());
        if let Some(listed) = listed.filter(finished) {
            break listed;
        }
        let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(Instant::now() < deadline, "job {job} did not finish within 180s; agent:\n{agent_log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(succeeded_with_outputs(&job), "{job:#}\nagent:\n{agent_log}");
    assert!(
        job["tasks"][0]["agent"].as_str().is_some_and(|name| name.starts_with("image")),
        "built by the agent in the image: {job:#}"
    );
}
