//! Spare workers: when to start one, when one retires, and what the
//! supervisor thread (`supervisor`) that starts them shares with the pool.
//!
//! The pool always runs `workers` core threads. While unkeyed work waits
//! and no worker is free, spares start while fewer spares run than threads
//! are blocked in user code (see `probe`: inside a poll, off the CPU, one
//! of them for over a millisecond), up to the jobs waiting and
//! `max_workers` threads (see `supervisor::grow` for how many a look). A
//! handler blocked for 50 ms, seen at fifty looks, is still one thread out
//! of play, not fifty. And none while as many threads as there are core
//! workers can take work (between two polls, or computing): then the CPUs,
//! not the threads, are what work waits for. A CPU-bound handler is on the
//! CPU, a quick one is not inside a long poll: neither grows the pool.
//!
//! The supervisor costs nothing while the pool keeps up: it parks on a
//! condition variable until a submitter finds no worker waiting for work
//! (one atomic load on that path while the supervisor is already awake).
//! Awake, it looks every millisecond while work waits (every half while
//! the pool grows), backing off while the workers are busy without being
//! blocked, and parks again once the shared queue is empty (see
//! `supervisor::Pace` for why the backed-off pace outlives a short park).
//!
//! A spare serves the shared queue only, and retires after `keep_alive`
//! with nothing to serve; spares retire one at a time, at most one per
//! quarter of `keep_alive`. A spare's slot (its index, counters and idle
//! bit) was allocated when the pool started, so nothing on the request path
//! takes a lock or allocates for it.
//!
//! When the operating system refuses a thread, the pool keeps serving with
//! the threads it has and lowers its ceiling to them, as smol's `blocking`
//! does.

mod supervisor;

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_channel::Receiver;

use crate::pool::config::Config;
use crate::pool::inner::Inner;
use crate::pool::queue::job::Envelope;
use crate::stats::SpareFigures;
use crate::trace;

