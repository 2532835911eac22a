//! The framing every blob travels and rests in: independent zstd frames of exactly
//! `FRAME_SIZE` uncompressed bytes each, the last holding the remainder. Concatenated frames
//! are a valid zstd stream, and the frame holding any offset is `offset / FRAME_SIZE`.

use std::io;

use crate::FRAME_SIZE;

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
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// Decodes the frames of a blob of `size` bytes, starting at frame `first_index`.
    pub fn new(size: u64, first_index: u64) -> io::Result<Self> {
        Ok(Self {
            decompressor: zstd::bulk::Decompressor::new()?,
            size,
            next_index: first_index,
            buffer: Vec::with_capacity(FRAME_SIZE.min(size as usize)),
        })
    }

    /// Goes on with another blob, keeping the zstd context and the buffer: setting those up
    /// costs more than decoding a small body.
    pub fn restart(&mut self, size: u64, first_index: u64) {
        self.size = size;
        self.next_index = first_index;
    }

    /// Decompresses the next frame into an internal buffer that is reused across calls.
    pub fn decode(&mut self, frame: &[u8]) -> Result<&[u8], FrameError> {
        let index = self.next_index;
        let expected = frame_len(self.size, index).ok_or(FrameError::TooMany {
            size: self.size,
            frames: frame_count(self.size),
            index,
        })?;
        self.buffer.clear();
        self.buffer.reserve(expected);
        let actual = self
            .decompressor
            .decompress_to_buffer(frame, &mut self.buffer)
            .map_err(|source| FrameError::Undecodable { index, expected, source })?;
        if actual != expected {
            return Err(FrameError::WrongLength { index, expected, actual });
        }
        self.next_index += 1;
        Ok(&self.buffer)
    }

    /// Whether every frame of the blob has been decoded.
    pub fn is_complete(&self) -> bool {
        self.next_index >= frame_count(self.size)
    }

    /// Uncompressed bytes decoded so far, counted from the first frame of the blob.
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
        assert!(matches!(decoder.decode(&short), Err(FrameError::WrongLength { .. })));

        let mut decoder = FrameDecoder::new(2, 0).unwrap();
        assert!(matches!(decoder.decode(&short), Err(FrameError::Undecodable { .. })));
        let mut decoder = FrameDecoder::new(3, 0).unwrap();
        assert!(matches!(decoder.decode(b"not zstd"), Err(FrameError::Undecodable { .. })));
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
            Err(FrameError::WrongLength { .. })
        ));
        decoder.restart(5, 0);
        assert_eq!(decoder.decode(&encoder.encode(&[5; 5]).unwrap()).unwrap(), &[5; 5]);
        assert!(decoder.is_complete());
    }
}
