//! Work on the workers outside HTTP: on a key's worker, or on every worker.
//!
//! [`ThreadAffinityLayer::run_on_key`] runs a closure on the core worker
//! that requests with the same affinity key go to (a background job that
//! needs a session's per-thread state), through that worker's queue, under
//! the pool's `queue_capacity`, `queue_timeout` and shutdown.
//! [`ThreadAffinityLayer::broadcast`] runs a closure once on every worker
//! thread alive when it is called, core and spare (invalidate each
//! per-thread cache after a write, warm each worker's connection, read a
//! figure out of each worker's state), and returns each result with its
//! [`WorkerId`](crate::WorkerId). Both are `async` and never block the
//! caller's thread; a closure runs inside the worker's runtime, where
//! [`WorkerLocal`](crate::WorkerLocal) finds that worker's values.
//!
//! ```
//! use std::cell::Cell;
//! use std::time::Duration;
//! use tower_affinity::{ThreadAffinityLayer, WorkerId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ThreadAffinityLayer::new(2);
//! let cache = layer.worker_local(|_: &WorkerId| Cell::new(0u32));
//! let on_key = cache.clone();
//! // On the worker that requests keyed "alice" go to.
//! let worker = layer
//!     .run_on_key("alice", move || {
//!         on_key.with(|cache| cache.set(7));
//!         WorkerId::current()
//!     })
//!     .await
//!     .unwrap();
//! // On every worker: each reads its own value.
//! let each = layer
//!     .broadcast(Duration::from_secs(5), move || cache.with(|cache| cache.get()).unwrap())
//!     .await;
//! assert_eq!(each.len(), 2);
//! for (id, value) in each {
//!     let expected = if Some(&id) == worker.as_ref() { 7 } else { 0 };
//!     assert_eq!(value.unwrap(), expected);
//! }
//! # }
//! ```
//!
//! [`ThreadAffinityLayer::run_on_key`]: crate::ThreadAffinityLayer::run_on_key
//! [`ThreadAffinityLayer::broadcast`]: crate::ThreadAffinityLayer::broadcast

use std::error::Error;
use std::fmt;

use crate::error::{Failure, Panicked};

/// Why a job did not return its closure's result.
#[derive(Debug)]
pub struct JobError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Failed(Failure),
    Panicked(Panicked),
    /// `broadcast`'s wait ended first.
    Late,
}

impl JobError {
    pub(crate) fn failed(failure: Failure) -> Self {
        Self {
            kind: Kind::Failed(failure),
        }
    }

    pub(crate) fn panicked(panic: Panicked) -> Self {
        Self {
            kind: Kind::Panicked(panic),
        }
    }

    pub(crate) fn late() -> Self {
        Self { kind: Kind::Late }
    }

    /// The worker's queue was full (`queue_capacity` jobs wait there).
    pub fn is_overloaded(&self) -> bool {
        matches!(self.kind, Kind::Failed(Failure::Overloaded))
    }

    /// The pool is shutting down, or its worker ended before it ran the
    /// job.
    pub fn is_shut_down(&self) -> bool {
        matches!(
            self.kind,
            Kind::Failed(Failure::ShutDown | Failure::WorkerGone | Failure::NoWorker)
        )
    }

    /// The job waited too long: past `queue_timeout` before it started
    /// (`run_on_key`), or past `broadcast`'s wait before it ended (its
    /// worker is stuck in user code, or busy). A job that had started
    /// still runs to its end; its result is dropped.
    pub fn is_timed_out(&self) -> bool {
        matches!(self.kind, Kind::Failed(Failure::TimedOut) | Kind::Late)
    }

    /// The closure panicked (on its worker, which keeps serving).
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Panicked(_))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Failed(Failure::Overloaded) => f.write_str("the worker's queue is full"),
            Kind::Failed(Failure::TimedOut) => {
                f.write_str("the job waited too long for its worker")
            }
            Kind::Failed(Failure::NoWorker) => f.write_str("no worker thread could be started"),
            Kind::Failed(Failure::WorkerGone) => f.write_str("the worker thread ended"),
            Kind::Failed(_) => f.write_str("the pool is shutting down"),
            Kind::Panicked(_) => f.write_str("the job panicked"),
            Kind::Late => f.write_str("the worker did not finish the job in time"),
        }
    }
}

impl Error for JobError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            Kind::Panicked(panic) => Some(panic),
            _ => None,
        }
    }
}
