//! One worker thread: a current-thread runtime with a `LocalSet`, serving
//! many requests at once.
//!
//! Here the thread starts, runs and ends (`spawn`, `run_thread`); the loop
//! it runs is in `event_loop.rs` (`event_loop::run`), and what follows its
//! end in `exit.rs`.

pub(in crate::pool) mod driver;
mod event_loop;
mod exit;
pub(in crate::pool) mod load;
pub(in crate::pool) mod park;
mod spin;
pub(in crate::pool) mod state;
pub(in crate::pool) mod unwind;

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::{io, thread};

use self::exit::{End, Exit};
use self::state::WorkerState;
use self::unwind::guard;
use crate::error::Failure;
use crate::pool::idle::Source;
use crate::pool::inner::Inner;
use crate::pool::queue::Queues;
use crate::stats::probe;
use crate::{trace, WorkerId};

/// The task serving one request, local to its worker.
pub(crate) type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// Starts worker `index` on a new thread.
pub(super) fn spawn(index: usize, queues: Queues, inner: Arc<Inner>) -> io::Result<()> {
    if !inner.may_spawn() {
        return Err(io::Error::other(
            "tower-affinity: thread spawn refused (test seam)",
        ));
    }
    let name = format!("{}-{}", inner.config.thread_name, index);
    let id = WorkerId::new(inner.id, index, name.as_str().into());
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Decides, as the thread ends however it ends, what comes next.
            let mut exit = Exit::new(index, queues.clone(), inner.clone(), spawn);
            exit.end = run_thread(id, &queues, &inner);
            drop(exit);
        })
        .map(drop)
}

/// Runs the worker until its queues close, it retires (a spare), or a
/// panic escapes the shields around user code.
fn run_thread(id: WorkerId, queues: &Queues, inner: &Arc<Inner>) -> End {
    id.enter();
    let index = id.index();
    inner
        .counters
        .worker(index)
        .tid
        .store(probe::current_tid(), Relaxed);
    if let Some(hook) = &inner.config.on_thread_start {
        let _ = guard(|| hook(&id));
    }
    if let Err(error) = inner.start_worker() {
        stop_hook(inner, &id);
        return End::FailedStart(error);
    }
    // User code on this thread sees the driver's runtime as current, as
    // code under `spawn_blocking` sees its runtime's, and is not inside a
    // `block_on` (see `park.rs`).
    let _entered = inner.driver.handle().enter();
    inner.counters.worker(index).started();
    let local = tokio::task::LocalSet::new();
    let state = WorkerState::new(id, inner.clone());
    // The idle list and an abort wake this loop through this waker, the
    // thread's own for its life.
    let (waker, unpark) = park::waker();
    inner.idle.set_waker(index, Some(&waker));
    // A panic that escapes the shields (a panic payload whose `Drop`
    // panics, say) must not unwind through the services and tasks: a
    // second panic in one of their `Drop`s would abort the process.
    let served = catch_unwind(AssertUnwindSafe(|| {
        let serving = local.run_until(async {
            let mut serving = pin!(event_loop::run(queues, &state));
            poll_fn(|cx| {
                if inner.lifecycle.is_aborting() {
                    return Poll::Ready(false);
                }
                serving.as_mut().poll(cx)
            })
            .await
        });
        let mut serving = pin!(serving);
        // The whole poll counts as user code for the blocked probe, so that
        // tasks handlers spawn with `spawn_local` count too; the loop's own
        // turns clear the mark (`next_job`).
        let polled = poll_fn(|cx| {
            let _polling = inner.counters.polling(index);
            serving.as_mut().poll(cx)
        });
        park::block_on(polled, &waker, &unpark, || state.may_spin())
    }));
    let end = match served {
        Ok(true) => End::Retired,
        Ok(false) => End::Finished,
        Err(payload) => {
            trace::warning!(worker = index, "a panic escaped; the thread ends");
            inner.counters.worker(index).panicked.fetch_add(1, Relaxed);
            let _ = guard(move || drop(payload));
            End::Died
        }
    };
    // Only after an abort can jobs be left in closed queues. (A spare that
    // retires, and a thread that dies, leave the open queues to the others
    // and to the replacement.)
    if matches!(end, End::Finished) {
        while let Some(envelope) = queues.take_own().or_else(|| queues.take_shared()) {
            state.reject(envelope, Failure::ShutDown);
        }
    }
    // One guarded cleanup, however the loop ended. Tasks still in the set
    // (none after a clean drain) are dropped first, on this thread, before
    // the services they may point to; their bodies end with an error, as
    // their channels close without an end marker.
    let _ = guard(move || drop(local));
    state.drop_services();
    stop_hook(inner, &state.id);
    end
}

fn stop_hook(inner: &Inner, id: &WorkerId) {
    if let Some(hook) = &inner.config.on_thread_stop {
        let _ = guard(|| hook(id));
    }
}
