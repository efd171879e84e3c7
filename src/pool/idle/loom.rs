//! The hand-off, model-checked on the worker's real path ([`Idle::take`]):
//! run with `RUSTFLAGS="--cfg tower_affinity_loom" cargo test --lib --release loom`.
//!
//! A queue is modelled by a counter with relaxed operations: the fences in
//! `Idle` alone must make the properties hold.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
// Queues and flags are plain `Arc`s: loom tracks the atomics inside.
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

/// A worker's queues: its own, and the shared one.
#[derive(Clone, Default)]
struct Queues {
    own: Arc<Queue>,
    shared: Arc<Queue>,
}

impl Queues {
    /// A worker's queues, with `shared` as the shared one.
    fn on(shared: &Arc<Queue>) -> Self {
        Self {
            own: Arc::default(),
            shared: shared.clone(),
        }
    }
}

impl Queue {
    fn take(&self) -> Option<()> {
        self.0
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(drop)
    }
}

impl Source for Queues {
    type Job = ();

    fn take_own(&self) -> Option<()> {
        self.own.take()
    }

    fn take_shared(&self) -> Option<()> {
        self.shared.take()
    }

    fn finished(&self) -> bool {
        false
    }

    fn more_shared(&self) -> bool {
        self.shared.len() > 0
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
        let queues = Queues::default();
        let submitter = {
            let (idle, shared) = (idle.clone(), queues.shared.clone());
            thread::spawn(move || {
                shared.push();
                idle.wake_any(|_| false);
            })
        };
        let taken = idle.take(0, &queues, |_| false);
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
        let shared = Arc::new(Queue::default());
        let (q0, q1) = (Queues::on(&shared), Queues::on(&shared));
        // Worker 0 waits too.
        assert_eq!(idle.take(0, &q0, |_| false), Taken::Waiting);
        let submitter = {
            let (idle, own) = (idle.clone(), q1.own.clone());
            thread::spawn(move || {
                own.push();
                idle.wake(1);
            })
        };
        let taken = idle.take(1, &q1, |_| false);
        submitter.join().unwrap();
        assert!(taken == Taken::Job(()) || flags[1].woken(), "missed");
        assert!(!flags[0].woken(), "woke the wrong worker");
    });
}

/// Issue 12's hazard: an unkeyed job's wake goes to worker 0, a keyed job
/// for worker 0 arrives before it runs, and worker 0 takes the keyed one
/// first (and may block in it). The unkeyed job is then taken by worker 1,
/// or worker 1 is woken for it: it never waits behind the busy worker.
#[test]
fn loom_a_keyed_job_taken_first_passes_the_unkeyed_one_on() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let shared = Arc::new(Queue::default());
        let (q0, q1) = (Queues::on(&shared), Queues::on(&shared));
        assert_eq!(idle.take(0, &q0, |_| false), Taken::Waiting);
        let second = {
            let idle = idle.clone();
            thread::spawn(move || idle.take(1, &q1, |_| false))
        };
        shared.push();
        idle.wake_any(|_| false);
        q0.own.push();
        idle.wake(0);
        assert_eq!(idle.take(0, &q0, |_| false), Taken::Job(()));
        let taken = second.join().unwrap();
        assert!(
            shared.len() == 0 || taken == Taken::Job(()) || flags[1].woken(),
            "the unkeyed job waits while worker 1 sleeps"
        );
    });
}

/// Two jobs in the shared queue and a wake that went elsewhere: the worker
/// that takes one leaves the other to a waiting worker, which is woken or
/// takes it itself.
#[test]
fn loom_work_left_behind_wakes_another_worker() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let shared = Arc::new(Queue::default());
        let (q0, q1) = (Queues::on(&shared), Queues::on(&shared));
        let second = {
            let idle = idle.clone();
            thread::spawn(move || idle.take(1, &q1, |_| false))
        };
        shared.push();
        shared.push();
        assert_eq!(idle.take(0, &q0, |_| false), Taken::Job(()));
        let taken = second.join().unwrap();
        assert!(
            shared.len() == 0 || taken == Taken::Job(()) || flags[1].woken(),
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
        let shared = Arc::new(Queue::default());
        let (q0, q1) = (Queues::on(&shared), Queues::on(&shared));
        let submitter = {
            let (idle, shared) = (idle.clone(), shared.clone());
            thread::spawn(move || {
                shared.push();
                idle.wake_any(|_| false);
            })
        };
        let first = idle.take(0, &q0, |_| false);
        submitter.join().unwrap();
        if first == Taken::Waiting {
            // Woken: its next poll takes the job.
            assert_eq!(idle.take(0, &q0, |_| false), Taken::Job(()));
        }
        // Worker 0 is busy; worker 1 waits; a second job comes.
        assert_eq!(idle.take(1, &q1, |_| false), Taken::Waiting);
        shared.push();
        idle.wake_any(|_| false);
        assert!(flags[1].woken(), "the second job woke the busy worker");
    });
}

/// A spare retiring (`leave`) while a submitter claims it for a job:
/// exactly one of them wins the slot. A spare that retires was claimed by
/// no one; a spare that was claimed (and woken) stays for the job.
#[test]
fn loom_a_claimed_spare_does_not_retire() {
    loom::model(|| {
        let (idle, flags) = pool(1);
        let queues = Queues::default();
        assert_eq!(idle.take(0, &queues, |_| false), Taken::Waiting);
        let submitter = {
            let (idle, shared) = (idle.clone(), queues.shared.clone());
            thread::spawn(move || {
                shared.push();
                idle.wake_any(|_| false).any()
            })
        };
        let retired = idle.leave(0);
        let claimed = submitter.join().unwrap();
        assert_ne!(retired, claimed, "retired: {retired}, claimed: {claimed}");
        assert_eq!(flags[0].woken(), claimed);
    });
}

/// Two submitters, each with a job, and two waiting workers: each claims a
/// worker of its own, so both workers are woken, never one twice while the
/// other sleeps.
#[test]
fn loom_two_jobs_wake_two_workers() {
    loom::model(|| {
        let (idle, flags) = pool(2);
        let shared = Arc::new(Queue::default());
        let (q0, q1) = (Queues::on(&shared), Queues::on(&shared));
        assert_eq!(idle.take(0, &q0, |_| false), Taken::Waiting);
        assert_eq!(idle.take(1, &q1, |_| false), Taken::Waiting);
        let submitters: Vec<_> = (0..2)
            .map(|_| {
                let (idle, shared) = (idle.clone(), shared.clone());
                thread::spawn(move || {
                    shared.push();
                    idle.wake_any(|_| false).any()
                })
            })
            .collect();
        for submitter in submitters {
            assert!(submitter.join().unwrap(), "a job found no worker");
        }
        assert!(flags[0].woken() && flags[1].woken(), "a worker sleeps");
    });
}
