//! The one-shot slot a queued request is answered through, which also
//! carries the request itself: one allocation per request for both.
//!
//! A job waits in a queue until a worker takes it. Its caller may give up
//! first: its queue timeout passes, or it drops the response future. The
//! slot decides, under one lock, which of the two happened first, so that a
//! request is either started by a worker or withdrawn by its caller, never
//! both: a handler never runs for a caller that was already answered `503`.
//!
//! ```text
//!             claim (worker)              send (worker)
//!   Queued ─────────────────▶ Started ─────────────────▶ reply taken by caller
//!     │ withdraw / drop (caller)
//!     ▼
//!   Withdrawn: the worker drops the job unstarted when it takes it
//! ```
//!
//! Besides the claim it is a oneshot channel: the worker sends the reply
//! (the head, or the inner service's error) and watches for the caller
//! going away while the inner future is pending.
//!
//! The slot is shared through one `Arc`: the queue holds it as the job
//! (`Arc<dyn Job>`, whose payload `J` the worker takes out when it starts
//! it), the caller as its receiver (`Arc<dyn CallerEnd<T>>`, which knows
//! nothing of `J`). Before, the job was a box of its own holding an `Arc`
//! to the slot: two allocations per request.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::cancel::{Signal, Watch};
use crate::channel::set_waker;

/// Creates a slot for one request with no payload (the unit tests' form).
#[cfg(test)]
pub(crate) fn slot<T: Send + 'static>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let slot = Slot::new(());
    (ReplySender::new(slot.clone()), ReplyReceiver::new(slot))
}

/// A request's payload `J` and the reply `T` it is answered with.
pub(crate) struct Slot<T, J = ()> {
    state: Mutex<State<T, J>>,
}

struct State<T, J> {
    phase: Phase,
    reply: Option<T>,
    /// The request, until a worker starts it.
    job: Option<J>,
    /// The caller's waker, while it waits for the reply.
    caller: Option<Waker>,
    /// The worker's waker, while it watches for the caller going away.
    worker: Option<Waker>,
    caller_gone: bool,
    /// The worker dropped its end without sending: its thread died, or the
    /// job was dropped unanswered.
    worker_gone: bool,
    /// The request's cancellation, once its handler asked for it: fired
    /// when the caller goes before the worker has answered.
    cancel: Option<Arc<Signal>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Queued,
    Started,
    Withdrawn,
}

impl<T, J> Slot<T, J> {
    /// A queued request carrying `job`.
    pub(crate) fn new(job: J) -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(State {
                phase: Phase::Queued,
                reply: None,
                job: Some(job),
                caller: None,
                worker: None,
                caller_gone: false,
                worker_gone: false,
                cancel: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T, J>> {
        // Nothing panics while the lock is held; a poisoned lock still
        // holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the request for serving; `false` if its caller withdrew it or
    /// went away first, and the job must be dropped unstarted.
    pub(crate) fn claim(&self) -> bool {
        let mut state = self.lock();
        match state.phase {
            Phase::Queued if !state.caller_gone => {
                state.phase = Phase::Started;
                true
            }
            Phase::Queued | Phase::Withdrawn => false,
            Phase::Started => true,
        }
    }

    /// The payload of a claimed request, once.
    pub(crate) fn take_job(&self) -> Option<J> {
        let mut state = self.lock();
        match state.phase {
            Phase::Started => state.job.take(),
            Phase::Queued | Phase::Withdrawn => None,
        }
    }

    /// The worker's end went away without a reply (see `ReplySender`'s
    /// `Drop`); also for a job dropped in a queue, never started.
    pub(crate) fn abandon(&self) {
        let mut state = self.lock();
        state.worker_gone = true;
        let caller = state.caller.take();
        // An unstarted payload (the request) goes with the worker's end.
        let job = state.job.take();
        drop(state);
        drop(job);
        if let Some(caller) = caller {
            caller.wake();
        }
    }
}

/// The worker's end, once it started (or rejects) the request.
pub(crate) struct ReplySender<T> {
    // `None` once sent: the send told the caller all it needs, and the
    // drop then takes no lock.
    slot: Option<Arc<dyn WorkerEnd<T>>>,
}

/// What the worker does with a slot, whatever its payload type.
trait WorkerEnd<T> {
    #[cfg(test)]
    fn claim(&self) -> bool;
    fn send(&self, reply: T) -> Result<(), T>;
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()>;
    fn abandon(&self);
}

impl<T, J> WorkerEnd<T> for Slot<T, J> {
    #[cfg(test)]
    fn claim(&self) -> bool {
        Slot::claim(self)
    }

    fn send(&self, reply: T) -> Result<(), T> {
        let mut state = self.lock();
        // The worker's end goes with the send (see `ReplySender::send`),
        // and so does a payload never started (a rejected request).
        state.worker_gone = true;
        let job = state.job.take();
        if state.caller_gone || state.phase == Phase::Withdrawn {
            drop(state);
            drop(job);
            return Err(reply);
        }
        state.reply = Some(reply);
        let caller = state.caller.take();
        drop(state);
        drop(job);
        if let Some(caller) = caller {
            caller.wake();
        }
        Ok(())
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.caller_gone || state.phase == Phase::Withdrawn {
            return Poll::Ready(());
        }
        set_waker(&mut state.worker, cx);
        Poll::Pending
    }

    fn abandon(&self) {
        Slot::abandon(self);
    }
}

impl<T> ReplySender<T> {
    /// The worker's end of `slot`: dropping it unsent tells the caller.
    pub(crate) fn new<J: 'static>(slot: Arc<Slot<T, J>>) -> Self
    where
        T: 'static,
    {
        Self { slot: Some(slot) }
    }

    fn slot(&self) -> &Arc<dyn WorkerEnd<T>> {
        self.slot.as_ref().expect("a reply is sent once")
    }

    /// Takes the request for serving; see [`Slot::claim`].
    #[cfg(test)]
    pub(crate) fn claim(&self) -> bool {
        self.slot().claim()
    }

    /// Sends the reply; gives it back if the caller went away. Marks the
    /// worker's end gone under the same lock, so that dropping the sender
    /// afterwards costs no second lock.
    pub(crate) fn send(mut self, reply: T) -> Result<(), T> {
        let slot = self.slot.take().expect("a reply is sent once");
        slot.send(reply)
    }

    /// Ready once the caller has gone away (or withdrawn the request).
    pub(crate) fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.slot().poll_closed(cx)
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.abandon();
        }
    }
}

/// The worker dropped the request without answering it.
#[derive(Debug)]
pub(crate) struct Unanswered;

/// What the caller does with a slot, whatever its payload type.
pub(crate) trait CallerEnd<T>: Send + Sync {
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, Unanswered>>;
    fn withdraw(&self) -> bool;
    fn gone(&self);
}

impl<T: Send, J: Send> CallerEnd<T> for Slot<T, J> {
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, Unanswered>> {
        let mut state = self.lock();
        if let Some(reply) = state.reply.take() {
            return Poll::Ready(Ok(reply));
        }
        if state.worker_gone {
            return Poll::Ready(Err(Unanswered));
        }
        set_waker(&mut state.caller, cx);
        Poll::Pending
    }

