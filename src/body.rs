//! The response body handed back to the async side.
//!
//! A response produced in one frame (the common case) arrives with its head
//! in a single message and costs no channel. A longer response is streamed
//! through a bounded per-response channel: the worker reserves a slot before
//! it polls the inner body, so a reader that stops costs at most
//! `body_buffer` frames of memory and never a blocked thread.
//!
//! The worker ends every streamed response with an explicit end marker. A
//! channel that closes without one means the producer died, and the body
//! ends with [`WorkerGone`] rather than a clean (truncated) end. A response
//! deadline is kept here too (see `deadline.rs`), so that it holds while
//! the worker is stuck producing a frame.

mod deadline;

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use self::deadline::Deadline;
use crate::channel::{self, Receiver, Sender};
use crate::error::{BoxError, Elapsed, WorkerGone};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

/// One item on a response's channel, from the worker to the body.
pub(crate) enum Msg {
    /// The next frame of the response.
    Frame(Frame<Bytes>),
    /// Data frames merged into one while the reader was behind.
    Merged(BytesMut),
    /// The inner body failed; nothing follows.
    Error(BoxError),
    /// The inner body ended cleanly; nothing follows.
    End,
}

impl Msg {
    /// Folds `next` into `self` when both are data and together hold at
    /// most `cap` bytes; gives `next` back otherwise. Trailers, errors and
    /// the end marker never merge, so nothing crosses them; a frame of
    /// `cap` bytes or more never merges, so it is never copied.
    pub(crate) fn merge(&mut self, next: Msg, cap: usize) -> Result<(), Msg> {
        let Some(data) = next.data().filter(|data| data.len() < cap) else {
            return Err(next);
        };
        match self {
            Msg::Merged(merged) if merged.len() + data.len() <= cap => {
                merged.extend_from_slice(data);
                Ok(())
            }
            Msg::Frame(frame) => match frame.data_ref() {
                Some(first) if first.len() < cap && first.len() + data.len() <= cap => {
                    // One buffer of the cap for the whole run of small
                    // frames: each byte is copied once. A cap past 64 KiB
                    // (`merge_frames(usize::MAX)`) grows as frames merge.
                    let mut merged = BytesMut::with_capacity(cap.min(64 * 1024));
                    merged.extend_from_slice(first);
                    merged.extend_from_slice(data);
                    *self = Msg::Merged(merged);
                    Ok(())
                }
                _ => Err(next),
            },
            _ => Err(next),
        }
    }

    fn data(&self) -> Option<&Bytes> {
        match self {
            Msg::Frame(frame) => frame.data_ref(),
            _ => None,
        }
    }
}

/// A frame of any body as it leaves for the caller: data as `Bytes`
/// (without a copy when it already is `Bytes`), the error boxed.
pub(crate) fn bytes_frame<D, E>(
    frame: Option<Result<Frame<D>, E>>,
) -> Option<Result<Frame<Bytes>, BoxError>>
where
    D: Buf,
    E: Into<BoxError>,
{
    frame.map(|frame| {
        frame
            .map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
            .map_err(Into::into)
    })
}

/// The sending half kept by the worker.
pub(crate) type FrameSender = Sender<Msg>;

/// The body of every response from [`ThreadAffinity`](crate::ThreadAffinity).
///
/// It carries data and trailer frames in the order the inner body produced
/// them, the inner body's `size_hint` (counted down as data arrives, so an
/// exact hint stays exact and hyper keeps `Content-Length`) and
/// `is_end_stream`. A failure after the head — an inner body error, a panic
/// while producing a frame, a worker that stopped — is a body error, never a
/// clean early end.
///
/// Dropping it cancels the response: the worker stops polling the inner body
/// and drops it on its own thread. With a
/// [`response_deadline`](crate::Builder::response_deadline), it ends with
/// [`Elapsed`] at the deadline, even while its worker is stuck producing the
/// frame it waits for.
pub struct ThreadAffinityBody {
    kind: Kind,
    hint: SizeHint,
}

enum Kind {
    /// Everything the inner body produced, already here: zero or one item.
    Ready(Option<Result<Frame<Bytes>, BoxError>>),
    /// Frames still being produced on the worker.
    Streaming {
        rx: Receiver<Msg>,
        ended: bool,
        deadline: Option<Deadline>,
    },
}

