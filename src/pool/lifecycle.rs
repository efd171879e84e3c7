//! Shutdown: the pool's phase, and how many worker threads are alive.
//!
//! Dropping the last handle closes the queues while the phase is still
//! `Running`: workers answer what is queued with 503, finish what they
//! started and exit. [`shutdown`](crate::ThreadAffinityLayer::shutdown)
//! moves to `Draining` first, so queued requests are served too; past its
//! deadline, `Aborting` makes workers drop what they hold at once.

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
    alive: watch::Sender<usize>,
}

impl Lifecycle {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            alive: watch::Sender::new(workers),
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

    pub(crate) fn abort(&self) {
        self.phase.send_replace(Phase::Aborting);
    }

    /// Resolves once the phase is `Aborting`.
    pub(crate) async fn aborted(&self) {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|phase| *phase == Phase::Aborting).await;
    }

    /// Called by each worker thread as it ends for good.
    pub(crate) fn exited(&self) {
        self.alive.send_modify(|alive| *alive -= 1);
    }

    /// Resolves once every worker thread has ended.
    pub(crate) async fn all_exited(&self) {
        let mut alive = self.alive.subscribe();
        let _ = alive.wait_for(|alive| *alive == 0).await;
    }
}
