//! Frame decoding, as every upload and every client download runs it: arbitrary bytes as the
//! frames of a blob of arbitrary size. Never a panic, never more than one frame of memory, and
//! a frame is accepted only with exactly the length it must have and nothing beyond one zstd
//! frame (no skippable frame, trailing bytes or second frame; the corpus has each).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::FRAME_SIZE;
use proto::frames::{FrameDecoder, frame_len};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    // Blob size and first frame index from the input; frames are cut at 2-byte lengths.
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) % (4 * FRAME_SIZE as u64 + 1);
    let first = u64::from(data[8] % 5);
    let Ok(mut decoder) = FrameDecoder::new(size, first) else { return };
    let mut rest = &data[9..];
    let mut index = first;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        match decoder.decode(frame) {
            Ok(raw) => assert_eq!(Some(raw.len()), frame_len(size, index)),
            Err(_) => return,
        }
        index += 1;
    }
});
