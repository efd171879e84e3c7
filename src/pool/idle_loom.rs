//! The hand-off, model-checked on the worker's real path ([`Idle::take`]):
//! run with `RUSTFLAGS="--cfg tower_affinity_loom" cargo test --lib --release loom`.
//!
//! A queue is modelled by a counter with relaxed operations: the fences in
//! `Idle` alone must make the properties hold.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::task::{Wake, Waker};

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::thread;

use super::{Idle, Source, Taken};

/// A waker that records that it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

impl Flag {
    fn new() -> Arc<Self> {
        Arc::new(Flag(AtomicBool::new(false)))
    }

    fn woken(&self) -> bool {
        self.0.load(SeqCst)
    }
}

/// A queue of identical jobs: a count.
#[derive(Default)]
struct Queue(AtomicUsize);

impl Queue {
    fn push(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    fn len(&self) -> usize {
        self.0.load(Relaxed)
    }
}

impl Source for Queue {
    type Job = ();

    fn try_take(&self) -> Option<()> {
        self.0
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(drop)
    }

    fn finished(&self) -> bool {
        false
    }

    fn more_shared(&self) -> bool {
        self.len() > 0
    }
}

/// A pool of `n` worker slots, each with a flag for a waker.
fn pool(n: usize) -> (Arc<Idle>, Vec<Arc<Flag>>) {
    let idle = Arc::new(Idle::new(n));
    let flags: Vec<_> = (0..n).map(|_| Flag::new()).collect();
    for (index, flag) in flags.iter().enumerate() {
        idle.set_waker(index, Some(&Waker::from(flag.clone())));
    }
    (idle, flags)
}

/// A worker running its real `take` while a submitter queues a job and
/// wakes a waiting worker: the worker takes the job or is woken.
#[test]
fn loom_a_queued_job_is_seen_or_wakes_the_worker() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let queue = Arc::new(Queue::default());
        let submitter = {
            let (idle, queue) = (idle.clone(), queue.clone());
            thread::spawn(move || {
                queue.push();
                idle.wake_any(|_| false);
            })
        };
        let taken = idle.take(0, &*queue, |_| false);
        submitter.join().unwrap();
        assert!(
            taken == Taken::Job(()) || flags[0].woken(),
            "the job was missed"
        );
    });
}

/// A keyed job, queued and woken for while its worker is in `take`: the
/// worker takes it or is woken, and the other waiting worker is not.
#[test]
fn loom_a_keyed_job_wakes_its_worker() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let own = Arc::new(Queue::default());
        let shared = Queue::default();
        // Worker 0 waits on the shared queue.
        assert_eq!(idle.take(0, &shared, |_| false), Taken::Waiting);
        let submitter = {
            let (idle, own) = (idle.clone(), own.clone());
            thread::spawn(move || {
                own.push();
                idle.wake(1);
            })
        };
        let taken = idle.take(1, &*own, |_| false);
        submitter.join().unwrap();
        assert!(taken == Taken::Job(()) || flags[1].woken(), "missed");
        assert!(!flags[0].woken(), "woke the wrong worker");
    });
}

/// Two jobs in the shared queue and one wake that went elsewhere: the
/// worker that takes one job leaves the other to a waiting worker, which
/// is woken (the baton) or takes it itself.
#[test]
fn loom_work_left_behind_wakes_another_worker() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let queue = Arc::new(Queue::default());
        let second = {
            let (idle, queue) = (idle.clone(), queue.clone());
            thread::spawn(move || idle.take(1, &*queue, |_| false))
        };
        queue.push();
        queue.push();
        assert_eq!(idle.take(0, &*queue, |_| false), Taken::Job(()));
        let taken = second.join().unwrap();
        assert!(
            queue.len() == 0 || taken == Taken::Job(()) || flags[1].woken(),
            "a job waits while worker 1 sleeps"
        );
    });
}

/// A worker that registers and then finds a job leaves the idle set: a
/// later job wakes the worker that is really waiting, not the busy one.
#[test]
fn loom_a_worker_that_found_work_is_not_woken_again() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let queue = Arc::new(Queue::default());
        let submitter = {
            let (idle, queue) = (idle.clone(), queue.clone());
            thread::spawn(move || {
                queue.push();
                idle.wake_any(|_| false);
            })
        };
        let first = idle.take(0, &*queue, |_| false);
        submitter.join().unwrap();
        if first == Taken::Waiting {
            // Woken: its next poll takes the job.
            assert_eq!(idle.take(0, &*queue, |_| false), Taken::Job(()));
        }
        // Worker 0 is busy; worker 1 waits; a second job comes.
        assert_eq!(idle.take(1, &*queue, |_| false), Taken::Waiting);
        queue.push();
        idle.wake_any(|_| false);
        assert!(flags[1].woken(), "the second job woke the busy worker");
    });
}