    fn withdraw(&self) -> bool {
        let mut state = self.lock();
        match state.phase {
            Phase::Queued | Phase::Withdrawn => {
                state.phase = Phase::Withdrawn;
                true
            }
            Phase::Started => false,
        }
    }

    fn gone(&self) {
        let mut state = self.lock();
        state.caller_gone = true;
        let worker = state.worker.take();
        // After the answer, a streamed body's channel has the signal.
        let cancel = state.cancel.take().filter(|_| !state.worker_gone);
        // A reply already sent is dropped here, on the caller's side: it is a
        // head and frames, nothing of the inner service's.
        let reply = state.reply.take();
        drop(state);
        if let Some(cancel) = cancel {
            cancel.fire();
        }
        drop(reply);
        if let Some(worker) = worker {
            worker.wake();
        }
    }
}

impl<T: Send, J: Send> Watch for Slot<T, J> {
    fn signal(&self, make: &mut dyn FnMut() -> Arc<Signal>) -> Arc<Signal> {
        let mut state = self.lock();
        let signal = state.cancel.get_or_insert_with(make).clone();
        let gone = state.caller_gone && !state.worker_gone;
        drop(state);
        if gone {
            signal.fire();
        }
        signal
    }

    fn existing(&self) -> Option<Arc<Signal>> {
        self.lock().cancel.clone()
    }
}

/// The caller's end.
pub(crate) struct ReplyReceiver<T> {
    slot: Arc<dyn CallerEnd<T>>,
}

impl<T> ReplyReceiver<T> {
    /// The caller's end of `slot`.
    pub(crate) fn new(slot: Arc<dyn CallerEnd<T>>) -> Self {
        Self { slot }
    }

    /// The reply, once the worker sent it.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Unanswered>> {
        self.slot.poll_recv(cx)
    }

    /// Withdraws the request if no worker has started it: `true` if it
    /// will never run, `false` if a worker already serves it.
    pub(crate) fn withdraw(&mut self) -> bool {
        self.slot.withdraw()
    }
}

impl<T> Drop for ReplyReceiver<T> {
    fn drop(&mut self) {
        self.slot.gone();
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// A withdrawn request is never claimed, and its sender learns the
    /// caller has gone.
    #[test]
    fn withdrawn_before_claim_is_never_started() {
        let (mut tx, mut rx) = slot::<u8>();
        assert!(rx.withdraw());
        assert!(!tx.claim());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(tx.poll_closed(&mut cx).is_ready());
        assert_eq!(tx.send(1), Err(1));
    }

    /// Once claimed, a request cannot be withdrawn: its reply arrives.
    #[test]
    fn claimed_cannot_be_withdrawn() {
        let (tx, mut rx) = slot::<u8>();
        assert!(tx.claim());
        assert!(!rx.withdraw());
        assert_eq!(tx.send(7), Ok(()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(Ok(7))));
    }

    /// A caller that dropped its end before the claim makes the claim
    /// fail: no worker serves a request nobody waits for.
    #[test]
    fn a_dropped_caller_is_not_served() {
        let (tx, rx) = slot::<u8>();
        drop(rx);
        assert!(!tx.claim());
    }

    /// A sender dropped without a reply tells the caller.
    #[test]
    fn a_dropped_sender_is_unanswered() {
        let (tx, mut rx) = slot::<u8>();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(tx);
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Err(Unanswered))
        ));
    }
}
