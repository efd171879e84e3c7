//! How many requests one worker is serving, and the event loop's wait for
//! room below `max_streams_per_worker`.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::pool::inner::Inner;
use crate::stats::WorkerCounters;

/// The requests one worker serves, and the event loop's waker.
pub(crate) struct Load {
    inner: Arc<Inner>,
    index: usize,
    waiter: Cell<Option<Waker>>,
}

impl Load {
    pub(crate) fn new(inner: Arc<Inner>, index: usize) -> Rc<Self> {
        Rc::new(Self {
            inner,
            index,
            waiter: Cell::new(None),
        })
    }

    fn counters(&self) -> &WorkerCounters {
        self.inner.counters.worker(self.index)
    }

    /// Counts a panic caught on this worker.
    pub(crate) fn panicked(&self) {
        self.counters().panicked.fetch_add(1, Relaxed);
    }

    /// How many requests are active now.
    pub(crate) fn active(&self) -> usize {
        self.counters().active.load(Relaxed)
    }

    pub(crate) fn enter(self: &Rc<Self>) -> Active {
        self.counters().active.fetch_add(1, Relaxed);
        Active(self.clone())
    }

    /// Wakes `waker` when the next request ends (the event loop's, which
    /// `below` also stores: one waiter).
    pub(crate) fn wake_on_exit(&self, waker: &std::task::Waker) {
        self.waiter.set(Some(waker.clone()));
    }

    /// Resolves once fewer than `max` requests are active.
    pub(crate) fn below(&self, max: usize) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.active() < max {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// One active request; dropping it makes room and wakes the event loop.
pub(crate) struct Active(Rc<Load>);

impl Active {
    /// Whether `shutdown_timeout`'s deadline has passed: a request still
    /// running stops at its next step.
    pub(crate) fn aborting(&self) -> bool {
        self.0.inner.lifecycle.is_aborting()
    }

    /// Counts a panic caught while serving this request.
    pub(crate) fn panicked(&self) {
        self.0.panicked();
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let counters = self.0.counters();
        counters.active.fetch_sub(1, Relaxed);
        counters.completed.fetch_add(1, Relaxed);
        if let Some(waker) = self.0.waiter.take() {
            waker.wake();
        }
    }
}
