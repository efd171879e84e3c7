//! The bounded channel that carries one streamed response's frames from
//! its worker to its [`ThreadAffinityBody`](crate::ThreadAffinityBody).
//!
//! One producer, one consumer, a fixed capacity. It differs from a general
//! channel in four ways that the worker needs:
//!
//! - **Room before production.** The worker asks for room
//!   ([`Sender::poll_ready`]) before it polls the inner body, so a frame is
//!   never produced with nowhere to go. [`Sender::send`] says whether room
//!   is left, so a producer that keeps up asks (and locks) once per item.
//! - **Merging while the reader is behind.** [`Sender::send_merging`] may
//!   fold an item into the last queued one: only when the queue is not
//!   empty, so the reader is not waiting and nothing is held back from it.
//! - **Batched wake-ups.** A producer waiting for room is woken when the
//!   reader has drained the buffer to half, not for every item taken: a
//!   fast stream costs a wake-up per half buffer, not per item.
//! - **The reader leaving is seen at once.** Dropping the receiver wakes a
//!   producer that waits for room or for its inner body
//!   ([`Sender::poll_closed`]), so the worker drops the body promptly.
//!
//! A plain mutex guards the state: each side holds it for a few
//! instructions, and wakers are woken after it is released. The producer
//! has two waker slots, one for room and one for the reader leaving: a
//! producer waiting on its own inner body is not woken by every read.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

// Under `--cfg tower_affinity_loom`, loom explores every interleaving of
// the two sides (see the models at the end).
#[cfg(tower_affinity_loom)]
use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(tower_affinity_loom))]
use std::sync::{Arc, Mutex, MutexGuard};

/// Creates a channel holding at most `capacity` items.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Chan {
        state: Mutex::new(State {
            // Room for the common case up front, the rest as items wait:
            // `body_buffer(usize::MAX)` must not allocate (or abort) here.
            queue: VecDeque::with_capacity(capacity.min(16)),
            capacity,
            reader: None,
            room: None,
            closed: None,
            reader_gone: false,
            writer_gone: false,
            cancel: None,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Chan<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    capacity: usize,
    /// The receiver's waker, while it waits for an item.
    reader: Option<Waker>,
    /// The sender's waker, while it waits for room.
    room: Option<Waker>,
    /// The sender's waker, while it waits for the reader to go (that is,
    /// while its inner body is pending).
    closed: Option<Waker>,
    reader_gone: bool,
    writer_gone: bool,
    /// The request's cancellation, if its handler asked for it: fired when
    /// the reader goes before the end.
    cancel: Option<std::sync::Arc<crate::cancel::Signal>>,
}

impl<T> Chan<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; a poisoned lock still
        // holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker's end.
pub(crate) struct Sender<T> {
    shared: Arc<Chan<T>>,
}

/// The reader went away.
#[derive(Debug)]
pub(crate) struct Closed;

/// What a send did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// There is room for another item: the next `poll_ready` can be skipped.
    pub(crate) room: bool,
    /// The item was merged into the last one queued.
    pub(crate) merged: bool,
}

impl<T> Sender<T> {
    /// Ready when there is room for one item; an error once the reader has
    /// gone.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut state = self.shared.lock();
        if state.reader_gone {
            return Poll::Ready(Err(Closed));
        }
        if state.queue.len() < state.capacity {
            return Poll::Ready(Ok(()));
        }
        set_waker(&mut state.room, cx);
        Poll::Pending
    }

    /// Ready once the reader has gone.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if state.reader_gone {
            return Poll::Ready(());
        }
        set_waker(&mut state.closed, cx);
        Poll::Pending
    }

    /// Queues `item`, or says `Closed` if the reader has gone (the item is
    /// dropped). Call it after `poll_ready` said there is room; an item
    /// beyond capacity is queued anyway (the bound is kept by asking
    /// first).
    pub(crate) fn send(&self, item: T) -> Result<Sent, Closed> {
        self.send_merging(item, |_, item| Err(item))
    }

    /// Like `send`, but while the reader is behind (the queue is not
    /// empty) first offers `item` to `merge` with the last queued item;
    /// `merge` gives it back when they do not merge.
    pub(crate) fn send_merging(
        &self,
        item: T,
        merge: impl FnOnce(&mut T, T) -> Result<(), T>,
    ) -> Result<Sent, Closed> {
        let mut state = self.shared.lock();
        if state.reader_gone {
            drop(state);
            drop(item);
            return Err(Closed);
        }
        // A non-empty queue means the reader is not waiting: merging holds
        // nothing back from it.
        let item = match state.queue.back_mut() {
            Some(last) => merge(last, item).err(),
            None => Some(item),
        };
        let merged = item.is_none();
        if let Some(item) = item {
            state.queue.push_back(item);
        }
        let room = state.queue.len() < state.capacity;
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(Sent { room, merged })
    }
}

