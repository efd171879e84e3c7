//! The response body: the application's iterable, one `next()` per poll.
//!
//! The layer polls a body only when its response has room in its buffer,
//! so `next()` runs only then: a slow reader pauses the iterable instead
//! of buffering it, and costs no thread. Each poll attaches to the
//! interpreter for that one `next()` and detaches again, so the worker
//! serves its other streams between chunks.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pyo3::Python;

use crate::error::AppError;
use crate::iterable::Iterable;
use crate::log;
use crate::start_response::SharedHead;
use crate::BoxError;

/// After this many empty chunks in a row, a poll yields (and is woken at
/// once) so that one iterable yielding `b""` cannot hold its worker.
const EMPTY_RUN: usize = 64;

/// The body of a WSGI response.
///
/// A response whose whole body was known with its head (a list of bytes,
/// or an iterable that ended on its first item) is one frame; any other
/// streams. With a `Content-Length` from the application, the size hint
/// is exact, the iterable is closed as soon as that many bytes went out,
/// and a body that breaks it ends with an [`AppError`].
pub struct WsgiBody {
    inner: Inner,
}

enum Inner {
    Whole(Option<Bytes>),
    Stream(Box<Stream>),
}

pub(crate) struct Stream {
    pub(crate) iterable: Iterable,
    pub(crate) head: SharedHead,
    /// Chunks already in hand (`write()` data, the first item).
    pub(crate) ready: VecDeque<Bytes>,
    /// What is left of the application's `Content-Length`.
    pub(crate) remaining: Option<u64>,
}

impl WsgiBody {
    pub(crate) fn whole(chunk: Bytes) -> Self {
        Self {
            inner: Inner::Whole((!chunk.is_empty()).then_some(chunk)),
        }
    }

    pub(crate) fn stream(stream: Stream) -> Self {
        Self {
            inner: Inner::Stream(Box::new(stream)),
        }
    }
}

impl Stream {
    /// The next chunk to send, `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, AppError> {
        if let Some(chunk) = self.ready.pop_front() {
            return Ok(Some(chunk));
        }
        if let Some(chunk) = self.head.lock().take_written() {
            return Ok(Some(chunk));
        }
        if self.iterable.is_closed() {
            return Ok(None);
        }
        Python::attach(|py| {
            let mut empty = 0;
            loop {
                match self.iterable.next(py) {
                    Ok(Some(chunk)) if chunk.is_empty() => {
                        empty += 1;
                        if empty == EMPTY_RUN {
                            return Ok(Some(Bytes::new()));
                        }
                    }
                    Ok(Some(chunk)) => return Ok(Some(chunk)),
                    Ok(None) => {
                        self.iterable.close_logged(py);
                        // `write()` from inside the last `next()`.
                        return Ok(self.head.lock().take_written());
                    }
                    Err(error) => {
                        log::traceback(
                            py,
                            "the response iterable, after the head was sent",
                            &error,
                        );
                        self.iterable.close_logged(py);
                        return Err(AppError::new(error.to_string()));
                    }
                }
            }
        })
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let chunk = match self.next_chunk() {
            Ok(Some(chunk)) if chunk.is_empty() => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Ok(chunk) => chunk,
            Err(error) => return Poll::Ready(Some(Err(error.into()))),
        };
        let Some(remaining) = &mut self.remaining else {
            return Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))));
        };
        let failure = match chunk {
            None if *remaining > 0 => {
                format!("the body ended {remaining} bytes short of its Content-Length")
            }
            None => return Poll::Ready(None),
            Some(chunk) if chunk.len() as u64 > *remaining => {
                format!("the body runs past its Content-Length ({remaining} bytes were left)")
            }
            Some(chunk) => {
                *remaining -= chunk.len() as u64;
                if *remaining == 0 && !self.iterable.is_closed() {
                    // All that was promised is here: done, without asking
                    // the iterable for an end it may be slow to give.
                    Python::attach(|py| self.iterable.close_logged(py));
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        };
        log::line(&failure);
        Python::attach(|py| self.iterable.close_logged(py));
        self.ready.clear();
        self.remaining = None;
        Poll::Ready(Some(Err(AppError::new(failure).into())))
    }

    fn is_end(&self) -> bool {
        self.ready.is_empty() && self.iterable.is_closed() && self.head.lock().written.is_empty()
    }
}

impl Body for WsgiBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Whole(chunk) => Poll::Ready(chunk.take().map(|chunk| Ok(Frame::data(chunk)))),
            Inner::Stream(stream) => stream.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(chunk) => chunk.is_none(),
            Inner::Stream(stream) => stream.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |c| c.len() as u64))
            }
            Inner::Stream(stream) => match stream.remaining {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::new(),
            },
        }
    }
}

impl fmt::Debug for WsgiBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Whole(chunk) => f
                .debug_struct("WsgiBody")
                .field("whole", &chunk.as_ref().map(Bytes::len))
                .finish(),
            Inner::Stream(stream) => f
                .debug_struct("WsgiBody")
                .field("remaining", &stream.remaining)
                .field("closed", &stream.iterable.is_closed())
                .finish(),
        }
    }
}
