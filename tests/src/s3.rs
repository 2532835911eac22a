//! A real S3-compatible server on loopback for the shared-tier tests: versitygw (installed by
//! scripts/setup) serving a directory, one bucket in it. Stopping and starting it again keeps
//! its data and port, as an outage of the service would.

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, free_port};

const ACCESS_KEY: &str = "cached-test";
const SECRET_KEY: &str = "cached-test-secret";
/// The bucket replicas share, and the prefix of their objects in it.
pub const BUCKET: &str = "cache";
pub const PREFIX: &str = "ci";

pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["meta", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("server dirs");
        }
        // The posix backend serves each directory of its root as a bucket.
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET)).expect("bucket dir");
        let mut server = Self { child: None, port: free_port(), dir };
        server.resume();
        server
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the S3 server is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("versitygw.log"))
            .expect("log file");
        let child = Command::new(versitygw())
            .env("ROOT_ACCESS_KEY", ACCESS_KEY)
            .env("ROOT_SECRET_KEY", SECRET_KEY)
            .arg("--port")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("posix")
            .arg("--sidecar")
            .arg(self.dir.path().join("meta"))
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start versitygw");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "versitygw did not listen within 30s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server logged so far, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("versitygw.log")).unwrap_or_default()
    }

    /// SIGSTOP: connections stay open and nothing answers, as with a hung service, until
    /// [`S3Server::unpause`]. Drop still kills it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`S3Server::pause`].
    pub fn unpause(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the S3 server is running");
        let sent = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
        assert!(sent.is_ok_and(|status| status.success()), "kill {signal} versitygw failed");
    }

    /// SIGKILL: the service is gone until `resume`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The flags and environment that make a `cached` a replica on this server's bucket.
    pub fn replica_flags(&self) -> Vec<String> {
        let endpoint = format!("http://127.0.0.1:{}", self.port);
        [
            "--shared-store",
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--shared-store-endpoint",
            &endpoint,
            "--shared-store-region",
            "us-east-1",
            "--shared-store-path-style",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// A replica on this server's bucket, with its own empty local tier.
    pub fn replica(&self) -> Daemon {
        self.replica_in(tempfile::tempdir().expect("temp dir"), &[])
    }

    /// A replica with its local tier under `data` and more flags.
    pub fn replica_in(&self, data: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let flags = self.replica_flags();
        let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        flags.extend_from_slice(extra);
        let env = [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];
        Daemon::start_with(data, &flags, &env)
    }

    /// How many Go entries of `namespace` the bucket holds.
    pub fn entries(&self, namespace: &str) -> usize {
        crate::count_files(
            &self.dir.path().join("data").join(BUCKET).join(PREFIX).join("v1/go").join(namespace),
        )
    }

    /// The file holding a blob's object (`<64 hex>/<size>`, as cachectl prints digests).
    pub fn blob_object(&self, digest: &str) -> PathBuf {
        let (hash, size) = digest.split_once('/').expect("<hash>/<size>");
        self.dir.path().join("data").join(BUCKET).join(PREFIX).join("v1/cas").join(format!("{hash}-{size}"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The versitygw binary scripts/setup installs into the tools directory.
fn versitygw() -> PathBuf {
    crate::tool("versitygw")
}
