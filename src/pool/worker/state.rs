//! What a worker thread owns: its service instances and its load; and how
//! it serves one job.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::thread;

use super::load::Load;
use super::unwind::{drop_guarded, CountsDropPanics};
use crate::error::Failure;
use crate::pool::inner::Inner;
use crate::pool::queue::job::Envelope;
use crate::{trace, WorkerId};

/// Runs `f`; `None` if it panicked. The payload is leaked, not dropped:
/// its `Drop` may panic again.
fn contain<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(std::mem::forget)
        .ok()
}

/// What a worker thread owns: its service instances and its load.
pub(crate) struct WorkerState {
    pub(super) id: WorkerId,
    pub(super) inner: Arc<Inner>,
    /// Whether this is a spare (it serves the shared queue only).
    pub(super) spare: bool,
    // One instance per wrapped service, created on first use on this thread,
    // dropped here once the service's last handle is gone. Looked up on
    // every request: a list, since a worker serves a few services, and a
    // look through a few ids needs no hashing.
    services: RefCell<Vec<Kept>>,
    // The pool's count of retired services when this worker last swept.
    swept: Cell<u64>,
    pub(super) load: Rc<Load>,
    /// The machine's cores, for the idle worker's choice to spin.
    pub(super) cpus: u64,
    // Panics caught in a `Drop` on this thread count for this worker while
    // the state lives: to the end of `run_thread`, past `drop_services`.
    _counts: CountsDropPanics,
}

impl WorkerState {
    pub(super) fn new(id: WorkerId, inner: Arc<Inner>) -> Self {
        let load = Load::new(inner.clone(), id.index());
        let counts = CountsDropPanics::new(load.clone());
        Self {
            spare: id.index() >= inner.config.workers,
            id,
            inner,
            services: RefCell::default(),
            swept: Cell::new(0),
            load,
            cpus: thread::available_parallelism().map_or(1, |n| n.get() as u64),
            _counts: counts,
        }
    }

    /// Whether this worker, about to park, may spin first (see
    /// `spin.rs`): only with requests in flight, whose wake-up may be a
    /// moment away, and only while the pool runs no more threads than
    /// cores.
    pub(super) fn may_spin(&self) -> bool {
        self.load.active() > 0 && self.threads() <= self.cpus
    }

    /// The pool's threads now: its core workers and the spares running.
    pub(super) fn threads(&self) -> u64 {
        self.inner.config.workers as u64 + self.inner.spares.running()
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn id(&self) -> &WorkerId {
        &self.id
    }

    /// This worker's instance of service `id`, made by `make` on first use;
    /// kept until `handle`, the service's shared part, is gone.
    pub(crate) fn instance<S: 'static>(
        &self,
        id: u64,
        handle: Weak<dyn Any + Send + Sync>,
        make: impl FnOnce() -> S,
    ) -> Rc<RefCell<S>> {
        if let Some(kept) = self.services.borrow().iter().find(|kept| kept.id == id) {
            return Rc::clone(&kept.service)
                .downcast()
                .expect("a service id names one service type");
        }
        let service = Rc::new(RefCell::new(make()));
        let kept = Kept {
            id,
            handle,
            service: service.clone(),
        };
        self.services.borrow_mut().push(kept);
        service
    }

    /// Drops the instances of services whose every handle is gone, once per
    /// retirement (see `Inner::retired`). Requests still running keep their
    /// instance alive until they end; it is dropped then, on this thread.
    pub(super) fn sweep_retired(&self) {
        let retired = self.inner.retired.load(Acquire);
        if retired == self.swept.get() {
            return;
        }
        self.swept.set(retired);
        let gone: Vec<Kept> = {
            let mut services = self.services.borrow_mut();
            let (gone, kept) = services
                .drain(..)
                .partition(|kept| kept.handle.strong_count() == 0);
            *services = kept;
            gone
        };
        // Outside the borrow: a `Drop` may panic, or (in user code) reach
        // back into this worker.
        for kept in gone {
            drop_guarded(kept);
        }
        for value in crate::worker_local::take_retired() {
            drop_guarded(value);
        }
    }

    pub(super) fn reject(&self, envelope: Envelope, failure: Failure) {
        self.inner.counters.rejected.fetch_add(1, Relaxed);
        envelope.job.reject(failure);
    }

    /// Serves a job: polls its task once inline, spawns it only if it has
    /// to wait.
    pub(super) fn run_job(&self, envelope: Envelope) {
        let Envelope {
            job,
            enqueued,
            _permit: permit,
        } = envelope;
        // The job has left the queue: free its place now, not after the
        // inline poll below, which may block for as long as the handler runs.
        drop(permit);
        if !job.claim() {
            // Withdrawn by its caller: answered already, or nobody waits.
            return;
        }
        #[cfg(feature = "metrics")]
        crate::metrics::queue_wait(&self.inner.config.thread_name, self.id.index(), enqueued);
        // Claimed: from here the caller cannot withdraw it, so a timeout
        // seen here (a caller off any Tokio runtime keeps no timer) is
        // counted once.
        if let (Some(enqueued), Some(timeout)) = (enqueued, self.inner.config.queue_timeout) {
            if enqueued.elapsed() > timeout {
                self.inner.counters.timed_out.fetch_add(1, Relaxed);
                return job.reject(Failure::TimedOut);
            }
        }
        let active = self.load.enter();
        let mut task = job.start(self, active);
        let mut cx = Context::from_waker(Waker::noop());
        // The inline poll uses a no-op waker: if the task is pending, the
        // spawned task is polled again at once and registers its real waker.
        let pending = task.as_mut().poll(&mut cx).is_pending();
        if pending {
            let inner = self.inner.clone();
            let index = self.id.index();
            let mut task = Some(task);
            tokio::task::spawn_local(poll_fn(move |cx| {
                let Some(running) = task.as_mut() else {
                    return Poll::Ready(());
                };
                // A panic that escaped the shields: tokio would catch it
                // and keep the thread, but nobody would count it.
                match contain(|| running.as_mut().poll(cx)) {
                    Some(poll) => poll,
                    None => {
                        trace::warning!(worker = index, "a panic escaped a request's task");
                        inner.counters.worker(index).panicked.fetch_add(1, Relaxed);
                        let dead = task.take();
                        let _ = contain(move || drop(dead));
                        Poll::Ready(())
                    }
                }
            }));
        }
    }

    /// Drops every service instance on this thread, one panic at a time.
    pub(super) fn drop_services(&self) {
        for instance in self.services.take() {
            drop_guarded(instance);
        }
        for value in crate::worker_local::take_all() {
            drop_guarded(value);
        }
    }
}

/// One worker's instance of a wrapped service.
struct Kept {
    /// The service's id (see `Pool::next_service_id`).
    id: u64,
    /// The service's shared part, alive while any handle or queued job is.
    handle: Weak<dyn Any + Send + Sync>,
    service: Rc<dyn Any>,
}
