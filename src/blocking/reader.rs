use std::fmt;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A response body from a [`Read`]er, in fixed-size chunks.
///
/// The large-file case: each poll reads one chunk on the worker thread,
/// only when the response has room, so a slow client holds at most
/// `body_buffer` chunks in memory and never a thread. Every chunk is full
/// (`chunk_size` bytes) but the last.
///
/// ```no_run
/// use tower_affinity::blocking::ReaderBody;
/// let file = std::fs::File::open("big.csv")?;
/// let len = file.metadata()?.len();
/// // With the length known, hyper sends `Content-Length`.
/// let body = ReaderBody::new(file).chunk_size(256 * 1024).len(len);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct ReaderBody<R> {
    reader: Option<R>,
    chunk_size: usize,
    remaining: Option<u64>,
}

impl<R> ReaderBody<R> {
    /// The default chunk size: 64 KiB.
    pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

    /// A body reading `reader` to its end.
    pub fn new(reader: R) -> Self {
        Self {
            reader: Some(reader),
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
            remaining: None,
        }
    }

    /// The size of each chunk.
    ///
    /// # Panics
    ///
    /// If `size` is 0.
    pub fn chunk_size(mut self, size: usize) -> Self {
        assert!(size > 0, "chunk size must be at least 1");
        self.chunk_size = size;
        self
    }

    /// Declares the exact number of bytes the reader yields, so that the
    /// body has an exact size hint (and hyper sends `Content-Length`).
    /// A reader that then ends early or runs long fails the body.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(mut self, len: u64) -> Self {
        self.remaining = Some(len);
        self
    }
}

impl<R> Unpin for ReaderBody<R> {}

impl<R: Read> ReaderBody<R> {
    fn read_chunk(&mut self, reader: &mut R) -> io::Result<Vec<u8>> {
        let mut chunk = vec![0; self.chunk_size];
        let mut filled = 0;
        while filled < chunk.len() {
            match reader.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        chunk.truncate(filled);
        Ok(chunk)
    }
}

impl<R: Read> Body for ReaderBody<R> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(mut reader) = this.reader.take() else {
            return Poll::Ready(None);
        };
        let chunk = match this.read_chunk(&mut reader) {
            Ok(chunk) => chunk,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        let read = chunk.len() as u64;
        if let Some(remaining) = &mut this.remaining {
            if read > *remaining || (read == 0 && *remaining > 0) {
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reader length differs from the declared length",
                );
                return Poll::Ready(Some(Err(e)));
            }
            *remaining -= read;
        }
        if chunk.is_empty() {
            return Poll::Ready(None);
        }
        // A short chunk means end of input; otherwise keep reading.
        if chunk.len() == this.chunk_size && this.remaining != Some(0) {
            this.reader = Some(reader);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.remaining, &self.reader) {
            (_, None) => SizeHint::with_exact(0),
            (Some(remaining), _) => SizeHint::with_exact(remaining),
            (None, Some(_)) => SizeHint::new(),
        }
    }
}

impl<R> fmt::Debug for ReaderBody<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderBody")
            .field("chunk_size", &self.chunk_size)
            .field("remaining", &self.remaining)
            .field("done", &self.reader.is_none())
            .finish()
    }
}
