//! The worker threads, the queues that feed them, and the per-request task.
//!
//! ```text
//!                          ┌─▶ worker 0's queue ─┐
//! ThreadAffinity::call ─Job┼─▶ worker 1's queue ─┼─▶ worker i: event loop
//!    (keyed: own queue)    └─▶ shared queue ─────┘      ├─ task: ready, call, head
//!    (unkeyed: shared)                                  └─ task: pump body frames
//! ```
//!
//! A request with an affinity key goes to its worker's own queue; any other
//! goes to the shared queue. A worker takes jobs, its own queue first, only
//! while it serves fewer than `max_streams_per_worker` requests, so an idle
//! worker takes the next unkeyed request and a busy one leaves it to the
//! others: the least-loaded worker with room serves it. A worker with
//! nothing to do waits in the idle list (`idle`), where the submitter of
//! the next job finds it and wakes it.
//!
//! The pool runs `workers` core threads, and spare ones up to
//! `max_workers`, one for each worker blocked in user code while unkeyed
//! work waits (`spare/`, `stats/probe.rs`). Every per-worker structure (the
//! counters, the idle list) has a slot for each thread the pool may run,
//! made when it starts, so spares come and go without a lock or an
//! allocation on the request path. Keys hash over the core workers only.
//!
//! Admission is counted by a semaphore of `queue_capacity` permits: a
//! caller takes a permit in `poll_ready` (or `call`, under the reject
//! policy), it travels with the job, and it is released when a worker takes
//! the job off its queue. Keyed jobs let theirs go: their worker's own
//! queue bounds them.
//!
//! # A request's path, by file
//!
//! | step | where |
//! |---|---|
//! | `poll_ready` takes a permit; `call` boxes the request into a job | `service.rs`, `reply.rs`, `queue/job.rs` |
//! | the job goes to a queue, and an idle worker is woken | `Pool::submit` here, `queue/`, `idle/` |
//! | no worker free while one is blocked: a spare starts | `spare/` (`supervisor.rs`), `stats/probe.rs` |
//! | the worker's loop takes the job, below its stream limit | `worker/event_loop.rs`, `worker/load.rs` |
//! | a task on the worker: readiness, call, the head through the reply slot | `task/mod.rs`, `task/ready.rs` |
//! | the body's frames, pumped into the frame channel | `task/pump.rs`, `channel.rs`, `body.rs` |
//! | the caller awaits the head (queue timeout, deadline) | `future.rs` |
//! | the thread's polls, panics and end | `worker/park.rs`, `worker/unwind.rs`, `worker/exit.rs` |
//! | shutdown: drain, then abort past its timeout | `shutdown/` |
//!
//! Paths outside `pool/` are from `src/`. Timers and I/O for every worker
//! run on one driver thread (`worker/driver.rs`); work outside HTTP goes
//! through a worker's inbox (`errand/`).

mod config;
mod errand;
mod idle;
mod inner;
mod queue;
mod shutdown;
mod spare;
mod task;
mod worker;

use std::fmt;
use std::hash::RandomState;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_channel::{Receiver, Sender};
use http::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) use self::task::Call;

use self::idle::Woken;
use self::queue::Queues;
use self::spare::Spares;
use crate::error::Failure;
use crate::stats::Stats;

pub(crate) use self::config::Config;
pub(crate) use self::errand::Wait;
pub(crate) use self::inner::Inner;
pub(crate) use self::queue::job::{Envelope, JobHandle};

/// A handle on the pool; the threads stop when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Pool {
    dispatch: Arc<Dispatch>,
}

