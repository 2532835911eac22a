//! The content-addressed store as the services see it: streaming uploads and downloads run on
//! blocking threads, joined to gRPC by small bounded channels, so memory stays flat whatever
//! the blob size.

mod budget;
mod recheck;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use proto::frames::{FrameDecoder, FrameEncoder};
use proto::{Digest, FRAME_SIZE};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use self::budget::DecodeBudget;
use self::budget::DecodeBudgets;
pub use self::recheck::Recheck;
use self::recheck::Rechecks;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::store::{Committed, FrameWriter, SharedStore};

/// Frames in flight between gRPC and the store, per stream.
const CHANNEL_FRAMES: usize = 4;
/// What one BatchRead result costs in its reply beyond its data: digest, status (a short
/// message), framing. Charged to every item, so errors cannot push a reply over the limit.
const BATCH_ITEM_OVERHEAD: u64 = 256;
/// Room in a reply kept for what is not per item.
const REPLY_SLACK: u64 = 4 << 10;
/// Server-side compression of uncompressed uploads: the fastest level, because the server's
/// CPU is shared by every client. Clients that care about ratio compress themselves.
const SERVER_ZSTD_LEVEL: i32 = 1;
/// Blocking tasks one BatchWrite spreads its blobs over.
const WRITE_LANES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Zstd,
}

/// One message of a download.
pub struct ReadChunk {
    pub data: Bytes,
    pub encoding: Encoding,
    /// Uncompressed bytes to drop from the start of this (first) frame.
    pub skip_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    Stored { stored_bytes: u64 },
    AlreadyPresent,
}

pub struct Cas {
    store: SharedStore,
    limits: Limits,
    streams: Arc<Semaphore>,
    rechecks: Rechecks,
    decode_budgets: DecodeBudgets,
}

impl Cas {
    pub fn new(store: SharedStore, limits: Limits) -> Self {
        let streams = Arc::new(Semaphore::new(limits.max_concurrent_streams));
        let rechecks = Rechecks::new(Arc::clone(&store));
        let decode_budgets = DecodeBudgets::new(limits.max_decode_rate);
        Self { store, limits, streams, rechecks, decode_budgets }
    }

    /// The decoding the token named `token` may still ask of the server.
    pub fn decode_budget(&self, token: &str) -> DecodeBudget {
        self.decode_budgets.of(token)
    }

    /// Reads back a blob a reader says came back wrong, and removes it if it is corrupt. The
    /// whole blob's decoding is charged to `budget` first.
    pub async fn recheck(&self, digest: Digest, budget: &DecodeBudget) -> Result<Recheck> {
        // A declared size no stored blob can have would only put the token in debt.
        self.check_blob_size(&digest)?;
        budget.charge(digest.size, 0)?;
        self.rechecks.recheck(digest).await
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub async fn contains(&self, digests: Vec<Digest>) -> Result<Vec<bool>> {
        let store = Arc::clone(&self.store);
        crate::task::spawn_blocking("cas contains", move || store.contains(&digests)).await?
    }

    /// `contains`, for a caller that may store blobs and is about to rely on what it finds (a
    /// client that skips uploading what is there): each blob found is claimed for it
    /// ([`crate::store::BlobStore::claim`]), so a holder that stored it first cannot flood it
    /// out from under the caller.
    async fn contains_claiming(&self, digests: Vec<Digest>) -> Result<Vec<bool>> {
        let store = Arc::clone(&self.store);
        crate::task::spawn_blocking("cas contains", move || {
            let present = store.contains(&digests)?;
            let found: Vec<Digest> = digests
                .iter()
                .zip(&present)
                .filter(|(_, present)| **present)
                .map(|(digest, _)| *digest)
                .collect();
            store.claim(&found);
            Ok(present)
        })
        .await?
    }

    /// Claims the blobs for the caller, which relies on them (a registry link, a record naming
    /// them): see [`crate::store::BlobStore::claim`].
    pub async fn claim(&self, digests: Vec<Digest>) -> Result<()> {
        let store = Arc::clone(&self.store);
        crate::task::spawn_blocking("cas claim", move || store.claim(&digests)).await?;
        Ok(())
    }

    /// The digests the store lacks, each once, in the order first asked. Clients ask for the
    /// digests of whole trees, where identical files repeat: duplicates are answered, not
    /// refused, and looked up once.
    ///
    /// A caller that `may_store` claims what it finds: a reader's lookups must not hand it
    /// blobs, and room, that others stored.
    pub async fn find_missing(&self, digests: Vec<Digest>, may_store: bool) -> Result<Vec<Digest>> {
        self.check_batch_len(digests.len())?;
        let mut seen = HashSet::with_capacity(digests.len());
        let unique: Vec<Digest> = digests.into_iter().filter(|digest| seen.insert(*digest)).collect();
        let present = match may_store {
            true => self.contains_claiming(unique.clone()).await?,
            false => self.contains(unique.clone()).await?,
        };
        Ok(unique
            .into_iter()
            .zip(present)
            .filter_map(|(digest, present)| (!present).then_some(digest))
            .collect())
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| Error::Busy {
            message: format!(
                "the server is already serving {} streams (max_concurrent_streams); retry shortly",
                self.limits.max_concurrent_streams
            ),
            retry_after: crate::auth::layer::POOL_RETRY,
        })
    }

