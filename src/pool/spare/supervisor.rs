//! The supervisor thread: when to start a spare, and how often to look.
//!
//! It parks until a submitter finds no worker waiting for work, then looks
//! at the workers while unkeyed work waits (`grow`), at a pace (`Pace`)
//! that starts at one look a millisecond and backs off while nobody is
//! blocked.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::Receiver;

use crate::pool::inner::Inner;
use crate::pool::queue::job::Envelope;
use crate::pool::queue::Queues;
use crate::pool::worker;
use crate::stats::probe::BLOCKED_AFTER;
use crate::trace;

/// The longest the supervisor waits between looks while work waits.
pub(super) const MAX_INTERVAL: Duration = Duration::from_millis(16);

/// How soon the supervisor looks again after a look that saw blocking
/// when the one before it had not (see `grow`).
const CONFIRM_AFTER: Duration = Duration::from_micros(500);

/// What one look found.
#[derive(Debug, Default, Clone, Copy)]
struct Look {
    /// Spares started.
    started: usize,
    /// Polls seen blocked at a look that follows one that saw none: to be
    /// confirmed by the next.
    suspects: usize,
}

/// What the supervisor remembers of its looks.
struct Seen {
    /// Whether the last look found a blocked poll.
    blocked_before: bool,
}

/// How long the supervisor waits between two looks.
///
/// One look a millisecond while blocking is news; twice as long after each
/// look that starts nothing, up to [`MAX_INTERVAL`]. The pace outlives one
/// awake spell: under a steady load of quick handlers the shared queue
/// empties and fills again many times a millisecond, and each time it
/// fills, the supervisor is woken. Starting over at one look a millisecond,
/// it could wake up to a thousand times a second, each time taking a CPU
/// from a worker or a caller, and each look is one more chance to mistake a
/// moment's wait for blocking (see `grow`). So only a park longer than
/// [`MAX_INTERVAL`] (the pool kept up for a while) or a look that starts a
/// spare brings the fast pace back.
///
/// After a look that starts spares, the next [`GROWING_LOOKS`] keep the
/// fast pace even if they start nothing: the new spares may not be in a
/// poll yet, and handlers that block in step (all begun within the same
/// millisecond) may all be in polls too young to tell at the next look. A
/// pool growing for 2 ms handlers backed off to 16 ms between its second
/// and third steps, its queue waiting meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pace {
    interval: Duration,
    /// Looks left at the fast pace since spares last started.
    growing: u32,
}

/// The looks that keep the fast pace after one that starts spares.
const GROWING_LOOKS: u32 = 16;

impl Default for Pace {
    fn default() -> Self {
        Self {
            interval: BLOCKED_AFTER,
            growing: 0,
        }
    }
}

impl Pace {
    fn interval(self) -> Duration {
        self.interval
    }

    /// Woken after parking for `parked`.
    fn woken(&mut self, parked: Duration) {
        if parked > MAX_INTERVAL {
            *self = Self::default();
        }
    }

    /// What a look found: a started spare brings the fast pace back, for
    /// this look and the next [`GROWING_LOOKS`]; blocking seen for the
    /// first time is looked at again soon.
    fn looked(&mut self, look: Look) {
        self.interval = if look.started > 0 {
            self.growing = GROWING_LOOKS;
            BLOCKED_AFTER
        } else if look.suspects > 0 {
            CONFIRM_AFTER
        } else if self.growing > 0 {
            self.growing -= 1;
            CONFIRM_AFTER
        } else {
            (self.interval * 2).min(MAX_INTERVAL)
        };
    }
}

/// The supervisor thread: parked until work waits with no worker free,
/// then looking while it does.
pub(super) fn run(inner: &Arc<Inner>, shared: &Receiver<Envelope>) {
    let spares = &inner.spares;
    let mut seen = Seen {
        blocked_before: false,
    };
    let mut pace = Pace::default();
    loop {
        let parked = Instant::now();
        if !spares.wait_armed() {
            return;
        }
        pace.woken(parked.elapsed());
        loop {
            if !spares.pause(pace.interval()) {
                return;
            }
            if shared.is_empty() {
                spares.disarm();
                // A job queued just now may have seen `armed` still set
                // and not nudged: look once more before parking.
                if shared.is_empty() {
                    break;
                }
                spares.rearm();
            }
            pace.looked(grow(inner, shared, &mut seen));
        }
    }
}

