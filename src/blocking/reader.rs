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
/// let body = ReaderBody::new(file).chunk_size(256 * 1024).with_length(len);
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

    /// Declares the exact number of bytes the body yields, so that it has an
    /// exact size hint (and hyper sends `Content-Length`). The body reads
    /// exactly `len` bytes and stops there; a reader that ends earlier
    /// fails the body with [`UnexpectedEof`](io::ErrorKind::UnexpectedEof),
    /// never a short clean end.
    pub fn with_length(mut self, len: u64) -> Self {
        self.remaining = Some(len);
        self
    }
}

impl<R> Unpin for ReaderBody<R> {}

impl<R: Read> ReaderBody<R> {
    /// Reads until `want` bytes or the end of input.
    fn read_chunk(reader: &mut R, want: usize) -> io::Result<Vec<u8>> {
        let mut chunk = vec![0; want];
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
        // Taken for the read, put back only if more is to come: errors and
        // the end are final.
        let Some(mut reader) = this.reader.take() else {
            return Poll::Ready(None);
        };
        // With a declared length, never read past it: a reader that has
        // exactly that much but does not signal its end (a socket) must not
        // block the worker on one more read.
        let want = match this.remaining {
            Some(remaining) => this
                .chunk_size
                .min(remaining.try_into().unwrap_or(usize::MAX)),
            None => this.chunk_size,
        };
        let chunk = match Self::read_chunk(&mut reader, want) {
            Ok(chunk) => chunk,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        let short = chunk.len() < want;
        if let Some(remaining) = &mut this.remaining {
            *remaining -= chunk.len() as u64;
            if short {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "reader ended before its declared length",
                ))));
            }
            if *remaining > 0 {
                this.reader = Some(reader);
            }
        } else if !short {
            this.reader = Some(reader);
        }
        if chunk.is_empty() {
            return Poll::Ready(None);
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