    pub fn check_batch_len(&self, len: usize) -> Result<()> {
        if len > self.limits.max_batch_items {
            return Err(Error::invalid(format!(
                "a batch of {len} items is over the limit of {} (max_batch_items); split it",
                self.limits.max_batch_items
            )));
        }
        Ok(())
    }

    /// Every blob of a batch is decompressed and hashed before it can be refused, and a zstd
    /// frame of a few bytes may declare a whole frame of zeros: what a batch may cost is what
    /// its blobs declare, not what the request weighs. It may declare no more than a message
    /// may carry, as if it came uncompressed.
    fn check_batch_declared(&self, blobs: &[(Digest, Encoding, Bytes)]) -> Result<()> {
        let declared = blobs.iter().fold(0u64, |sum, (digest, ..)| sum.saturating_add(digest.size));
        let limit = self.limits.max_message_size as u64;
        if declared > limit {
            return Err(Error::invalid(format!(
                "the blobs of this batch add up to {declared} bytes, over the limit of {limit} \
                 (max_message_size, counted uncompressed): split it into smaller batches, or \
                 upload large blobs with Cas.Write"
            )));
        }
        Ok(())
    }

    fn check_blob_size(&self, digest: &Digest) -> Result<()> {
        if digest.size > self.limits.max_blob_size {
            return Err(Error::ResourceExhausted(format!(
                "blob {digest} is larger than the server's limit of {} bytes (max_blob_size)",
                self.limits.max_blob_size
            )));
        }
        Ok(())
    }

