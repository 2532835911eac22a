//! The PostgreSQL database replicas share (`database_url`): a pool of connections, the schema
//! migrations (cached/migrations/, versioned, embedded, applied at start by whichever replica
//! comes first), and the one error type of everything that talks to it.
//!
//! The password never appears in the URL cached logs: it comes from `database_password_file`
//! or `CACHED_DATABASE_PASSWORD` (a password in the URL itself works, and is redacted too).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::{ConfigError, env_name};

mod tls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Moves the scheduler, the build records and the registry's records of `backends` to the
/// database: opens it (applying migrations) and returns the scheduler every replica shares.
pub async fn attach(
    settings: &DatabaseSettings,
    backends: &mut crate::backend::Backends,
    scheduler: crate::scheduler::Settings,
) -> crate::error::Result<std::sync::Arc<dyn crate::scheduler::backend::SchedulerBackend>> {
    let db = Database::open(settings).await?;
    backends.build_records = std::sync::Arc::new(crate::builds::PgBuildRecords::new(db.clone()));
    backends.registry = std::sync::Arc::new(crate::registry::PgRegistry::new(db.clone()));
    let scheduler = crate::scheduler::pg::PgScheduler::open(db, scheduler).await?;
    Ok(scheduler)
}

/// Connections one replica holds at most.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection, or for one to be made, before it answers UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Serialises migrations of replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6361_6368_6564_0001;

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("{}", with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", with_causes(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] refinery::Error),
}

/// `err` and the causes its own words leave out: a failed connection says only "db error",
/// and the server's reason (or the TLS handshake's) is its source.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// Where the database is, the password to reach it with, and the TLS that reaches it.
#[derive(Clone)]
pub struct DatabaseSettings {
    config: tokio_postgres::Config,
    /// `None`: plain connections.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl DatabaseSettings {
    /// `database_url` with its password from the file, the environment or the URL, and TLS
    /// as `database_ca` and the URL's `sslmode` ask; `None` without a URL.
    pub fn from_config(
        url: &str,
        password_file: &str,
        ca_file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let url = url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let invalid = |reason: String| ConfigError::Invalid {
            origin: "database_url".to_owned(),
            value: crate::redact::text(url),
            reason,
        };
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(invalid("expected postgres://USER@HOST:PORT/DATABASE".to_owned()));
        }
        let mut config = tokio_postgres::Config::from_str(&tls::normalize_url(url))
            .map_err(|err| invalid(err.to_string()))?;
        if !password_file.trim().is_empty() {
            let path = Path::new(password_file.trim());
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
                file: path.display().to_string(),
                reason: format!("database_password_file: {err}"),
            })?;
            config.password(text.lines().next().unwrap_or_default());
        } else if let Some(password) = env(&env_name("database_password")) {
            config.password(password);
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("cached");
        let tls = tls::connector(&mut config, ca_file)?;
        Ok(Some(Self { config, tls }))
    }

    /// user@host:port/database, for logs: never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(self.config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            })
            .collect();
        format!(
            "postgres://{}@{}/{}{}",
            self.config.get_user().unwrap_or(""),
            hosts.join(","),
            self.config.get_dbname().unwrap_or(""),
            if self.tls.is_some() { " (TLS, verified)" } else { "" }
        )
    }
}

/// A pool of connections to the database, its schema up to date.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    description: String,
}

impl Database {
    /// Connects and applies the migrations this cached knows and the database lacks.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, DatabaseError> {
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &settings.tls {
            Some(tls) => Manager::from_config(settings.config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(settings.config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .expect("a runtime is set, so timeouts are allowed");
        let database = Self { pool, description: settings.describe() };
        database.migrate().await?;
        tracing::info!(database = %database.description, "PostgreSQL schema up to date");
        Ok(database)
    }

    async fn migrate(&self) -> Result<(), DatabaseError> {
        let mut client = self.pool.get().await?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let client: &mut tokio_postgres::Client = &mut client;
        let applied = embedded::migrations::runner().run_async(client).await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        applied?;
        Ok(())
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DatabaseError> {
        Ok(self.pool.get().await?)
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_comes_from_a_file_or_the_environment_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let no_env = |_: &str| None;
        let url = "postgres://cached@db.example:5433/jobs";
        let settings =
            DatabaseSettings::from_config(url, &file.display().to_string(), "", &no_env).unwrap().unwrap();
        assert_eq!(settings.config.get_password(), Some(b"from-file".as_slice()));
        assert_eq!(settings.describe(), url);
        assert!(!format!("{settings:?}").contains("from-file"));

        let env = |name: &str| (name == "CACHED_DATABASE_PASSWORD").then(|| "from-env".to_owned());
        let settings = DatabaseSettings::from_config(url, "", "", &env).unwrap().unwrap();
        assert_eq!(settings.config.get_password(), Some(b"from-env".as_slice()));

        let in_url = DatabaseSettings::from_config("postgres://cached:in-url@db/jobs", "", "", &no_env)
            .unwrap()
            .unwrap();
        assert_eq!(in_url.describe(), "postgres://cached@db:5432/jobs");
        assert!(!format!("{in_url:?}").contains("in-url"));

        assert!(DatabaseSettings::from_config(" ", "", "", &no_env).unwrap().is_none());
        let wrong =
            DatabaseSettings::from_config("mysql://db/jobs", "", "", &no_env).unwrap_err().to_string();
        assert!(wrong.contains("database_url") && wrong.contains("postgres://"), "{wrong}");
        let missing = dir.path().join("missing").display().to_string();
        assert!(DatabaseSettings::from_config(url, &missing, "", &no_env).is_err());
    }
}
