//! The bounded channel that carries one streamed response's frames from
//! its worker to its [`ThreadAffinityBody`](crate::ThreadAffinityBody).
//!
//! One producer, one consumer, a fixed capacity. It differs from a general
//! channel in three ways that the worker needs:
//!
//! - **Room before production.** The worker asks for room
//!   ([`Sender::poll_ready`]) before it polls the inner body, so a frame is
//!   never produced with nowhere to go.
//! - **Batched wake-ups.** A producer waiting for room is woken when the
//!   reader has drained the buffer to half, not for every frame taken: a
//!   fast stream costs a wake-up per half buffer, not per frame.
//! - **The reader leaving is seen at once.** Dropping the receiver wakes a
//!   producer that waits for room or for its inner body
//!   ([`Sender::poll_closed`]), so the worker drops the body promptly.
//!
//! A plain mutex guards the state: each side holds it for a few
//! instructions, and wakers are woken after it is released.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Creates a channel holding at most `capacity` items.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(capacity),
            capacity,
            reader: None,
            writer: None,
            reader_gone: false,
            writer_gone: false,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    capacity: usize,
    /// The receiver's waker, while it waits for an item.
    reader: Option<Waker>,
    /// The sender's waker, while it waits for room or for the reader to go.
    writer: Option<Waker>,
    reader_gone: bool,
    writer_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; a poisoned lock still
        // holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker's end.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The reader went away.
#[derive(Debug)]
pub(crate) struct Closed;

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
        set_waker(&mut state.writer, cx);
        Poll::Pending
    }

    /// Ready once the reader has gone.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if state.reader_gone {
            return Poll::Ready(());
        }
        set_waker(&mut state.writer, cx);
        Poll::Pending
    }

    /// Queues `item`. Call it after `poll_ready` said there is room; an
    /// item beyond capacity is queued anyway (the bound is kept by asking
    /// first), and an item for a reader that has gone is dropped.
    pub(crate) fn send(&self, item: T) {
        let mut state = self.shared.lock();
        if state.reader_gone {
            return;
        }
        state.queue.push_back(item);
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
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
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the sender has gone and the queue is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        match state.queue.pop_front() {
            Some(item) => {
                // Wake a waiting producer only once half the buffer is free.
                let writer = if state.queue.len() <= state.capacity / 2 {
                    state.writer.take()
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

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.reader_gone = true;
        // Items left are dropped here, on the reader's side: they are
        // frames (bytes and headers), not anything of the inner service's.
        let queue = std::mem::take(&mut state.queue);
        let writer = state.writer.take();
        drop(state);
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) => waker.clone_from(cx.waker()),
        None => *slot = Some(cx.waker().clone()),
    }
}
