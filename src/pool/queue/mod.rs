//! The queues a worker takes jobs from: its own (keyed jobs; core workers
//! only) and the shared one.

use std::sync::atomic::Ordering::Relaxed;

use async_channel::{Receiver, Sender};

pub(super) mod job;

use self::job::Envelope;
use crate::error::Failure;
use crate::pool::idle::Source;
use crate::stats::Counters;

/// A queue of jobs: an unbounded channel, bounded by its users (the shared
/// queue by the admission permits its jobs carry, a worker's own queue by
/// `Pool::submit`).
///
/// Not `async_channel::bounded`, though it allocates nothing per job: its
/// ring (`concurrent_queue::bounded`) has a reader that finds a place
/// claimed by a writer but not yet written spin, without yielding, until
/// the writer finishes. With more worker threads than CPUs, the writer (a
/// caller's task, preempted between the two steps by a worker waking from
/// its handler) may not run again for a whole time slice while the workers
/// spin on both CPUs: `benches/blocking` measured a pool of 64 workers at
/// 0.66-1.00x `spawn_blocking`, its CPU per call up by half, and at 1.01x
/// with this channel, whose reader yields in that wait.
pub(super) fn queue() -> (Sender<Envelope>, Receiver<Envelope>) {
    async_channel::unbounded()
}

/// Answers every job in `queue` with `failure`: for a queue no worker will
/// take from again.
pub(super) fn reject_queued(queue: &Receiver<Envelope>, counters: &Counters, failure: Failure) {
    while let Ok(envelope) = queue.try_recv() {
        counters.rejected.fetch_add(1, Relaxed);
        envelope.job.reject(failure);
    }
}

/// The receiving ends a worker takes jobs from.
#[derive(Clone)]
pub(crate) struct Queues {
    /// A core worker's own queue, for keyed jobs; spares have none.
    own: Option<Receiver<Envelope>>,
    shared: Receiver<Envelope>,
    /// This slot's errands (`inbox.rs`), taken before its own queue.
    inbox: Option<Receiver<Envelope>>,
}

impl Queues {
    pub(super) fn core(own: Receiver<Envelope>, shared: Receiver<Envelope>) -> Self {
        Self {
            own: Some(own),
            shared,
            inbox: None,
        }
    }

    pub(super) fn spare(shared: Receiver<Envelope>) -> Self {
        Self {
            own: None,
            shared,
            inbox: None,
        }
    }

    /// With its slot's inbox of errands.
    pub(super) fn with_inbox(mut self, inbox: Receiver<Envelope>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    pub(super) fn shared(&self) -> &Receiver<Envelope> {
        &self.shared
    }

    /// A core worker's own queue.
    pub(super) fn own(&self) -> Option<&Receiver<Envelope>> {
        self.own.as_ref()
    }
}

impl Source for Queues {
    type Job = Envelope;

    fn take_own(&self) -> Option<Envelope> {
        let errand = self.inbox.as_ref().and_then(|inbox| inbox.try_recv().ok());
        errand.or_else(|| self.own.as_ref().and_then(|own| own.try_recv().ok()))
    }

    fn take_shared(&self) -> Option<Envelope> {
        self.shared.try_recv().ok()
    }

    fn finished(&self) -> bool {
        let own_done = self
            .own
            .as_ref()
            .is_none_or(|own| own.is_closed() && own.is_empty());
        // An errand posted before the queues closed is served (see
        // `Pool::post`).
        let inbox_done = self.inbox.as_ref().is_none_or(|inbox| inbox.is_empty());
        own_done && inbox_done && self.shared.is_closed() && self.shared.is_empty()
    }

    fn more_shared(&self) -> bool {
        !self.shared.is_empty()
    }
}
