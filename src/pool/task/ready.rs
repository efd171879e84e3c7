//! A worker's instance of one wrapped service, with a readiness queue.
//!
//! Every request a worker serves for one service calls the same `&mut S`.
//! A tower service keeps only the waker of the last task that polled its
//! `poll_ready` (`ConcurrencyLimit`, `RateLimit`, `Buffer` all do), so if
//! several requests polled it in turn, all but the last would never be
//! woken. Here, as in tower's `Buffer` worker, one request at a time owns
//! readiness: the head of a FIFO queue of waiting requests is the only one
//! that polls `poll_ready`, so the service's one waker is always the head's.
//! When the head gets its call (or fails, panics, or is cancelled and leaves
//! the queue) it wakes the next waiter, which becomes the owner and polls.
//!
//! The fast path costs nothing extra: a request that finds nobody waiting
//! polls `poll_ready` directly; only one that sees `Pending` (or finds others
//! already waiting) takes a ticket, a place in the queue. The queue is a
//! `VecDeque` that keeps its room, so steady waiting allocates nothing
//! either.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A worker's instance, as the worker keeps it: only this thread's tasks
/// borrow it, each for one poll, never across an `.await`.
pub(crate) type InstanceRef<S> = Rc<RefCell<Instance<S>>>;

/// One worker's instance of a wrapped service, and the requests waiting for
/// it to be ready.
pub(crate) struct Instance<S> {
    pub(crate) service: S,
    /// Tickets and wakers of the waiting requests; the front owns readiness.
    waiting: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

impl<S> Instance<S> {
    pub(crate) fn new(service: S) -> Self {
        Self {
            service,
            waiting: VecDeque::new(),
            next_ticket: 0,
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }
}

/// One request's turn at the service's readiness; leaving (by drop, on
/// success, failure, panic or cancellation) hands the turn on.
pub(crate) struct Turn<S> {
    queue: InstanceRef<S>,
    ticket: Option<u64>,
}

impl<S> Turn<S> {
    pub(crate) fn new(queue: InstanceRef<S>) -> Self {
        Self {
            queue,
            ticket: None,
        }
    }

    /// Ready when this request may poll the service's readiness: nobody
    /// waits before it. Otherwise it queues (once) and keeps its waker
    /// fresh, to be woken when its turn comes.
    pub(crate) fn poll_owner(&mut self, cx: &Context<'_>) -> Poll<()> {
        let mut queue = self.queue.borrow_mut();
        match self.ticket {
            // The fast path: nobody waits, poll the service directly.
            None if queue.waiting.is_empty() => Poll::Ready(()),
            None => {
                let ticket = queue.ticket();
                queue.waiting.push_back((ticket, cx.waker().clone()));
                self.ticket = Some(ticket);
                Poll::Pending
            }
            Some(ticket) => {
                if queue
                    .waiting
                    .front()
                    .is_some_and(|(head, _)| *head == ticket)
                {
                    return Poll::Ready(());
                }
                if let Some((_, waker)) = queue.waiting.iter_mut().find(|(t, _)| *t == ticket) {
                    waker.clone_from(cx.waker());
                }
                Poll::Pending
            }
        }
    }

    /// The service said `Pending` to this request: it waits at the head
    /// (queued now if it was on the fast path), owning readiness.
    pub(crate) fn wait(&mut self, cx: &Context<'_>) {
        if self.ticket.is_none() {
            let mut queue = self.queue.borrow_mut();
            let ticket = queue.ticket();
            // Only reached with nobody waiting (see `poll_owner`): the head.
            debug_assert!(queue.waiting.is_empty());
            queue.waiting.push_front((ticket, cx.waker().clone()));
            self.ticket = Some(ticket);
        }
    }

    /// Leaves the queue, and wakes the new head if this was the head.
    pub(crate) fn leave(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let next = {
            let mut queue = self.queue.borrow_mut();
            let waiting = &mut queue.waiting;
            let Some(place) = waiting.iter().position(|(t, _)| *t == ticket) else {
                return;
            };
            waiting.remove(place);
            // Only the head owns readiness: a waiter leaving from behind it
            // changes nobody's turn.
            (place == 0)
                .then(|| waiting.front().map(|(_, waker)| waker.clone()))
                .flatten()
        };
        // Woken after the borrow ends: a waker may run code that polls.
        if let Some(next) = next {
            next.wake();
        }
    }
}

impl<S> Drop for Turn<S> {
    fn drop(&mut self) {
        self.leave();
    }
}
