use std::sync::Arc;

use proto::v1;
use proto::{ActionId, Digest, OutputId};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::config::Limits;
use crate::error::Error;
use crate::gocache::{GoCache, GoEntry, GoHit, namespace};
use crate::stats::Stats;

pub struct GoCacheService {
    cache: Arc<GoCache>,
    stats: Arc<Stats>,
    limits: Limits,
}

impl GoCacheService {
    pub fn new(cache: Arc<GoCache>, stats: Arc<Stats>, limits: Limits) -> Self {
        Self { cache, stats, limits }
    }

    async fn lookup(
        &self,
        api: &str,
        extensions: &http::Extensions,
        ns: &str,
        ids: &[bytes::Bytes],
    ) -> Result<Vec<v1::GoGetResponse>, Status> {
        let ns = namespace(ns)?.to_owned();
        auth::check_namespace(extensions, &ns)?;
        let ids = ids
            .iter()
            .map(|id| ActionId::try_from(id.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::from)?;
        let budget = inline_budget(self.limits.max_message_size as u64, ids.len() as u64);
        let hits = self.cache.get_many(ns, ids, budget).await?;
        let counters = self.stats.api(api);
        Ok(hits
            .into_iter()
            .map(|hit| {
                match &hit {
                    Some(hit) => {
                        counters.hit();
                        counters.add_out(hit.inline_body.as_ref().map_or(0, |_| hit.entry.digest.size));
                    }
                    None => counters.miss(),
                }
                response(hit)
            })
            .collect())
    }
}

/// What a GoGetResponse costs beyond its inline body: entry, digest, flags, framing.
const ENTRY_OVERHEAD: u64 = 160;

/// The bytes of inline bodies a reply to `entries` lookups may carry: at most half the
/// message limit, and never so much that the entries themselves would not fit. The rest are
/// read through Cas.Read, so a large batch never produces a reply the client would refuse.
fn inline_budget(max_message_size: u64, entries: u64) -> u64 {
    let room = max_message_size.saturating_sub(entries.saturating_mul(ENTRY_OVERHEAD) + (4 << 10));
    room.min(max_message_size / 2)
}

fn response(hit: Option<GoHit>) -> v1::GoGetResponse {
    let Some(hit) = hit else {
        return v1::GoGetResponse::default();
    };
    let entry = hit.entry;
    v1::GoGetResponse {
        entry: Some(v1::GoEntry {
            output_id: entry.output_id.0.to_vec().into(),
            size: entry.digest.size,
            digest: Some(entry.digest.to_wire()),
            time_unix_nanos: entry.time_unix_nanos,
        }),
        body_inline: hit.inline_body.is_some(),
        body_zstd: hit.inline_body.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl v1::go_cache_server::GoCache for GoCacheService {
    async fn get(&self, request: Request<v1::GoGetRequest>) -> Result<Response<v1::GoGetResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let mut results =
            self.lookup("GoCache.Get", &extensions, &request.namespace, &[request.action_id]).await?;
        Ok(Response::new(results.pop().unwrap_or_default()))
    }

    async fn get_many(
        &self,
        request: Request<v1::GoGetManyRequest>,
    ) -> Result<Response<v1::GoGetManyResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let max = self.limits.max_batch_items;
        if request.action_ids.len() > max {
            return Err(Error::invalid(format!(
                "GetMany asks for {} entries; at most {max} per request (max_batch_items)",
                request.action_ids.len()
            ))
            .into());
        }
        let results =
            self.lookup("GoCache.GetMany", &extensions, &request.namespace, &request.action_ids).await?;
        Ok(Response::new(v1::GoGetManyResponse { results }))
    }

    async fn put(&self, request: Request<v1::GoPutRequest>) -> Result<Response<v1::GoPutResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let ns = namespace(&request.namespace)?.to_owned();
        let grant = auth::check_namespace(&extensions, &ns)?;
        let action_id = ActionId::try_from(request.action_id.as_ref()).map_err(Error::from)?;
        let wire = request.entry.ok_or_else(|| Error::invalid("GoCache.Put needs an entry"))?;
        let output_id = OutputId::try_from(wire.output_id.as_ref()).map_err(Error::from)?;
        let digest = Digest::from_wire(wire.digest.as_ref()).map_err(Error::from)?;
        if digest.size != wire.size {
            return Err(Error::invalid(format!(
                "entry size {} differs from the size in its digest {digest}",
                wire.size
            ))
            .into());
        }
        let entry = GoEntry { output_id, digest, time_unix_nanos: wire.time_unix_nanos };
        let result = self.cache.put(ns.clone(), action_id, entry).await;
        // Whoever writes the action cache decides what every build that reads it gets.
        tracing::info!(
            target: "audit",
            token = %grant.token,
            namespace = %ns,
            action_id = %action_id,
            output_id = %output_id,
            digest = %digest,
            outcome = if result.is_ok() { "stored" } else { "failed" },
            "GoCache.Put"
        );
        result?;
        Ok(Response::new(v1::GoPutResponse {}))
    }

    async fn access(
        &self,
        request: Request<v1::GoAccessRequest>,
    ) -> Result<Response<v1::GoAccessResponse>, Status> {
        let (_, extensions, request) = request.into_parts();
        let ns = namespace(&request.namespace)?;
        let grant = auth::check_namespace(&extensions, ns)?;
        Ok(Response::new(v1::GoAccessResponse { may_put: grant.scopes.contains(auth::Scope::AcWrite) }))
    }
}
