//! Shutdown: the pool's phase, and how many worker threads are alive.
//!
//! Dropping the last handle closes the queues while the phase is still
//! `Running`: workers answer what is queued with 503, finish what they
//! started and exit. [`shutdown`](crate::ThreadAffinityLayer::shutdown)
//! moves to `Draining` first, so queued requests are served too; past its
//! deadline, `Aborting` makes workers drop what they hold at once.
//!
//! The event loop checks for an abort on every poll, so that check is one
//! atomic load; the pool wakes every event loop after setting it (see
//! `Idle::wake_all`).

mod drain;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Draining,
    Aborting,
}

impl Phase {
    /// Whether a job still queued when the queues close is served, rather
    /// than answered 503.
    pub(crate) fn serves_queued(self) -> bool {
        self == Phase::Draining
    }
}

#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: watch::Sender<Phase>,
    aborting: AtomicBool,
    alive: watch::Sender<usize>,
}

impl Lifecycle {
    /// A pool whose threads are about to start: each is counted alive
    /// with [`spawning`](Self::spawning).
    pub(crate) fn new() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            aborting: AtomicBool::new(false),
            alive: watch::Sender::new(0),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn drain(&self) {
        self.phase.send_if_modified(|phase| {
            let running = *phase == Phase::Running;
            if running {
                *phase = Phase::Draining;
            }
            running
        });
    }

    /// Moves to `Aborting`; the caller then wakes every event loop.
    pub(crate) fn abort(&self) {
        self.aborting.store(true, SeqCst);
        self.phase.send_replace(Phase::Aborting);
    }

    /// Resolves once shutdown aborts (a `Cancellation` waits on it).
    pub(crate) async fn aborted(&self) {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|phase| *phase == Phase::Aborting).await;
    }

    /// Whether shutdown is aborting: one atomic load.
    pub(crate) fn is_aborting(&self) -> bool {
        self.aborting.load(SeqCst)
    }

    /// Counts a thread about to start, unless `closed()` says the pool is
    /// closing. Checked under the count's lock, so a thread is never
    /// counted after `all_exited` may have resolved: the queues close
    /// before the last thread can exit.
    pub(crate) fn spawning(&self, closed: impl FnOnce() -> bool) -> bool {
        let mut counted = false;
        self.alive.send_if_modified(|alive| {
            counted = !closed();
            *alive += usize::from(counted);
            counted
        });
        counted
    }

    /// Called by each worker thread as it ends for good (or by the pool for
    /// a thread that could not be started).
    pub(crate) fn exited(&self) {
        self.alive.send_modify(|alive| *alive -= 1);
    }

    /// Resolves once every worker thread has ended.
    pub(crate) async fn all_exited(&self) {
        let mut alive = self.alive.subscribe();
        let _ = alive.wait_for(|alive| *alive == 0).await;
    }
}