/// The request side of the pool: the queues' senders and admission.
struct Dispatch {
    // The only senders: dropping them closes the queues, which tells the
    // workers to answer what is still queued with 503 and exit.
    shared: Sender<Envelope>,
    own: Vec<Sender<Envelope>>,
    // Receiving ends kept so that `shutdown`, past its deadline, answers
    // what is still queued itself: the workers may all be stuck.
    queues: Vec<Queues>,
    admission: Arc<Semaphore>,
    // Seeds the key hash, so that a client cannot pick keys that pile onto
    // one worker on every server; stable for the life of the pool.
    seed: RandomState,
    next_service: AtomicU64,
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts `config.workers` threads (and the spares' supervisor, when
    /// the pool may grow); on failure, the threads already started end.
    pub(crate) fn launch(config: Config) -> io::Result<Self> {
        let (shared, shared_rx) = queue::queue();
        let inner = Arc::new(Inner::new(config)?);
        let (own, own_rx): (Vec<_>, Vec<_>) =
            (0..inner.config.workers).map(|_| queue::queue()).unzip();
        let queues: Vec<Queues> = own_rx
            .into_iter()
            .enumerate()
            .map(|(index, rx)| {
                Queues::core(rx, shared_rx.clone()).with_inbox(inner.inboxes.receiver(index))
            })
            .collect();
        // Made before the threads: if one fails to start, dropping this
        // closes the queues, and the threads already started end.
        let dispatch = Dispatch {
            shared,
            own,
            queues: queues.clone(),
            admission: Arc::new(Semaphore::new(inner.config.queue_capacity)),
            seed: RandomState::new(),
            next_service: AtomicU64::new(0),
            inner: inner.clone(),
        };
        for (index, queues) in queues.into_iter().enumerate() {
            inner.lifecycle.spawning(|| false);
            let counters = inner.counters.worker(index);
            counters.alive.store(true, Ordering::SeqCst);
            if let Err(error) = worker::spawn(index, queues, inner.clone()) {
                counters.alive.store(false, Ordering::SeqCst);
                inner.lifecycle.exited();
                return Err(error);
            }
        }
        Spares::supervise(&inner, shared_rx);
        Ok(Self {
            dispatch: Arc::new(dispatch),
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.dispatch.inner.config
    }

    pub(crate) fn id(&self) -> u64 {
        self.dispatch.inner.id
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.dispatch.inner
    }

    /// The semaphore whose permits admit requests to the queues.
    pub(crate) fn admission(&self) -> Arc<Semaphore> {
        self.dispatch.admission.clone()
    }

    /// A fresh id for a wrapped service: each worker keeps one instance per id.
    pub(crate) fn next_service_id(&self) -> u64 {
        self.dispatch.next_service.fetch_add(1, Ordering::Relaxed)
    }

    /// The worker a request is pinned to by its affinity key, if it has one.
    pub(crate) fn route<B>(&self, request: Request<B>) -> (Request<B>, Option<usize>) {
        let Some(key) = &self.config().affinity_key else {
            return (request, None);
        };
        let (parts, body) = request.into_parts();
        let worker = key(&parts, &self.dispatch.seed).map(|hash| self.live(hash));
        (Request::from_parts(parts, body), worker)
    }

    /// The core worker for a key's hash: its own, or, if that worker was
    /// given up (its thread could not be restarted), the next live one.
    /// Its keys lose their per-thread state there; no key moves otherwise.
    fn live(&self, hash: u64) -> usize {
        let workers = self.dispatch.own.len();
        let home = (hash % workers as u64) as usize;
        let counters = &self.dispatch.inner.counters;
        (0..workers)
            .map(|step| (home + step) % workers)
            .find(|&index| counters.worker(index).alive.load(Ordering::Relaxed))
            .unwrap_or(home)
    }

    /// Queues a job for `worker`, or for whichever worker has room.
    ///
    /// An unkeyed job needs an admission permit: the one `poll_ready`
    /// reserved, or one free now. A keyed job goes to its worker's own
    /// queue, bounded at `queue_capacity` here, and lets its permit go: a hot key must
    /// not hold places that other workers' requests need.
    pub(crate) fn submit(
        &self,
        job: JobHandle,
        permit: Option<OwnedSemaphorePermit>,
        worker: Option<usize>,
    ) -> Result<(), Failure> {
        let counters = &self.dispatch.inner.counters;
        let (queue, permit) = match worker {
            // An own queue is an unbounded channel (see `queue::queue`),
            // bounded here: callers racing here may each add one past it.
            Some(index) if self.own_queue_full(&self.dispatch.own[index]) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Failure::Overloaded);
            }
            Some(index) => (&self.dispatch.own[index], None),
            None => {
                let permit = permit.or_else(|| self.admission().try_acquire_owned().ok());
                if permit.is_none() {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(if self.dispatch.shared.is_closed() {
                        Failure::ShutDown
                    } else {
                        Failure::Overloaded
                    });
                }
                (&self.dispatch.shared, permit)
            }
        };
        let envelope = Envelope {
            job,
            _permit: permit,
            enqueued: (cfg!(feature = "metrics") || self.config().queue_timeout.is_some())
                .then(Instant::now),
        };
        // Counted before the send: the worker may take the job and finish it
        // before this thread runs again, and a request it served must not
        // look unadmitted to a reader of the stats.
        counters.admitted.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(envelope) {
            Ok(()) => {
                let inner = &self.dispatch.inner;
                // Woken: a live worker will take the job. Else the queue may
                // have no worker left (a given-up one's, or the shared
                // queue of a pool whose core workers were all given up):
                // read after the job is queued (`Idle::wake` and
                // `wake_any` begin with a `SeqCst` fence), as `exit.rs`
                // marks a worker given up before it answers its queue.
                let queues = &self.dispatch.queues;
                match worker {
                    Some(index) => {
                        let woken = inner.idle.wake(index);
                        if !woken && !self.is_alive(index) {
                            if let Some(own) = queues[index].own() {
                                self.reject_stranded(own);
                            }
                        }
                    }
                    None => match inner.idle.wake_any(|i| counters.worker(i).is_polling()) {
                        Woken::Free => {}
                        Woken::Nobody if inner.all_given_up() => {
                            self.reject_stranded(self.dispatch.shared_queue());
                        }
                        // Every worker is busy, or the one woken is inside
                        // a poll of user code: maybe blocked there.
                        Woken::Nobody | Woken::Busy => inner.spares.nudge(),
                    },
                }
                Ok(())
            }
            // Unbounded channels: only a closed one refuses.
            Err(_) => {
                counters.admitted.fetch_sub(1, Ordering::Relaxed);
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Failure::ShutDown)
            }
        }
    }