/// Starts spares while fewer threads can take work than there are core
/// workers and fewer spares run than threads are blocked now, as jobs wait
/// and room allows, when no worker is free: one for each blocked thread,
/// and as many again as spares run.
///
/// A count, recomputed at each look: the threads that can take work are
/// those between two polls and those computing in a long poll (see
/// `probe`); the blocked ones cannot. So a worker blocked for an hour keeps
/// its spare for the hour, whatever came and went in between (its spare
/// may retire while no work waits; the next look that finds work waiting
/// starts another), and a handler blocked for 50 ms, seen at fifty looks,
/// is one thread out of play, not fifty: while its spare runs, spares are
/// not fewer than the threads blocked.
///
/// Why every blocked thread counts, in short polls too, and why the spares
/// double: with handlers that block 2 ms each, half of the threads are in
/// the first millisecond of their wait at any look. A pool that counted
/// only long polls, or started only what it missed of `workers`, grew by a
/// thread or two a look, its queue waiting meanwhile (0.56x
/// `spawn_blocking` in `benches/blocking`); one that started a spare per
/// blocked thread took six looks to reach 64 threads, and a run of 200
/// calls a caller paid for them (0.96x, p99 1.4x). `spawn_blocking`
/// starts a thread for each task waiting at once; this pool more than
/// doubles at each look while all its threads block, and stops when they
/// keep up. A short poll on the CPU counts as neither blocked nor able: it
/// may be a thread just woken from its wait, in the queue for a CPU. A
/// worker that computes is not blocked, so CPU-bound handlers never grow
/// the pool; and a spare that computes counts as able at once, so one
/// blocked worker among computing ones gets one spare, not a doubling.
fn grow(inner: &Arc<Inner>, shared: &Receiver<Envelope>, seen: &mut Seen) -> Look {
    let (spares, counters) = (&inner.spares, &inner.counters);
    let blocked_before = std::mem::replace(&mut seen.blocked_before, false);
    let busy = |index: usize| counters.worker(index).is_polling();
    // A waiting worker that registered, then went into a poll of user code
    // in the same turn of its loop, still has its bit set: it is not free.
    if inner.idle.anyone_free(busy) {
        return Look::default();
    }
    let running: Vec<usize> = (0..inner.config.max_workers)
        .filter(|&index| counters.worker(index).alive.load(SeqCst))
        .collect();
    // Threads between two polls: as many as core workers, and a spare
    // only adds a thread competing for the same CPUs (quick handlers that
    // outrun the CPUs keep every worker busy without any being free).
    let between = running.iter().filter(|&&index| !busy(index)).count();
    if between >= inner.config.workers {
        return Look::default();
    }
    // Atomics first: blocking is news only once a poll has lasted
    // `BLOCKED_AFTER`. Each poll by when it began, read once: the worker
    // may end it, and begin another, while this look goes on.
    let polls: Vec<(usize, u64)> = running
        .iter()
        .map(|&index| (index, counters.poll_started(index)))
        .filter(|&(_, since)| since != 0)
        .collect();
    let long = |since: u64| counters.age(since) >= BLOCKED_AFTER;
    if !polls.iter().any(|&(_, since)| long(since)) {
        return Look::default();
    }
    let room = spares.stalled(running.len());
    let wanted = shared.len().min(room);
    if wanted == 0 {
        // At the ceiling no spare can start: spare the probe its reads of
        // `/proc`, one per poll (64 of them a look, at `max_workers`).
        return Look::default();
    }
    let (mut blocked, mut long_blocked, mut computing) = (0, 0, 0);
    for &(index, since) in &polls {
        match counters.off_cpu_in(index, since) {
            Some(true) => {
                blocked += 1;
                long_blocked += usize::from(long(since));
            }
            Some(false) if long(since) => computing += 1,
            Some(false) => {}
            // No state to read (see `probe`): a long poll is judged by
            // its length alone, a short one not at all.
            None if counters.blocked_in(index, since) => {
                blocked += 1;
                long_blocked += 1;
            }
            None => {}
        }
    }
    seen.blocked_before = long_blocked > 0;
    let spares_running = usize::try_from(spares.running()).unwrap_or(usize::MAX);
    if long_blocked == 0 || between + computing >= inner.config.workers || spares_running >= blocked
    {
        return Look::default();
    }
    // Blocking counts once seen at two looks in a row. Seen once, it may be
    // a moment's wait on a lock (an allocator's, a channel's) whose holder
    // the host preempted: on a busy 2-core machine, a pool of trivial
    // handlers started such spares in most rounds of the `dispatch` bench,
    // and under load a spare never idles, so it stayed. Two looks, not
    // twice the same poll: handlers that block 2 ms at a time are mostly
    // over by the second look, and the pool would not grow for them.
    if !blocked_before {
        return Look {
            started: 0,
            suspects: long_blocked,
        };
    }
    let mut started = 0;
    let more = blocked.saturating_add(spares_running).min(wanted);
    while started < more && start(inner, shared, running.len() + started) {
        started += 1;
    }
    Look {
        started,
        suspects: 0,
    }
}

