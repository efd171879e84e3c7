//! One worker thread: a current-thread runtime with a `LocalSet`, serving
//! many requests at once.
//!
//! The event loop takes a job from the queues only while fewer than
//! `max_streams_per_worker` requests are active on this thread. Each job
//! becomes a local task; its first poll happens inline, so a request whose
//! future and body are ready at once (the common case) never pays for a
//! spawned task. A task that waits (for its inner future, or for room in its
//! response's buffer) yields, and the thread serves the others meanwhile.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::{io, thread};

use super::unwind::guard;
use super::{Core, Envelope, Queues};
use crate::error::Failure;
use crate::stats::WorkerCounters;
use crate::WorkerId;

/// The task serving one request, local to its worker.
pub(crate) type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// Starts worker `index` on a new thread.
pub(super) fn spawn(index: usize, queues: Queues, core: Arc<Core>) -> io::Result<()> {
    let name = format!("{}-{}", core.config.thread_name, index);
    let id = WorkerId::new(core.id, index, name.as_str().into());
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let exit = Exit {
                index,
                queues: queues.clone(),
                core: core.clone(),
            };
            run(id, &queues, &core);
            drop(exit);
        })
        .map(drop)
}

/// Runs when a worker thread ends. After a panic that escaped the shields
/// around user code (a panic in a panic payload's `Drop`, say) it starts a
/// replacement: requests the dead thread held fail when their reply
/// channels drop, and its services are rebuilt lazily on the new thread.
struct Exit {
    index: usize,
    queues: Queues,
    core: Arc<Core>,
}

impl Drop for Exit {
    fn drop(&mut self) {
        let Queues { own, shared } = &self.queues;
        let work_left = !own.is_closed() || !own.is_empty() || !shared.is_empty();
        if thread::panicking() && work_left {
            let counters = self.core.counters.worker(self.index);
            counters.replaced.fetch_add(1, Relaxed);
            if spawn(self.index, self.queues.clone(), self.core.clone()).is_ok() {
                return;
            }
        }
        self.core.lifecycle.exited();
    }
}

