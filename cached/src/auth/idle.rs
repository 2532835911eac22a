//! The idle timeout of request streams: a client that stops sending in the middle of a stream
//! is cut off after `idle_timeout`, so it cannot hold an upload slot for ever. Only time spent
//! waiting for the client counts, not time the handler spends storing what arrived.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use crate::error::Error;

pin_project_lite::pin_project! {
    pub(super) struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        idle: Duration,
        waiting: bool,
    }
}

impl<B> IdleBody<B> {
    pub(super) fn new(inner: B, idle: Duration) -> Self {
        Self { inner, timer: tokio::time::sleep(idle), idle, waiting: false }
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
        if !*this.waiting {
            this.timer.as_mut().reset(Instant::now() + *this.idle);
            *this.waiting = true;
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = false;
                Poll::Ready(frame)
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => {
                    *this.waiting = false;
                    let err = Error::DeadlineExceeded(format!(
                        "the client sent nothing for {} (idle_timeout); the stream was cut off",
                        humantime::format_duration(*this.idle)
                    ));
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
