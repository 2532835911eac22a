use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use proto::Digest;
use proto::v1::{self, write_request};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{compression, digests, encoding, item_status};
use crate::cas::{Cas, DecodeBudget, Recheck, UploadOutcome};
use crate::error::Error;
use crate::stats::Stats;

pub struct CasService {
    cas: Arc<Cas>,
    stats: Arc<Stats>,
}

impl CasService {
    pub fn new(cas: Arc<Cas>, stats: Arc<Stats>) -> Self {
        Self { cas, stats }
    }

    fn decode_budget<T>(&self, request: &Request<T>) -> Result<DecodeBudget, Error> {
        Ok(self.cas.decode_budget(&crate::auth::grant(request.extensions())?.budget()))
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl v1::cas_server::Cas for CasService {
    async fn find_missing(
        &self,
        request: Request<v1::FindMissingRequest>,
    ) -> Result<Response<v1::FindMissingResponse>, Status> {
        let wanted = digests(&request.get_ref().digests)?;
        let total = wanted.len() as u64;
        let may_store =
            crate::auth::grant(request.extensions())?.scopes.contains(crate::auth::Scope::CasWrite);
        let missing = self.cas.find_missing(wanted, may_store).await?;
        let counters = self.stats.api("Cas.FindMissing");
        counters.hits.fetch_add(total - missing.len() as u64, std::sync::atomic::Ordering::Relaxed);
        counters.misses.fetch_add(missing.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(v1::FindMissingResponse {
            missing: missing.into_iter().map(Digest::to_wire).collect(),
        }))
    }

    async fn write(
        &self,
        request: Request<Streaming<v1::WriteRequest>>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let budget = self.decode_budget(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(v1::WriteRequest { kind: Some(write_request::Kind::Header(header)) })) => header,
            Some(Err(status)) => return Err(status),
            _ => return Err(Error::invalid("the first message of Cas.Write must be a WriteHeader").into()),
        };
        let digest = Digest::from_wire(header.digest.as_ref()).map_err(Error::from)?;
        let data = stream.map(|message| match message {
            Ok(v1::WriteRequest { kind: Some(write_request::Kind::Data(data)) }) => Ok(data),
            Ok(_) => Err(Error::invalid("after the WriteHeader, Cas.Write messages must carry data")),
            Err(status) => Err(Error::Transport(status)),
        });
        let outcome = self.cas.upload(digest, encoding(header.compression)?, Box::pin(data), &budget).await?;
        let (already_present, stored_bytes) = match outcome {
            UploadOutcome::Stored { stored_bytes } => {
                self.stats.api("Cas.Write").add_in(digest.size);
                (false, stored_bytes)
            }
            UploadOutcome::AlreadyPresent => (true, 0),
        };
        Ok(Response::new(v1::WriteResponse { digest: Some(digest.to_wire()), already_present, stored_bytes }))
    }

    type ReadStream = ReadStream;

    async fn read(&self, request: Request<v1::ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let request = request.into_inner();
        let digest = Digest::from_wire(request.digest.as_ref()).map_err(Error::from)?;
        let counters = self.stats.api("Cas.Read");
        let chunks =
            match self.cas.download(digest, request.offset, request.limit, encoding(request.accept)?).await {
                Ok(chunks) => chunks,
                Err(err @ Error::NotFound(_)) => {
                    counters.miss();
                    return Err(err.into());
                }
                Err(err) => return Err(err.into()),
            };
        counters.hit();
        // Stored frames of zeros are a few dozen bytes each ([`proto::together`]); an error
        // goes out at once.
        let chunks = proto::together::sent_together(ReceiverStream::new(chunks), |chunk| {
            chunk.as_ref().map_or(proto::together::TOGETHER_BYTES, |chunk| chunk.data.len())
        });
        let stream = chunks.map(move |chunk| {
            let chunk = chunk?;
            counters.add_out(chunk.data.len() as u64);
            Ok(v1::ReadResponse {
                data: chunk.data,
                compression: compression(chunk.encoding),
                skip_bytes: chunk.skip_bytes,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn batch_write(
        &self,
        request: Request<v1::BatchWriteRequest>,
    ) -> Result<Response<v1::BatchWriteResponse>, Status> {
        let budget = self.decode_budget(&request)?;
        let request = request.into_inner();
        let blobs = request
            .blobs
            .into_iter()
            .map(|blob| {
                let digest = Digest::from_wire(blob.digest.as_ref())?;
                Ok((digest, encoding(blob.compression)?, blob.data))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let digests: Vec<Digest> = blobs.iter().map(|blob| blob.0).collect();
        let outcomes = self.cas.batch_write(blobs, &budget).await?;
        let counters = self.stats.api("Cas.BatchWrite");
        let results = digests
            .into_iter()
            .zip(outcomes)
            .map(|(digest, outcome)| {
                if let Ok(UploadOutcome::Stored { .. }) = outcome {
                    counters.add_in(digest.size);
                }
                v1::batch_write_response::Result {
                    digest: Some(digest.to_wire()),
                    status: Some(item_status(outcome.map(drop))),
                }
            })
            .collect();
        Ok(Response::new(v1::BatchWriteResponse { results }))
    }

    async fn batch_read(
        &self,
        request: Request<v1::BatchReadRequest>,
    ) -> Result<Response<v1::BatchReadResponse>, Status> {
        let request = request.into_inner();
        let wanted = digests(&request.digests)?;
        let chunks = self.cas.batch_read(wanted.clone(), encoding(request.accept)?).await?;
        let counters = self.stats.api("Cas.BatchRead");
        let results = wanted
            .into_iter()
            .zip(chunks)
            .map(|(digest, chunk)| {
                let mut result =
                    v1::batch_read_response::Result { digest: Some(digest.to_wire()), ..Default::default() };
                match chunk {
                    Ok(chunk) => {
                        counters.hit();
                        counters.add_out(digest.size);
                        result.compression = compression(chunk.encoding);
                        result.data = chunk.data;
                        result.status = Some(item_status(Ok(())));
                    }
                    Err(err) => {
                        if matches!(err, Error::NotFound(_)) {
                            counters.miss();
                        }
                        result.status = Some(item_status(Err(err)));
                    }
                }
                result
            })
            .collect();
        Ok(Response::new(v1::BatchReadResponse { results }))
    }

    async fn recheck(
        &self,
        request: Request<v1::RecheckRequest>,
    ) -> Result<Response<v1::RecheckResponse>, Status> {
        let digest = Digest::from_wire(request.get_ref().digest.as_ref()).map_err(Error::from)?;
        let outcome = match self.cas.recheck(digest, &self.decode_budget(&request)?).await? {
            Recheck::Sound => v1::recheck_response::Outcome::Sound,
            Recheck::Removed => v1::recheck_response::Outcome::Removed,
            Recheck::Absent => v1::recheck_response::Outcome::Absent,
        };
        Ok(Response::new(v1::RecheckResponse { outcome: outcome as i32 }))
    }
}
