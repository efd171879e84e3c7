//! Which workers are waiting for work, and how a new job wakes one.
//!
//! Each worker slot has one bit in `bits`, set while its event loop waits
//! for a job, and the event loop's waker in `wakers`, stored once when the
//! loop starts (the waker of a thread's event loop does not change). So
//! registering is one `fetch_or` on the worker's side, and waking is one
//! `fetch_and` that claims a bit, then a wake: no list to scan, no lock
//! shared between workers. With up to 64 workers the whole idle set is one
//! word; each further 64 workers add one word to look at.
//!
//! The worker side is [`Idle::take`], the code the event loop runs (the
//! loom models below run it too): take a job; else, unless still registered
//! from an earlier poll, register and look once more. Registration
//! outlives the poll that made it: a worker woken for nothing (a local task
//! woke its loop) finds its bit still set and just waits on.
//!
//! Ordering: the submitter queues the job, then reads `bits`; the worker
//! sets its bit, then re-reads the queue. With a `SeqCst` fence on both
//! sides, at least one of them sees the other's write, so a job is never
//! left with every worker asleep. A submitter claims a bit by clearing it:
//! two submitters never wake one worker for two jobs while another sleeps.
//!
//! A woken worker is not always free: it may have registered, then, in the
//! same turn of its runtime, run a local task that blocks in a handler. So
//! an unkeyed job prefers a waiting worker that is not inside a poll of
//! user code, and a worker that takes a job while unkeyed work still waits
//! wakes another waiting worker for it (the baton): it may have been woken
//! for that unkeyed job and taken a keyed one first, and it may block in
//! the job it took. (Passing the baton only after a keyed job measured no
//! better within this machine's noise, and a fixed pool of 64 stalled in
//! some runs without it.)
//!
//! Why not async-channel's own listeners (each waiting worker holding a
//! `Recv` future per queue, a send notifying one): measured against a
//! variant that did just that, kept out of main (2 cores, same sitting,
//! binaries of both; `BLOCKING_ONLY=wait2ms,mix BLOCKING_VARIANTS=default,workers64
//! BLOCKING_CALLS=1000 cargo bench --bench blocking`, 3 rounds, medians of
//! ratios to `spawn_blocking`), 2 ms waits from the default builder ran at
//! 0.96x with p99 1.39x (this set: 1.00x, 0.99x), the mix on 64 workers at
//! 0.93x with the trivial calls' p99 2.06x (0.98x, 0.97x), and CPU per call
//! rose from 22-25 to 32-36 µs. A send wakes whichever worker listened
//! first, though its loop may have gone on into a handler that blocks, and
//! a worker that takes a job while more waits wakes nobody for it.
//! `dispatch` (trivial handler, 2 workers) did not tell the two apart
//! beyond its rounds' spread.

use std::sync::atomic::Ordering::SeqCst;
use std::task::Waker;

// Under `--cfg tower_affinity_loom`, loom's model checker explores every
// interleaving of the hand-off below (see the tests at the end).
#[cfg(tower_affinity_loom)]
use loom::sync::{
    atomic::{fence, AtomicU64},
    Mutex,
};
#[cfg(not(tower_affinity_loom))]
use std::sync::{
    atomic::{fence, AtomicU64},
    Mutex,
};

/// The worker's view of its queues, as [`Idle::take`] needs it.
pub(crate) trait Source {
    type Job;
    /// The next job in the worker's own queue (keyed), if any.
    fn take_own(&self) -> Option<Self::Job>;
    /// The next job in the shared queue, if any.
    fn take_shared(&self) -> Option<Self::Job>;
    /// Whether no job will ever come: the queues closed and drained.
    fn finished(&self) -> bool;
    /// Whether unkeyed work is waiting.
    fn more_shared(&self) -> bool;
}

/// Whom [`Idle::wake_any`] woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// No worker waits.
    Nobody,
    /// A waiting worker that was not inside a poll of user code.
    Free,
    /// A waiting worker inside a poll of user code, which may block.
    Busy,
}

#[cfg(any(test, tower_affinity_loom))]
impl Woken {
    /// Whether a worker was woken for the job.
    pub(crate) fn any(self) -> bool {
        self != Self::Nobody
    }
}

/// What [`Idle::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken<J> {
    Job(J),
    /// Nothing yet; the worker is registered and will be woken.
    Waiting,
    /// The queues closed and drained.
    Finished,
}

#[derive(Debug)]
pub(crate) struct Idle {
    /// One bit per worker slot, set while its event loop waits for work.
    bits: Box<[AtomicU64]>,
    /// Each slot's event-loop waker. Locked by its worker when the loop
    /// starts and by a submitter that claimed the slot's bit: never
    /// contended between workers.
    wakers: Box<[Mutex<Option<Waker>>]>,
}

#[cfg(not(tower_affinity_loom))]
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(tower_affinity_loom)]
fn lock<T>(mutex: &Mutex<T>) -> loom::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap()
}

fn split(index: usize) -> (usize, u64) {
    (index / 64, 1 << (index % 64))
}

