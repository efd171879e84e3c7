//! The one-shot slot a queued request is answered through.
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

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Creates a slot for one request.
pub(crate) fn slot<T>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State {
            phase: Phase::Queued,
            reply: None,
            caller: None,
            worker: None,
            caller_gone: false,
            worker_gone: false,
        }),
    });
    (ReplySender { slot: slot.clone() }, ReplyReceiver { slot })
}

struct Slot<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    phase: Phase,
    reply: Option<T>,
    /// The caller's waker, while it waits for the reply.
    caller: Option<Waker>,
    /// The worker's waker, while it watches for the caller going away.
    worker: Option<Waker>,
    caller_gone: bool,
    /// The worker dropped its end without sending: its thread died, or the
    /// job was dropped unanswered.
    worker_gone: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Queued,
    Started,
    Withdrawn,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held; a poisoned lock still
        // holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker's end.
pub(crate) struct ReplySender<T> {
    slot: Arc<Slot<T>>,
}

impl<T> ReplySender<T> {
    /// Takes the request for serving; `false` if its caller withdrew it or
    /// went away first, and the job must be dropped unstarted.
    pub(crate) fn claim(&self) -> bool {
        let mut state = self.slot.lock();
        match state.phase {
            Phase::Queued if !state.caller_gone => {
                state.phase = Phase::Started;
                true
            }
            Phase::Queued | Phase::Withdrawn => false,
            Phase::Started => true,
        }
    }

    /// Sends the reply; gives it back if the caller went away.
    pub(crate) fn send(self, reply: T) -> Result<(), T> {
        let mut state = self.slot.lock();
        if state.caller_gone || state.phase == Phase::Withdrawn {
            return Err(reply);
        }
        state.reply = Some(reply);
        let caller = state.caller.take();
        drop(state);
        if let Some(caller) = caller {
            caller.wake();
        }
        Ok(())
    }

    /// Ready once the caller has gone away (or withdrawn the request).
    pub(crate) fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.slot.lock();
        if state.caller_gone || state.phase == Phase::Withdrawn {
            return Poll::Ready(());
        }
        set_waker(&mut state.worker, cx);
        Poll::Pending
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        state.worker_gone = true;
        let caller = state.caller.take();
        drop(state);
        if let Some(caller) = caller {
            caller.wake();
        }
    }
}

/// The worker dropped the request without answering it.
#[derive(Debug)]
pub(crate) struct Unanswered;

/// The caller's end.
pub(crate) struct ReplyReceiver<T> {
    slot: Arc<Slot<T>>,
}

impl<T> ReplyReceiver<T> {
    /// The reply, once the worker sent it.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Unanswered>> {
        let mut state = self.slot.lock();
        if let Some(reply) = state.reply.take() {
            return Poll::Ready(Ok(reply));
        }
        if state.worker_gone {
            return Poll::Ready(Err(Unanswered));
        }
        set_waker(&mut state.caller, cx);
        Poll::Pending
    }

    /// Withdraws the request if no worker has started it: `true` if it
    /// will never run, `false` if a worker already serves it.
    pub(crate) fn withdraw(&mut self) -> bool {
        let mut state = self.slot.lock();
        match state.phase {
            Phase::Queued | Phase::Withdrawn => {
                state.phase = Phase::Withdrawn;
                true
            }
            Phase::Started => false,
        }
    }
}

impl<T> Drop for ReplyReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        state.caller_gone = true;
        let worker = state.worker.take();
        // A reply already sent is dropped here, on the caller's side: it is a
        // head and frames, nothing of the inner service's.
        let reply = state.reply.take();
        drop(state);
        drop(reply);
        if let Some(worker) = worker {
            worker.wake();
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) => waker.clone_from(cx.waker()),
        None => *slot = Some(cx.waker().clone()),
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
