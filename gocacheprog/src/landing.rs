//! How a body cached sent becomes a file in the local tier: decoded, checked against the
//! OutputID (the go command's own name for the bytes), then moved into place whole, and the
//! action recorded. Nothing that fails the check ever appears.

use std::path::PathBuf;

use bytes::Bytes;
use proto::frames::FrameDecoder;
use proto::v1::{self, Compression};
use proto::{ActionId, Digest, OutputId};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::disk::{DiskTier, Entry};
use super::remote_error::RemoteError;

/// A decoder for [`Found::store`], which restarts it on each body.
pub fn new_decoder() -> Result<FrameDecoder, RemoteError> {
    FrameDecoder::new(0, 0).map_err(|err| RemoteError::Internal(format!("zstd: {err}")))
}

/// A hit as cached answered it: the entry, and the body when it came inline.
#[derive(Debug)]
pub struct Found {
    pub entry: Entry,
    pub digest: Digest,
    /// One zstd frame (empty for an empty body), when the body came with the entry.
    pub inline: Option<Bytes>,
}

impl Found {
    /// Checks the shape of a reply; `None` on a miss.
    pub fn from_reply(reply: v1::GoGetResponse) -> Result<Option<Self>, RemoteError> {
        let Some(wire) = reply.entry else { return Ok(None) };
        let corrupt = |err: &dyn std::fmt::Display| RemoteError::Corrupt(err.to_string());
        let output_id = OutputId::try_from(wire.output_id.as_ref()).map_err(|e| corrupt(&e))?;
        let digest = Digest::from_wire(wire.digest.as_ref()).map_err(|e| corrupt(&e))?;
        let entry = Entry { output_id, size: digest.size, time_unix_nanos: wire.time_unix_nanos };
        let inline = (reply.body_inline || digest.size == 0).then_some(reply.body_zstd);
        Ok(Some(Self { entry, digest, inline }))
    }

    /// Whether [`Found::store`] can land it without a download: the body came inline or the
    /// local tier already has it.
    pub fn is_here(&self, disk: &DiskTier) -> bool {
        self.inline.is_some() || disk.existing_output(&self.entry.output_id, self.entry.size).is_some()
    }

    /// Stores the body (unless it is already here) and records the action. Needs
    /// [`Found::is_here`]. The body must hash to its OutputID, or nothing is stored. `decoder`
    /// is any decoder, reused so that landing many small bodies does not set one up for each.
    pub fn store(
        &self,
        disk: &DiskTier,
        action_id: ActionId,
        decoder: &mut FrameDecoder,
    ) -> Result<PathBuf, RemoteError> {
        let entry = self.entry;
        let path = match disk.existing_output(&entry.output_id, entry.size) {
            Some(path) => path,
            None => {
                let Some(frame) = &self.inline else {
                    return Err(RemoteError::Internal("the body is neither inline nor here".into()));
                };
                let mut writer = disk.absent_writer(entry.output_id, entry.size)?;
                if entry.size > 0 {
                    decoder.restart(entry.size, 0);
                    let raw = decoder.decode(frame).map_err(|err| RemoteError::Corrupt(err.to_string()))?;
                    writer.write(raw)?;
                }
                writer.commit()?
            }
        };
        disk.record(&action_id, &entry)?;
        Ok(path)
    }

    /// The inline body in memory, checked against both its OutputID and its digest.
    pub fn decode_inline(&self, frame: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let size = self.entry.size;
        let body = if size == 0 {
            Vec::new()
        } else {
            let mut decoder =
                FrameDecoder::new(size, 0).map_err(|err| RemoteError::Corrupt(err.to_string()))?;
            decoder.decode(frame).map_err(|err| RemoteError::Corrupt(err.to_string()))?.to_vec()
        };
        if <[u8; 32]>::from(Sha256::digest(&body)) != self.entry.output_id.0
            || Digest::of(&body) != self.digest
        {
            return Err(RemoteError::Corrupt("a session list does not hash to its entry".into()));
        }
        Ok(body)
    }
}

/// Runs on a blocking thread: decodes each streamed piece into the body file.
pub fn store_frames(
    disk: &DiskTier,
    action_id: ActionId,
    entry: Entry,
    mut pieces: mpsc::Receiver<v1::ReadResponse>,
) -> Result<PathBuf, RemoteError> {
    let corrupt = |err: &dyn std::fmt::Display| RemoteError::Corrupt(err.to_string());
    let mut writer = disk.writer(entry.output_id, entry.size)?;
    let mut decoder = FrameDecoder::new(entry.size, 0).map_err(|e| corrupt(&e))?;
    while let Some(piece) = pieces.blocking_recv() {
        if piece.compression == Compression::Zstd as i32 {
            writer.write(decoder.decode(&piece.data).map_err(|e| corrupt(&e))?)?;
        } else {
            writer.write(&piece.data)?;
        }
    }
    let path = writer.commit()?;
    disk.record(&action_id, &entry)?;
    Ok(path)
}
