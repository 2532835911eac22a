//! The framing every blob travels and rests in: independent zstd frames of exactly
//! `FRAME_SIZE` uncompressed bytes each, the last holding the remainder. Concatenated frames
//! are a valid zstd stream, and the frame holding any offset is `offset / FRAME_SIZE`.
//!
//! A frame is one zstd frame and nothing else: no skippable frame, no second frame, no bytes
//! after it, its content size in its header, and no larger than zstd's bound for what it
//! holds. zstd itself would decode all of those padded forms, so a server that stored them
//! would serve far more bytes than a blob holds ([`check_frame`]).

use std::io;

use zstd::zstd_safe;

use crate::FRAME_SIZE;

/// The first four bytes of a zstd frame (little endian).
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames start with any of 16 magic numbers, 0x184D2A50 to 0x184D2A5F.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;

/// Number of frames a blob of `size` bytes is cut into. An empty blob has none.
pub fn frame_count(size: u64) -> u64 {
    size.div_ceil(FRAME_SIZE as u64)
}

/// Uncompressed length of frame `index` of a blob of `size` bytes, or `None` past the end.
pub fn frame_len(size: u64, index: u64) -> Option<usize> {
    let start = index.checked_mul(FRAME_SIZE as u64)?;
    (start < size).then(|| (size - start).min(FRAME_SIZE as u64) as usize)
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame {index} is not valid zstd or holds more than the {expected} bytes it should: {source}")]
    Undecodable { index: u64, expected: usize, source: io::Error },
    #[error(
        "frame {index} holds {actual} bytes but must hold {expected}: every frame but the last \
         carries exactly {FRAME_SIZE} uncompressed bytes"
    )]
    WrongLength { index: u64, expected: usize, actual: usize },
    #[error("a blob of {size} bytes has {frames} frames; frame {index} is one too many")]
    TooMany { size: u64, frames: u64, index: u64 },
    #[error(
        "frame {index} is not one plain zstd frame: {reason}. Send each frame as zstd compresses \
         it, with nothing before or after it"
    )]
    Padded { index: u64, reason: String },
    #[error(
        "frame {index} takes {len} bytes for {expected} uncompressed bytes, more than zstd's \
         bound of {bound} for them"
    )]
    OverBound { index: u64, len: usize, expected: usize, bound: usize },
    #[error(
        "frame {index} declares {declared} in its header but must hold {expected} bytes; compress \
         each frame in one call, which records its size"
    )]
    WrongDeclaredSize { index: u64, expected: usize, declared: String },
}

/// Checks that `frame`, frame `index` of a blob, is exactly one zstd frame declaring
/// `expected` uncompressed bytes and taking no more than zstd's bound for them. Reads only
/// the frame's header and block headers: cheap enough to run on every frame served.
pub fn check_frame(frame: &[u8], index: u64, expected: usize) -> Result<(), FrameError> {
    let padded = |reason: &str| FrameError::Padded { index, reason: reason.to_owned() };
    let bound = zstd_safe::compress_bound(expected);
    if frame.len() > bound {
        return Err(FrameError::OverBound { index, len: frame.len(), expected, bound });
    }
    let magic = frame.get(..4).map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    match magic {
        Some(ZSTD_MAGIC) => {}
        Some(magic) if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC => {
            return Err(padded("it starts with a skippable frame"));
        }
        _ => return Err(padded("it does not start with the zstd magic number")),
    }
    match zstd_safe::find_frame_compressed_size(frame) {
        Ok(len) if len == frame.len() => {}
        Ok(len) => {
            return Err(padded(&format!(
                "{} bytes follow the end of its first frame (skippable frames, another frame or \
                 trailing bytes)",
                frame.len() - len
            )));
        }
        Err(_) => return Err(padded("its blocks do not parse")),
    }
    match zstd_safe::get_frame_content_size(frame) {
        Ok(Some(declared)) if declared == expected as u64 => Ok(()),
        Ok(Some(declared)) => {
            Err(FrameError::WrongDeclaredSize { index, expected, declared: format!("{declared} bytes") })
        }
        Ok(None) => Err(FrameError::WrongDeclaredSize { index, expected, declared: "no size".to_owned() }),
        Err(_) => Err(padded("its header does not parse")),
    }
}

/// Compresses one frame's worth of raw bytes. Reuses its zstd context across frames.
pub struct FrameEncoder {
    compressor: zstd::bulk::Compressor<'static>,
}

impl FrameEncoder {
    pub fn new(level: i32) -> io::Result<Self> {
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        // The content size in the header lets a reader size its buffer exactly.
        compressor.include_contentsize(true)?;
        compressor.include_checksum(false)?;
        Ok(Self { compressor })
    }

