use std::sync::Arc;
use std::time::Duration;

use proto::v1;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::builds::{self, Builds};
use crate::error::Error;
use crate::gocache::namespace;
use crate::stats::Stats;

pub struct BuildsService {
    builds: Arc<Builds>,
    stats: Arc<Stats>,
}

impl BuildsService {
    pub fn new(builds: Arc<Builds>, stats: Arc<Stats>) -> Self {
        Self { builds, stats }
    }
}

fn target(target: Option<v1::BuildTarget>) -> Result<v1::BuildTarget, Error> {
    let target = target.ok_or_else(|| Error::invalid("the request needs a build target"))?;
    builds::check_target(&target)?;
    Ok(target)
}

#[tonic::async_trait]
impl v1::builds_server::Builds for BuildsService {
    async fn lookup(
        &self,
        request: Request<v1::BuildLookupRequest>,
    ) -> Result<Response<v1::BuildLookupResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let ns = namespace(&request.namespace)?.to_owned();
        auth::check_namespace(&extensions, &ns)?;
        let target = target(request.target)?;
        let manifest = request.manifest.unwrap_or_default();
        let key = builds::check_key(&request.key, &manifest)?;
        let manifest = builds::redact_displays(manifest);
        let response = self.builds.lookup(ns, target, key, manifest).await?;
        let counters = self.stats.api("Builds.Lookup");
        if response.hit {
            counters.hit();
        } else {
            counters.miss();
        }
        Ok(Response::new(response))
    }

    async fn record(
        &self,
        request: Request<v1::BuildRecordRequest>,
    ) -> Result<Response<v1::BuildRecordResponse>, Status> {
        let (_, extensions, mut request) = request.into_parts();
        let ns = namespace(&request.namespace)?.to_owned();
        let grant = auth::check_namespace(&extensions, &ns)?;
        let target = target(request.target.take())?;
        let manifest = request.manifest.take().unwrap_or_default();
        let key = builds::check_key(&request.key, &manifest)?;
        let described = format!("{} ({}/{})", target.package, target.goos, target.goarch);
        request.target = Some(target);
        request.manifest = Some(builds::redact_displays(manifest));
        let result = self.builds.record(ns.clone(), request, key).await;
        // Whoever records build keys decides what every wrapped build gets.
        tracing::info!(
            target: "audit",
            token = %grant.token,
            namespace = %ns,
            key = %builds::hex(&key),
            target = %described,
            outcome = if result.is_ok() { "stored" } else { "failed" },
            "Builds.Record"
        );
        result?;
        Ok(Response::new(v1::BuildRecordResponse {}))
    }

    async fn explain(
        &self,
        request: Request<v1::BuildExplainRequest>,
    ) -> Result<Response<v1::BuildExplainResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let ns = namespace(&request.namespace)?.to_owned();
        auth::check_namespace(&extensions, &ns)?;
        let event = self.builds.explain(ns, request.query).await?;
        Ok(Response::new(v1::BuildExplainResponse { found: event.is_some(), event }))
    }

    async fn stats(
        &self,
        request: Request<v1::BuildStatsRequest>,
    ) -> Result<Response<v1::BuildStatsResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let (only, allowed): (Option<String>, Box<dyn Fn(&str) -> bool + Send>) =
            if request.namespace.is_empty() {
                let grant = auth::grant(&extensions)?;
                (None, Box::new(move |ns: &str| grant.allows_namespace(ns)))
            } else {
                let ns = namespace(&request.namespace)?.to_owned();
                auth::check_namespace(&extensions, &ns)?;
                (Some(ns), Box::new(|_: &str| true))
            };
        let since = Duration::from_secs(request.since_seconds);
        let response = self.builds.stats(only, allowed, since, request.top as usize).await?;
        Ok(Response::new(response))
    }
}