    /// Stores the blob whose bytes arrive on `data`. The upload is verified against `digest`
    /// before it becomes visible; if `data` ends early or fails, nothing is stored. Whether
    /// the blob may be stored at all (its size, the room left) is settled before the first
    /// byte of `data` is read. Each compressed frame is charged to `budget` before it is decoded.
    pub async fn upload<S>(
        &self,
        digest: Digest,
        encoding: Encoding,
        mut data: S,
        budget: &DecodeBudget,
    ) -> Result<UploadOutcome>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        self.check_blob_size(&digest)?;
        let _permit = self.stream_permit()?;
        if self.contains_claiming(vec![digest]).await?[0] {
            return Ok(UploadOutcome::AlreadyPresent);
        }
        let store = Arc::clone(&self.store);
        let opened = crate::task::spawn_blocking("cas open upload", move || store.write(&digest)).await??;
        let (sender, receiver) = mpsc::channel(CHANNEL_FRAMES);
        let mut writer =
            crate::task::spawn_blocking("cas upload", move || write_blob(opened, digest, encoding, receiver));
        let mut received = 0u64;
        let mut frames = 0u64;
        loop {
            // The writer may refuse the upload (a bad frame, the disk below its floor) while
            // the client is between messages: answer then, not at its next message.
            let piece = tokio::select! {
                biased;
                result = &mut writer => return result?.and(Err(Error::Internal(format!(
                    "upload of {digest} was committed before its stream ended"
                )))),
                piece = data.next() => piece,
            };
            let Some(piece) = piece else { break };
            let piece = piece?;
            received += piece.len() as u64;
            if encoding == Encoding::Zstd {
                // A frame past the blob's last is refused by the writer, undecoded.
                let decoded = proto::frames::frame_len(digest.size, frames).unwrap_or(0);
                budget.charge(decoded as u64, piece.len() as u64)?;
                frames += 1;
            }
            if encoding == Encoding::Identity && received > digest.size {
                return Err(Error::invalid(format!(
                    "upload of {digest} sent more than its {} bytes; nothing was stored",
                    digest.size
                )));
            }
            if sender.send(Upload::Data(piece)).await.is_err() {
                break; // The writer gave up; its error is the answer.
            }
        }
        // A send failure here means the writer already failed; its result says why.
        let _ = sender.send(Upload::Finish).await;
        drop(sender);
        writer.await?
    }

    /// Streams a stored blob from `offset`, `limit` bytes (0: to the end), as frames or raw.
    /// Only a read of the whole blob may fill it from a shared tier: a read of part of one this
    /// replica does not hold is a miss (`BlobStore::read_part`).
    pub async fn download(
        &self,
        digest: Digest,
        offset: u64,
        limit: u64,
        encoding: Encoding,
    ) -> Result<mpsc::Receiver<Result<ReadChunk>>> {
        if offset > digest.size {
            return Err(Error::invalid(format!("offset {offset} is past the end of blob {digest}")));
        }
        let permit = self.stream_permit()?;
        let first_frame = offset / FRAME_SIZE as u64;
        let end = match limit {
            0 => digest.size,
            limit => offset.saturating_add(limit).min(digest.size),
        };
        let whole = offset == 0 && end == digest.size;
        let frames = self.open_read(digest, first_frame, whole).await?.ok_or_else(|| match whole {
            true => Error::NotFound(format!("blob {digest} is not in the store")),
            false => Error::NotFound(format!(
                "blob {digest} is not held by this server; a part of it is served only where it \
                 is held: read it whole (offset 0, no limit) to have it brought here"
            )),
        })?;
        let (sender, receiver) = mpsc::channel(CHANNEL_FRAMES);
        let range = ReadRange { digest, offset, end, first_frame };
        // Ends at the blob's last frame, or as soon as the caller drops the receiver.
        crate::task::spawn_blocking("cas read", move || {
            let _permit = permit;
            if let Err(err) = send_frames(frames, range, encoding, &sender) {
                let _ = sender.blocking_send(Err(err));
            }
        })
        .detach();
        Ok(receiver)
    }

    /// Opens a blob for `download`: a part of one only where it is held, never filled.
    async fn open_read(
        &self,
        digest: Digest,
        first_frame: u64,
        whole: bool,
    ) -> Result<Option<crate::store::FrameReader>> {
        let store = Arc::clone(&self.store);
        crate::task::spawn_blocking("cas open read", move || match whole {
            true => store.read(&digest, first_frame),
            false => store.read_part(&digest, first_frame),
        })
        .await?
    }

    /// Stores small blobs, each at most one frame. One result per blob, in order.
    pub async fn batch_write(
        &self,
        blobs: Vec<(Digest, Encoding, Bytes)>,
        budget: &DecodeBudget,
    ) -> Result<Vec<Result<UploadOutcome>>> {
        self.check_batch_len(blobs.len())?;
        self.check_batch_declared(&blobs)?;
        budget.charge(amplified(&blobs), 0)?;
        let present = self.contains_claiming(blobs.iter().map(|blob| blob.0).collect()).await?;
        let mut items: Vec<_> = blobs.into_iter().zip(present).collect();
        // A write blocks until the store holds it: through a shared tier that is a network
        // round trip per blob, so the batch goes out in lanes rather than one after another.
        let per_lane = items.len().div_ceil(WRITE_LANES).max(1);
        let mut lanes = Vec::new();
        while !items.is_empty() {
            let rest = items.split_off(per_lane.min(items.len()));
            let lane = std::mem::replace(&mut items, rest);
            let store = Arc::clone(&self.store);
            lanes.push(crate::task::spawn_blocking("cas batch write", move || write_lane(&store, lane)));
        }
        let mut outcomes = Vec::new();
        for lane in futures::future::join_all(lanes).await {
            outcomes.extend(lane.map_err(Error::from)?);
        }
        Ok(outcomes)
    }

    /// Reads small blobs (at most one frame each). One result per digest, in order. The reply
    /// is budgeted by the bytes it will carry, known from each blob's metadata before its
    /// frame is read: once `max_message_size` is used up, the rest are answered
    /// RESOURCE_EXHAUSTED (read them with Cas.Read or in another batch). A digest asked twice
    /// is refused: it would cost twice and return nothing new.
    pub async fn batch_read(
        &self,
        digests: Vec<Digest>,
        encoding: Encoding,
    ) -> Result<Vec<Result<ReadChunk>>> {
        self.check_batch_len(digests.len())?;
        refuse_duplicates(&digests)?;
        let store = Arc::clone(&self.store);
        let limit = self.limits.max_message_size as u64;
        crate::task::spawn_blocking("cas batch read", move || {
            let mut budget = ReplyBudget { limit, left: limit.saturating_sub(REPLY_SLACK) };
            digests.iter().map(|digest| read_small_blob(&store, digest, encoding, &mut budget)).collect()
        })
        .await
        .map_err(Error::from)
    }
}

