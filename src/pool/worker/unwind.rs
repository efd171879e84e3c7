//! A shield between the worker and user code that may panic.
//!
//! Every poll of the inner future and body, every `is_end_stream` and
//! `size_hint`, and the final drop run inside `catch_unwind`, so that a panic
//! fails one request instead of unwinding through the worker's event loop.
//! A panicked value is never polled again; it is only dropped, also inside
//! `catch_unwind`.
//!
//! A panic caught in a `Drop` has no request to fail, but it is counted
//! in the worker's `panicked`, as the docs promise for panics in bodies,
//! futures and instances: the thread's worker is found through a
//! thread-local set for the worker's lifetime (read only on a panic, so the
//! common path pays nothing).

use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::load::Load;
use crate::body::bytes_frame;
use crate::error::{BoxError, Panicked};

thread_local! {
    /// The load (and so the `panicked` counter) of the worker running on
    /// this thread; `None` off the workers.
    static WORKER: RefCell<Option<Rc<Load>>> = const { RefCell::new(None) };
}

/// Makes panics caught in a `Drop` on this thread count for the worker of
/// `load`, until it is dropped.
pub(crate) struct CountsDropPanics(());

impl CountsDropPanics {
    pub(crate) fn new(load: Rc<Load>) -> Self {
        WORKER.with(|worker| *worker.borrow_mut() = Some(load));
        Self(())
    }
}

impl Drop for CountsDropPanics {
    fn drop(&mut self) {
        // `try_with`: this may run while the thread's locals are torn down.
        let _ = WORKER.try_with(|worker| worker.borrow_mut().take());
    }
}

/// Drops `value` now, on this thread; a panic in its `Drop` is caught and
/// counted for this thread's worker.
pub(crate) fn drop_guarded<T>(value: T) {
    if guard(move || drop(value)).is_err() {
        count_panic();
    }
}

/// Counts a panic caught on this thread for its worker, if it is one.
fn count_panic() {
    let _ = WORKER.try_with(|worker| {
        if let Some(load) = &*worker.borrow() {
            load.panicked();
        }
    });
}

/// Runs `f`, turning a panic into [`Panicked`].
pub(crate) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    // AssertUnwindSafe: a value that panicked is never used again; it is
    // only dropped.
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| Panicked::new(&*payload))
}

/// A frame as it leaves the worker: data as `Bytes`, errors boxed.
pub(crate) type FrameResult = Option<Result<Frame<Bytes>, BoxError>>;

pin_project! {
    /// Owns a value from user code and drops it behind `catch_unwind`.
    pub(crate) struct Guarded<T> {
        #[pin]
        inner: Option<T>,
    }

    impl<T> PinnedDrop for Guarded<T> {
        fn drop(this: Pin<&mut Self>) {
            this.clear();
        }
    }
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self { inner: Some(inner) }
    }

    /// Drops the value now, on this thread, catching (and counting) a
    /// panic in its `Drop`.
    pub(crate) fn clear(self: Pin<&mut Self>) {
        let mut inner = self.project().inner;
        if guard(move || inner.set(None)).is_err() {
            count_panic();
        }
    }
}

impl<F: Future> Guarded<F> {
    /// Polls the future; after a panic the future is dropped.
    pub(crate) fn poll_future(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<F::Output, Panicked>> {
        let polled = {
            let inner = self.as_mut().project().inner;
            guard(move || match inner.as_pin_mut() {
                Some(future) => future.poll(cx),
                None => Poll::Pending,
            })
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                self.clear();
                Poll::Ready(Ok(output))
            }
            Err(panic) => {
                self.clear();
                Poll::Ready(Err(panic))
            }
        }
    }
}

impl<B> Guarded<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Polls the next frame, with data turned into `Bytes` (without a copy
    /// when it already is `Bytes`); after a panic the body is dropped.
    pub(crate) fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<FrameResult, Panicked>> {
        let polled = {
            let inner = self.as_mut().project().inner;
            guard(move || match inner.as_pin_mut() {
                Some(body) => body.poll_frame(cx),
                None => Poll::Ready(None),
            })
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(frame)) => Poll::Ready(Ok(bytes_frame(frame))),
            Err(panic) => {
                self.clear();
                Poll::Ready(Err(panic))
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> Result<bool, Panicked> {
        match &self.inner {
            Some(body) => guard(|| body.is_end_stream()),
            None => Ok(true),
        }
    }

    pub(crate) fn size_hint(&self) -> Result<SizeHint, Panicked> {
        match &self.inner {
            Some(body) => guard(|| body.size_hint()),
            None => Ok(SizeHint::with_exact(0)),
        }
    }
}
