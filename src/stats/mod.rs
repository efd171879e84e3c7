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

mod counters;
pub(crate) mod probe;

use std::time::Duration;

pub(crate) use self::counters::{Counters, WorkerCounters};

/// A snapshot of a pool: per-worker figures and pool totals.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    workers: Vec<WorkerStats>,
    queued: usize,
    admitted: u64,
    rejected: u64,
    timed_out: u64,
    spares: SpareFigures,
}

/// Pool-wide figures about spare workers, as [`Counters::snapshot`] takes them.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub(crate) struct SpareFigures {
    pub(crate) started: u64,
    pub(crate) retired: u64,
    pub(crate) stalls: u64,
    pub(crate) spawn_failures: u64,
    pub(crate) max_workers: usize,
}

impl Stats {
    /// One entry per worker slot that ever ran a thread, by index: the core
    /// workers (`0..workers`), then the spares' slots (a slot is reused by
    /// the next spare after one retires; see [`WorkerStats::is_alive`]), so
    /// that totals summed over them count every thread's work.
    pub fn workers(&self) -> &[WorkerStats] {
        &self.workers
    }

    /// Worker threads running now: the core workers and the spares.
    pub fn threads(&self) -> usize {
        self.workers.iter().filter(|w| w.alive).count()
    }

    /// Spare workers started since the pool started (see
    /// [`Builder::max_workers`](crate::Builder::max_workers)).
    pub fn spares_started(&self) -> u64 {
        self.spares.started
    }

    /// Spare workers that have ended: retired after their keep-alive,
    /// ended at shutdown, or (rarely) ended by a panic that escaped the
    /// shields or a runtime that could not be built. So
    /// `spares_started() - spares_retired()` spares run now.
    pub fn spares_retired(&self) -> u64 {
        self.spares.retired
    }

    /// Times the spare supervisor found unkeyed work waiting, no worker
    /// free, and some worker inside one poll of user code for over a
    /// millisecond. Such a look, if the look before it also saw blocking,
    /// starts a spare for each of those workers that is
    /// [`blocked`](WorkerStats::blocked) (off the CPU) while the pool is
    /// below [`max_workers`](Self::max_workers): many stalls and
    /// few spares mean CPU-bound handlers, or a pool at its ceiling.
    pub fn stalls(&self) -> u64 {
        self.spares.stalls
    }

    /// Threads the operating system refused to start (spares, and
    /// replacements of dead workers). Each one lowers
    /// [`max_workers`](Self::max_workers) to the threads running then.
    pub fn spawn_failures(&self) -> u64 {
        self.spares.spawn_failures
    }

    /// The most worker threads the pool will run now: the configured
    /// ceiling, lowered when a thread could not be started.
    pub fn max_workers(&self) -> usize {
        self.spares.max_workers
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
    spare: bool,
    alive: bool,
    blocked: bool,
    queued: usize,
    active: usize,
    completed: u64,
    panicked: u64,
    replaced: u64,
    start_failures: u32,
    current_poll: Option<Duration>,
}

impl WorkerStats {
    /// The worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this is a spare worker, started while the others were
    /// blocked; it serves unkeyed requests only and retires when idle.
    pub fn is_spare(&self) -> bool {
        self.spare
    }

    /// Whether a thread runs in this slot now: `false` for a spare's slot
    /// after it retired, or a core worker whose thread died and could not
    /// be replaced.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Whether the worker is blocked in user code: inside one poll for
    /// longer than a millisecond and off the CPU (sleeping or waiting on
    /// I/O, read from `/proc` on Linux; elsewhere, inside one poll for
    /// longer than 20 ms). The signal that starts spare workers.
    pub fn blocked(&self) -> bool {
        self.blocked
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

    /// Panics caught in the inner service, its futures and bodies,
    /// including in their `Drop`s.
    pub fn panicked(&self) -> u64 {
        self.panicked
    }

    /// Times this worker's thread died and was replaced.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Times in a row this worker's thread could not start (its runtime
    /// could not be built). Retried with a doubling backoff from 10 ms;
    /// after 5 the worker is given up ([`is_alive`](Self::is_alive) turns
    /// `false`) and its keys go to the next live core worker.
    pub fn start_failures(&self) -> u32 {
        self.start_failures
    }

    /// How long the worker has been inside its current poll of user code,
    /// or `None` when it is not polling. A large figure means the worker is
    /// stuck in a blocking call.
    pub fn current_poll(&self) -> Option<Duration> {
        self.current_poll
    }
}
