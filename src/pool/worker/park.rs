//! How a worker thread runs its event loop: polled here, outside any
//! runtime's `block_on`, with the thread parked between polls.
//!
//! Tokio marks a thread inside `Runtime::block_on` as running a runtime,
//! and from there refuses to start, block on or drop another one ("Cannot
//! start a runtime from within a runtime"). Legacy code does exactly that:
//! the sync `postgres` client, `reqwest::blocking`, sync facades over async
//! SDKs. A `spawn_blocking` thread is not so marked, only given a handle;
//! a worker is the same: it enters the driver's handle (`driver.rs`), and
//! polls its loop with a waker of its own that unparks the thread.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use super::spin::Spin;

/// Wakes a parked worker thread.
pub(crate) struct Unpark {
    /// Set by a wake-up, cleared by the loop before it polls again: a wake
    /// during a poll is kept for the next look, never lost.
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only the first wake since the loop's last look unparks: the rest
        // find it set. (`unpark` of a running thread is no syscall; it
        // leaves a token that makes the next `park` return at once.)
        if !self.woken.swap(true, AcqRel) {
            self.thread.unpark();
        }
    }
}

/// The waker of the calling thread's loop, to hand to `block_on`.
pub(crate) fn waker() -> (Waker, Arc<Unpark>) {
    let unpark = Arc::new(Unpark {
        woken: AtomicBool::new(false),
        thread: thread::current(),
    });
    (Waker::from(unpark.clone()), unpark)
}

thread_local! {
    /// The wakers of tasks that yielded during this poll of the loop (see
    /// [`yield_now`]); `None` outside [`block_on`].
    static DEFERRED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Polls `future` on this thread until it is ready, parking while nothing
/// woke it. `waker` and `unpark` are a pair from [`waker`]. Before each
/// park it spins briefly if `may_spin` says so (see `spin.rs`).
pub(crate) fn block_on<F: Future>(
    future: F,
    waker: &Waker,
    unpark: &Unpark,
    mut may_spin: impl FnMut() -> bool,
) -> F::Output {
    let mut cx = Context::from_waker(waker);
    let mut future = pin!(future);
    let mut spin = Spin::default();
    DEFERRED.with(|deferred| *deferred.borrow_mut() = Some(Vec::new()));
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            DEFERRED.with(|deferred| deferred.borrow_mut().take());
            return output;
        }
        // Taken out of the cell first: a wake may run user code (a waker of
        // its own) that yields again. Put back after, so that its room is
        // reused: a yield costs no allocation.
        let mut yielded = DEFERRED
            .with(|deferred| deferred.borrow_mut().as_mut().map(std::mem::take))
            .unwrap_or_default();
        for waker in yielded.drain(..) {
            waker.wake();
        }
        DEFERRED.with(|deferred| match deferred.borrow_mut().as_mut() {
            Some(list) if list.is_empty() => *list = yielded,
            _ => {}
        });
        // `park` may return spuriously (or for a token that user code
        // left): the flag, not the return, says that something woke us.
        spin.wait(|| unpark.woken.load(Acquire), may_spin(), thread::park);
        // A swap, not a store: it acquires what a wake-up that came after
        // the wait's last look announced, so the next poll sees it.
        unpark.woken.swap(false, AcqRel);
    }
}

/// Yields to the loop: the task is polled again only after the loop's
/// future has been polled once more, so that the event loop sees new jobs
/// between two turns of a busy stream.
///
/// `tokio::task::yield_now` defers its wake-up this way only inside a
/// runtime's `block_on`; outside one it wakes at once, and the `LocalSet`
/// polls the task again in the same tick, up to 61 times in a row.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        let deferred = DEFERRED.with(|deferred| match deferred.borrow_mut().as_mut() {
            Some(list) => {
                list.push(cx.waker().clone());
                true
            }
            None => false,
        });
        if !deferred {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A wake from another thread, whether it lands before the loop parks
    /// or after, makes the loop poll again and see what the waker set.
    #[test]
    fn a_wake_from_another_thread_polls_again() {
        let (waker, unpark) = waker();
        let (tx, rx) = mpsc::channel::<u32>();
        let mut seen = Vec::new();
        let mut spawned = false;
        block_on(
            std::future::poll_fn(|cx| {
                if !spawned {
                    spawned = true;
                    let (tx, waker) = (tx.clone(), cx.waker().clone());
                    thread::spawn(move || {
                        for n in 1..=3 {
                            tx.send(n).unwrap();
                            waker.wake_by_ref();
                        }
                    });
                }
                seen.extend(rx.try_iter());
                if seen.len() == 3 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }),
            &waker,
            &unpark,
            || false,
        );
        assert_eq!(seen, [1, 2, 3]);
    }

    /// Inside the loop, user code may build, block on and drop a runtime of
    /// its own: the thread is not marked as running one.
    #[test]
    fn a_runtime_may_be_built_used_and_dropped_inside() {
        let (waker, unpark) = waker();
        let answer = block_on(
            async {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let answer = runtime.block_on(async { 42 });
                drop(runtime);
                answer
            },
            &waker,
            &unpark,
            || false,
        );
        assert_eq!(answer, 42);
    }
}
