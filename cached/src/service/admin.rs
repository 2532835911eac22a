use std::sync::Arc;

use proto::v1;
use tonic::{Request, Response, Status};

use crate::admin::{purge_namespace, purge_with_jobs};
use crate::auth;
use crate::builds::BuildRecords;
use crate::error::Error;
use crate::gocache::{GoEntryStore, namespace};
use crate::scheduler::backend::SchedulerBackend;

pub struct AdminService {
    go_entries: Arc<dyn GoEntryStore>,
    build_records: Arc<dyn BuildRecords>,
    scheduler: Arc<dyn SchedulerBackend>,
}

impl AdminService {
    pub fn new(
        go_entries: Arc<dyn GoEntryStore>,
        build_records: Arc<dyn BuildRecords>,
        scheduler: Arc<dyn SchedulerBackend>,
    ) -> Self {
        Self { go_entries, build_records, scheduler }
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn purge(&self, request: Request<v1::PurgeRequest>) -> Result<Response<v1::PurgeResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        if request.namespace.is_empty() {
            return Err(Error::invalid(
                "name the namespace to purge (requests that name none use `default`)",
            )
            .into());
        }
        let ns = namespace(&request.namespace)?.to_owned();
        let grant = auth::check_namespace(&extensions, &ns)?;
        let (go_entries, build_records) = (Arc::clone(&self.go_entries), Arc::clone(&self.build_records));
        let target = ns.clone();
        let report = purge_with_jobs(&*self.scheduler, &ns, move || {
            purge_namespace(&*go_entries, &*build_records, &target)
        })
        .await?;
        let (purged, jobs_revoked, jobs_cancelled) =
            (report.purged, report.jobs_revoked, report.jobs_cancelled);
        tracing::warn!(
            target: "audit",
            token = %grant.token,
            namespace = %ns,
            go_entries = purged.go_entries,
            build_records = purged.build_records,
            jobs_revoked,
            jobs_cancelled,
            "namespace purged"
        );
        Ok(Response::new(v1::PurgeResponse {
            go_entries: purged.go_entries,
            build_records: purged.build_records,
            jobs_revoked,
            jobs_cancelled,
        }))
    }
}