impl Idle {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            bits: (0..slots.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            wakers: (0..slots).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Stores the waker of slot `index`'s event loop (or clears it, at
    /// exit). Called when the loop starts, and whenever its waker changes.
    pub(crate) fn set_waker(&self, index: usize, waker: Option<&Waker>) {
        *lock(&self.wakers[index]) = waker.cloned();
    }

    fn wake_slot(&self, index: usize) {
        // Under the slot's lock, which only its own worker also takes (when
        // its loop starts or ends): a wake is an unpark, no user code.
        if let Some(waker) = &*lock(&self.wakers[index]) {
            waker.wake_by_ref();
        }
    }

    /// Whether slot `index` is registered as waiting.
    pub(crate) fn is_waiting(&self, index: usize) -> bool {
        let (word, bit) = split(index);
        self.bits[word].load(SeqCst) & bit != 0
    }

    /// Whether any worker waits.
    #[cfg(test)]
    pub(crate) fn anyone_waiting(&self) -> bool {
        self.bits.iter().any(|word| word.load(SeqCst) != 0)
    }

    /// Whether a worker waits that is not `busy`: registered, then inside
    /// a poll of user code in the same turn of its loop, a worker is not
    /// free, though its bit is set.
    pub(crate) fn anyone_free(&self, busy: impl Fn(usize) -> bool) -> bool {
        self.bits.iter().enumerate().any(|(w, word)| {
            let mut set = word.load(SeqCst);
            while set != 0 {
                if !busy(w * 64 + set.trailing_zeros() as usize) {
                    return true;
                }
                set &= set - 1;
            }
            false
        })
    }

    /// Slot `index` leaves the idle set; `true` if it was there and no
    /// submitter had claimed it (a claim means a wake is on its way for a
    /// job: a worker about to retire must take that job instead).
    pub(crate) fn leave(&self, index: usize) -> bool {
        let (word, bit) = split(index);
        self.bits[word].load(SeqCst) & bit != 0
            && self.bits[word].fetch_and(!bit, SeqCst) & bit != 0
    }

    /// The worker side of the hand-off, run by worker `index`'s event loop
    /// each time it is polled with room for a job.
    pub(crate) fn take<Q: Source>(
        &self,
        index: usize,
        queues: &Q,
        busy: impl Fn(usize) -> bool,
    ) -> Taken<Q::Job> {
        let mut registered_now = false;
        loop {
            // Own queue first: keyed requests keep their order.
            if let Some(job) = queues.take_own() {
                self.leave(index);
                if queues.more_shared() {
                    // This worker may have been woken for an unkeyed job,
                    // and may block in the keyed one it takes instead: the
                    // unkeyed work needs another worker.
                    self.wake_any(busy);
                }
                return Taken::Job(job);
            }
            if let Some(job) = queues.take_shared() {
                self.leave(index);
                if queues.more_shared() {
                    // The same: this worker may block in its job, and a
                    // job's wake may have gone to a worker that took
                    // another; whatever is left must not wait for it.
                    self.wake_any(busy);
                }
                return Taken::Job(job);
            }
            if queues.finished() {
                self.leave(index);
                return Taken::Finished;
            }
            // Still registered (from this poll or an earlier one, not
            // claimed since): any job queued after the bit was set claims
            // a waiting worker.
            if registered_now || self.is_waiting(index) {
                return Taken::Waiting;
            }
            // Register, then look once more: a job queued in between found
            // no one waiting.
            let (word, bit) = split(index);
            self.bits[word].fetch_or(bit, SeqCst);
            fence(SeqCst);
            registered_now = true;
        }
    }

    /// Wakes worker `index`, if it waits, for a job in its own queue.
    pub(crate) fn wake(&self, index: usize) -> bool {
        // Pairs with the fence in `take`: the job is queued before this read.
        fence(SeqCst);
        if self.leave(index) {
            self.wake_slot(index);
            return true;
        }
        false
    }

    /// Wakes one waiting worker for a job in the shared queue, preferring
    /// one for which `busy` is false, in any word of the idle set, before a
    /// busy one. A busy one is woken only when no free one waits: its loop
    /// will take the job once its poll of user code ends, but that poll may
    /// block, so the submitter must also tell the spares (see
    /// `Pool::submit`).
    pub(crate) fn wake_any(&self, busy: impl Fn(usize) -> bool) -> Woken {
        fence(SeqCst);
        if self.claim(|w, set| {
            let mut free = set;
            while free != 0 && busy(w * 64 + free.trailing_zeros() as usize) {
                free &= free - 1;
            }
            free
        }) {
            return Woken::Free;
        }
        if self.claim(|_, set| set) {
            return Woken::Busy;
        }
        Woken::Nobody
    }

    /// Claims and wakes the lowest waiting worker among those `pick` keeps
    /// of each word's set bits; `false` if it kept none.
    fn claim(&self, pick: impl Fn(usize, u64) -> u64) -> bool {
        for (w, word) in self.bits.iter().enumerate() {
            loop {
                let picked = pick(w, word.load(SeqCst));
                if picked == 0 {
                    break;
                }
                let bit = picked & picked.wrapping_neg();
                // Claim it; another submitter may have been first.
                if word.fetch_and(!bit, SeqCst) & bit != 0 {
                    self.wake_slot(w * 64 + bit.trailing_zeros() as usize);
                    return true;
                }
            }
        }
        false
    }

    /// Wakes every worker's event loop, waiting or not: the queues closed,
    /// or shutdown is aborting.
    pub(crate) fn wake_all(&self) {
        for word in self.bits.iter() {
            word.store(0, SeqCst);
        }
        for index in 0..self.wakers.len() {
            self.wake_slot(index);
        }
    }
}

#[cfg(all(test, tower_affinity_loom))]
#[path = "loom.rs"]
mod loom_tests;

#[cfg(all(test, not(tower_affinity_loom)))]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::{Idle, Source, Taken, Woken};

