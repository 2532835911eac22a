//! A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on an ephemeral
//! loopback port, its access log readable so tests can count what a push sent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Whether a command is on PATH.
pub fn has_command(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Fails the test, saying how to install it, when a tool the test needs is missing.
pub fn require(tool: &str) {
    assert!(
        has_command(tool),
        "{tool} is needed by this test; scripts/setup installs it (apt-get install {tool})"
    );
}

/// A running docker-registry, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry, with basic authentication from an htpasswd file if one is given.
    pub fn start(htpasswd: Option<&Path>) -> Self {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth = htpasswd
            .map(|path| format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", path.display()))
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Self { child, port, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = registry.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "docker-registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(method, path)` of every request in the access log so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log()
            .lines()
            .filter_map(|line| {
                let request = line.split('"').nth(1)?;
                let mut parts = request.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                parts.next()?.starts_with("HTTP/").then(|| (method.to_owned(), path.to_owned()))
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
