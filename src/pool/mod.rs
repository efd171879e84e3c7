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
//! Admission is counted by a semaphore of `queue_capacity` permits: a
//! caller takes a permit in `poll_ready` (or `call`, under the reject
//! policy), it travels with the job, and it is released when a worker takes
//! the job off its queue. Keyed jobs let theirs go: their worker's own
//! queue bounds them.

mod idle;
mod lifecycle;
mod pump;
mod ready;
mod task;
mod unwind;
mod worker;

use std::fmt;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TrySendError};
use http::request::Parts;
use http::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) use self::task::Call;
pub(crate) use self::worker::{Active, WorkerState};

use self::idle::Idle;
use self::lifecycle::Lifecycle;
use crate::error::Failure;
use crate::stats::{Counters, Stats};
use crate::{Overload, WorkerId};

/// Maps a request's head to a key hash, with the pool's seed.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts, &RandomState) -> Option<u64> + Send + Sync>;

/// A hook run on each worker thread.
pub(crate) type Hook = Arc<dyn Fn(&WorkerId) + Send + Sync>;

/// The settings a pool is built with (see [`Builder`](crate::Builder)).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) max_streams_per_worker: usize,
    pub(crate) body_buffer: usize,
    pub(crate) merge_frames: usize,
    pub(crate) thread_name: String,
    pub(crate) overload: Overload,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) response_deadline: Option<Duration>,
    pub(crate) affinity_key: Option<KeyFn>,
    pub(crate) on_thread_start: Option<Hook>,
    pub(crate) on_thread_stop: Option<Hook>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_streams_per_worker", &self.max_streams_per_worker)
            .field("body_buffer", &self.body_buffer)
            .field("thread_name", &self.thread_name)
            .field("overload", &self.overload)
            .field("queue_timeout", &self.queue_timeout)
            .field("response_deadline", &self.response_deadline)
            .field("affinity_key", &self.affinity_key.is_some())
            .finish_non_exhaustive()
    }
}

/// One request on its way to a worker, with its types erased so that one
/// queue carries requests for every service the layer wraps.
pub(crate) trait Job: Send + 'static {
    /// Builds the task that serves the request, on the worker's thread.
    fn start(self: Box<Self>, worker: &WorkerState, active: Active) -> worker::LocalTask;

    /// Answers the request without running it.
    fn reject(self: Box<Self>, failure: Failure);
}

/// A job in a queue, with its admission permit.
pub(crate) struct Envelope {
    job: Box<dyn Job>,
    // Held while an unkeyed job waits in the shared queue; released when a
    // worker takes it.
    _permit: Option<OwnedSemaphorePermit>,
    // Set only when there is a queue timeout.
    enqueued: Option<Instant>,
}

/// The receiving ends a worker takes jobs from.
#[derive(Clone)]
pub(crate) struct Queues {
    own: Receiver<Envelope>,
    shared: Receiver<Envelope>,
}

impl Queues {
    /// The next job, from the worker's own queue first: keyed requests
    /// keep their order.
    fn try_recv(&self) -> Option<Envelope> {
        self.own.try_recv().or_else(|_| self.shared.try_recv()).ok()
    }
}

/// What the pool's handles and its worker threads share.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) idle: Idle,
    /// Tells this pool's worker threads from another pool's.
    pub(crate) id: u64,
}

/// A handle on the pool; the threads stop when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    // The only senders: dropping them closes the queues, which tells the
    // workers to answer what is still queued with 503 and exit.
    shared: Sender<Envelope>,
    own: Vec<Sender<Envelope>>,
    admission: Arc<Semaphore>,
    // Seeds the key hash, so that a client cannot pick keys that pile onto
    // one worker on every server; stable for the life of the pool.
    seed: RandomState,
    next_service: AtomicU64,
    core: Arc<Core>,
}

