//! Each worker's inbox: jobs for that one thread, core or spare, outside
//! HTTP (`run_on_key`, `broadcast`; see `errand.rs`).
//!
//! One per slot the pool may run, made when it starts; a slot's thread
//! takes from its inbox before its own queue (see `Queues::take_own`), so
//! an errand goes through the same event loop, limits and idle hand-off as
//! a request. Unbounded channels, bounded here by `queue_capacity` per
//! worker: a bounded one would allocate its room up front for every slot.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering::SeqCst;

use async_channel::{Receiver, Sender};

use crate::error::Failure;
use crate::pool::queue::job::{Envelope, JobHandle};
use crate::pool::Pool;

/// The inboxes, one per worker slot.
pub(crate) struct Inboxes {
    slots: Vec<(Sender<Envelope>, Receiver<Envelope>)>,
}

impl Inboxes {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots).map(|_| async_channel::unbounded()).collect(),
        }
    }

    /// The receiving end of slot `index`'s inbox, for its worker's queues.
    pub(crate) fn receiver(&self, index: usize) -> Receiver<Envelope> {
        self.slots[index].1.clone()
    }
}

/// What became of an errand given to an inbox.
pub(crate) enum Posted {
    /// The worker will take it (or its shutdown will answer it).
    Queued,
    /// Queued, but its worker may never take it: the caller withdraws it.
    Stranded(Failure),
}

impl Pool {
    /// The core worker a key goes to: the hash `affinity_key` uses.
    pub(crate) fn worker_for<K: std::hash::Hash>(&self, key: &K) -> usize {
        self.live(self.dispatch.seed.hash_one(key))
    }

    /// Whether worker slot `index` has a thread now.
    pub(crate) fn is_alive(&self, index: usize) -> bool {
        self.dispatch
            .inner
            .counters
            .worker(index)
            .alive
            .load(SeqCst)
    }

    /// Gives `job` to worker `index`'s inbox and wakes that worker.
    pub(crate) fn post(&self, index: usize, job: JobHandle) -> Result<Posted, Failure> {
        let inner = &self.dispatch.inner;
        if self.dispatch.shared.is_closed() {
            return Err(Failure::ShutDown);
        }
        let (inbox, _) = &inner.inboxes.slots[index];
        if inbox.len() >= inner.config.queue_capacity {
            inner.counters.rejected.fetch_add(1, SeqCst);
            return Err(Failure::Overloaded);
        }
        let envelope = Envelope {
            job,
            _permit: None,
            enqueued: None,
        };
        if inbox.try_send(envelope).is_err() {
            return Err(Failure::ShutDown);
        }
        if inner.idle.wake(index) {
            return Ok(Posted::Queued);
        }
        // Read after the job is queued (`wake` begins with a fence): a
        // worker that finished, or a spare that retired, before it did
        // never looks again; one that ends after it takes the job first.
        if self.dispatch.shared.is_closed() {
            return Ok(Posted::Stranded(Failure::ShutDown));
        }
        if !self.is_alive(index) {
            return Ok(Posted::Stranded(Failure::WorkerGone));
        }
        Ok(Posted::Queued)
    }
}
