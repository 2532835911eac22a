//! The GOCACHEPROG request decoder (what the go command writes to `cachectl gocacheprog`), fed
//! the input in pieces cut where the first byte says. Never a panic; a body is never longer
//! than its put announced.
#![no_main]

use cached_gocacheprog::protocol::{Decoder, Event, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let piece = usize::from(cut).max(1);
    let mut decoder = Decoder::new();
    let mut announced: Option<u64> = None;
    let mut received = 0u64;
    for chunk in input.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_event() {
                Ok(Some(Event::Request(request))) => {
                    if let Request::Put { body_size, .. } = request {
                        announced = Some(body_size);
                        received = 0;
                    }
                }
                Ok(Some(Event::Body(bytes))) => {
                    received += bytes.len() as u64;
                    assert!(announced.is_some_and(|size| received <= size), "body past its announced size");
                }
                Ok(Some(Event::BodyEnd)) => {
                    assert_eq!(announced.take(), Some(received));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
