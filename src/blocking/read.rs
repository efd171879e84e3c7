use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use bytes::{Buf, Bytes};
use http_body::Body;
use http_body_util::{Full, Limited};

use super::LengthLimitError;
use crate::error::BoxError;

/// The request body as a blocking [`Read`], for handler code on a worker.
///
/// Each `read` that needs more data blocks the calling thread (and so this
/// worker, and only it) until the next frame arrives from the client. It
/// works inside a worker, where `tokio`'s `block_on` would refuse to nest:
/// it parks the thread itself. Trailers are skipped.
///
/// The body must be fed from outside this worker (a hyper connection is):
/// a body that needs this worker's own runtime to make progress would wait
/// forever.
///
/// The total size is limited ([`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT) unless
/// set with [`limit`](Self::limit)): past it, `read` fails with an error of
/// kind [`InvalidData`](io::ErrorKind::InvalidData) wrapping a
/// [`LengthLimitError`] (http-body-util's, as `Limited` uses), which a
/// handler can answer with `413`.
///
/// ```
/// use std::io::Read;
/// use tower_affinity::blocking::{BodyReader, LengthLimitError};
///
/// let mut text = String::new();
/// let err = BodyReader::new(String::from("too long"))
///     .limit(3)
///     .read_to_string(&mut text)
///     .unwrap_err();
/// assert!(err.get_ref().unwrap().is::<LengthLimitError>());
/// ```
pub struct BodyReader<B> {
    body: Pin<Box<B>>,
    chunk: Bytes,
    limit: usize,
    seen: u64,
    done: bool,
}

impl<B> BodyReader<B> {
    /// The default limit: 2 MiB, as axum's `DefaultBodyLimit`.
    pub const DEFAULT_LIMIT: usize = 2 * 1024 * 1024;

    /// Reads `body`, up to [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT) bytes.
    pub fn new(body: B) -> Self {
        Self {
            body: Box::pin(body),
            chunk: Bytes::new(),
            limit: Self::DEFAULT_LIMIT,
            seen: 0,
            done: false,
        }
    }

    /// Sets the most bytes this reader accepts.
    ///
    /// A `usize`, as every byte limit of this crate and of the layers it
    /// sits beside (axum's `DefaultBodyLimit`, tower-http's
    /// `RequestBodyLimitLayer`, http-body-util's `Limited`), so one
    /// constant serves them all.
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }
}

impl<B> Read for BodyReader<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.chunk.has_remaining() && !self.done {
            if self.body.size_hint().lower() > self.limit as u64 {
                return Err(self.over_limit());
            }
            let mut body = self.body.as_mut();
            // Unconstrained: this poll runs inside the worker's Tokio task,
            // whose cooperative budget only resets when the task yields, and
            // a blocking read never yields. Without it, a tokio-fed body
            // returns `Pending` forever after 128 frames.
            let next =
                tokio::task::unconstrained(std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)));
            match block_on(next) {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::other(e.into()));
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        let len = data.remaining();
                        self.seen += len as u64;
                        if self.seen > self.limit as u64 {
                            self.done = true;
                            return Err(self.over_limit());
                        }
                        self.chunk = data.copy_to_bytes(len);
                    }
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

impl<B> BodyReader<B> {
    fn over_limit(&self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, length_limit_error())
    }
}

impl<B> fmt::Debug for BodyReader<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyReader")
            .field("limit", &self.limit)
            .field("read", &self.seen)
            .field("done", &self.done)
            .finish()
    }
}

/// A [`LengthLimitError`], boxed.
///
/// http-body-util's type is `#[non_exhaustive]`: the one way to make one is
/// to have a `Limited` body refuse a byte. It is ready at once, no waker used.
fn length_limit_error() -> BoxError {
    let mut over = Limited::new(Full::new(Bytes::from_static(b"!")), 0);
    match Pin::new(&mut over).poll_frame(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Some(Err(error))) => {
            debug_assert!(error.is::<LengthLimitError>());
            error
        }
        _ => unreachable!("a one-byte body over a zero-byte limit fails"),
    }
}

/// A waker that unparks the calling thread: for code that blocks this
/// thread on a future by parking it between polls.
pub(crate) fn thread_waker() -> Waker {
    Waker::from(Arc::new(Unpark(thread::current())))
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` to completion on this thread, parking between polls.
///
/// Unlike `futures::executor::block_on` and tokio's, it does not mind being
/// called from inside another executor: it only ever parks this thread.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = thread_waker();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A stray unpark only costs one more poll.
        thread::park();
    }
}