#[derive(Debug)]
pub(crate) struct Spares {
    /// Whether the supervisor is awake, looking.
    armed: AtomicBool,
    stopped: AtomicBool,
    lock: Mutex<()>,
    signal: Condvar,
    /// Spare slots not in use, the lowest index last.
    free: Mutex<Vec<usize>>,
    /// The most threads the pool runs now.
    ceiling: AtomicUsize,
    started: AtomicU64,
    retired: AtomicU64,
    stalls: AtomicU64,
    spawn_failures: AtomicU64,
    keep_alive: Duration,
    epoch: Instant,
    /// When the last spare retired, in nanoseconds since `epoch`.
    last_retired: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Spares {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            armed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lock: Mutex::new(()),
            signal: Condvar::new(),
            free: Mutex::new((config.workers..config.max_workers).rev().collect()),
            ceiling: AtomicUsize::new(config.max_workers),
            started: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
            keep_alive: config.keep_alive,
            epoch: Instant::now(),
            last_retired: AtomicU64::new(0),
        }
    }

    /// Starts the supervisor thread, when the pool may grow.
    pub(crate) fn supervise(inner: &Arc<Inner>, shared: Receiver<Envelope>) {
        if inner.config.max_workers <= inner.config.workers {
            return;
        }
        let name = format!("{}-spares", inner.config.thread_name);
        let inner2 = inner.clone();
        if let Err(error) = thread::Builder::new()
            .name(name)
            .spawn(move || supervisor::run(&inner2, &shared))
        {
            // Without a supervisor the pool is a fixed one: say so.
            inner.spares.refused(inner.config.workers, &error);
        }
    }

    /// A submitter found no worker waiting: wake the supervisor, unless it
    /// is already looking.
    pub(crate) fn nudge(&self) {
        if !self.armed.load(Relaxed) && !self.armed.swap(true, SeqCst) {
            // Under the lock: the supervisor checks `armed` under it before
            // it waits, so this notification cannot fall in between.
            let _lock = lock(&self.lock);
            self.signal.notify_one();
        }
    }

    /// The pool is closing: the supervisor ends.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, SeqCst);
        let _lock = lock(&self.lock);
        self.signal.notify_all();
    }

    /// Parks until nudged; `false` once stopped.
    pub(super) fn wait_armed(&self) -> bool {
        let mut guard = lock(&self.lock);
        while !self.armed.load(SeqCst) && !self.stopped.load(SeqCst) {
            guard = self
                .signal
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        !self.stopped.load(SeqCst)
    }

    /// Waits `interval`; `false` once stopped.
    pub(super) fn pause(&self, interval: Duration) -> bool {
        let guard = lock(&self.lock);
        if !self.stopped.load(SeqCst) {
            let _ = self.signal.wait_timeout(guard, interval);
        }
        !self.stopped.load(SeqCst)
    }

    /// The supervisor found the shared queue empty and means to park; a
    /// submitter from now on nudges it again.
    pub(super) fn disarm(&self) {
        self.armed.store(false, SeqCst);
    }

    /// The supervisor, having disarmed, found work after all: it goes on
    /// looking, and submitters need not nudge it.
    pub(super) fn rearm(&self) {
        self.armed.store(true, SeqCst);
    }

    /// A look found a poll long enough to be blocked; how many more threads
    /// the ceiling lets start beside the `running` ones.
    pub(super) fn stalled(&self, running: usize) -> usize {
        self.stalls.fetch_add(1, Relaxed);
        self.ceiling.load(SeqCst).saturating_sub(running)
    }

    /// A free spare slot, taken for a thread about to start; give it back
    /// with [`exited`](Self::exited) if it does not.
    pub(super) fn take_slot(&self) -> Option<usize> {
        lock(&self.free).pop()
    }

    /// A spare's thread started.
    pub(super) fn count_start(&self) {
        self.started.fetch_add(1, Relaxed);
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Whether a spare whose keep-alive ran out may retire now; if not, how
    /// long until it may try again (spares retire one at a time).
    pub(crate) fn may_retire(&self) -> Result<(), Duration> {
        // Saturating: a `keep_alive` of centuries (`Duration::MAX`) is
        // past what `u64` nanoseconds hold.
        let gap = u64::try_from((self.keep_alive / 4).as_nanos()).unwrap_or(u64::MAX);
        let now = self.now();
        let last = self.last_retired.load(SeqCst);
        let next = last.saturating_add(gap);
        if last != 0 && now < next {
            return Err(Duration::from_nanos(next - now));
        }
        match self
            .last_retired
            .compare_exchange(last, now, SeqCst, SeqCst)
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Duration::from_nanos(gap.max(1))),
        }
    }

    /// Spares running now (started and not yet retired), roughly: two
    /// relaxed loads, for the idle worker's choice to spin.
    pub(crate) fn running(&self) -> u64 {
        let started = self.started.load(Relaxed);
        started.saturating_sub(self.retired.load(Relaxed))
    }

    pub(crate) fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Spare `index` ends: `idle`, it retired after its keep-alive;
    /// otherwise the pool shut down, or its thread died or could not build
    /// its runtime. Counted however it ended, before its slot reads as not
    /// alive, so that a reader who sees the thread gone also sees it
    /// retired, and `started - retired` stays the spares running.
    pub(crate) fn ended(&self, index: usize, idle: bool) {
        self.retired.fetch_add(1, SeqCst);
        if idle {
            trace::info!(worker = index, "spare worker retired");
        }
        let _ = index;
    }

    /// Spare `index`'s thread has ended, or never started: its slot is
    /// free again.
    pub(crate) fn exited(&self, index: usize) {
        lock(&self.free).push(index);
    }

    /// A thread could not be started: lower the ceiling to what runs.
    pub(crate) fn refused(&self, threads: usize, error: &std::io::Error) {
        self.spawn_failures.fetch_add(1, Relaxed);
        self.ceiling.fetch_min(threads, SeqCst);
        trace::warning!(%error, max_workers = threads, "could not start a worker thread");
        let _ = error;
    }

    pub(crate) fn figures(&self) -> SpareFigures {
        SpareFigures {
            started: self.started.load(Relaxed),
            retired: self.retired.load(Relaxed),
            stalls: self.stalls.load(Relaxed),
            spawn_failures: self.spawn_failures.load(Relaxed),
            max_workers: self.ceiling.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spares retire one at a time: after one, the next must wait a
    /// quarter of the keep-alive, and is told how long is left.
    #[test]
    fn a_second_retirement_waits_a_quarter_of_the_keep_alive() {
        let config = crate::ThreadAffinityLayer::builder()
            .keep_alive(Duration::from_secs(8))
            .into_config();
        let spares = Spares::new(&config);
        assert_eq!(spares.may_retire(), Ok(()));
        let wait = spares.may_retire().unwrap_err();
        // What is left of the 2 s gap: the two calls are moments apart.
        assert!(wait > Duration::from_secs(1), "{wait:?}");
        assert!(wait <= Duration::from_secs(2), "{wait:?}");
    }

    /// At `keep_alive(Duration::MAX)` the gap between retirements
    /// saturates (centuries) instead of overflowing or wrapping to a short
    /// one.
    #[test]
    fn the_retirement_gap_saturates_at_duration_max() {
        let config = crate::ThreadAffinityLayer::builder()
            .keep_alive(Duration::MAX)
            .into_config();
        let spares = Spares::new(&config);
        assert_eq!(spares.may_retire(), Ok(()));
        let wait = spares.may_retire().unwrap_err();
        assert!(wait > Duration::from_secs(100 * 365 * 86_400), "{wait:?}");
    }
}
