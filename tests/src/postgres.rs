//! A PostgreSQL server of its own for a test: `initdb` into a temporary directory and
//! `pg_ctl start` on a loopback port, stopped (immediately) on drop. As root, both run as the
//! `postgres` user (`runuser`), because initdb refuses root. The server needs a password
//! (scram-sha-256), so the tests pass it the way an operator would: in a file.
//!
//! Durability is off (fsync, synchronous_commit): these servers hold nothing worth a sync.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{free_port, is_root};

pub const USER: &str = "postgres";
const PASSWORD: &str = "cached-test-password";

pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    tls: bool,
}

/// The PEM certificate chain and key a TLS server presents.
pub struct ServerIdentity {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// Where `initdb` and `pg_ctl` are: on PATH, or in Debian's versioned directory.
fn bin_dir() -> PathBuf {
    if let Ok(output) = Command::new("sh").args(["-c", "command -v pg_ctl"]).output() {
        let found = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() && !found.is_empty() {
            let real = std::fs::canonicalize(&found).unwrap_or_else(|_| PathBuf::from(&found));
            return real.parent().expect("pg_ctl has a directory").to_owned();
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|entry| entry.ok()).map(|entry| entry.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|bin| bin.join("pg_ctl").is_file());
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL is required for these tests (scripts/setup installs Debian's postgresql)")
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server that takes TCP connections over TLS only, presenting `identity`: a plain one
    /// is refused by pg_hba.conf, so a connection that works was encrypted.
    pub fn start_tls_only(identity: &ServerIdentity) -> Self {
        Self::start_with(Some(identity))
    }

    fn start_with(identity: Option<&ServerIdentity>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = bin_dir();
        let port = free_port();
        let server = Self { dir, port, bin, tls: identity.is_some() };
        std::fs::write(server.password_file(), format!("{PASSWORD}\n")).expect("password file");
        std::fs::create_dir(server.sockets()).expect("socket dir");
        server.give_to_postgres(server.dir.path());
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(server.data())
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", server.password_file().display()));
        expect_success(initdb, "initdb");
        if let Some(identity) = identity {
            server.require_tls(identity);
        }
        server.resume();
        server
    }

    /// The server's certificate and key in its data directory, and a pg_hba.conf that turns
    /// away TCP connections without TLS.
    fn require_tls(&self, identity: &ServerIdentity) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        std::fs::write(data.join("server.crt"), &identity.certificate_pem).expect("server.crt");
        std::fs::write(data.join("server.key"), &identity.key_pem).expect("server.key");
        // PostgreSQL refuses a key others may read.
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        let hba = "local all all scram-sha-256\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n\
                   hostnossl all all 0.0.0.0/0 reject\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        self.give_to_postgres(&data);
    }

    /// As root, `path` (recursively) becomes the postgres user's, which the server runs as.
    fn give_to_postgres(&self, path: &Path) {
        if is_root() {
            let chown = Command::new("chown").args(["-R", USER]).arg(path).status();
            assert!(chown.is_ok_and(|status| status.success()), "chown to {USER} failed");
        }
    }

    /// Starts the server (again, after [`Postgres::stop`]).
    pub fn resume(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.sockets().display()
        );
        if self.tls {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let mut start = self.command("pg_ctl");
        // pg_ctl's default minute is short when a test binary starts a dozen servers at once on
        // two cores; a server that cannot start at all says so at once, whatever the timeout.
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "300", "-o", &options, "start"]);
        expect_success(start, "pg_ctl start");
    }

    /// Stops the server (cleanly: what it acknowledged stays), as an outage takes it away.
    pub fn stop(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]);
        expect_success(stop, "pg_ctl stop");
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sockets(&self) -> PathBuf {
        self.dir.path().join("sockets")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The file holding the password of [`USER`]: what `--database-password-file` takes.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// The URL for `--database-url`: no password in it.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The flags that point cached at this server.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--database-url".to_owned(),
            self.url(),
            "--database-password-file".to_owned(),
            self.password_file().display().to_string(),
        ]
    }

    /// One value `sql` selects, as psql prints it.
    pub fn query(&self, sql: &str) -> String {
        let output = Command::new(psql())
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(self.url())
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(output.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn psql() -> PathBuf {
    let bin = bin_dir().join("psql");
    if bin.is_file() { bin } else { PathBuf::from("psql") }
}

fn expect_success(mut command: Command, what: &str) -> Output {
    let output = command.output().unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
