//! Moving blobs: hashing files, compressing them into frames on the client (so the server
//! only verifies), uploading only what is missing, and verified downloads that appear at
//! their destination only once their digest checked out.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use proto::frames::{FrameDecoder, FrameEncoder};
use proto::v1::{self, Compression, write_request};
use proto::{Digest, FRAME_SIZE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::busy::retrying;
use crate::connect::Client;
use crate::error::{ClientError, Result};

/// zstd level for uploads: level 3 shrinks Go outputs ~4x at ~0.35 GB/s per core; higher
/// levels cost far more time than they save on the wire.
pub const DEFAULT_LEVEL: i32 = 3;
/// Frames in flight between the file and the network.
const PIPELINE_FRAMES: usize = 4;
/// Bytes per BatchWrite request; well under the server's default message limit.
const BATCH_BYTES: u64 = 8 << 20;
const BATCH_ITEMS: usize = 1000;

pub fn hash_file(path: &Path) -> Result<Digest> {
    let mut file = File::open(path).map_err(ClientError::file(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; FRAME_SIZE];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(ClientError::file(path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok(Digest::from_hasher(&hasher, size))
}

fn encoder(level: i32) -> Result<FrameEncoder> {
    FrameEncoder::new(level).map_err(|err| ClientError::Usage(format!("zstd level {level}: {err}")))
}

/// Uploads the files the server lacks and returns every file's digest, in order.
pub async fn upload_files(client: &Client, paths: &[PathBuf], level: i32) -> Result<Vec<Digest>> {
    let owned = paths.to_vec();
    let digests = crate::task::spawn_blocking("hash-files", move || {
        owned.iter().map(|p| hash_file(p)).collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(|err| ClientError::Server(format!("hashing failed: {err}")))??;
    let missing = find_missing(client, &digests).await?;
    let mut uploads: Vec<(Digest, &PathBuf)> = Vec::new();
    for (digest, path) in digests.iter().zip(paths) {
        if missing.contains(digest) && !uploads.iter().any(|(d, _)| d == digest) {
            uploads.push((*digest, path));
        }
    }
    let (small, large): (Vec<_>, Vec<_>) =
        uploads.into_iter().partition(|(d, _)| d.size <= FRAME_SIZE as u64);
    for batch in batches(&small) {
        let blobs = batch
            .iter()
            .map(|(digest, path)| {
                let data = std::fs::read(path).map_err(ClientError::file(*path))?;
                Ok((*digest, Bytes::from(data)))
            })
            .collect::<Result<Vec<_>>>()?;
        batch_write(client, blobs, level).await?;
    }
    for (digest, path) in large {
        upload_file(client, path, digest, level).await?;
    }
    Ok(digests)
}

fn batches<'a>(blobs: &'a [(Digest, &'a PathBuf)]) -> Vec<&'a [(Digest, &'a PathBuf)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, (digest, _)) in blobs.iter().enumerate() {
        if i > start && (bytes + digest.size > BATCH_BYTES || i - start == BATCH_ITEMS) {
            out.push(&blobs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += digest.size;
    }
    if start < blobs.len() {
        out.push(&blobs[start..]);
    }
    out
}

pub async fn find_missing(client: &Client, digests: &[Digest]) -> Result<Vec<Digest>> {
    let mut missing = Vec::new();
    for chunk in digests.chunks(BATCH_ITEMS) {
        let request = v1::FindMissingRequest { digests: chunk.iter().map(|d| d.to_wire()).collect() };
        let response = retrying(|| async { Ok(client.cas.clone().find_missing(request.clone()).await?) })
            .await?
            .into_inner();
        for wire in response.missing {
            missing.push(Digest::from_wire(Some(&wire)).map_err(|err| ClientError::Server(err.to_string()))?);
        }
    }
    Ok(missing)
}

/// Uploads small blobs (each at most one frame) in one request, made again while the server
/// refuses it for now ([`crate::busy`]).
pub async fn batch_write(client: &Client, blobs: Vec<(Digest, Bytes)>, level: i32) -> Result<()> {
    retrying(|| batch_write_once(client, blobs.clone(), level)).await
}

async fn batch_write_once(client: &Client, blobs: Vec<(Digest, Bytes)>, level: i32) -> Result<()> {
    let compressed = crate::task::spawn_blocking(
        "compress-blobs",
        move || -> Result<Vec<v1::batch_write_request::Blob>> {
            let mut encoder = encoder(level)?;
            blobs
                .into_iter()
                .map(|(digest, data)| {
                    let data = if data.is_empty() {
                        data
                    } else {
                        Bytes::from(
                            encoder.encode(&data).map_err(|err| ClientError::Server(err.to_string()))?,
                        )
                    };
                    Ok(v1::batch_write_request::Blob {
                        digest: Some(digest.to_wire()),
                        compression: Compression::Zstd as i32,
                        data,
                    })
                })
                .collect()
        },
    )
    .await
    .map_err(|err| ClientError::Server(format!("compression failed: {err}")))??;
    let response = client.cas.clone().batch_write(v1::BatchWriteRequest { blobs: compressed }).await?;
    for result in response.into_inner().results {
        let status = result.status.unwrap_or_default();
        if status.code != 0 {
            let digest =
                Digest::from_wire(result.digest.as_ref()).map_or_else(|_| "?".to_owned(), |d| d.to_string());
            // As a whole call's status would be, so callers can tell a full disk from an outage.
            let refused = format!("upload of {digest} refused: {}", status.message);
            return Err(tonic::Status::new(tonic::Code::from(status.code), refused).into());
        }
    }
    Ok(())
}

/// Streams one file up as zstd frames, compressed on a blocking thread while sending; made
/// again while the server refuses it for now ([`crate::busy`]).
pub async fn upload_file(client: &Client, path: &Path, digest: Digest, level: i32) -> Result<()> {
    retrying(|| upload_file_once(client, path, digest, level)).await
}

async fn upload_file_once(client: &Client, path: &Path, digest: Digest, level: i32) -> Result<()> {
    let (sender, frames) = mpsc::channel::<Bytes>(PIPELINE_FRAMES);
    let source = path.to_owned();
    let framer =
        crate::task::spawn_blocking("frame-upload", move || frame_file(&source, digest, level, &sender));
    let result = write_frames(client, digest, frames).await;
    framer.await.map_err(|err| ClientError::Server(format!("compression failed: {err}")))??;
    result
}

fn frame_file(path: &Path, digest: Digest, level: i32, sender: &mpsc::Sender<Bytes>) -> Result<()> {
    let mut file = File::open(path).map_err(ClientError::file(path))?;
    let mut encoder = encoder(level)?;
    let mut buffer = vec![0u8; FRAME_SIZE];
    let mut total = 0u64;
    loop {
        let filled = read_full(&mut file, &mut buffer).map_err(ClientError::file(path))?;
        if filled == 0 {
            break;
        }
        total += filled as u64;
        if total > digest.size {
            break;
        }
        let frame = encoder.encode(&buffer[..filled]).map_err(|err| ClientError::Server(err.to_string()))?;
        if sender.blocking_send(Bytes::from(frame)).is_err() {
            return Ok(()); // The upload ended early; its own result says why.
        }
    }
    if total != digest.size {
        return Err(ClientError::Usage(format!(
            "{} changed while it was being uploaded; run again",
            path.display()
        )));
    }
    Ok(())
}

fn read_full(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// Sends a Cas.Write stream: the header, then every frame `frames` yields.
pub async fn write_frames(client: &Client, digest: Digest, frames: mpsc::Receiver<Bytes>) -> Result<()> {
    let header = v1::WriteRequest {
        kind: Some(write_request::Kind::Header(v1::WriteHeader {
            digest: Some(digest.to_wire()),
            compression: Compression::Zstd as i32,
        })),
    };
    // Frames of zeros compress to a few dozen bytes each ([`proto::together`]).
    let data = proto::together::sent_together(ReceiverStream::new(frames), Bytes::len)
        .map(|frame| v1::WriteRequest { kind: Some(write_request::Kind::Data(frame)) });
    let requests = futures::stream::once(async { header }).chain(data);
    client.cas.clone().write(requests).await?;
    Ok(())
}

/// How a download asks cached to send a blob's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferCompression {
    /// Uncompressed from a server on this machine, zstd frames from any other: the decode
    /// moves to the server, which overlaps it with this side's hashing and writing when
    /// cores are idle, but costs more CPU in all (two copies of twice the bytes through
    /// loopback), so it lost on a busy machine (docs/benchmarks.md).
    Auto,
    /// The stored zstd frames as they are: the fewest bytes on the wire and the least CPU in
    /// all, decoded here.
    #[default]
    Zstd,
    /// Decoded by the server: twice the bytes on the wire, no decode here.
    None,
}

impl std::str::FromStr for TransferCompression {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(Self::Auto),
            "zstd" => Ok(Self::Zstd),
            "none" => Ok(Self::None),
            other => Err(ClientError::Usage(format!(
                "transfer compression {other:?} is none of auto, zstd or none"
            ))),
        }
    }
}

impl TransferCompression {
    /// The encoding to ask `server` for.
    fn accept(self, server: &str) -> Compression {
        match self {
            Self::Zstd => Compression::Zstd,
            Self::None => Compression::Identity,
            Self::Auto if on_this_machine(server) => Compression::Identity,
            Self::Auto => Compression::Zstd,
        }
    }
}

/// Whether every address in `server` (one URL or a comma list of replicas) is a loopback
/// literal or `localhost`. Names are not resolved: a download should not wait on DNS to
/// choose an encoding, and guessing "remote" only costs the decode on this side.
fn on_this_machine(server: &str) -> bool {
    server.split(',').all(|address| {
        let uri = address.trim().parse::<tonic::codegen::http::Uri>();
        uri.ok().and_then(|uri| uri.host().map(str::to_owned)).is_some_and(|host| {
            let unresolved = |_: &str, _| Err(std::io::ErrorKind::Unsupported.into());
            crate::loopback::place(&host, 0, unresolved) == Ok(crate::loopback::Place::Here)
        })
    })
}

/// Opens a `Cas.Read` of the whole blob, its zstd frames as stored; `None` when cached does
/// not have it.
pub async fn open_read(
    client: &Client,
    digest: Digest,
) -> std::result::Result<Option<tonic::Streaming<v1::ReadResponse>>, tonic::Status> {
    open_read_as(client, digest, Compression::Zstd).await
}

async fn open_read_as(
    client: &Client,
    digest: Digest,
    accept: Compression,
) -> std::result::Result<Option<tonic::Streaming<v1::ReadResponse>>, tonic::Status> {
    let request =
        v1::ReadRequest { digest: Some(digest.to_wire()), offset: 0, limit: 0, accept: accept as i32 };
    match client.cas.clone().read(request).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

/// Downloads `digest` to `dest`. The file appears (atomically, by rename) only after every
/// byte was verified against the digest.
pub async fn download_to_file(client: &Client, digest: Digest, dest: &Path) -> Result<()> {
    download_to_file_as(client, digest, dest, TransferCompression::default()).await
}

/// [`download_to_file`], with the bytes sent as `compression` asks. A download that fails its
/// digest check is reported to cached ([`crate::recheck`]).
pub async fn download_to_file_as(
    client: &Client,
    digest: Digest,
    dest: &Path,
    compression: TransferCompression,
) -> Result<()> {
    // A stream refused for now (the server's or the token's share of its streams is taken)
    // is asked again, as uploads are.
    let downloaded = crate::busy::retrying(|| download_verified(client, digest, dest, compression)).await;
    match downloaded {
        Err(err) => Err(crate::recheck::after_failure(client, err).await),
        Ok(()) => Ok(()),
    }
}

async fn download_verified(
    client: &Client,
    digest: Digest,
    dest: &Path,
    compression: TransferCompression,
) -> Result<()> {
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::NamedTempFile::new_in(&dir).map_err(ClientError::file(&dir))?;
    let Some(mut stream) = open_read_as(client, digest, compression.accept(&client.server)).await? else {
        return Err(ClientError::NotFound(digest));
    };
    let (sender, receiver) = mpsc::channel::<v1::ReadResponse>(PIPELINE_FRAMES);
    let writer =
        crate::task::spawn_blocking("write-download", move || write_verified(temp, digest, receiver));
    let mut failure = None;
    while let Some(message) = stream.next().await {
        match message {
            Ok(message) => {
                if sender.send(message).await.is_err() {
                    break;
                }
            }
            Err(status) => {
                failure = Some(status);
                break;
            }
        }
    }
    drop(sender);
    let temp = writer.await.map_err(|err| ClientError::Server(format!("writing failed: {err}")))?;
    if let Some(status) = failure {
        return Err(status.into());
    }
    temp?.persist(dest).map_err(|err| ClientError::file(dest)(err.error))?;
    Ok(())
}

/// Runs on a blocking thread: decompresses, hashes and writes each piece; checks the digest.
/// A blob of several frames is decoded on threads of their own, one per core (its frames are
/// independent), while this one hashes and writes them in order: decoding is the larger half
/// of a download's CPU, and a single decoder holds a large get to one core's decoding speed.
fn write_verified(
    temp: tempfile::NamedTempFile,
    digest: Digest,
    mut pieces: mpsc::Receiver<v1::ReadResponse>,
) -> Result<tempfile::NamedTempFile> {
    let frames = proto::frames::frame_count(digest.size);
    if frames <= 1 {
        let mut decode = Decode::new(digest, 0, 1)?;
        let plains =
            std::iter::from_fn(|| pieces.blocking_recv()).map(|piece| (0, decode.plain(piece, Vec::new())));
        return hash_and_write(temp, digest, plains, |_, _| ());
    }
    decode_in_turn(temp, digest, pieces, decoder_count(frames))
}

/// [`write_verified`] of a blob of several frames, decoded by `count` threads in turn.
fn decode_in_turn(
    temp: tempfile::NamedTempFile,
    digest: Digest,
    mut pieces: mpsc::Receiver<v1::ReadResponse>,
    count: usize,
) -> Result<tempfile::NamedTempFile> {
    let (mut inboxes, mut decoders) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for first in 0..count {
        let (inbox, decoder) = Decoder::spawn(Decode::new(digest, first as u64, count as u64)?);
        inboxes.push(inbox);
        decoders.push(decoder);
    }
    // Deals the pieces out in turn, so decoder `i % count` holds piece `i`: taking the decoders'
    // output in the same turn puts the frames back in order without a reorder buffer.
    let dealer = crate::task::spawn_thread("deal-download", move || {
        for next in (0..inboxes.len()).cycle() {
            let Some(piece) = pieces.blocking_recv() else { break };
            if inboxes[next].send(piece).is_err() {
                break; // That decoder stopped at an error, which the writer reports.
            }
        }
    });
    let mut turn = (0..count).cycle();
    let plains = std::iter::from_fn(|| {
        let next = turn.next()?;
        decoders[next].plains.recv().ok().map(|plain| (next, plain))
    });
    let spares: Vec<_> = decoders.iter().map(|decoder| decoder.spares.clone()).collect();
    let written = hash_and_write(temp, digest, plains, |from, spare| drop(spares[from].send(spare)));
    // Dropping the outputs first stops decoders still sending, and with them the dealer.
    let threads: Vec<_> = decoders.into_iter().map(|decoder| decoder.thread).collect();
    let panicked = || ClientError::Server("decoding a download panicked".to_owned());
    dealer.join().map_err(|_| panicked())?;
    for thread in threads {
        thread.join().map_err(|_| panicked())?;
    }
    written
}

/// Most decoding threads one download uses.
const MAX_DECODERS: usize = 4;

fn decoder_count(frames: u64) -> usize {
    // Asked once: the answer reads the process's CPU mask and cgroup quota files.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    cores.clamp(1, MAX_DECODERS).min(usize::try_from(frames).unwrap_or(usize::MAX))
}

/// A thread decoding every `count`th frame of a download.
struct Decoder {
    plains: std::sync::mpsc::Receiver<Result<Plain>>,
    /// Written buffers go back here to be decoded into again.
    spares: std::sync::mpsc::Sender<Vec<u8>>,
    thread: std::thread::JoinHandle<()>,
}

/// Frames queued for one decoder, and decoded frames waiting for the writer.
const DECODER_QUEUE: usize = 2;

impl Decoder {
    /// Starts the thread; its pieces go to the returned sender.
    fn spawn(mut decode: Decode) -> (std::sync::mpsc::SyncSender<v1::ReadResponse>, Self) {
        let (inbox, pieces) = std::sync::mpsc::sync_channel::<v1::ReadResponse>(DECODER_QUEUE);
        let (plain_sender, plains) = std::sync::mpsc::sync_channel(DECODER_QUEUE);
        let (spares, spare_buffers) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = crate::task::spawn_thread("decode-download", move || {
            for piece in pieces {
                let plain = decode.plain(piece, spare_buffers.try_recv().unwrap_or_default());
                let failed = plain.is_err();
                // The writer is gone (it failed) or has the error: either way, stop.
                if plain_sender.send(plain).is_err() || failed {
                    break;
                }
            }
        });
        (inbox, Self { plains, spares, thread })
    }
}

/// A piece of a blob ready to land: decoded into a buffer that goes back to the decoder once
/// written, or sent uncompressed.
enum Plain {
    Decoded(Vec<u8>),
    Sent(Bytes),
}

impl Plain {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Decoded(buffer) => buffer,
            Self::Sent(bytes) => bytes,
        }
    }
}

struct Decode {
    decoder: FrameDecoder,
    digest: Digest,
}

impl Decode {
    /// Decodes every `stride`th frame of the blob from `first` on.
    fn new(digest: Digest, first: u64, stride: u64) -> Result<Self> {
        let decoder = FrameDecoder::interleaved(digest.size, first, stride)
            .map_err(|err| corrupt(digest, err.to_string()))?;
        Ok(Self { decoder, digest })
    }

    /// The piece's plain bytes, decoded into `buffer` when it came compressed.
    fn plain(&mut self, piece: v1::ReadResponse, mut buffer: Vec<u8>) -> Result<Plain> {
        if piece.compression != Compression::Zstd as i32 {
            return Ok(Plain::Sent(piece.data));
        }
        self.decoder
            .decode_into(&piece.data, &mut buffer)
            .map_err(|err| corrupt(self.digest, err.to_string()))?;
        Ok(Plain::Decoded(buffer))
    }
}

fn corrupt(expected: Digest, reason: String) -> ClientError {
    ClientError::Corrupt { expected, reason }
}

/// Hashes and writes every piece in order, handing each decode buffer back to `recycle` with
/// the number of the decoder it came from; the file is returned only when its bytes hash to
/// `digest`.
fn hash_and_write(
    mut temp: tempfile::NamedTempFile,
    digest: Digest,
    plains: impl Iterator<Item = (usize, Result<Plain>)>,
    mut recycle: impl FnMut(usize, Vec<u8>),
) -> Result<tempfile::NamedTempFile> {
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let path = temp.path().to_owned();
    for (from, plain) in plains {
        let plain = plain?;
        size += plain.bytes().len() as u64;
        // A server sending more than the blob holds is refused before the disk takes it.
        if size > digest.size {
            return Err(corrupt(digest, format!("received more than its {} bytes", digest.size)));
        }
        hasher.update(plain.bytes());
        temp.write_all(plain.bytes()).map_err(ClientError::file(&path))?;
        if let Plain::Decoded(buffer) = plain {
            recycle(from, buffer);
        }
    }
    let actual = Digest::from_hasher(&hasher, size);
    if actual != digest {
        return Err(corrupt(digest, format!("received bytes hash to {actual}")));
    }
    // No fsync: the rename makes the file appear whole or not at all, which is what readers
    // need; durability across a power cut is not worth a disk flush per download (the go
    // command does not sync its outputs either).
    Ok(temp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(data: &[u8], compression: Compression) -> v1::ReadResponse {
        v1::ReadResponse {
            data: Bytes::copy_from_slice(data),
            compression: compression as i32,
            skip_bytes: 0,
        }
    }

    /// Feeds `pieces` to `write_verified` as a download of `digest` would.
    fn land(
        digest: Digest,
        pieces: Vec<v1::ReadResponse>,
    ) -> (tempfile::TempDir, Result<tempfile::NamedTempFile>) {
        land_with(pieces, |temp, receiver| write_verified(temp, digest, receiver))
    }

    /// [`land`] with `decoders` threads taking the frames in turn, whatever the machine's cores.
    fn land_in_turn(
        digest: Digest,
        pieces: Vec<v1::ReadResponse>,
        decoders: usize,
    ) -> (tempfile::TempDir, Result<tempfile::NamedTempFile>) {
        land_with(pieces, |temp, receiver| decode_in_turn(temp, digest, receiver, decoders))
    }

    fn land_with(
        pieces: Vec<v1::ReadResponse>,
        write: impl FnOnce(
            tempfile::NamedTempFile,
            mpsc::Receiver<v1::ReadResponse>,
        ) -> Result<tempfile::NamedTempFile>,
    ) -> (tempfile::TempDir, Result<tempfile::NamedTempFile>) {
        let dir = tempfile::tempdir().unwrap();
        let temp = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let (sender, receiver) = mpsc::channel(pieces.len().max(1));
        for piece in pieces {
            sender.try_send(piece).unwrap();
        }
        drop(sender);
        (dir, write(temp, receiver))
    }

    #[test]
    fn uncompressed_pieces_land_byte_for_byte() {
        let raw: Vec<u8> = (0..FRAME_SIZE + 500).map(|i| (i % 251) as u8).collect();
        let (head, tail) = raw.split_at(FRAME_SIZE);
        let (_dir, landed) = land(
            Digest::of(&raw),
            vec![piece(head, Compression::Identity), piece(tail, Compression::Identity)],
        );
        assert!(std::fs::read(landed.unwrap().path()).unwrap() == raw);
    }

    /// zstd pieces of `raw`, one per frame.
    fn zstd_pieces(raw: &[u8]) -> Vec<v1::ReadResponse> {
        let mut encoder = FrameEncoder::new(1).unwrap();
        raw.chunks(FRAME_SIZE)
            .map(|chunk| piece(&encoder.encode(chunk).unwrap(), Compression::Zstd))
            .collect()
    }

    #[test]
    fn compressed_frames_decoded_by_threads_in_turn_land_in_order() {
        // Enough frames that buffers go round each decoder's pool several times, and a last
        // frame that is short and not the first decoder's.
        let raw: Vec<u8> = (0..FRAME_SIZE * 9 + 77).map(|i| (i * 7 % 253) as u8).collect();
        for decoders in [1, 2, 3, 4] {
            let (_dir, landed) = land_in_turn(Digest::of(&raw), zstd_pieces(&raw), decoders);
            assert!(std::fs::read(landed.unwrap().path()).unwrap() == raw, "{decoders} decoders");
        }
        let (_dir, landed) = land(Digest::of(&raw), zstd_pieces(&raw));
        assert!(std::fs::read(landed.unwrap().path()).unwrap() == raw);
    }

    #[test]
    fn an_undecodable_frame_in_the_middle_is_refused_and_named() {
        let raw: Vec<u8> = (0..FRAME_SIZE * 4).map(|i| (i % 241) as u8).collect();
        for decoders in [1, 2, 3] {
            let mut pieces = zstd_pieces(&raw);
            pieces[2].data = Bytes::from_static(b"not zstd at all");
            let (_dir, landed) = land_in_turn(Digest::of(&raw), pieces, decoders);
            let Err(ClientError::Corrupt { reason, .. }) = landed else { panic!("a bad frame landed") };
            assert!(reason.contains("frame 2"), "the frame is named: {reason}");
        }
    }

    /// A server that keeps sending plain bytes past the blob's size does not grow the temp
    /// file past it: the download stops at the first byte too many.
    #[test]
    fn bytes_past_the_size_are_refused_before_they_are_written() {
        let raw = vec![7u8; 1000];
        let endless: Vec<_> = (0..64).map(|_| piece(&[7u8; 64 << 10], Compression::Identity)).collect();
        let (dir, landed) = land(Digest::of(&raw), endless);
        let Err(ClientError::Corrupt { reason, .. }) = landed else { panic!("too many bytes landed") };
        assert!(reason.contains("more than its 1000 bytes"), "{reason}");
        let written: u64 =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(written <= 1000, "{written} bytes were written");
    }

    #[test]
    fn frames_swapped_missing_or_extra_are_refused() {
        let raw: Vec<u8> = (0..FRAME_SIZE * 3 + 10).map(|i| (i * 3 % 239) as u8).collect();
        let digest = Digest::of(&raw);
        for decoders in [1, 2, 3] {
            let mut swapped = zstd_pieces(&raw);
            swapped.swap(0, 1);
            let mut missing = zstd_pieces(&raw);
            missing.remove(2);
            let mut extra = zstd_pieces(&raw);
            extra.push(extra[0].clone());
            for (what, pieces) in [("swapped", swapped), ("missing", missing), ("extra", extra)] {
                let (_dir, landed) = land_in_turn(digest, pieces, decoders);
                assert!(
                    matches!(landed, Err(ClientError::Corrupt { .. })),
                    "{what} frames with {decoders} decoders are refused"
                );
            }
        }
    }

    #[test]
    fn uncompressed_bytes_that_do_not_match_the_digest_are_refused() {
        let raw = b"the bytes the digest names".repeat(100);
        let mut flipped = raw.clone();
        flipped[7] ^= 1;
        let (_dir, landed) = land(Digest::of(&raw), vec![piece(&flipped, Compression::Identity)]);
        assert!(matches!(landed, Err(ClientError::Corrupt { .. })), "a flipped bit is refused");
        let (_dir, landed) = land(Digest::of(&raw), vec![piece(&raw[..100], Compression::Identity)]);
        assert!(matches!(landed, Err(ClientError::Corrupt { .. })), "a short download is refused");
    }

    #[test]
    fn auto_asks_for_raw_bytes_only_from_this_machine() {
        let auto = TransferCompression::Auto;
        assert_eq!(auto.accept("http://127.0.0.1:7070"), Compression::Identity);
        assert_eq!(auto.accept("http://localhost:7070,http://[::1]:7070"), Compression::Identity);
        assert_eq!(auto.accept("https://cache.example.com"), Compression::Zstd);
        assert_eq!(auto.accept("http://127.0.0.1:7070,http://10.0.0.2:7070"), Compression::Zstd);
        assert_eq!(TransferCompression::Zstd.accept("http://127.0.0.1:7070"), Compression::Zstd);
        assert_eq!(TransferCompression::None.accept("https://cache.example.com"), Compression::Identity);
        assert!("gzip".parse::<TransferCompression>().is_err());
    }
}