/// Refuses a batch that names a digest twice.
fn refuse_duplicates(digests: &[Digest]) -> Result<()> {
    let mut seen = HashSet::with_capacity(digests.len());
    match digests.iter().find(|digest| !seen.insert(**digest)) {
        None => Ok(()),
        Some(digest) => Err(Error::invalid(format!(
            "blob {digest} is asked for more than once in one batch; ask for each blob once"
        ))),
    }
}

/// What is left of a batch reply's byte budget.
struct ReplyBudget {
    limit: u64,
    left: u64,
}

impl ReplyBudget {
    /// Takes `bytes` for `digest`'s result, or says it does not fit.
    fn take(&mut self, digest: &Digest, bytes: u64) -> Result<()> {
        let cost = bytes.saturating_add(BATCH_ITEM_OVERHEAD);
        if cost > self.left {
            // The refusal itself is paid for by the overhead kept back for it.
            self.left = self.left.saturating_sub(BATCH_ITEM_OVERHEAD);
            return Err(Error::ResourceExhausted(format!(
                "blob {digest} does not fit in what is left of this batch's {}-byte reply \
                 (max_message_size): read it with Cas.Read or in another batch",
                self.limit
            )));
        }
        self.left -= cost;
        Ok(())
    }
}

enum Upload {
    Data(Bytes),
    Finish,
}

/// Runs on a blocking thread: feeds the upload's frames to the store and commits once the
/// stream finished cleanly. If the channel closes without `Finish`, the writer is dropped
/// and its frames discarded.
fn write_blob(
    mut writer: Box<dyn FrameWriter>,
    digest: Digest,
    encoding: Encoding,
    mut receiver: mpsc::Receiver<Upload>,
) -> Result<UploadOutcome> {
    let mut framer = Framer::new(encoding)?;
    loop {
        match receiver.blocking_recv() {
            Some(Upload::Data(piece)) => framer.push(piece, writer.as_mut())?,
            Some(Upload::Finish) => break,
            None => {
                return Err(Error::Aborted(format!(
                    "upload of {digest} was cut off before it finished; nothing was stored"
                )));
            }
        }
    }
    framer.finish(writer.as_mut())?;
    Ok(outcome(writer.commit()?))
}

