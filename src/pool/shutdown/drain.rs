//! Shutdown: stop admitting, serve what was admitted, and past a deadline
//! answer the queues here, since the workers may all be stuck.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::Failure;
use crate::pool::queue::reject_queued;
use crate::pool::Pool;
use crate::{trace, ShutdownReport};

impl Pool {
    /// Stops admitting, serves what was admitted, and waits for the threads
    /// to end; past `deadline`, answers what is still queued with `503`,
    /// makes the workers drop what they hold, and returns within
    /// [`ABORT_GRACE`] even if some workers are stuck in user code.
    pub(crate) async fn shutdown(&self, deadline: Option<Duration>) -> ShutdownReport {
        let lifecycle = &self.dispatch.inner.lifecycle;
        lifecycle.drain();
        // Callers waiting in `poll_ready` wake up and get 503 from `call`.
        self.dispatch.close();
        let Some(deadline) = deadline else {
            lifecycle.all_exited().await;
            return ShutdownReport::complete();
        };
        if tokio::time::timeout(deadline, lifecycle.all_exited())
            .await
            .is_ok()
        {
            return ShutdownReport::complete();
        }
        lifecycle.abort();
        // Parked workers see the abort only when woken.
        self.dispatch.inner.idle.wake_all();
        // A worker stuck in a handler cannot answer its queue: answer here.
        // Each job leaves a queue once, so this and the workers never both
        // answer one.
        let counters = &self.dispatch.inner.counters;
        for own in self
            .dispatch
            .queues
            .iter()
            .filter_map(|queues| queues.own())
        {
            reject_queued(own, counters, Failure::ShutDown);
        }
        reject_queued(self.dispatch.shared_queue(), counters, Failure::ShutDown);
        // Workers that are not stuck drop what they hold and end within a
        // moment; the stuck ones end on their own when their handlers
        // return, dropping what they hold on their own thread.
        let _ = tokio::time::timeout(ABORT_GRACE, lifecycle.all_exited()).await;
        // Spares included: a stuck spare holds its thread as a core worker does.
        let stuck: Vec<usize> = (0..self.dispatch.inner.config.max_workers)
            .filter(|&index| {
                let worker = counters.worker(index);
                worker.alive.load(Ordering::SeqCst) && worker.is_polling()
            })
            .collect();
        if !stuck.is_empty() {
            trace::warning!(
                ?stuck,
                "shutdown deadline passed with workers inside user code"
            );
        }
        ShutdownReport::with_stuck(stuck)
    }
}

/// How long `shutdown_timeout` waits, past its deadline, for the workers
/// that are not stuck in user code to end.
pub(crate) const ABORT_GRACE: Duration = Duration::from_millis(100);