    /// Whether `queue`, a worker's own, holds `queue_capacity` jobs;
    /// `false` once closed, which `try_send` tells.
    fn own_queue_full(&self, queue: &Sender<Envelope>) -> bool {
        !queue.is_closed() && queue.len() >= self.config().queue_capacity
    }

    /// Answers what waits in a queue no worker will take from again; the
    /// job just queued is among it, or was answered by the worker's exit.
    fn reject_stranded(&self, queue: &Receiver<Envelope>) {
        queue::reject_queued(queue, &self.dispatch.inner.counters, Failure::NoWorker);
    }

    pub(crate) fn stats(&self) -> Stats {
        let dispatch = &self.dispatch;
        dispatch.inner.counters.snapshot(
            dispatch.own.len(),
            dispatch.shared.len(),
            |index| dispatch.own[index].len(),
            dispatch.inner.spares.figures(),
        )
    }
}

impl Dispatch {
    /// The receiving end of the shared queue, which every worker's `Queues`
    /// holds a copy of (`queues` is never empty: a pool has a core worker).
    fn shared_queue(&self) -> &Receiver<Envelope> {
        self.queues[0].shared()
    }

    /// Closes the queues and wakes the workers and the supervisor to see it.
    fn close(&self) {
        // The queues first: a caller that wakes in `poll_ready` because
        // admission closed must find them closed too, and so be told
        // "shutting down" by `call`, not "overloaded".
        self.shared.close();
        for queue in &self.own {
            queue.close();
        }
        self.admission.close();
        self.inner.idle.wake_all();
        self.inner.spares.stop();
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.dispatch.inner.config)
            .field("queued", &self.dispatch.shared.len())
            .finish()
    }
}