impl<T> Sender<T> {
    /// Ends the stream with `last` in place of every item still queued, at
    /// once: the reader gets `last` next, without waiting for room, and
    /// the stream holds nothing else. Returns the items it replaced, for
    /// the caller to drop (they may run user code), or `Closed` (with
    /// `last`) if the reader has gone.
    pub(crate) fn close_with(&self, last: T) -> Result<VecDeque<T>, (Closed, T)> {
        let mut state = self.shared.lock();
        if state.reader_gone {
            return Err((Closed, last));
        }
        let left = std::mem::take(&mut state.queue);
        // The reader's next item; capacity no longer matters.
        state.queue.push_back(last);
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(left)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.writer_gone = true;
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

/// The body's end.
pub(crate) struct Receiver<T> {
    shared: Arc<Chan<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the sender has gone and the queue is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        match state.queue.pop_front() {
            Some(item) => {
                // Wake a producer waiting for room only once half the
                // buffer is free; one waiting on its inner body is not
                // concerned.
                let writer = if state.queue.len() <= state.capacity / 2 {
                    state.room.take()
                } else {
                    None
                };
                drop(state);
                if let Some(writer) = writer {
                    writer.wake();
                }
                Poll::Ready(Some(item))
            }
            None if state.writer_gone => Poll::Ready(None),
            None => {
                set_waker(&mut state.reader, cx);
                Poll::Pending
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Leaves: the producer learns it at once (woken if it waits for room
    /// or for its inner body), and the items still queued are dropped here,
    /// so a closed channel holds nothing. Later sends say `Closed`.
    pub(crate) fn close(&mut self) {
        let mut state = self.shared.lock();
        state.reader_gone = true;
        let queue = std::mem::take(&mut state.queue);
        let room = state.room.take();
        let closed = state.closed.take();
        let cancel = state.cancel.take().filter(|_| !state.writer_gone);
        drop(state);
        if let Some(cancel) = cancel {
            cancel.fire();
        }
        // Wake first: the items left are frames and errors, and an error's
        // `Drop` is user code that may panic; the producer must still learn
        // that the reader has gone.
        for writer in [room, closed].into_iter().flatten() {
            writer.wake();
        }
        // Dropped here, on the reader's side: they are frames (bytes and
        // headers) and boxed errors, not anything of the inner service's.
        drop(queue);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(tower_affinity_loom)]
impl<T> Sender<T> {
    /// The loom models drive the channel alone, never a request.
    pub(crate) fn watch(&self) -> std::sync::Arc<dyn crate::cancel::Watch> {
        unreachable!("no request under the loom models")
    }
}

#[cfg(not(tower_affinity_loom))]
impl<T: Send> Sender<T> {
    /// Where the request's cancellation lives while this channel carries
    /// its body (see `cancel::Scope::hand_over`).
    pub(crate) fn watch(&self) -> Arc<dyn crate::cancel::Watch>
    where
        T: 'static,
    {
        self.shared.clone()
    }
}

#[cfg(not(tower_affinity_loom))]
impl<T: Send> crate::cancel::Watch for Chan<T> {
    fn signal(
        &self,
        make: &mut dyn FnMut() -> Arc<crate::cancel::Signal>,
    ) -> Arc<crate::cancel::Signal> {
        let mut state = self.lock();
        let signal = state.cancel.get_or_insert_with(make).clone();
        let gone = state.reader_gone && !state.writer_gone;
        drop(state);
        if gone {
            signal.fire();
        }
        signal
    }

    fn existing(&self) -> Option<Arc<crate::cancel::Signal>> {
        self.lock().cancel.clone()
    }
}

/// Stores `cx`'s waker in `slot`, reusing the one there when it is the same.
pub(crate) fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) => waker.clone_from(cx.waker()),
        None => *slot = Some(cx.waker().clone()),
    }
}

/// The channel, model-checked: run with
/// `RUSTFLAGS="--cfg tower_affinity_loom" cargo test --lib --release loom`.
#[cfg(all(test, tower_affinity_loom))]
mod loom_tests;
