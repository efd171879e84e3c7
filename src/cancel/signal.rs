//! One request's cancellation signal: fired by the caller's end going away,
//! read as cut by the response deadline or a shutdown's abort.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crate::pool::Inner;

/// What [`Cancellation`](super::Cancellation) shares with the request's
/// reply slot and frame channel, whichever holds the caller's end.
pub(crate) struct Signal {
    fired: AtomicBool,
    // Futures and blocked threads waiting for `fire`.
    waiters: Mutex<Vec<Waker>>,
    /// When the response deadline cuts the request, if there is one.
    deadline: Option<Instant>,
    // Its lifecycle says when a shutdown aborts.
    inner: Arc<Inner>,
}

impl Signal {
    pub(crate) fn new(inner: Arc<Inner>, deadline: Option<Instant>) -> Arc<Self> {
        Arc::new(Self {
            fired: AtomicBool::new(false),
            waiters: Mutex::default(),
            deadline,
            inner,
        })
    }

    /// The caller's end went away: wakes every waiter. Called on the
    /// caller's thread, from the drop of its future or body, so that it
    /// reaches code blocked on the worker.
    pub(crate) fn fire(&self) {
        self.fired.store(true, SeqCst);
        let waiters = std::mem::take(&mut *self.waiters());
        for waiter in waiters {
            waiter.wake();
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        // Nothing panics while it is held.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.fired.load(SeqCst)
            || self.inner.lifecycle.is_aborting()
            || self.deadline.is_some_and(|at| Instant::now() >= at)
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.load(SeqCst) {
            return Poll::Ready(());
        }
        let mut waiters = self.waiters();
        // Again under the lock: `fire` sets the flag before it takes it.
        if self.fired.load(SeqCst) {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Resolves when fired or when a shutdown aborts; the deadline is the
    /// waiter's to keep (a timer here would need a running runtime, and the
    /// worker's is blocked while its thread waits in user code).
    pub(crate) async fn fired_or_aborted(&self) {
        let mut aborted = pin!(self.inner.lifecycle.aborted());
        poll_fn(|cx| {
            if self.poll_fired(cx).is_ready() || aborted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }

    /// Blocks this thread until the request is cut or `timeout` passes;
    /// whether it was cut.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let until = match (until, self.deadline) {
            (Some(until), Some(deadline)) => Some(until.min(deadline)),
            (until, deadline) => until.or(deadline),
        };
        let waker = crate::blocking::thread_waker();
        let mut cx = Context::from_waker(&waker);
        let mut cut = pin!(self.fired_or_aborted());
        loop {
            if cut.as_mut().poll(&mut cx).is_ready() {
                return true;
            }
            match until {
                None => thread::park(),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        return self.is_cut();
                    }
                    thread::park_timeout(until - now);
                }
            }
        }
    }
}
