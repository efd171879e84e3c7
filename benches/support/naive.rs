//! The `naive_pool` baseline: what a user writes by hand to run blocking
//! handlers on a few threads of their own.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

/// `threads` std threads, each owning a `std::sync::mpsc` receiver, fed
/// round-robin; each runs a job to completion with its handler and answers
/// through a tokio oneshot. The threads end when the pool is dropped.
pub struct NaivePool<T, R> {
    senders: Vec<mpsc::Sender<(T, oneshot::Sender<R>)>>,
    next: AtomicUsize,
}

impl<T: Send + 'static, R: Send + 'static> NaivePool<T, R> {
    /// Threads named `{name}-{i}`.
    pub fn new(threads: usize, name: &str, handler: fn(T) -> R) -> Self {
        let senders = (0..threads)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<(T, oneshot::Sender<R>)>();
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        for (job, reply) in rx {
                            let _ = reply.send(handler(job));
                        }
                    })
                    .expect("naive pool thread");
                tx
            })
            .collect();
        Self {
            senders,
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `job` to the next thread; its answer comes on the receiver.
    pub fn call(&self, job: T) -> oneshot::Receiver<R> {
        let (tx, rx) = oneshot::channel();
        let i = self.next.fetch_add(1, Relaxed) % self.senders.len();
        self.senders[i].send((job, tx)).expect("naive pool thread");
        rx
    }
}
