//! Bytes of unary requests each token has in flight. tonic receives a unary request's whole
//! message (up to `max_message_size`) before the handler sees it, and a token's rate limit
//! bounds how fast calls open, not how many are open: one token's hundreds of calls, each
//! sending most of a large message and then nothing, held gigabytes of the server's memory
//! until `request_timeout`. So the bytes a token's unary requests have sent and tonic has not
//! yet decoded count against `max_request_bytes_per_token`; a request that would go past it is
//! refused, and a request's bytes come back once its message is decoded (the body dropped).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;

use crate::error::Error;
use crate::shares::PerToken;

/// How long a refused caller is asked to wait: bytes held come back as messages finish.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

pub(super) struct HeldBytes(PerToken);

impl HeldBytes {
    pub(super) fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self(PerToken::new(cap)))
    }

    fn charge(&self, token: &str, bytes: u64) -> Result<(), Error> {
        self.0.take(token, bytes).map_err(|held| Error::Busy {
            message: format!(
                "{} already has {} MiB of requests in flight, of {} MiB \
                 (max_request_bytes_per_token); retry once they are received",
                super::Grant::describe_budget(token),
                held >> 20,
                self.0.cap() >> 20
            ),
            retry_after: RETRY_AFTER,
        })
    }

    fn release(&self, token: &str, bytes: u64) {
        self.0.give_back(token, bytes);
    }
}

pin_project_lite::pin_project! {
    /// A request body whose bytes count against its token's share while it is received.
    pub(super) struct HeldBody<B> {
        #[pin]
        inner: B,
        share: Arc<HeldBytes>,
        token: String,
        charged: u64,
    }

    impl<B> PinnedDrop for HeldBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.share.release(this.token, *this.charged);
        }
    }
}

impl<B> HeldBody<B> {
    pub(super) fn new(inner: B, share: Arc<HeldBytes>, token: &str) -> Self {
        Self { inner, share, token: token.to_owned(), charged: 0 }
    }
}

impl<B> http_body::Body for HeldBody<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|frame| frame.as_ref().map(Frame::data_ref)) {
            let bytes = data.map_or(0, |data| data.remaining() as u64);
            if let Err(err) = this.share.charge(this.token, bytes) {
                return Poll::Ready(Some(Err(err.into())));
            }
            *this.charged += bytes;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_setting() {
        let share = HeldBytes::new(100);
        share.charge("ci", 60).unwrap();
        let err = share.charge("ci", 41).unwrap_err();
        assert!(err.to_string().contains("max_request_bytes_per_token"), "{err}");
    }
}