    pub fn encode(&mut self, raw: &[u8]) -> io::Result<Vec<u8>> {
        self.compressor.compress(raw)
    }
}

/// Decompresses frames of a blob of known size, checking each holds exactly what it should.
pub struct FrameDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    size: u64,
    next_index: u64,
    /// Frames from one decoded to the next: 1, or the number of decoders sharing a blob.
    stride: u64,
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// Decodes the frames of a blob of `size` bytes, starting at frame `first_index`.
    pub fn new(size: u64, first_index: u64) -> io::Result<Self> {
        Self::interleaved(size, first_index, 1)
    }

    /// Decodes every `stride`th frame from `first_index` on: one of `stride` decoders that
    /// share a blob's frames in turn.
    pub fn interleaved(size: u64, first_index: u64, stride: u64) -> io::Result<Self> {
        Ok(Self {
            decompressor: zstd::bulk::Decompressor::new()?,
            size,
            next_index: first_index,
            stride: stride.max(1),
            buffer: Vec::with_capacity(FRAME_SIZE.min(size as usize)),
        })
    }

    /// Goes on with another blob, keeping the zstd context and the buffer: setting those up
    /// costs more than decoding a small body.
    pub fn restart(&mut self, size: u64, first_index: u64) {
        self.size = size;
        self.next_index = first_index;
        self.stride = 1;
    }

    /// Decompresses the next frame into an internal buffer that is reused across calls.
    pub fn decode(&mut self, frame: &[u8]) -> Result<&[u8], FrameError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let decoded = self.decode_into(frame, &mut buffer);
        self.buffer = buffer;
        decoded?;
        Ok(&self.buffer)
    }

    /// Decompresses the next frame into `out`, replacing what it held: for a caller that
    /// hands the bytes on to another thread and gets the buffer back later.
    pub fn decode_into(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let index = self.next_index;
        let expected = frame_len(self.size, index).ok_or(FrameError::TooMany {
            size: self.size,
            frames: frame_count(self.size),
            index,
        })?;
        check_frame(frame, index, expected)?;
        out.clear();
        out.reserve(expected);
        let actual = self
            .decompressor
            .decompress_to_buffer(frame, out)
            .map_err(|source| FrameError::Undecodable { index, expected, source })?;
        if actual != expected {
            return Err(FrameError::WrongLength { index, expected, actual });
        }
        self.next_index += self.stride;
        Ok(())
    }

    /// Whether every frame of the blob has been decoded.
    pub fn is_complete(&self) -> bool {
        self.next_index >= frame_count(self.size)
    }

    /// Uncompressed bytes decoded so far, counted from the first frame of the blob (by a
    /// decoder of every frame).
    pub fn decoded_bytes(&self) -> u64 {
        (self.next_index * FRAME_SIZE as u64).min(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_cover_the_blob() {
        assert_eq!(frame_count(0), 0);
        assert_eq!(frame_count(1), 1);
        assert_eq!(frame_count(FRAME_SIZE as u64), 1);
        assert_eq!(frame_count(FRAME_SIZE as u64 + 1), 2);
        assert_eq!(frame_len(FRAME_SIZE as u64 + 1, 0), Some(FRAME_SIZE));
        assert_eq!(frame_len(FRAME_SIZE as u64 + 1, 1), Some(1));
        assert_eq!(frame_len(FRAME_SIZE as u64 + 1, 2), None);
        assert_eq!(frame_len(0, 0), None);
    }

    #[test]
    fn interleaved_decoders_take_every_other_frame() {
        let mut encoder = FrameEncoder::new(1).unwrap();
        let full = encoder.encode(&vec![7u8; FRAME_SIZE]).unwrap();
        let short = encoder.encode(&[1, 2, 3]).unwrap();
        let size = 2 * FRAME_SIZE as u64 + 3;
        let mut evens = FrameDecoder::interleaved(size, 0, 2).unwrap();
        let mut odds = FrameDecoder::interleaved(size, 1, 2).unwrap();
        assert_eq!(evens.decode(&full).unwrap().len(), FRAME_SIZE);
        assert_eq!(odds.decode(&full).unwrap().len(), FRAME_SIZE);
        assert!(odds.is_complete());
        assert!(matches!(odds.decode(&short), Err(FrameError::TooMany { index: 3, .. })));
        // Frame 2 is the short last one: a full frame there is refused, the short one decodes.
        assert!(matches!(evens.decode(&full), Err(FrameError::WrongDeclaredSize { index: 2, .. })));
        assert_eq!(evens.decode(&short).unwrap(), &[1, 2, 3]);
        assert!(evens.is_complete());
    }

    #[test]
    fn decoder_checks_every_frame_length() {
        let mut encoder = FrameEncoder::new(1).unwrap();
        let full = encoder.encode(&vec![7u8; FRAME_SIZE]).unwrap();
        let short = encoder.encode(&[1, 2, 3]).unwrap();

        let mut decoder = FrameDecoder::new(FRAME_SIZE as u64 + 3, 0).unwrap();
        assert_eq!(decoder.decode(&full).unwrap().len(), FRAME_SIZE);
        assert_eq!(decoder.decode(&short).unwrap(), &[1, 2, 3]);
        assert!(decoder.is_complete());
        assert!(matches!(decoder.decode(&short), Err(FrameError::TooMany { .. })));

        let mut decoder = FrameDecoder::new(FRAME_SIZE as u64 + 3, 0).unwrap();
        assert!(matches!(decoder.decode(&short), Err(FrameError::WrongDeclaredSize { .. })));

        let mut decoder = FrameDecoder::new(2, 0).unwrap();
        assert!(matches!(decoder.decode(&short), Err(FrameError::WrongDeclaredSize { .. })));
        let mut decoder = FrameDecoder::new(3, 0).unwrap();
        assert!(matches!(decoder.decode(b"not zstd"), Err(FrameError::Padded { .. })));
        // A header that lies about the content: zstd notices while decoding.
        let mut lying = short.clone();
        let size_byte = lying.iter().position(|&b| b == 3).unwrap();
        lying[size_byte] = 4;
        let mut decoder = FrameDecoder::new(4, 0).unwrap();
        assert!(matches!(decoder.decode(&lying), Err(FrameError::Undecodable { .. })));
    }

    #[test]
    fn a_restarted_decoder_checks_the_new_blob() {
        let mut encoder = FrameEncoder::new(1).unwrap();
        let mut decoder = FrameDecoder::new(3, 0).unwrap();
        assert_eq!(decoder.decode(&encoder.encode(&[1, 2, 3]).unwrap()).unwrap(), &[1, 2, 3]);
        decoder.restart(5, 0);
        assert!(!decoder.is_complete());
        assert!(matches!(
            decoder.decode(&encoder.encode(&[1, 2, 3]).unwrap()),
            Err(FrameError::WrongDeclaredSize { .. })
        ));
        decoder.restart(5, 0);
        assert_eq!(decoder.decode(&encoder.encode(&[5; 5]).unwrap()).unwrap(), &[5; 5]);
        assert!(decoder.is_complete());
    }

    fn skippable(len: usize) -> Vec<u8> {
        let mut out = (SKIPPABLE_MAGIC + 3).to_le_bytes().to_vec();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.resize(8 + len, 0);
        out
    }

    #[test]
    fn a_frame_is_one_zstd_frame_and_nothing_else() {
        let mut encoder = FrameEncoder::new(1).unwrap();
        let raw = b"the content of a small blob".repeat(10);
        let frame = encoder.encode(&raw).unwrap();
        check_frame(&frame, 0, raw.len()).unwrap();

        let after = [frame.clone(), skippable(100)].concat();
        let before = [skippable(0), frame.clone()].concat();
        let trailing = [frame.clone(), b"x".to_vec()].concat();
        let twice = [frame.clone(), frame.clone()].concat();
        for (what, bad) in [("after", after), ("before", before), ("trailing", trailing), ("twice", twice)] {
            let err = check_frame(&bad, 0, raw.len()).unwrap_err();
            assert!(matches!(err, FrameError::Padded { .. }), "{what}: {err}");
            let mut decoder = FrameDecoder::new(raw.len() as u64, 0).unwrap();
            assert!(decoder.decode(&bad).is_err(), "{what} decoded");
        }
        let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
        compressor.include_contentsize(false).unwrap();
        let sizeless = compressor.compress(&raw).unwrap();
        let err = check_frame(&sizeless, 0, raw.len()).unwrap_err();
        assert!(matches!(err, FrameError::WrongDeclaredSize { .. }), "{err}");
        let err = check_frame(&frame, 0, raw.len() + 1).unwrap_err();
        assert!(matches!(err, FrameError::WrongDeclaredSize { .. }), "{err}");
        let noise: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let err = check_frame(&encoder.encode(&noise).unwrap(), 0, 10).unwrap_err();
        assert!(matches!(err, FrameError::OverBound { .. }), "{err}");
        assert!(check_frame(b"", 0, 1).is_err());
        assert!(check_frame(&frame[..frame.len() - 1], 0, raw.len()).is_err());
    }

    #[test]
    fn incompressible_frames_stay_within_the_bound() {
        let mut state = 1u64;
        let noise: Vec<u8> = (0..FRAME_SIZE)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        for level in [1, 3, 19] {
            let frame = FrameEncoder::new(level).unwrap().encode(&noise).unwrap();
            check_frame(&frame, 0, FRAME_SIZE).unwrap();
        }
    }
}
