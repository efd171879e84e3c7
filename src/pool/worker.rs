//! One worker thread: a current-thread runtime with a `LocalSet`, serving
//! many requests at once.
//!
//! The event loop takes a job from the queue only while fewer than
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
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::{io, thread};

use super::unwind::guard;
use super::{Config, Job, Queues};
use crate::error::Failure;
use crate::WorkerId;

/// The task serving one request, local to its worker.
pub(crate) type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// Starts worker `index` on a new thread.
pub(super) fn spawn(index: usize, queues: Queues, config: Arc<Config>) -> io::Result<()> {
    let name = format!("{}-{}", config.thread_name, index);
    let id = WorkerId::new(index, name.as_str().into());
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let respawn = Respawn {
                index,
                queues: queues.clone(),
                config: config.clone(),
            };
            run(id, queues, config);
            // A normal exit: nothing to replace.
            std::mem::forget(respawn);
        })
        .map(drop)
}

/// Replaces a worker whose thread is unwinding from a panic that escaped the
/// shields around user code (a panic in a panic payload's `Drop`, say).
/// Requests the dead thread held fail when their reply channels drop; its
/// services are rebuilt lazily on the new thread.
struct Respawn {
    index: usize,
    queues: Queues,
    config: Arc<Config>,
}

impl Drop for Respawn {
    fn drop(&mut self) {
        let Queues { own, shared } = &self.queues;
        let work_left = !own.is_closed() || !own.is_empty() || !shared.is_empty();
        if thread::panicking() && work_left {
            let _ = spawn(self.index, self.queues.clone(), self.config.clone());
        }
    }
}

fn run(id: WorkerId, queues: Queues, config: Arc<Config>) {
    id.enter();
    if let Some(hook) = &config.on_thread_start {
        let _ = guard(|| hook(&id));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tower-affinity: failed to build a worker runtime");
    let local = tokio::task::LocalSet::new();
    let state = WorkerState::new(id, config);
    local.block_on(&runtime, serve(queues, &state));
    // Tasks still in the set (none after a clean drain) are dropped here, on
    // this thread, before the services they may point to.
    drop(local);
    state.drop_services();
    if let Some(hook) = &state.config.on_thread_stop {
        let _ = guard(|| hook(&state.id));
    }
}

/// The event loop: admit jobs while there is room, then drain on shutdown.
async fn serve(queues: Queues, state: &WorkerState) {
    let max = state.config.max_streams_per_worker;
    loop {
        state.load.below(max).await;
        let Some(job) = next_job(&queues).await else {
            break;
        };
        if queues.shared.is_closed() {
            // Every handle is gone: answer what is still queued, take no more.
            job.reject(Failure::ShutDown);
            continue;
        }
        state.start(job);
    }
    // Let the requests already started finish before the services go.
    state.load.below(1).await;
}

/// The next job, from this worker's own queue first (keyed requests keep
/// their order), else from the shared one; `None` once both are closed and
/// empty.
async fn next_job(queues: &Queues) -> Option<Box<dyn Job>> {
    if let Ok(job) = queues.own.try_recv() {
        return Some(job);
    }
    let mut own = pin!(queues.own.recv());
    let mut shared = pin!(queues.shared.recv());
    // Both queues close together, when the pool's last handle drops.
    let (mut own_open, mut shared_open) = (true, true);
    poll_fn(|cx| {
        // A receive future that lost the race is dropped with its listener,
        // which hands a notification it got on to another worker.
        if own_open {
            match own.as_mut().poll(cx) {
                Poll::Ready(Ok(job)) => return Poll::Ready(Some(job)),
                Poll::Ready(Err(_)) => own_open = false,
                Poll::Pending => {}
            }
        }
        if shared_open {
            match shared.as_mut().poll(cx) {
                Poll::Ready(Ok(job)) => return Poll::Ready(Some(job)),
                Poll::Ready(Err(_)) => shared_open = false,
                Poll::Pending => {}
            }
        }
        if own_open || shared_open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    })
    .await
}

/// What a worker thread owns: its service instances and its load.
pub(crate) struct WorkerState {
    id: WorkerId,
    config: Arc<Config>,
    // One instance per wrapped service, created on first use on this thread.
    services: RefCell<HashMap<u64, Rc<dyn Any>>>,
    load: Rc<Load>,
}

impl WorkerState {
    fn new(id: WorkerId, config: Arc<Config>) -> Self {
        Self {
            id,
            config,
            services: RefCell::default(),
            load: Rc::default(),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
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

    /// Starts serving a job: polls its task once inline, spawns it only if
    /// it has to wait.
    fn start(&self, job: Box<dyn Job>) {
        let active = self.load.enter();
        let mut task = job.start(self);
        let mut cx = Context::from_waker(Waker::noop());
        // The inline poll uses a no-op waker: if the task is pending, the
        // spawned task is polled again at once and registers its real waker.
        if task.as_mut().poll(&mut cx).is_pending() {
            tokio::task::spawn_local(async move {
                task.await;
                drop(active);
            });
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
#[derive(Default)]
struct Load {
    active: Cell<usize>,
    waiter: Cell<Option<Waker>>,
}

impl Load {
    fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
    }

    /// Resolves once fewer than `max` requests are active.
    fn below(&self, max: usize) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.active.get() < max {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// One active request; dropping it makes room and wakes the event loop.
struct Active(Rc<Load>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
        if let Some(waker) = self.0.waiter.take() {
            waker.wake();
        }
    }
}
