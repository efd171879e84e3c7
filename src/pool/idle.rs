//! Which workers are waiting for work, and how a new job wakes one.
//!
//! A worker's event loop, finding its queues empty, leaves its waker here
//! and re-checks the queues (a job queued in between would otherwise wait
//! for the next one). Queuing a job wakes one waiting worker: for a keyed
//! job, its own; for an unkeyed one, preferably a worker that is not inside
//! a poll of user code.
//!
//! Why not the queue's own notification: a worker can wait on the queue
//! and then, in the same turn of its event loop, block in a handler. A
//! notification handed to it would sit there while another worker idles.
//! Here the submitter sees that the worker is busy (its watchdog mark is
//! set) and wakes an idle one instead.
//!
//! Ordering: the submitter queues the job, then reads `waiting`; the worker
//! registers in `waiting`, then re-reads the queue. With a `SeqCst` fence
//! on both sides, at least one of them sees the other's write, so a job is
//! never left with every worker asleep.

use std::sync::atomic::Ordering::SeqCst;
use std::task::Waker;

// Under `--cfg tower_affinity_loom`, loom's model checker explores every
// interleaving of the hand-off below (see the tests at the end).
#[cfg(tower_affinity_loom)]
use loom::sync::{
    atomic::{fence, AtomicUsize},
    Mutex,
};
#[cfg(not(tower_affinity_loom))]
use std::sync::{
    atomic::{fence, AtomicUsize},
    Mutex,
};

#[derive(Debug)]
pub(crate) struct Idle {
    /// The waker of each worker whose event loop waits for work, by index.
    wakers: Mutex<Vec<Option<Waker>>>,
    /// How many of `wakers` are set, to skip the lock when none is.
    waiting: AtomicUsize,
}

impl Idle {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            wakers: Mutex::new(vec![None; workers]),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Worker `index` waits for work; the caller re-checks its queues after.
    pub(crate) fn wait(&self, index: usize, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        match &mut wakers[index] {
            Some(old) => old.clone_from(waker),
            slot @ None => {
                *slot = Some(waker.clone());
                self.waiting.fetch_add(1, SeqCst);
            }
        }
        drop(wakers);
        fence(SeqCst);
    }

    /// Worker `index` found work: it is no longer waiting.
    pub(crate) fn found(&self, index: usize) {
        if self.waiting.load(SeqCst) == 0 {
            return;
        }
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if wakers[index].take().is_some() {
            self.waiting.fetch_sub(1, SeqCst);
        }
    }

    /// Wakes worker `index`, if it waits, for a job in its own queue.
    pub(crate) fn wake(&self, index: usize) {
        self.wake_by(|wakers| wakers[index].is_some().then_some(index));
    }

    /// Wakes one waiting worker for a job in the shared queue, preferring
    /// one for which `busy` is false.
    pub(crate) fn wake_any(&self, busy: impl Fn(usize) -> bool) {
        self.wake_by(|wakers| {
            let mut waiting = (0..wakers.len()).filter(|&i| wakers[i].is_some());
            let first = waiting.clone().next();
            waiting.find(|&i| !busy(i)).or(first)
        });
    }

    /// Wakes every waiting worker: the queues closed.
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = {
            let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            self.waiting.store(0, SeqCst);
            wakers.iter_mut().filter_map(Option::take).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    fn wake_by(&self, pick: impl FnOnce(&[Option<Waker>]) -> Option<usize>) {
        // Pairs with the fence in `wait`: the job is queued before this read.
        fence(SeqCst);
        if self.waiting.load(SeqCst) == 0 {
            return;
        }
        let waker = {
            let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            let Some(index) = pick(&wakers) else { return };
            self.waiting.fetch_sub(1, SeqCst);
            wakers[index].take()
        };
        // Outside the lock: waking may run code (an unpark, a reschedule).
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The hand-off, model-checked: run with
/// `RUSTFLAGS="--cfg tower_affinity_loom" cargo test --lib --release loom`.
#[cfg(all(test, tower_affinity_loom))]
mod loom_tests {
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::thread;

    use super::*;

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    /// A worker that finds the queue empty, registers and looks again; a
    /// submitter that queues a job, then wakes a waiting worker. Whatever
    /// the interleaving, the worker sees the job or is woken: no job is
    /// left with every worker asleep. The queue is modelled by a counter
    /// with relaxed operations: the fences alone must make this hold.
    #[test]
    fn a_queued_job_is_seen_or_wakes_the_worker() {
        loom::model(|| {
            let idle = Arc::new(Idle::new(2));
            let queued = Arc::new(AtomicUsize::new(0));
            let submitter = {
                let (idle, queued) = (idle.clone(), queued.clone());
                thread::spawn(move || {
                    queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    idle.wake_any(|_| false);
                })
            };
            let flag = Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let seen = queued.load(std::sync::atomic::Ordering::Relaxed) > 0 || {
                idle.wait(0, &waker);
                queued.load(std::sync::atomic::Ordering::Relaxed) > 0
            };
            submitter.join().unwrap();
            assert!(seen || flag.0.load(SeqCst), "the job was missed");
        });
    }

    /// A keyed job wakes its own worker, and only that one.
    #[test]
    fn a_keyed_job_wakes_its_worker() {
        loom::model(|| {
            let idle = Arc::new(Idle::new(2));
            let flags: Vec<_> = (0..2)
                .map(|_| Arc::new(Flag(AtomicBool::new(false))))
                .collect();
            idle.wait(0, &Waker::from(flags[0].clone()));
            idle.wait(1, &Waker::from(flags[1].clone()));
            let submitter = {
                let idle = idle.clone();
                thread::spawn(move || idle.wake(1))
            };
            submitter.join().unwrap();
            assert!(!flags[0].0.load(SeqCst));
            assert!(flags[1].0.load(SeqCst));
        });
    }
}
