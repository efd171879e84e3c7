//! What the pool's handles and its worker threads share.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::config::Config;
use super::errand::inbox::Inboxes;
use super::idle::Idle;
use super::shutdown::Lifecycle;
use super::spare::Spares;
use super::worker::driver::Driver;
use crate::stats::Counters;

/// What the pool's handles and its worker threads share.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) idle: Idle,
    pub(crate) spares: Spares,
    /// The runtime whose timers and I/O the workers use (see `driver.rs`).
    pub(crate) driver: Driver,
    /// One inbox of errands per worker slot (`run_on_key`, `broadcast`).
    pub(crate) inboxes: Inboxes,
    /// Tells this pool's worker threads from another pool's.
    pub(crate) id: u64,
    /// How many wrapped services have lost their last handle. A worker that
    /// sees it move drops its instances of those services (see
    /// `WorkerState::sweep_retired`).
    pub(crate) retired: AtomicU64,
    /// Core workers given up (see `exit.rs`). At `config.workers`, no
    /// thread will ever take a job from the shared queue again.
    pub(crate) given_up: AtomicUsize,
    /// Thread spawns left before the test seam refuses them.
    pub(super) spawns_left: AtomicUsize,
    /// Worker starts left before the test seam fails them.
    pub(super) starts_left: AtomicUsize,
}

/// Takes one from `left`; `false` at zero.
fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

impl Inner {
    /// The shared state of a new pool, with its driver thread; the
    /// workers not yet started.
    pub(crate) fn new(config: Config) -> io::Result<Self> {
        static POOLS: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            driver: Driver::start(&config.thread_name)?,
            counters: Counters::new(config.max_workers),
            lifecycle: Lifecycle::new(),
            idle: Idle::new(config.max_workers),
            spares: Spares::new(&config),
            inboxes: Inboxes::new(config.max_workers),
            id: POOLS.fetch_add(1, Ordering::Relaxed),
            retired: AtomicU64::new(0),
            given_up: AtomicUsize::new(0),
            spawns_left: AtomicUsize::new(config.spawn_limit.unwrap_or(usize::MAX)),
            starts_left: AtomicUsize::new(config.start_limit.unwrap_or(usize::MAX)),
            config,
        })
    }

    /// Whether every core worker was given up.
    pub(super) fn all_given_up(&self) -> bool {
        self.given_up.load(Ordering::SeqCst) == self.config.workers
    }

    /// A wrapped service lost its last handle: every worker drops its
    /// instance, on its own thread, at its next turn. Idle workers are woken
    /// for it; their loop sweeps before it waits again.
    pub(crate) fn retire_service(&self) {
        self.retired.fetch_add(1, Ordering::Release);
        self.idle.wake_all();
    }

    /// Whether the test seam lets one more thread start.
    pub(super) fn may_spawn(&self) -> bool {
        take_one(&self.spawns_left)
    }

    /// Whether a worker may start: `Err` only from the test seam.
    pub(super) fn start_worker(&self) -> io::Result<()> {
        if take_one(&self.starts_left) {
            Ok(())
        } else {
            Err(io::Error::other(
                "tower-affinity: worker start refused (test seam)",
            ))
        }
    }
}
