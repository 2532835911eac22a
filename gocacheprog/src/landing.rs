//! How a body cached sent becomes a file in the local tier: decoded, checked against the CAS
//! digest its entry names (BLAKE3: one hash per byte; cached checked the SHA-256 against the
//! OutputID, the go command's own name for the bytes, when the entry was put), then moved into
//! place whole under its OutputID, and the action recorded. Nothing that fails the check ever
//! appears.

use std::path::PathBuf;

use bytes::Bytes;
use proto::frames::FrameDecoder;
use proto::v1::{self, Compression};
use proto::{ActionId, Digest, OutputId};
use tokio::sync::mpsc;

use super::disk::{DiskTier, Entry};
use super::goindex::Head;
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
    /// [`Found::is_here`]. The body must have its digest, or nothing is stored. `decoder`
    /// is any decoder, reused so that landing many small bodies does not set one up for each.
    /// `None`: the entry is not one to land ([`crate::goindex`]), a miss.
    pub fn store(
        &self,
        disk: &DiskTier,
        action_id: ActionId,
        decoder: &mut FrameDecoder,
    ) -> Result<Option<PathBuf>, RemoteError> {
        let entry = self.entry;
        let mut head = Head::default();
        let path = match disk.existing_output(&entry.output_id, entry.size) {
            Some(path) => path,
            None => {
                let Some(frame) = &self.inline else {
                    return Err(RemoteError::Internal("the body is neither inline nor here".into()));
                };
                let mut writer = disk.absent_landing_writer(entry.output_id, self.digest)?;
                if entry.size > 0 {
                    decoder.restart(entry.size, 0);
                    let raw = decoder.decode(frame).map_err(|err| RemoteError::Corrupt(err.to_string()))?;
                    head.take(raw);
                    writer.write(raw)?;
                }
                head.complete = true;
                writer.commit()?
            }
        };
        Ok(disk.record_vouched(&action_id, &entry, head.known())?.then_some(path))
    }

    /// The inline body in memory, checked against its digest.
    pub fn decode_inline(&self, frame: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let size = self.entry.size;
        let body = if size == 0 {
            Vec::new()
        } else {
            let mut decoder =
                FrameDecoder::new(size, 0).map_err(|err| RemoteError::Corrupt(err.to_string()))?;
            decoder.decode(frame).map_err(|err| RemoteError::Corrupt(err.to_string()))?.to_vec()
        };
        if Digest::of(&body) != self.digest {
            return Err(RemoteError::Corrupt("a session list does not hash to its entry".into()));
        }
        Ok(body)
    }
}

/// Runs on a blocking thread: decodes each streamed piece into the body file. `None` as for
/// [`Found::store`].
pub fn store_frames(
    disk: &DiskTier,
    action_id: ActionId,
    entry: Entry,
    digest: Digest,
    mut pieces: mpsc::Receiver<v1::ReadResponse>,
) -> Result<Option<PathBuf>, RemoteError> {
    let corrupt = |err: &dyn std::fmt::Display| RemoteError::Corrupt(err.to_string());
    let mut writer = disk.landing_writer(entry.output_id, digest)?;
    let mut decoder = FrameDecoder::new(entry.size, 0).map_err(|e| corrupt(&e))?;
    let mut head = Head::default();
    head.complete = true;
    while let Some(piece) = pieces.blocking_recv() {
        let raw = if piece.compression == Compression::Zstd as i32 {
            decoder.decode(&piece.data).map_err(|e| corrupt(&e))?
        } else {
            &piece.data
        };
        head.take(raw);
        writer.write(raw)?;
    }
    let path = writer.commit()?;
    Ok(disk.record_vouched(&action_id, &entry, head.known())?.then_some(path))
}

#[cfg(test)]
mod tests {
    use proto::frames::FrameEncoder;
    use sha2::{Digest as _, Sha256};

    use super::*;

    fn output_id(body: &[u8]) -> proto::OutputId {
        proto::OutputId(Sha256::digest(body).into())
    }

    fn found(output_id: proto::OutputId, digest: Digest, body: &[u8]) -> Found {
        let entry = Entry { output_id, size: digest.size, time_unix_nanos: 1 };
        let inline = FrameEncoder::new(1).unwrap().encode(body).unwrap();
        Found { entry, digest, inline: Some(inline.into()) }
    }

    /// The read path's one check is the digest: a body that does hash to its OutputID but is
    /// not the blob its entry names is not landed, inline or streamed.
    #[test]
    fn a_body_whose_digest_is_not_its_entrys_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let (wrong, right) = (b"wrong body".as_slice(), b"right body".as_slice());
        let action = ActionId([1; 32]);
        let lying = found(output_id(wrong), Digest::of(right), wrong);
        let stored = lying.store(&disk, action, &mut new_decoder().unwrap());
        assert!(matches!(stored, Err(RemoteError::Corrupt(_))), "{stored:?}");
        assert!(!disk.output_path(&output_id(wrong)).exists());
        assert!(disk.lookup(&action).unwrap().is_none());

        let (sender, pieces) = mpsc::channel(1);
        let piece = v1::ReadResponse {
            data: lying.inline.clone().unwrap(),
            compression: Compression::Zstd as i32,
            ..Default::default()
        };
        sender.try_send(piece).unwrap();
        drop(sender);
        let stored = store_frames(&disk, action, lying.entry, lying.digest, pieces);
        assert!(matches!(stored, Err(RemoteError::Corrupt(_))), "{stored:?}");
        assert!(!disk.output_path(&output_id(wrong)).exists());
        assert!(disk.lookup(&action).unwrap().is_none());

        let honest = found(output_id(right), Digest::of(right), right);
        let path = honest.store(&disk, action, &mut new_decoder().unwrap()).unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), right);
    }

    /// go's index of a package is keyed by where its files are and their times, not what they
    /// hold: one from cached (another machine's files) is never landed, inline or streamed.
    #[test]
    fn go_index_entries_from_cached_never_land() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskTier::open(dir.path(), 1 << 30).unwrap();
        let index = b"go index v2\n\0\0\0\0another machine's list of files".as_slice();
        let entry = found(output_id(index), Digest::of(index), index);
        let action = ActionId([1; 32]);
        assert_eq!(entry.store(&disk, action, &mut new_decoder().unwrap()).unwrap(), None);
        assert!(disk.lookup(&action).unwrap().is_none());
        // Its body is here now: read from the file this time.
        assert!(
            entry.is_here(&disk) && disk.existing_output(&entry.entry.output_id, entry.entry.size).is_some()
        );
        assert_eq!(entry.store(&disk, action, &mut new_decoder().unwrap()).unwrap(), None);
        assert!(disk.lookup(&action).unwrap().is_none());

        let (sender, pieces) = mpsc::channel(1);
        let piece = v1::ReadResponse {
            data: entry.inline.clone().unwrap(),
            compression: Compression::Zstd as i32,
            ..Default::default()
        };
        sender.try_send(piece).unwrap();
        drop(sender);
        let action = ActionId([2; 32]);
        assert_eq!(store_frames(&disk, action, entry.entry, entry.digest, pieces).unwrap(), None);
        assert!(disk.lookup(&action).unwrap().is_none());
    }
}
