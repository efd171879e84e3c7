use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

/// A response body from an `Iterator` of chunks.
///
/// Each poll calls `next()` once, on the worker thread, so `next()` may
/// block (read a row from a database cursor, say). The worker only polls
/// when the response has room, so a slow reader pauses the iterator instead
/// of buffering its output.
///
/// ```
/// use bytes::Bytes;
/// let rows = (0..3).map(|i| Ok::<_, std::io::Error>(Bytes::from(format!("row {i}\n"))));
/// let body = tower_affinity::blocking::IterBody::new(rows);
/// # let _ = body;
/// ```
pub struct IterBody<I> {
    iter: Option<I>,
}

impl<I> IterBody<I> {
    /// A body yielding the iterator's chunks as data frames.
    pub fn new(iter: I) -> Self {
        Self { iter: Some(iter) }
    }
}

impl<I> IterBody<Chunks<I>> {
    /// A body from an iterator of plain chunks that cannot fail: anything
    /// `Into<Bytes>` (`String`, `Vec<u8>`, `&'static str`, `Bytes`).
    ///
    /// ```
    /// use tower_affinity::blocking::IterBody;
    /// let csv = IterBody::from_chunks((0..3).map(|i| format!("{i},row {i}\n")));
    /// let parts = IterBody::from_chunks(vec!["id,", "name\n"]);
    /// # let _ = (csv, parts);
    /// ```
    pub fn from_chunks<C>(chunks: C) -> Self
    where
        C: IntoIterator<IntoIter = I>,
    {
        Self::new(Chunks {
            iter: chunks.into_iter(),
        })
    }
}

/// The iterator behind [`IterBody::from_chunks`]: each chunk as
/// `Ok(Bytes)`.
pub struct Chunks<I> {
    iter: I,
}

impl<I> Iterator for Chunks<I>
where
    I: Iterator,
    I::Item: Into<Bytes>,
{
    type Item = Result<Bytes, Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next().map(|chunk| Ok(chunk.into()))
    }

    // Forwarded: `IterBody::is_end_stream` reads it.
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
    }
}

impl<I> fmt::Debug for Chunks<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunks").finish_non_exhaustive()
    }
}

// The iterator is never pinned: the body only calls `next()` through `&mut`.
impl<I> Unpin for IterBody<I> {}

impl<I, E> Body for IterBody<I>
where
    I: Iterator<Item = Result<Bytes, E>>,
{
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let this = self.get_mut();
        let Some(iter) = &mut this.iter else {
            return Poll::Ready(None);
        };
        let next = iter.next();
        if matches!(next, None | Some(Err(_))) {
            // Fused: nothing follows the end or an error.
            this.iter = None;
        }
        Poll::Ready(next.map(|chunk| chunk.map(Frame::data)))
    }

    /// True once the iterator is done, or says it has nothing left (an
    /// exact `(0, Some(0))` size hint), so a one-chunk body is known to end
    /// after its chunk.
    fn is_end_stream(&self) -> bool {
        self.iter
            .as_ref()
            .is_none_or(|iter| iter.size_hint().1 == Some(0))
    }
}

impl<I> fmt::Debug for IterBody<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IterBody")
            .field("done", &self.iter.is_none())
            .finish()
    }
}
