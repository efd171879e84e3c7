//! The live counters behind [`Stats`]: written by the workers and the
//! supervisor as they go, read by [`Counters::snapshot`].

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::probe;
use super::{SpareFigures, Stats, WorkerStats};

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
// Aligned to two cache lines: each worker writes its own often.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerCounters {
    /// The thread's kernel id, for the blocked probe; 0 if unknown.
    pub(crate) tid: AtomicU64,
    pub(crate) alive: AtomicBool,
    /// Whether a thread ever ran in this slot.
    pub(crate) used: AtomicBool,
    pub(crate) active: AtomicUsize,
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) replaced: AtomicU64,
    /// Failed starts in a row (reset when a thread starts).
    pub(crate) start_failures: AtomicU32,
    // Nanoseconds since `epoch` at which the current poll began, plus one;
    // 0 while the worker is not polling.
    busy_since: AtomicU64,
}

impl WorkerCounters {
    /// Whether the worker is inside a poll of user code now.
    pub(crate) fn is_polling(&self) -> bool {
        self.busy_since.load(Relaxed) != 0
    }

    /// A thread started in this slot: its failed starts are behind it.
    pub(crate) fn started(&self) {
        self.start_failures.store(0, Relaxed);
    }
}

impl Counters {
    /// How many worker threads run now.
    pub(crate) fn running(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.alive.load(Relaxed))
            .count()
    }

    /// How long worker `index` has been inside its current poll.
    pub(crate) fn polling_for(&self, index: usize) -> Option<Duration> {
        let since = self.poll_started(index);
        (since != 0).then(|| self.age(since))
    }

    /// How long ago the poll that began at `since` (see
    /// [`poll_started`](Self::poll_started)) began.
    pub(crate) fn age(&self, since: u64) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(since))
    }

    /// When worker `index`'s current poll of user code began (0: none):
    /// tells one poll from the next.
    pub(crate) fn poll_started(&self, index: usize) -> u64 {
        self.workers[index].busy_since.load(Relaxed)
    }

    /// Whether worker `index` is blocked in user code (see [`probe`]).
    pub(crate) fn blocked(&self, index: usize) -> bool {
        let worker = &self.workers[index];
        probe::blocked(worker.tid.load(Relaxed), self.polling_for(index))
    }

    /// Whether worker `index`, in the poll that began at `since`, is off
    /// the CPU there, however short the poll; `None` if its state cannot
    /// be read (see [`probe`]) or that poll ended meanwhile.
    pub(crate) fn off_cpu_in(&self, index: usize, since: u64) -> Option<bool> {
        let worker = &self.workers[index];
        let off = probe::off_cpu(worker.tid.load(Relaxed))?;
        (since != 0 && self.poll_started(index) == since).then_some(off)
    }

    /// Whether worker `index` is blocked in the poll that began at `since`
    /// (see [`poll_started`](Self::poll_started)): the poll may end, and
    /// another begin, while the probe reads its thread's state.
    pub(crate) fn blocked_in(&self, index: usize, since: u64) -> bool {
        let worker = &self.workers[index];
        since != 0
            && probe::blocked(worker.tid.load(Relaxed), Some(self.age(since)))
            && self.poll_started(index) == since
    }
}

impl Counters {
    /// Counters for `slots` workers: the core workers and every spare the
    /// pool may run, so that a spare needs no allocation (nor lock) here.
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            epoch: Instant::now(),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            workers: (0..slots).map(|_| WorkerCounters::default()).collect(),
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

    /// Clears worker `index`'s mark while its event loop runs its own code
    /// inside a poll (see `worker::run`), and sets it afresh when the guard
    /// drops: user code runs next.
    pub(crate) fn between_polls(&self, index: usize) -> BetweenPolls<'_> {
        self.workers[index].busy_since.store(0, Relaxed);
        BetweenPolls {
            counters: self,
            index,
        }
    }

    /// A snapshot of the core workers (`0..core`) and the running spares.
    pub(crate) fn snapshot(
        &self,
        core: usize,
        queued: usize,
        own_queued: impl Fn(usize) -> usize,
        spares: SpareFigures,
    ) -> Stats {
        let workers = self
            .workers
            .iter()
            .enumerate()
            .filter(|(index, w)| *index < core || w.used.load(Relaxed))
            .map(|(index, w)| WorkerStats {
                index,
                spare: index >= core,
                alive: w.alive.load(Relaxed),
                blocked: self.blocked(index),
                queued: if index < core { own_queued(index) } else { 0 },
                active: w.active.load(Relaxed),
                completed: w.completed.load(Relaxed),
                panicked: w.panicked.load(Relaxed),
                replaced: w.replaced.load(Relaxed),
                start_failures: w.start_failures.load(Relaxed),
                current_poll: self.polling_for(index),
            })
            .collect();
        Stats {
            workers,
            queued,
            admitted: self.admitted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            spares,
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

/// Marks a worker as polling user code again when dropped.
pub(crate) struct BetweenPolls<'a> {
    counters: &'a Counters,
    index: usize,
}

impl Drop for BetweenPolls<'_> {
    fn drop(&mut self) {
        let now = self.counters.now();
        self.counters.workers[self.index]
            .busy_since
            .store(now, Relaxed);
    }
}
