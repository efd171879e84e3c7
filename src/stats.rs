//! Snapshots of a pool's state, for metrics and watchdogs.
//!
//! [`ThreadAffinityLayer::stats`](crate::ThreadAffinityLayer::stats) reads a
//! handful of relaxed atomics per worker: cheap enough to call on every
//! metrics scrape. The figures are read one by one while the pool runs, so
//! they are each exact but not a single instant's.
//!
//! ```
//! let layer = tower_affinity::ThreadAffinityLayer::new(2);
//! let stats = layer.stats();
//! assert_eq!(stats.workers().len(), 2);
//! for worker in stats.workers() {
//!     if worker.current_poll().is_some_and(|d| d.as_secs() > 10) {
//!         eprintln!("worker {} is stuck in a blocking call", worker.index());
//!     }
//! }
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A snapshot of a pool: per-worker figures and pool totals.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    workers: Vec<WorkerStats>,
    queued: usize,
    admitted: u64,
    rejected: u64,
    timed_out: u64,
}

impl Stats {
    /// One entry per worker, by index.
    pub fn workers(&self) -> &[WorkerStats] {
        &self.workers
    }

    /// Requests waiting in the shared queue (each worker's own queue is in
    /// [`WorkerStats::queued`]).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Requests queued for a worker since the pool started.
    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// Requests answered `503` at once: queue full, or pool shut down.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Requests answered `503` because they waited longer than the queue
    /// timeout.
    pub fn timed_out(&self) -> u64 {
        self.timed_out
    }
}

/// A snapshot of one worker.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WorkerStats {
    index: usize,
    queued: usize,
    active: usize,
    completed: u64,
    panicked: u64,
    replaced: u64,
    current_poll: Option<Duration>,
}

impl WorkerStats {
    /// The worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Keyed requests waiting in this worker's own queue.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Requests this worker is serving now, from call to end of body.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Requests this worker has finished serving (in any way).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Panics caught in the inner service, its futures and bodies.
    pub fn panicked(&self) -> u64 {
        self.panicked
    }

    /// Times this worker's thread died and was replaced.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// How long the worker has been inside its current poll of user code,
    /// or `None` when it is not polling. A large figure means the worker is
    /// stuck in a blocking call.
    pub fn current_poll(&self) -> Option<Duration> {
        self.current_poll
    }
}

/// The live counters behind [`Stats`].
#[derive(Debug)]
pub(crate) struct Counters {
    epoch: Instant,
    pub(crate) admitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    workers: Box<[WorkerCounters]>,
}

/// One worker's live counters.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    pub(crate) active: AtomicUsize,
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) replaced: AtomicU64,
    // Nanoseconds since `epoch` at which the current poll began, plus one;
    // 0 while the worker is not polling.
    busy_since: AtomicU64,
}

impl WorkerCounters {
    /// Whether the worker is inside a poll of user code now.
    pub(crate) fn is_polling(&self) -> bool {
        self.busy_since.load(Relaxed) != 0
    }
}

impl Counters {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            epoch: Instant::now(),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
        }
    }

    pub(crate) fn worker(&self, index: usize) -> &WorkerCounters {
        &self.workers[index]
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Marks worker `index` as polling user code until the guard drops.
    pub(crate) fn polling(&self, index: usize) -> Polling<'_> {
        self.workers[index].busy_since.store(self.now(), Relaxed);
        Polling {
            since: &self.workers[index].busy_since,
        }
    }

    pub(crate) fn snapshot(&self, queued: usize, own_queued: impl Fn(usize) -> usize) -> Stats {
        let now = self.now();
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let since = w.busy_since.load(Relaxed);
                WorkerStats {
                    index,
                    queued: own_queued(index),
                    active: w.active.load(Relaxed),
                    completed: w.completed.load(Relaxed),
                    panicked: w.panicked.load(Relaxed),
                    replaced: w.replaced.load(Relaxed),
                    current_poll: (since != 0)
                        .then(|| Duration::from_nanos(now.saturating_sub(since))),
                }
            })
            .collect();
        Stats {
            workers,
            queued,
            admitted: self.admitted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
        }
    }
}

/// Clears a worker's "polling since" mark when dropped.
pub(crate) struct Polling<'a> {
    since: &'a AtomicU64,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.since.store(0, Relaxed);
    }
}