impl ThreadAffinityBody {
    /// A body whose only frame (if any) is already known.
    pub(crate) fn ready(item: Option<Result<Frame<Bytes>, BoxError>>, hint: SizeHint) -> Self {
        Self {
            kind: Kind::Ready(item),
            hint,
        }
    }

    /// A body of one data chunk.
    pub(crate) fn full(data: Bytes) -> Self {
        let hint = SizeHint::with_exact(data.len() as u64);
        let item = (!data.is_empty()).then(|| Ok(Frame::data(data)));
        Self::ready(item, hint)
    }

    /// A short `text/plain` response with `status`: the layer's own answers.
    pub(crate) fn plain_text(status: StatusCode, text: impl Into<Bytes>) -> Response<Self> {
        let mut response = Response::new(Self::full(text.into()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    /// A streamed body, fed by the worker through a channel of `capacity`,
    /// that ends with [`Elapsed`] at `deadline` if it has not ended by then.
    pub(crate) fn channel(
        capacity: usize,
        hint: SizeHint,
        deadline: Option<tokio::time::Instant>,
    ) -> (FrameSender, Self) {
        let (tx, rx) = channel::channel(capacity);
        let body = Self {
            kind: Kind::Streaming {
                rx,
                ended: false,
                deadline: deadline.map(Deadline::new),
            },
            hint,
        };
        (tx, body)
    }

    /// Counts a delivered data frame off the remaining size.
    fn consumed(&mut self, len: usize) {
        let len = len as u64;
        let lower = self.hint.lower().saturating_sub(len);
        match self.hint.upper() {
            Some(upper) => {
                let upper = upper.saturating_sub(len).max(lower);
                self.hint = SizeHint::new();
                self.hint.set_upper(upper);
                self.hint.set_lower(lower);
            }
            None => self.hint.set_lower(lower),
        }
    }

    /// What a message from the worker means for the reader, and whether
    /// the body ends with it.
    fn item(msg: Option<Msg>) -> (Option<Result<Frame<Bytes>, BoxError>>, bool) {
        match msg {
            Some(Msg::Frame(frame)) => (Some(Ok(frame)), false),
            Some(Msg::Merged(data)) => (Some(Ok(Frame::data(data.freeze()))), false),
            Some(Msg::Error(error)) => (Some(Err(error)), true),
            Some(Msg::End) => (None, true),
            // The worker dropped its sender without an end marker.
            None => (Some(Err(WorkerGone::new().into())), true),
        }
    }
}

impl Body for ThreadAffinityBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let item = match &mut this.kind {
            Kind::Ready(item) => item.take(),
            Kind::Streaming { ended: true, .. } => None,
            Kind::Streaming {
                rx,
                ended,
                deadline,
            } => match rx.poll_recv(cx) {
                Poll::Ready(msg) => {
                    let (item, end) = Self::item(msg);
                    *ended = end;
                    item
                }
                Poll::Pending => {
                    let Some(deadline) = deadline else {
                        return Poll::Pending;
                    };
                    std::task::ready!(deadline.poll_elapsed(cx));
                    // The worker may be stuck in the inner body: end here,
                    // and close the channel, so the frames it would still
                    // send are dropped at once and the stream holds nothing.
                    rx.close();
                    *ended = true;
                    Some(Err(Elapsed::new().into()))
                }
            },
        };
        if let Some(Ok(frame)) = &item {
            if let Some(data) = frame.data_ref() {
                this.consumed(data.remaining());
            }
        }
        Poll::Ready(item)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Ready(item) => item.is_none(),
            Kind::Streaming { ended, .. } => *ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// An empty body: no frames, an exact size of zero, ended. Layers that
/// answer by themselves (tower-http's `TimeoutLayer`) need it.
impl Default for ThreadAffinityBody {
    fn default() -> Self {
        Self::full(Bytes::new())
    }
}

impl fmt::Debug for ThreadAffinityBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready(_) => "ready",
            Kind::Streaming { .. } => "streaming",
        };
        f.debug_struct("ThreadAffinityBody")
            .field("kind", &kind)
            .field("size_hint", &self.hint)
            .finish()
    }
}
