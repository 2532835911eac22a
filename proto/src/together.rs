//! Streamed messages too small to go out alone. A zstd frame of 1 MiB of zeros is about 40
//! bytes, and a stream of such frames sent one message at a time is a run of tiny HTTP/2 DATA
//! frames: h2 counts those a peer sends faster than they are read against a small budget, and
//! past it ends the whole connection (GOAWAY `ENHANCE_YOUR_CALM`, "too_many_data_frames"),
//! with every other call on it (a runner agent's lease stream and its other tenants' uploads
//! included). Messages are held back until a few KiB of them can be sent at once: tonic encodes
//! messages that are ready together into one DATA frame. Any message of ordinary size goes out
//! as soon as it is ready.

use futures::{Stream, StreamExt};

/// Bytes of messages held back before they are sent together; h2 counts DATA frames below
/// 256 bytes as small.
pub const TOGETHER_BYTES: usize = 4 << 10;
/// Messages held back at most, however small.
const TOGETHER_MESSAGES: usize = 256;

/// `messages`, each sent once [`TOGETHER_BYTES`] of them (as `wire_size` counts them) are
/// ready, or the stream ends, or a message of ordinary size comes.
pub fn sent_together<S>(messages: S, wire_size: fn(&S::Item) -> usize) -> impl Stream<Item = S::Item>
where
    S: Stream + Unpin,
{
    futures::stream::unfold(messages, move |mut messages| async move {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(message) = messages.next().await {
            bytes += wire_size(&message);
            batch.push(message);
            if bytes >= TOGETHER_BYTES || batch.len() >= TOGETHER_MESSAGES {
                break;
            }
        }
        (!batch.is_empty()).then(|| (futures::stream::iter(batch), messages))
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_wait_for_each_other_and_large_ones_do_not() {
        let sizes = [40, 40, 8000, 40, 40, 40];
        let (sender, receiver) = futures::channel::mpsc::unbounded::<usize>();
        let mut together = Box::pin(sent_together(receiver, |size| *size));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut poll = || match together.as_mut().poll_next(&mut cx) {
            std::task::Poll::Ready(item) => Some(item),
            std::task::Poll::Pending => None,
        };
        sender.unbounded_send(sizes[0]).unwrap();
        assert_eq!(poll(), None, "one small message waits");
        sender.unbounded_send(sizes[1]).unwrap();
        assert_eq!(poll(), None);
        sender.unbounded_send(sizes[2]).unwrap();
        assert_eq!((poll(), poll(), poll()), (Some(Some(40)), Some(Some(40)), Some(Some(8000))));
        for size in &sizes[3..] {
            sender.unbounded_send(*size).unwrap();
        }
        assert_eq!(poll(), None, "120 bytes wait for more");
        drop(sender);
        assert_eq!(
            (poll(), poll(), poll(), poll()),
            (Some(Some(40)), Some(Some(40)), Some(Some(40)), Some(None))
        );
    }
}