impl Pool {
    /// Starts `config.workers` threads.
    ///
    /// # Panics
    ///
    /// When the operating system refuses to start a thread.
    pub(crate) fn start(config: Config) -> Self {
        static POOLS: AtomicU64 = AtomicU64::new(0);
        let (shared, shared_rx) = async_channel::bounded(config.queue_capacity);
        let core = Arc::new(Core {
            counters: Counters::new(config.workers),
            lifecycle: Lifecycle::new(config.workers),
            idle: Idle::new(config.workers),
            id: POOLS.fetch_add(1, Ordering::Relaxed),
            config,
        });
        // A worker's own queue only ever holds keyed requests: without a key
        // function it stays empty, and a bounded queue allocates its room
        // up front (about 56 bytes a place).
        let own_capacity = match core.config.affinity_key {
            Some(_) => core.config.queue_capacity,
            None => 1,
        };
        let own = (0..core.config.workers)
            .map(|index| {
                let (tx, rx) = async_channel::bounded(own_capacity);
                let queues = Queues {
                    own: rx,
                    shared: shared_rx.clone(),
                };
                worker::spawn(index, queues, core.clone())
                    .expect("tower-affinity: failed to spawn a worker thread");
                tx
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shared,
                own,
                admission: Arc::new(Semaphore::new(core.config.queue_capacity)),
                seed: RandomState::new(),
                next_service: AtomicU64::new(0),
                core,
            }),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.core.config
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.core.id
    }

    /// The semaphore whose permits admit requests to the queues.
    pub(crate) fn admission(&self) -> Arc<Semaphore> {
        self.inner.admission.clone()
    }

    /// A fresh id for a wrapped service: each worker keeps one instance per id.
    pub(crate) fn next_service_id(&self) -> u64 {
        self.inner.next_service.fetch_add(1, Ordering::Relaxed)
    }

    /// The worker a request is pinned to by its affinity key, if it has one.
    pub(crate) fn route<B>(&self, request: Request<B>) -> (Request<B>, Option<usize>) {
        let Some(key) = &self.config().affinity_key else {
            return (request, None);
        };
        let (parts, body) = request.into_parts();
        let worker =
            key(&parts, &self.inner.seed).map(|hash| (hash % self.inner.own.len() as u64) as usize);
        (Request::from_parts(parts, body), worker)
    }

    /// Queues a job for `worker`, or for whichever worker has room.
    ///
    /// An unkeyed job needs an admission permit: the one `poll_ready`
    /// reserved, or one free now. A keyed job goes to its worker's own
    /// queue, bounded by its channel, and lets its permit go: a hot key must
    /// not hold places that other workers' requests need.
    pub(crate) fn submit(
        &self,
        job: Box<dyn Job>,
        permit: Option<OwnedSemaphorePermit>,
        worker: Option<usize>,
    ) -> Result<(), Failure> {
        let counters = &self.inner.core.counters;
        let (queue, permit) = match worker {
            Some(index) => (&self.inner.own[index], None),
            None => {
                let permit = permit.or_else(|| self.admission().try_acquire_owned().ok());
                if permit.is_none() {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(if self.inner.shared.is_closed() {
                        Failure::ShutDown
                    } else {
                        Failure::Overloaded
                    });
                }
                (&self.inner.shared, permit)
            }
        };
        let envelope = Envelope {
            job,
            _permit: permit,
            enqueued: self.config().queue_timeout.map(|_| Instant::now()),
        };
        match queue.try_send(envelope) {
            Ok(()) => {
                counters.admitted.fetch_add(1, Ordering::Relaxed);
                let idle = &self.inner.core.idle;
                match worker {
                    Some(index) => idle.wake(index),
                    None => idle.wake_any(|index| counters.worker(index).is_polling()),
                }
                Ok(())
            }
            Err(error) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(match error {
                    TrySendError::Full(_) => Failure::Overloaded,
                    TrySendError::Closed(_) => Failure::ShutDown,
                })
            }
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let inner = &self.inner;
        inner
            .core
            .counters
            .snapshot(inner.shared.len(), |index| inner.own[index].len())
    }

    /// Stops admitting, serves what was admitted, and waits for the threads
    /// to end; past `deadline`, makes them drop what they still hold.
    pub(crate) async fn shutdown(&self, deadline: Option<Duration>) {
        let lifecycle = &self.inner.core.lifecycle;
        lifecycle.drain();
        // Callers waiting in `poll_ready` wake up and get 503 from `call`.
        self.inner.close();
        match deadline {
            None => lifecycle.all_exited().await,
            Some(deadline) => {
                if tokio::time::timeout(deadline, lifecycle.all_exited())
                    .await
                    .is_err()
                {
                    lifecycle.abort();
                    lifecycle.all_exited().await;
                }
            }
        }
    }
}

impl Inner {
    /// Closes the queues and wakes the waiting workers to see it.
    fn close(&self) {
        // Callers waiting in `poll_ready` wake up and get 503 from `call`.
        self.admission.close();
        self.shared.close();
        for queue in &self.own {
            queue.close();
        }
        self.core.idle.wake_all();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.core.config)
            .field("queued", &self.inner.shared.len())
            .finish()
    }
}