fn run(id: WorkerId, queues: &Queues, core: &Arc<Core>) {
    id.enter();
    if let Some(hook) = &core.config.on_thread_start {
        let _ = guard(|| hook(&id));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tower-affinity: failed to build a worker runtime");
    let local = tokio::task::LocalSet::new();
    let state = WorkerState::new(id, core.clone());
    local.block_on(&runtime, async {
        let mut serving = pin!(serve(queues, &state));
        let mut aborted = pin!(core.lifecycle.aborted());
        poll_fn(|cx| {
            if aborted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            serving.as_mut().poll(cx)
        })
        .await;
    });
    // Only after an abort can jobs be left in closed queues.
    while let Some(envelope) = queues.try_recv() {
        state.reject(envelope, Failure::ShutDown);
    }
    // Tasks still in the set (none after a clean drain) are dropped here, on
    // this thread, before the services they may point to. Their bodies end
    // with an error: their channels close without an end marker.
    drop(local);
    state.drop_services();
    if let Some(hook) = &core.config.on_thread_stop {
        let _ = guard(|| hook(&state.id));
    }
}

/// How many jobs the event loop admits in a row before it yields, so that
/// the tasks already running (streams waiting to produce) get their turn
/// while a burst of requests arrives.
const ADMIT_PER_TURN: usize = 16;

/// How many times an idle worker yields its CPU, looking for a job in
/// between, before it waits to be woken.
const SPINS_BEFORE_PARK: u32 = 8;

/// The event loop: admit jobs while there is room, then drain on shutdown.
async fn serve(queues: &Queues, state: &WorkerState) {
    let max = state.core.config.max_streams_per_worker;
    let mut admitted = 0usize;
    loop {
        state.load.below(max).await;
        let Some(envelope) = next_job(queues, state).await else {
            break;
        };
        if queues.shared.is_closed() && !state.core.lifecycle.phase().serves_queued() {
            // Every handle is gone: answer what is still queued, take no more.
            state.reject(envelope, Failure::ShutDown);
            continue;
        }
        state.start(envelope);
        admitted += 1;
        if admitted % ADMIT_PER_TURN == 0 {
            // The local tasks only run while this loop is pending.
            tokio::task::yield_now().await;
        }
    }
    // Let the requests already started finish before the services go.
    state.load.below(1).await;
}

/// The next job, from this worker's own queue first (keyed requests keep
/// their order), else from the shared one; `None` once both are closed and
/// empty. While there is none, the worker waits in the pool's idle list,
/// where a new job's submitter finds it (see `idle`).
async fn next_job(queues: &Queues, state: &WorkerState) -> Option<Envelope> {
    let idle = &state.core.idle;
    let index = state.id.index();
    poll_fn(|cx| {
        let mut registered = false;
        let mut spins = 0;
        loop {
            match queues.try_recv() {
                Some(envelope) => {
                    if registered {
                        idle.found(index);
                    }
                    return Poll::Ready(Some(envelope));
                }
                None if queues.own.is_closed() && queues.shared.is_closed() => {
                    // Closed; only empty once both are drained.
                    if queues.own.is_empty() && queues.shared.is_empty() {
                        return Poll::Ready(None);
                    }
                }
                None if registered => return Poll::Pending,
                // Under load the next job is often a moment away: give the
                // CPU to the threads that make it before paying for a
                // wake-up (a syscall on each side).
                None if spins < SPINS_BEFORE_PARK => {
                    spins += 1;
                    thread::yield_now();
                }
                // Register, then look once more: a job queued in between
                // found no one waiting.
                None => {
                    idle.wait(index, cx.waker());
                    registered = true;
                }
            }
        }
    })
    .await
}

/// What a worker thread owns: its service instances and its load.
pub(crate) struct WorkerState {
    id: WorkerId,
    core: Arc<Core>,
    // One instance per wrapped service, created on first use on this thread.
    services: RefCell<HashMap<u64, Rc<dyn Any>>>,
    load: Rc<Load>,
}

impl WorkerState {
    fn new(id: WorkerId, core: Arc<Core>) -> Self {
        let load = Rc::new(Load {
            core: core.clone(),
            index: id.index(),
            waiter: Cell::new(None),
        });
        Self {
            id,
            core,
            services: RefCell::default(),
            load,
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn id(&self) -> &WorkerId {
        &self.id
    }

    /// This worker's instance of service `id`, made by `make` on first use.
    pub(crate) fn instance<S: 'static>(&self, id: u64, make: impl FnOnce() -> S) -> Rc<RefCell<S>> {
        if let Some(instance) = self.services.borrow().get(&id) {
            return Rc::clone(instance)
                .downcast()
                .expect("a service id names one service type");
        }
        let instance = Rc::new(RefCell::new(make()));
        self.services.borrow_mut().insert(id, instance.clone());
        instance
    }

    fn reject(&self, envelope: Envelope, failure: Failure) {
        self.core.counters.rejected.fetch_add(1, Relaxed);
        envelope.job.reject(failure);
    }

    /// Starts serving a job: polls its task once inline, spawns it only if
    /// it has to wait.
    fn start(&self, envelope: Envelope) {
        let Envelope {
            job,
            enqueued,
            _permit: permit,
        } = envelope;
        // The job has left the queue: free its place now, not after the
        // inline poll below, which may block for as long as the handler runs.
        drop(permit);
        #[cfg(feature = "metrics")]
        crate::metrics::queue_wait(&self.core.config.thread_name, self.id.index(), enqueued);
        if let (Some(enqueued), Some(timeout)) = (enqueued, self.core.config.queue_timeout) {
            if enqueued.elapsed() > timeout {
                self.core.counters.timed_out.fetch_add(1, Relaxed);
                return job.reject(Failure::TimedOut);
            }
        }
        let active = self.load.enter();
        let mut task = job.start(self, active);
        let mut cx = Context::from_waker(Waker::noop());
        // The inline poll uses a no-op waker: if the task is pending, the
        // spawned task is polled again at once and registers its real waker.
        let pending = {
            let _polling = self.core.counters.polling(self.id.index());
            task.as_mut().poll(&mut cx).is_pending()
        };
        if pending {
            let core = self.core.clone();
            let index = self.id.index();
            tokio::task::spawn_local(poll_fn(move |cx| {
                let _polling = core.counters.polling(index);
                task.as_mut().poll(cx)
            }));
        }
    }

    /// Drops every service instance on this thread, one panic at a time.
    fn drop_services(&self) {
        for (_, instance) in self.services.take() {
            let _ = guard(move || drop(instance));
        }
    }
}

/// How many requests this worker is serving, and the event loop's waker.
struct Load {
    core: Arc<Core>,
    index: usize,
    waiter: Cell<Option<Waker>>,
}

impl Load {
    fn counters(&self) -> &WorkerCounters {
        self.core.counters.worker(self.index)
    }

    fn enter(self: &Rc<Self>) -> Active {
        self.counters().active.fetch_add(1, Relaxed);
        Active(self.clone())
    }

    /// Resolves once fewer than `max` requests are active.
    fn below(&self, max: usize) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.counters().active.load(Relaxed) < max {
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
    /// Counts a panic caught while serving this request.
    pub(crate) fn panicked(&self) {
        self.0.counters().panicked.fetch_add(1, Relaxed);
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
