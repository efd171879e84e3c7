//! The response deadline, kept on the reader's side too.
//!
//! The worker checks `response_deadline` between frames, but a worker
//! stuck in a body's `poll_frame` checks nothing. So the reader keeps the
//! same deadline: while it waits for a frame, a timer on the reader's own
//! runtime fires at the deadline, and the body ends with `Elapsed` then,
//! however long the worker stays stuck.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A streamed response's deadline, as its reader sees it.
pub(crate) struct Deadline {
    at: Instant,
    timer: Timer,
}

enum Timer {
    /// Not needed yet: the reader has not waited.
    Unset,
    /// On the reader's runtime. Boxed: `Sleep` is large, and only streams
    /// with a deadline whose reader waited pay for it.
    Set(Pin<Box<Sleep>>),
    /// The reader runs off a Tokio runtime (or on one without timers): the
    /// deadline is checked at each of its polls, and by the worker.
    Unavailable,
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Self {
        Self {
            at,
            timer: Timer::Unset,
        }
    }

    /// Ready once the deadline has passed; else `cx` is woken when it
    /// passes (if the reader's runtime has a timer). Polled only while the
    /// reader waits for a frame, so a reader that keeps up never reads the
    /// clock here.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Timer::Unset = self.timer {
            self.timer = match tokio::runtime::Handle::try_current() {
                // `sleep_until` panics on a runtime built without timers
                // (the panic hook still reports it, once per stream); the
                // deadline is then checked at each poll, and by the worker.
                Ok(_) => catch_unwind(AssertUnwindSafe(|| tokio::time::sleep_until(self.at)))
                    .map_or(Timer::Unavailable, |sleep| Timer::Set(Box::pin(sleep))),
                Err(_) => Timer::Unavailable,
            };
        }
        match &mut self.timer {
            Timer::Set(sleep) => sleep.as_mut().poll(cx),
            _ if Instant::now() >= self.at => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}
