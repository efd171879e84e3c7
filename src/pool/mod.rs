//! The worker threads, the queue that feeds them, and the per-request task.
//!
//! ```text
//! ThreadAffinity::call ──Job──▶ shared queue (bounded) ──▶ worker i: event loop
//!                                                             ├─ task: ready, call, head
//!                                                             └─ task: pump body frames
//! ```
//!
//! Every worker pulls from one shared queue, and only while it serves fewer
//! than `max_streams_per_worker` requests, so an idle worker takes the next
//! request and a busy one leaves it to the others.

mod task;
mod unwind;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) use self::task::Call;
pub(crate) use self::worker::WorkerState;

use crate::error::Failure;

/// The settings a pool is built with (see [`Builder`](crate::Builder)).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) max_streams_per_worker: usize,
    pub(crate) body_buffer: usize,
    pub(crate) thread_name: String,
}

/// One request on its way to a worker, with its types erased so that one
/// queue carries requests for every service the layer wraps.
pub(crate) trait Job: Send + 'static {
    /// Builds the task that serves the request, on the worker's thread.
    fn start(self: Box<Self>, worker: &WorkerState) -> worker::LocalTask;

    /// Answers the request without running it.
    fn reject(self: Box<Self>, failure: Failure);
}

pub(crate) type Queue = async_channel::Receiver<Box<dyn Job>>;

/// A handle on the pool; the threads stop when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    // The only sender: dropping it closes the queue, which tells the workers
    // to answer what is still queued with 503 and exit.
    queue: async_channel::Sender<Box<dyn Job>>,
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
        let (tx, rx) = async_channel::bounded(config.queue_capacity);
        let config = Arc::new(config);
        for index in 0..config.workers {
            worker::spawn(index, rx.clone(), config.clone())
                .expect("tower-affinity: failed to spawn a worker thread");
        }
        Self {
            inner: Arc::new(Inner {
                queue: tx,
                next_service: AtomicU64::new(0),
                config,
            }),
        }
    }

    /// A fresh id for a wrapped service: each worker keeps one instance per id.
    pub(crate) fn next_service_id(&self) -> u64 {
        self.inner.next_service.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a job, or says why it cannot be.
    pub(crate) fn submit(&self, job: Box<dyn Job>) -> Result<(), Failure> {
        self.inner.queue.try_send(job).map_err(|error| match error {
            async_channel::TrySendError::Full(_) => Failure::Overloaded,
            async_channel::TrySendError::Closed(_) => Failure::ShutDown,
        })
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .field("queued", &self.inner.queue.len())
            .finish()
    }
}
