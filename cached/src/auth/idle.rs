//! The pace of request streams: a client that stops sending in the middle of a stream is cut
//! off after `idle_timeout`, and an upload that trickles (a byte now and then, each gap under
//! `idle_timeout`) once its waits add up to more than `idle_timeout` plus what its bytes earn
//! at `min_transfer_rate` ([`Pace`]), so neither can hold an upload slot for ever. Only time
//! spent waiting for the client counts, not time the handler spends storing what arrived.
//! `conn::watch` holds response streams to the same pace.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use crate::conn::Pace;
use crate::error::Error;

pin_project_lite::pin_project! {
    pub(super) struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        pace: Pace,
        // Since when the handler waits for the client's next frame.
        waiting: Option<Instant>,
        // Earlier waits, together.
        waited: Duration,
        bytes: u64,
    }
}

impl<B> IdleBody<B> {
    pub(super) fn new(inner: B, pace: Pace) -> Self {
        Self {
            inner,
            timer: tokio::time::sleep(pace.idle),
            pace,
            waiting: None,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }
}

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let since = *this.waiting.get_or_insert_with(|| {
            let now = Instant::now();
            this.timer.as_mut().reset(now + this.pace.allowance(*this.waited, *this.bytes));
            now
        });
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = None;
                *this.waited += since.elapsed();
                if let Some(Ok(data)) = frame.as_ref().map(|frame| frame.as_ref().map(Frame::data_ref)) {
                    *this.bytes += data.map_or(0, |data| data.remaining() as u64);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => {
                    *this.waiting = None;
                    let why = this
                        .pace
                        .overdue(*this.waited, since.elapsed(), *this.bytes)
                        .unwrap_or_else(|| "it sent too slowly".to_owned());
                    let err = Error::DeadlineExceeded(format!("the client's stream was cut off: {why}"));
                    Poll::Ready(Some(Err(err.into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