    /// Queues with nothing in them.
    struct Empty;

    impl Source for Empty {
        type Job = ();
        fn take_own(&self) -> Option<()> {
            None
        }
        fn take_shared(&self) -> Option<()> {
            None
        }
        fn finished(&self) -> bool {
            false
        }
        fn more_shared(&self) -> bool {
            false
        }
    }

    /// Queues in which something turns up on the second look: a job in
    /// the own queue, a job in the shared one, or the end (`finished`),
    /// as when it arrives between a worker's first look and its
    /// registration, and the look after the registration finds it.
    #[derive(Default)]
    struct Late {
        looks: std::cell::Cell<u32>,
        own: bool,
        shared: bool,
    }

    impl Late {
        fn second_look(&self, this: bool) -> bool {
            this && self.looks.get() >= 1
        }
    }

    impl Source for Late {
        type Job = ();
        fn take_own(&self) -> Option<()> {
            self.second_look(self.own).then_some(())
        }
        fn take_shared(&self) -> Option<()> {
            self.second_look(self.shared).then_some(())
        }
        fn finished(&self) -> bool {
            // The last check of a look: the next one is the second.
            let finished = self.second_look(!self.own && !self.shared);
            self.looks.set(self.looks.get() + 1);
            finished
        }
        fn more_shared(&self) -> bool {
            false
        }
    }

    /// A worker that registered, then found a job (or the end) on its look
    /// after registering, is no longer in the idle set: a submitter would
    /// claim it for a job while it serves another, or after it is gone,
    /// and wake no one who can take it.
    #[test]
    fn what_the_look_after_registering_finds_takes_the_worker_out_of_the_set() {
        for (own, shared, expected) in [
            (true, false, Taken::Job(())),
            (false, true, Taken::Job(())),
            (false, false, Taken::Finished),
        ] {
            let idle = Idle::new(2);
            let late = Late {
                own,
                shared,
                ..Late::default()
            };
            assert_eq!(idle.take(1, &late, |_| false), expected);
            // A first look found nothing: the worker registered.
            assert!(late.looks.get() >= 1);
            assert!(
                !idle.is_waiting(1),
                "{expected:?} left the worker in the set"
            );
            assert!(!idle.anyone_waiting());
        }
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    /// Registers each worker of `waiting` as waiting for a job; their wake
    /// flags, in that order.
    fn waiting(idle: &Idle, waiting: &[usize]) -> Vec<Arc<Flag>> {
        waiting
            .iter()
            .map(|&index| {
                let flag = Arc::new(Flag::default());
                idle.set_waker(index, Some(&Waker::from(flag.clone())));
                assert_eq!(idle.take(index, &Empty, |_| false), Taken::Waiting);
                flag
            })
            .collect()
    }

    /// An unkeyed job wakes a waiting worker that is not busy in user code
    /// before a lower one that is, in the same word of the idle set or in
    /// another (with over 64 workers, a busy worker in the first word was
    /// claimed while a free one waited in the second).
    #[test]
    fn a_job_wakes_a_waiting_worker_that_is_not_busy() {
        for (busy, free) in [(0, 1), (64, 65), (65, 64), (3, 70)] {
            let idle = Idle::new(130);
            let flags = waiting(&idle, &[busy, free]);
            assert!(idle.anyone_free(|index| index == busy));
            assert_eq!(idle.wake_any(|index| index == busy), Woken::Free);
            assert!(!flags[0].0.load(SeqCst), "woke busy worker {busy}");
            assert!(flags[1].0.load(SeqCst), "worker {free} not woken");
            assert!(idle.is_waiting(busy) && !idle.is_waiting(free));
        }
    }

    /// With every waiting worker busy, the lowest one is woken.
    #[test]
    fn with_every_waiting_worker_busy_the_lowest_is_woken() {
        let idle = Idle::new(130);
        let flags = waiting(&idle, &[66, 65]);
        assert!(!idle.anyone_free(|_| true));
        assert_eq!(idle.wake_any(|_| true), Woken::Busy);
        assert!(flags[1].0.load(SeqCst) && !flags[0].0.load(SeqCst));
        assert!(idle.anyone_waiting());
        assert_eq!(idle.wake_any(|_| true), Woken::Busy);
        assert!(flags[0].0.load(SeqCst));
        assert!(!idle.anyone_waiting());
        assert_eq!(idle.wake_any(|_| true), Woken::Nobody, "nobody waits");
    }
}
