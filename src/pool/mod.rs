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
//! others: the least-loaded worker with room serves it.

mod task;
mod unwind;
mod worker;

use std::fmt;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_channel::{Receiver, Sender, TrySendError};
use http::request::Parts;
use http::Request;

pub(crate) use self::task::Call;
pub(crate) use self::worker::WorkerState;

use crate::error::Failure;
use crate::WorkerId;

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
    pub(crate) thread_name: String,
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
            .field("affinity_key", &self.affinity_key.is_some())
            .finish_non_exhaustive()
    }
}

/// One request on its way to a worker, with its types erased so that one
/// queue carries requests for every service the layer wraps.
pub(crate) trait Job: Send + 'static {
    /// Builds the task that serves the request, on the worker's thread.
    fn start(self: Box<Self>, worker: &WorkerState) -> worker::LocalTask;

    /// Answers the request without running it.
    fn reject(self: Box<Self>, failure: Failure);
}

/// The receiving ends a worker takes jobs from.
#[derive(Clone)]
pub(crate) struct Queues {
    own: Receiver<Box<dyn Job>>,
    shared: Receiver<Box<dyn Job>>,
}

/// A handle on the pool; the threads stop when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    // The only senders: dropping them closes the queues, which tells the
    // workers to answer what is still queued with 503 and exit.
    shared: Sender<Box<dyn Job>>,
    own: Vec<Sender<Box<dyn Job>>>,
    // Seeds the key hash, so that a client cannot pick keys that pile onto
    // one worker on every server; stable for the life of the pool.
    seed: RandomState,
    next_service: AtomicU64,
    config: Arc<Config>,
}

impl Pool {
    /// Starts `config.workers` threads.
    ///
    /// # Panics
    ///
    /// When the operating system refuses to start a thread.
    pub(crate) fn start(config: Config) -> Self {
        let (shared, shared_rx) = async_channel::bounded(config.queue_capacity);
        let config = Arc::new(config);
        let own = (0..config.workers)
            .map(|index| {
                let (tx, rx) = async_channel::bounded(config.queue_capacity);
                let queues = Queues {
                    own: rx,
                    shared: shared_rx.clone(),
                };
                worker::spawn(index, queues, config.clone())
                    .expect("tower-affinity: failed to spawn a worker thread");
                tx
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shared,
                own,
                seed: RandomState::new(),
                next_service: AtomicU64::new(0),
                config,
            }),
        }
    }

    /// A fresh id for a wrapped service: each worker keeps one instance per id.
    pub(crate) fn next_service_id(&self) -> u64 {
        self.inner.next_service.fetch_add(1, Ordering::Relaxed)
    }

    /// The worker a request is pinned to by its affinity key, if it has one.
    pub(crate) fn route<B>(&self, request: Request<B>) -> (Request<B>, Option<usize>) {
        let Some(key) = &self.inner.config.affinity_key else {
            return (request, None);
        };
        let (parts, body) = request.into_parts();
        let worker =
            key(&parts, &self.inner.seed).map(|hash| (hash % self.inner.own.len() as u64) as usize);
        (Request::from_parts(parts, body), worker)
    }

    /// Queues a job for `worker`, or for whichever worker has room; or says
    /// why it cannot be queued.
    pub(crate) fn submit(&self, job: Box<dyn Job>, worker: Option<usize>) -> Result<(), Failure> {
        let queue = match worker {
            Some(index) => &self.inner.own[index],
            None => &self.inner.shared,
        };
        queue.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => Failure::Overloaded,
            TrySendError::Closed(_) => Failure::ShutDown,
        })
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .field("queued", &self.inner.shared.len())
            .finish()
    }
}