fn outcome(committed: Committed) -> UploadOutcome {
    match committed {
        Committed::Stored { stored_bytes } => UploadOutcome::Stored { stored_bytes },
        Committed::AlreadyPresent => UploadOutcome::AlreadyPresent,
    }
}

/// Turns what a client sends into stored frames: zstd messages are frames already; raw bytes
/// are cut at frame boundaries and compressed here.
enum Framer {
    Frames,
    Raw { encoder: FrameEncoder, pending: Vec<u8> },
}

impl Framer {
    fn new(encoding: Encoding) -> Result<Self> {
        Ok(match encoding {
            Encoding::Zstd => Self::Frames,
            Encoding::Identity => {
                Self::Raw { encoder: new_encoder()?, pending: Vec::with_capacity(FRAME_SIZE) }
            }
        })
    }

    fn push(&mut self, mut piece: Bytes, writer: &mut dyn FrameWriter) -> Result<()> {
        match self {
            Self::Frames => writer.put_frame(piece),
            Self::Raw { encoder, pending } => {
                while !piece.is_empty() {
                    let take = piece.len().min(FRAME_SIZE - pending.len());
                    pending.extend_from_slice(&piece.split_to(take));
                    if pending.len() == FRAME_SIZE {
                        writer.put_frame(encode(encoder, pending)?)?;
                        pending.clear();
                    }
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self, writer: &mut dyn FrameWriter) -> Result<()> {
        match self {
            Self::Raw { encoder, pending } if !pending.is_empty() => {
                writer.put_frame(encode(encoder, pending)?)
            }
            _ => Ok(()),
        }
    }
}

fn new_encoder() -> Result<FrameEncoder> {
    FrameEncoder::new(SERVER_ZSTD_LEVEL).map_err(|err| Error::Internal(format!("zstd encoder: {err}")))
}

fn encode(encoder: &mut FrameEncoder, raw: &[u8]) -> Result<Bytes> {
    encoder
        .encode(raw)
        .map(Bytes::from)
        .map_err(|err| Error::Internal(format!("zstd compression failed: {err}")))
}

/// What decoding a batch's compressed blobs costs beyond the bytes they arrived as.
fn amplified(blobs: &[(Digest, Encoding, Bytes)]) -> u64 {
    blobs
        .iter()
        .filter(|(_, encoding, _)| *encoding == Encoding::Zstd)
        .map(|(digest, _, data)| digest.size.saturating_sub(data.len() as u64))
        .sum()
}

/// Writes one lane of a batch in order, present blobs skipped.
fn write_lane(
    store: &SharedStore,
    lane: Vec<((Digest, Encoding, Bytes), bool)>,
) -> Vec<Result<UploadOutcome>> {
    let mut encoder = None;
    lane.into_iter()
        .map(|((digest, encoding, data), present)| {
            if present {
                return Ok(UploadOutcome::AlreadyPresent);
            }
            write_small_blob(store, digest, encoding, data, &mut encoder)
        })
        .collect()
}

fn write_small_blob(
    store: &SharedStore,
    digest: Digest,
    encoding: Encoding,
    data: Bytes,
    encoder: &mut Option<FrameEncoder>,
) -> Result<UploadOutcome> {
    if digest.size > FRAME_SIZE as u64 {
        return Err(Error::invalid(format!(
            "blob {digest} is larger than one frame ({FRAME_SIZE} bytes); upload it with Cas.Write"
        )));
    }
    let mut writer = store.write(&digest)?;
    let frame = match encoding {
        Encoding::Zstd => data,
        Encoding::Identity if data.is_empty() => data,
        Encoding::Identity => {
            if data.len() as u64 != digest.size {
                return Err(Error::invalid(format!(
                    "blob {digest} arrived with {} bytes; nothing was stored",
                    data.len()
                )));
            }
            let encoder = match encoder {
                Some(encoder) => encoder,
                None => encoder.insert(new_encoder()?),
            };
            encode(encoder, &data)?
        }
    };
    if !frame.is_empty() || digest.size > 0 {
        writer.put_frame(frame)?;
    }
    Ok(outcome(writer.commit()?))
}

fn read_small_blob(
    store: &SharedStore,
    digest: &Digest,
    encoding: Encoding,
    budget: &mut ReplyBudget,
) -> Result<ReadChunk> {
    if digest.size > FRAME_SIZE as u64 {
        return Err(Error::invalid(format!(
            "blob {digest} is larger than one frame ({FRAME_SIZE} bytes); read it with Cas.Read"
        )));
    }
    let missing = || Error::NotFound(format!("blob {digest} is not in the store"));
    let reply_bytes = |stored_bytes: u64| match encoding {
        Encoding::Zstd => stored_bytes,
        Encoding::Identity => digest.size,
    };
    // Charged before the blob is opened: with a shared tier, opening one this replica lacks
    // copies all of it from the bucket, which a reply with no room left must not cost.
    let stated = store.stat(&[*digest])?.pop().flatten().ok_or_else(missing)?;
    budget.take(digest, reply_bytes(stated.stored_bytes))?;
    let mut frames = store.read(digest, 0)?.ok_or_else(missing)?;
    // A copy stored again since may have compressed otherwise (rare: charged as another item).
    let more = reply_bytes(frames.info().stored_bytes).saturating_sub(reply_bytes(stated.stored_bytes));
    if more > 0 {
        budget.take(digest, more)?;
    }
    let Some(frame) = frames.next().transpose()? else {
        return Ok(ReadChunk { data: Bytes::new(), encoding, skip_bytes: 0 });
    };
    let data = match encoding {
        Encoding::Zstd => frame,
        Encoding::Identity => {
            Bytes::copy_from_slice(decoder(digest, 0)?.decode(&frame).map_err(corrupt(digest))?)
        }
    };
    Ok(ReadChunk { data, encoding, skip_bytes: 0 })
}

fn decoder(digest: &Digest, first_frame: u64) -> Result<FrameDecoder> {
    FrameDecoder::new(digest.size, first_frame).map_err(|err| Error::Internal(format!("zstd decoder: {err}")))
}

fn corrupt(digest: &Digest) -> impl Fn(proto::frames::FrameError) -> Error + '_ {
    move |err| Error::Corrupt(format!("blob {digest}: {err}"))
}

struct ReadRange {
    digest: Digest,
    offset: u64,
    end: u64,
    first_frame: u64,
}

/// Runs on a blocking thread: sends the frames covering `[offset, end)`. Returns early,
/// without error, when the client has gone away.
fn send_frames(
    frames: crate::store::FrameReader,
    range: ReadRange,
    encoding: Encoding,
    sender: &mpsc::Sender<Result<ReadChunk>>,
) -> Result<()> {
    let frame_size = FRAME_SIZE as u64;
    let mut decoder = match encoding {
        Encoding::Identity => Some(decoder(&range.digest, range.first_frame)?),
        Encoding::Zstd => None,
    };
    let mut frame_start = range.first_frame * frame_size;
    for frame in frames {
        if frame_start >= range.end {
            break;
        }
        let frame = frame?;
        let skip = range.offset.saturating_sub(frame_start);
        let chunk = match decoder.as_mut() {
            None => ReadChunk { data: frame, encoding, skip_bytes: skip },
            Some(decoder) => {
                let raw = decoder.decode(&frame).map_err(corrupt(&range.digest))?;
                let stop = (range.end - frame_start).min(raw.len() as u64);
                let data = Bytes::copy_from_slice(&raw[skip as usize..stop as usize]);
                ReadChunk { data, encoding, skip_bytes: 0 }
            }
        };
        if sender.blocking_send(Ok(chunk)).is_err() {
            return Ok(());
        }
        frame_start += frame_size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;
    use crate::store::{BlobStore, RocksStore, Verified};

    /// A batch of blobs this replica lacks: each was copied whole from the bucket before the
    /// reply's budget refused it (an audit's BatchRead of 40 MiB filled all 40 MiB and
    /// answered 25 of them RESOURCE_EXHAUSTED), so a small request could make a replica pull
    /// GiBs and push other tenants' copies out of its disk. Only what the reply takes is filled.
    #[test]
    fn a_batch_read_fills_only_what_its_reply_takes() {
        use crate::shared::testing::{SharedBucket, put};
        let bucket = SharedBucket::new();
        let (writer, reader) = (bucket.replica(), bucket.replica());
        let blob = |seed: u8| -> Vec<u8> {
            let mut state = u64::from(seed) + 1;
            (0..256 << 10)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect()
        };
        let digests: Vec<Digest> = (0..10).map(|seed| put(writer.store.as_ref(), &blob(seed))).collect();
        let limit = 600 << 10;
        let mut budget = ReplyBudget { limit, left: limit };
        let answers: Vec<bool> = digests
            .iter()
            .map(|digest| read_small_blob(&reader.store, digest, Encoding::Zstd, &mut budget).is_ok())
            .collect();
        assert_eq!(answers.iter().filter(|read| **read).count(), 2, "{answers:?}");
        let filled = reader.rocks.contains(&digests).unwrap().into_iter().filter(|held| *held).count();
        assert_eq!(filled, 2, "blobs the reply had no room for were copied from the bucket");
    }

    /// A Cas.Read of one byte of a blob this replica lacks copied the whole blob from the
    /// bucket before sending it, whatever its size, pushing other tenants' copies off the disk:
    /// a read of part of a blob is served only where it is held; a read of all of it fills.
    #[test]
    fn a_read_of_part_of_a_blob_fills_nothing() {
        let bucket = crate::shared::testing::SharedBucket::new();
        let (writer, reader) = (bucket.replica(), bucket.replica());
        let raw = varied(4 * FRAME_SIZE + 999);
        let digest = Digest::of(&raw);
        let mut upload = writer.store.write(&digest).unwrap();
        encode_frames(&raw).into_iter().for_each(|frame| upload.put_frame(frame).unwrap());
        upload.commit().unwrap();
        let cas = Cas::new(Arc::clone(&reader.store), cas_on(&reader.rocks).limits);
        let held = || reader.rocks.contains(&[digest]).unwrap()[0];
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let read = |offset, limit| runtime.block_on(read_all(&cas, digest, offset, limit));

        let (offset, limit) = (2 * FRAME_SIZE as u64 + 5, FRAME_SIZE as u64);
        for (offset, limit) in [(0, 1), (offset, limit), (offset, 0)] {
            let answer = read(offset, limit);
            assert!(!held(), "a read of {limit} bytes at {offset} copied the whole blob here");
            assert!(matches!(answer, Err(Error::NotFound(_))), "a part is served only where held");
        }
        assert!(read(0, 0).unwrap() == raw, "a whole read is served");
        assert!(held(), "a whole read fills");
        let part = read(offset, limit).unwrap();
        assert!(part == raw[offset as usize..(offset + limit) as usize], "then parts are served here");
    }

    fn cas_on(rocks: &RocksStore) -> Cas {
        let config =
            crate::config::Config::load(&std::collections::BTreeMap::new(), None, &|_| None).unwrap();
        Cas::new(Arc::new(Verified::new(rocks.clone())), config.limits)
    }

    /// Bytes that do not repeat within a frame, so each frame compresses differently.
    fn varied(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    /// Stores `frames` as `raw`'s blob without verification, as a damaged disk could leave it.
    fn store_unchecked(rocks: &RocksStore, raw: &[u8], frames: Vec<Bytes>) -> Digest {
        let digest = Digest::of(raw);
        let mut writer = rocks.write(&digest).unwrap();
        for frame in frames {
            writer.put_frame(frame).unwrap();
        }
        writer.record_sha256(sha2::Sha256::digest(raw).into());
        writer.commit().unwrap();
        digest
    }

    fn encode_frames(raw: &[u8]) -> Vec<Bytes> {
        let mut encoder = FrameEncoder::new(1).unwrap();
        raw.chunks(FRAME_SIZE).map(|chunk| Bytes::from(encoder.encode(chunk).unwrap())).collect()
    }

    async fn read_all(cas: &Cas, digest: Digest, offset: u64, limit: u64) -> Result<Vec<u8>> {
        let mut chunks = cas.download(digest, offset, limit, Encoding::Identity).await?;
        let mut out = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk?;
            assert_eq!(chunk.encoding, Encoding::Identity);
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// A client that finds a blob present skips its upload, and one that uploads it anyway is
    /// answered "already present": either way it relies on a blob another owner holds, and must
    /// not lose it to that owner's share.
    #[tokio::test]
    async fn finding_or_uploading_a_blob_another_owner_holds_claims_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let cas = cas_on(&rocks);
        let as_token = |token: &str| Some(Arc::from(token));
        let unmetered = DecodeBudget::unmetered();
        let upload = |raw: Vec<u8>| {
            let digest = Digest::of(&raw);
            let data = futures::stream::iter([Ok(Bytes::from(raw))]);
            cas.upload(digest, Encoding::Identity, data, &unmetered)
        };
        // Bytes zstd does not shrink, so each blob stores about as much as the next.
        let noise = |seed: u32| {
            let mut raw = vec![0u8; 4096];
            blake3::Hasher::new().update(&seed.to_be_bytes()).finalize_xof().fill(&mut raw);
            raw
        };
        let (found, uploaded) = (noise(1000), noise(1001));
        for raw in [found.clone(), uploaded.clone()].into_iter().chain((0..20).map(noise)) {
            crate::caller::scope(as_token("pr-1"), upload(raw)).await.unwrap();
            // Each its own access time, so the oldest are the two main relies on.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let missing =
            crate::caller::scope(as_token("main"), cas.find_missing(vec![Digest::of(&found)], true)).await;
        assert!(missing.unwrap().is_empty());
        let again = crate::caller::scope(as_token("main"), upload(uploaded.clone())).await.unwrap();
        assert_eq!(again, UploadOutcome::AlreadyPresent);

        // pr-1 holds all 22 blobs: eviction down to 12 cuts pr-1, oldest first.
        let per_blob = rocks.totals().stored_bytes / 22;
        rocks.evict_bytes(10 * per_blob).unwrap();
        let held = |raw: &[u8]| rocks.contains(&[Digest::of(raw)]).unwrap()[0];
        assert!(held(&found) && held(&uploaded), "pr-1's share took blobs main relies on");
        assert!(!held(&noise(0)), "pr-1 lost its own oldest instead");
    }

    #[tokio::test]
    async fn uncompressed_reads_return_the_stored_bytes_whole_and_in_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let raw = varied(3 * FRAME_SIZE + 12_345);
        let digest = store_unchecked(&rocks, &raw, encode_frames(&raw));
        let cas = cas_on(&rocks);
        assert!(read_all(&cas, digest, 0, 0).await.unwrap() == raw, "the whole blob, decoded");
        let (offset, limit) = (FRAME_SIZE as u64 - 7, FRAME_SIZE as u64 + 100);
        let range = read_all(&cas, digest, offset, limit).await.unwrap();
        assert!(range == raw[offset as usize..(offset + limit) as usize], "a range across frames");
    }

    #[tokio::test]
    async fn uncompressed_reads_refuse_a_corrupt_stored_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rocks) = crate::store::open_for_tests(dir.path());
        let raw = varied(2 * FRAME_SIZE);
        // The second frame stands for fewer bytes than it must: zstd decodes it, the frame
        // check on read refuses it.
        let mut frames = encode_frames(&raw);
        frames[1] = Bytes::from(FrameEncoder::new(1).unwrap().encode(&raw[..100]).unwrap());
        let digest = store_unchecked(&rocks, &raw, frames);
        let cas = cas_on(&rocks);
        let err = read_all(&cas, digest, 0, 0).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        // Bytes that are not zstd at all are refused too.
        let other = varied(1000);
        let digest = store_unchecked(&rocks, &other[..999], vec![Bytes::from_static(b"not a zstd frame")]);
        let err = read_all(&cas, digest, 0, 0).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }
}