/// Starts one spare; `false` if none could start.
fn start(inner: &Arc<Inner>, shared: &Receiver<Envelope>, threads: usize) -> bool {
    let spares = &inner.spares;
    let Some(index) = spares.take_slot() else {
        return false;
    };
    // Not once the queues closed: a spare must not outlive a shutdown.
    if !inner.lifecycle.spawning(|| shared.is_closed()) {
        spares.exited(index);
        return false;
    }
    let counters = inner.counters.worker(index);
    counters.alive.store(true, SeqCst);
    counters.used.store(true, SeqCst);
    let queues = Queues::spare(shared.clone()).with_inbox(inner.inboxes.receiver(index));
    match worker::spawn(index, queues, inner.clone()) {
        Ok(()) => {
            spares.count_start();
            trace::info!(
                worker = index,
                threads = threads + 1,
                "spare worker started"
            );
            true
        }
        Err(error) => {
            counters.alive.store(false, SeqCst);
            inner.lifecycle.exited();
            spares.exited(index);
            spares.refused(threads, &error);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks that start nothing back off to the slowest pace and stay
    /// there across a short park; a long park or a started spare brings
    /// the fast pace back, a started spare for `GROWING_LOOKS` more.
    #[test]
    fn the_pace_backs_off_and_survives_a_short_park() {
        let mut pace = Pace::default();
        assert_eq!(pace.interval(), BLOCKED_AFTER);
        for _ in 0..10 {
            pace.looked(Look::default());
        }
        assert_eq!(pace.interval(), MAX_INTERVAL);
        pace.looked(Look {
            started: 1,
            suspects: 0,
        });
        assert_eq!(pace.interval(), BLOCKED_AFTER, "a spare started: look fast");
        for _ in 0..GROWING_LOOKS {
            pace.looked(Look::default());
            assert_eq!(pace.interval(), CONFIRM_AFTER, "growing: still fast");
        }
        for _ in 0..10 {
            pace.looked(Look::default());
        }
        assert_eq!(pace.interval(), MAX_INTERVAL);
        pace.woken(MAX_INTERVAL);
        assert_eq!(pace.interval(), MAX_INTERVAL, "a short park keeps the pace");
        pace.woken(MAX_INTERVAL + Duration::from_millis(1));
        assert_eq!(pace.interval(), BLOCKED_AFTER, "a long park starts over");
        pace.looked(Look::default());
        assert_eq!(pace.interval(), BLOCKED_AFTER * 2);
        pace.looked(Look {
            started: 0,
            suspects: 1,
        });
        assert_eq!(pace.interval(), CONFIRM_AFTER, "a suspect: look again soon");
        pace.looked(Look {
            started: 1,
            suspects: 0,
        });
        assert_eq!(pace.interval(), BLOCKED_AFTER, "a spare started: look fast");
    }
}
