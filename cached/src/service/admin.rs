use std::sync::Arc;

use proto::v1;
use tonic::{Request, Response, Status};

use crate::admin::purge_namespace;
use crate::auth;
use crate::builds::BuildRecords;
use crate::error::Error;
use crate::gocache::{GoEntryStore, namespace};
use crate::scheduler::backend::SchedulerBackend;

/// What the tasks of a job cancelled by a purge say.
const PURGED_WHILE_RUNNING: &str = "its namespace was purged while it ran, and it may have used what the purge \
     removed; submit it again";

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
        // First: a running build may have read the entries, and its lease credential could
        // write them back right after they are gone.
        let mut jobs_cancelled = self.scheduler.cancel_unfinished(&ns, PURGED_WHILE_RUNNING).await?;
        let (go_entries, build_records) = (Arc::clone(&self.go_entries), Arc::clone(&self.build_records));
        let target = ns.clone();
        let purged = crate::task::spawn_blocking("purge", move || {
            purge_namespace(&*go_entries, &*build_records, &target)
        })
        .await
        .map_err(|err| Error::Internal(format!("purge: {err}")))??;
        // After the entries are gone: a job submitted from now on builds without them, and
        // every job before may have read them.
        let jobs_revoked = self.scheduler.revoke_reuse(&ns).await?;
        // Again: a job leased while the purge ran may have read entries it then removed.
        jobs_cancelled += self.scheduler.cancel_unfinished(&ns, PURGED_WHILE_RUNNING).await?;
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
