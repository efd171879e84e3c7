use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::bytes_frame;
use crate::error::BoxError;

pin_project! {
    /// A request body read into memory on the async side, possibly followed
    /// by the rest of the original body (under [`OverLimit::Stream`]).
    pub struct PrebufferedBody<B> {
        pub(super) buffered: VecDeque<Frame<Bytes>>,
        #[pin]
        pub(super) rest: Option<B>,
    }
}

impl<B> Body for PrebufferedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_pin_mut() {
            None => Poll::Ready(None),
            Some(rest) => rest.poll_frame(cx).map(bytes_frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.rest.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .buffered
            .iter()
            .filter_map(|frame| frame.data_ref().map(|data| data.len() as u64))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or(SizeHint::with_exact(0), B::size_hint);
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint.set_lower(rest.lower() + buffered);
        hint
    }
}

impl<B> fmt::Debug for PrebufferedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrebufferedBody")
            .field("buffered_frames", &self.buffered.len())
            .field("streaming", &self.rest.is_some())
            .finish()
    }
}
