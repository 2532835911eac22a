//! cached inside another process, on 127.0.0.1 with ephemeral ports: what tests, benchmarks
//! and tools that need a throwaway server use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::error::{Error, Result};

pub struct Embedded {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The OCI registry's address, when `registry_listen` is set (`127.0.0.1:0` picks a port).
    pub registry_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<crate::task::Task<Result<()>>>,
}

impl Embedded {
    /// Starts cached on `data_dir` with `settings` (keys as in the config file) on top of the
    /// defaults. Housekeeping is hourly and without a scrub unless a setting says otherwise,
    /// so callers decide when eviction happens.
    pub async fn start(data_dir: &Path, settings: &[(&str, &str)]) -> Result<Self> {
        let mut flags = BTreeMap::from([
            ("data_dir".to_owned(), data_dir.display().to_string()),
            ("maintenance_interval".to_owned(), "1h".to_owned()),
            // A short-lived store of this machine's own builds: an hour's scrub in one round
            // would only hold up its housekeeping.
            ("scrub_rate".to_owned(), "0".to_owned()),
        ]);
        for (key, value) in settings {
            flags.insert((*key).to_owned(), (*value).to_owned());
        }
        let config = Config::load(&flags, None, &|_| None).map_err(|err| Error::invalid(err.to_string()))?;
        let bind = || async {
            TcpListener::bind("127.0.0.1:0").await.map_err(|err| Error::Internal(format!("bind: {err}")))
        };
        let (listener, metrics) = (bind().await?, bind().await?);
        let local = |l: &TcpListener| l.local_addr().map_err(|err| Error::Internal(err.to_string()));
        let (addr, metrics_addr) = (local(&listener)?, local(&metrics)?);
        let registry = match &config.registry {
            Some(registry) => Some(
                TcpListener::bind(registry.listen)
                    .await
                    .map_err(|err| Error::Internal(format!("bind the registry: {err}")))?,
            ),
            None => None,
        };
        let registry_addr = registry.as_ref().map(local).transpose()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        // SIGHUP belongs to the hosting process, which reloads nothing through it.
        let listeners = crate::Listeners { grpc: listener, metrics: Some(metrics), registry };
        let task = crate::task::spawn("embedded cached", crate::run(config, listeners, stopped, None));
        Ok(Self { addr, metrics_addr, registry_addr, stop: Some(stop), task: Some(task) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and waits until the store is flushed and closed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Told to stop, the server shuts down in order and flushes on its own: let it.
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}
