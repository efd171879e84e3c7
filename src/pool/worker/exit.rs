//! How a worker thread ends, and what follows it.
//!
//! A core worker whose thread dies (a panic escaped the shields around
//! user code) is replaced at once: requests the dead thread held failed
//! when their reply channels dropped, and its services are rebuilt lazily
//! on the new thread. A thread that cannot even start (its runtime cannot
//! be built: file descriptors exhausted, say) is retried with a doubling
//! backoff; after [`MAX_START_FAILURES`] in a row the pool gives that
//! worker up: its queued keyed requests get `503`, and its keys go to the
//! next live core worker (see `Pool::route`). Once every core worker is
//! given up, every request gets `503`. A spare is never replaced: its slot
//! is freed.

use std::io;
use std::sync::atomic::fence;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::Failure;
use crate::pool::idle::Source;
use crate::pool::inner::Inner;
use crate::pool::queue::{reject_queued, Queues};
use crate::trace;

/// Starts in a row that may fail before a worker is given up.
pub(crate) const MAX_START_FAILURES: u32 = 5;

/// The wait before the first retry of a failed start; it doubles each time.
const BACKOFF: Duration = Duration::from_millis(10);

/// The wait before the next start of a worker that failed `failures`
/// starts in a row: none after a death (the thread had started), then
/// 10, 20, 40 ms...
fn backoff(failures: u32) -> Option<Duration> {
    let doublings = failures.checked_sub(1)?;
    Some(BACKOFF * 2u32.pow(doublings))
}

/// How a worker thread's run ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Its queues closed and drained (or shutdown aborted).
    Finished,
    /// A spare, idle past its keep-alive.
    Retired,
    /// A panic escaped the shields.
    Died,
    /// The thread could not start (the test seam).
    FailedStart(io::Error),
}

/// How a core worker's thread is started again: `worker::spawn`, passed in
/// so that what follows a thread's end does not reach back to its start.
pub(crate) type Restart = fn(usize, Queues, Arc<Inner>) -> io::Result<()>;

/// Runs when a worker thread ends, however it ends.
pub(crate) struct Exit {
    index: usize,
    queues: Queues,
    inner: Arc<Inner>,
    restart: Restart,
    /// Set by the thread when its run returns; a run that unwinds leaves
    /// `Died`.
    pub(crate) end: End,
}

impl Exit {
    pub(crate) fn new(index: usize, queues: Queues, inner: Arc<Inner>, restart: Restart) -> Self {
        Self {
            index,
            queues,
            inner,
            restart,
            end: End::Died,
        }
    }

    /// The thread is gone for good.
    fn gone(&self) {
        self.inner
            .counters
            .worker(self.index)
            .alive
            .store(false, SeqCst);
        self.inner.lifecycle.exited();
    }

    /// This thread could not start (or start again): the ceiling comes
    /// down to the threads left, without this one.
    fn refused(&self, error: &io::Error) {
        let inner = &self.inner;
        inner
            .spares
            .refused(inner.counters.running().saturating_sub(1), error);
    }

    /// No thread will serve this worker's own queue again (nor, once every
    /// core worker is given up, the shared one): answer what it holds, and
    /// go.
    ///
    /// Marked gone first, then the queues are read: a submitter queues,
    /// then reads the mark (see `Pool::submit`). With a `SeqCst` fence on
    /// both sides, one of them sees the other's write, so a job queued as
    /// the worker goes is answered by one of them, never left behind.
    fn give_up(&self) {
        trace::warning!(worker = self.index, "worker given up; its keys move");
        let inner = &self.inner;
        self.gone();
        inner.given_up.fetch_add(1, SeqCst);
        fence(SeqCst);
        if let Some(own) = self.queues.own() {
            reject_queued(own, &inner.counters, Failure::NoWorker);
        }
        if inner.all_given_up() {
            trace::warning!("every core worker given up: requests get 503");
            reject_queued(self.queues.shared(), &inner.counters, Failure::NoWorker);
        }
    }
}

impl Drop for Exit {
    fn drop(&mut self) {
        let (inner, index) = (&self.inner, self.index);
        inner.idle.set_waker(index, None);
        inner.idle.leave(index);
        let counters = inner.counters.worker(index);
        counters.tid.store(0, Relaxed);
        let end = std::mem::replace(&mut self.end, End::Finished);
        if index >= inner.config.workers {
            if let End::FailedStart(error) = &end {
                // The next spare would fail as this one did: lower the
                // ceiling to the threads left, as for a refused thread,
                // rather than start (and lose) one at every look.
                self.refused(error);
            }
            // Counted however it ended, or the spares running
            // (`Spares::running`) would drift up with every spare lost.
            inner.spares.ended(index, matches!(end, End::Retired));
            // Marked gone before the slot is freed: the next spare in this
            // slot marks it alive again, and must not be overwritten.
            self.gone();
            inner.spares.exited(index);
            return;
        }
        let failures = match end {
            End::Finished | End::Retired => return self.gone(),
            // It had started: the next start is a fresh try.
            End::Died => 0,
            End::FailedStart(error) => {
                trace::warning!(worker = index, %error, "a worker could not start");
                let _ = error;
                counters.start_failures.fetch_add(1, SeqCst) + 1
            }
        };
        if self.queues.finished() {
            return self.gone();
        }
        if failures >= MAX_START_FAILURES {
            return self.give_up();
        }
        if let Some(wait) = backoff(failures) {
            thread::sleep(wait);
        }
        counters.replaced.fetch_add(1, Relaxed);
        if let Err(error) = (self.restart)(index, self.queues.clone(), inner.clone()) {
            self.refused(&error);
            self.give_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No wait after a death; after failed starts, 10 ms doubling.
    #[test]
    fn the_backoff_doubles_from_10_ms() {
        let waits: Vec<_> = (0..MAX_START_FAILURES).map(backoff).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            waits,
            [None, Some(ms(10)), Some(ms(20)), Some(ms(40)), Some(ms(80))]
        );
    }
}
