use std::sync::Arc;

use proto::v1;
use rocksdb::DB;
use tonic::{Request, Response, Status};

use crate::admin::purge_namespace;
use crate::auth;
use crate::error::Error;
use crate::gocache::namespace;

pub struct AdminService {
    db: Arc<DB>,
}

impl AdminService {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
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
        let db = Arc::clone(&self.db);
        let target = ns.clone();
        let purged = tokio::task::spawn_blocking(move || purge_namespace(&db, &target))
            .await
            .map_err(|err| Error::Internal(format!("purge: {err}")))??;
        tracing::warn!(
            target: "audit",
            token = %grant.token,
            namespace = %ns,
            go_entries = purged.go_entries,
            build_records = purged.build_records,
            "namespace purged"
        );
        Ok(Response::new(v1::PurgeResponse {
            go_entries: purged.go_entries,
            build_records: purged.build_records,
        }))
    }
}
