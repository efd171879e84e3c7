//! A request on its way to a worker, with its types erased: the job, the
//! worker's hold on it, and its envelope in a queue.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use crate::error::Failure;
use crate::pool::worker;
use crate::pool::worker::load::Active;
use crate::pool::worker::state::WorkerState;

/// One request on its way to a worker, with its types erased so that one
/// queue carries requests for every service the layer wraps. It is the
/// request's reply slot too (`reply::Slot`): one allocation for both.
pub(crate) trait Job: Send + Sync + 'static {
    /// Builds the task that serves a claimed request, on the worker's thread.
    fn start(self: Arc<Self>, worker: &WorkerState, active: Active) -> worker::LocalTask;

    /// Takes the job for serving: `false` if its caller withdrew it (its
    /// queue timeout passed) or went away while it was queued; the job is
    /// then dropped unstarted. A claimed job is started or rejected, never
    /// withdrawn.
    fn claim(&self) -> bool;

    /// Answers the request without running it.
    fn reject(self: Arc<Self>, failure: Failure);

    /// The job is dropped unstarted and unanswered: tells its caller.
    fn abandon(&self);
}

/// The worker's hold on a queued job. Dropped without being started or
/// rejected (a queue dropped with jobs in it, a thread that died), it tells
/// the caller, as a dropped reply sender does.
pub(crate) struct JobHandle(Option<Arc<dyn Job>>);

impl JobHandle {
    pub(crate) fn new(job: Arc<dyn Job>) -> Self {
        Self(Some(job))
    }

    fn take(mut self) -> Arc<dyn Job> {
        self.0.take().expect("a job is taken once")
    }

    pub(crate) fn start(self, worker: &WorkerState, active: Active) -> worker::LocalTask {
        self.take().start(worker, active)
    }

    pub(crate) fn claim(&self) -> bool {
        self.0.as_ref().is_some_and(|job| job.claim())
    }

    pub(crate) fn reject(self, failure: Failure) {
        self.take().reject(failure);
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            job.abandon();
        }
    }
}

/// A job in a queue, with its admission permit.
pub(crate) struct Envelope {
    pub(in crate::pool) job: JobHandle,
    // Held while an unkeyed job waits in the shared queue; released when a
    // worker takes it.
    pub(in crate::pool) _permit: Option<OwnedSemaphorePermit>,
    // Set only when there is a queue timeout (or for the metrics' queue wait).
    pub(in crate::pool) enqueued: Option<Instant>,
}
