//! Whether a worker about to park spins first, watching for its wake-up.
//!
//! A worker whose stream waits for room waits until its reader has freed
//! half the buffer, and that reader usually runs on another core: the
//! wake-up comes microseconds later. Parking for it costs a futex sleep
//! here, a futex wake on the reader's thread, and, on a virtual machine,
//! the halted vCPU's own wake-up, tens of microseconds per half buffer.
//! Worse, a parked writer leaves its reader to empty the buffer and park
//! too, and each side's wake-up then waits on the other's. So the worker
//! first spins, for at most [`SPIN_LIMIT`], on the flag that every wake-up
//! sets, and parks only if the spin runs out.
//!
//! Spinning takes a core that others could use, so it is bounded:
//!
//! - The worker spins only while it has requests in flight: a worker with
//!   nothing to serve has its own short yield before it waits
//!   (`event_loop::spin_before_waiting`), and is woken by the next job.
//! - Only while the pool runs no more threads than there are cores.
//! - It yields its CPU between looks: a reader (or handler) that shares
//!   this core runs, rather than waiting for the spin to run out.
//! - A long wait backs it off (see [`Spin::wait`]): a worker whose streams
//!   wait on slow clients, or whose handlers await a slow database, spins
//!   on one wait in 2, then 4, up to 64, while its waits stay long.
//!
//! Measured with `cargo bench --bench streaming` (1 GiB in 64 KiB chunks
//! read by a runtime task, 2 cores, 7 rounds): parking at once, 17 to 23
//! GiB/s and 0.3 context switches per chunk; spinning first, 32 to 44
//! GiB/s and 0.14 to 0.19. Spinning without yielding was as fast in most
//! rounds but fell to 12 to 17 GiB/s in about a third of them, those in
//! which the reader ran on the writer's core.

use std::time::{Duration, Instant};
use std::{hint, thread};

/// The longest a worker spins before it parks. A reader that keeps up frees
/// room within 6 to 12 µs on the machines measured; one that takes longer
/// was asleep, and then parking costs little more than spinning on.
pub(crate) const SPIN_LIMIT: Duration = Duration::from_micros(30);

/// How many spins between two looks (a yield and a read of the clock): at
/// about 28 ns a spin, one look in 7 µs. Streams measured 38 to 44 GiB/s
/// (medians of three runs) with 256, 24 to 40 with 32.
const SPINS_PER_LOOK: u32 = 256;

/// A wait longer than this after a spin ran out means the other side is
/// slow (a client reading slowly, a handler awaiting a database), not slow
/// to wake: such a wait backs the spinning off. A spin wasted on it costs
/// at most `SPIN_LIMIT / LONG_WAIT` (6%) of the wait.
const LONG_WAIT: Duration = Duration::from_micros(500);

/// After this many spins in a row that each ran out before a long wait, a
/// worker spins on one wait in `2^MAX_BACKOFF`: a worker whose waits are
/// long wastes a spin per 64 of them.
const MAX_BACKOFF: u32 = 6;

/// A worker's record of its spins, to decide whether the next wait spins.
#[derive(Debug, Default)]
pub(crate) struct Spin {
    /// Spins in a row that ran out before a long wait, up to `MAX_BACKOFF`.
    failures: u32,
    /// Waits left to park at once before the next spin.
    skip: u32,
}

impl Spin {
    /// A spin ran out and the wait that followed lasted `waited` in all.
    fn ran_out(&mut self, waited: Duration) {
        if waited <= LONG_WAIT {
            // The wake-up came soon after: the other side keeps up, and
            // was only slow to wake (a parked thread, a halted vCPU).
            // Parking at once now would make it slow the next time too.
            self.failures = 0;
            return;
        }
        self.failures = (self.failures + 1).min(MAX_BACKOFF);
        self.skip = (1 << self.failures) - 1;
    }

    /// Waits until `is_woken` says the flag that every wake-up sets is
    /// set: spinning first when `may_spin` and no back-off holds, then
    /// parking with `park` (which may return early: the flag, not the
    /// return, ends the wait). Leaves the flag set; the caller clears it.
    ///
    /// Only a long wait backs off, not every spin that runs out: a parked
    /// worker's wait includes its own wake-up and its reader's, exactly the
    /// latencies that spinning avoids. Measured, backing off on every
    /// run-out kept a stream in that slow mode (both sides parking, 17
    /// GiB/s); spinning on kept it out (40 to 50 GiB/s).
    pub(crate) fn wait(
        &mut self,
        is_woken: impl Fn() -> bool,
        may_spin: bool,
        mut park: impl FnMut(),
    ) -> Waited {
        if is_woken() {
            return Waited::Set;
        }
        let spun = may_spin && self.skip == 0;
        if may_spin && !spun {
            self.skip -= 1;
        }
        // The clock only for a spin: a worker that may not spin parks
        // as it did before there was spinning.
        let start = spun.then(Instant::now);
        if let Some(start) = start {
            if spin_until(&is_woken, start + SPIN_LIMIT) {
                self.failures = 0;
                return Waited::Spun;
            }
        }
        while !is_woken() {
            park();
        }
        if let Some(start) = start {
            self.ran_out(start.elapsed());
        }
        Waited::Parked { spun }
    }
}

/// How a wait ended (for the tests).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The flag was set already.
    Set,
    /// Woken while spinning.
    Spun,
    /// Parked, after a spin that ran out or without one.
    Parked { spun: bool },
}

/// Spins until `is_woken` (`true`) or `until` passes (`false`), yielding
/// the CPU between looks.
fn spin_until(is_woken: impl Fn() -> bool, until: Instant) -> bool {
    loop {
        for _ in 0..SPINS_PER_LOOK {
            if is_woken() {
                return true;
            }
            hint::spin_loop();
        }
        // Whoever would wake us may be waiting for this very core.
        thread::yield_now();
        if Instant::now() >= until {
            return is_woken();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// One wait whose wake-up comes only once the waiter parks (so a spin
    /// runs out), and `after` later; how it ended.
    fn woken_by_park(spin: &mut Spin, may_spin: bool, after: Duration) -> Waited {
        let woken = Cell::new(false);
        // Not a wait for another thread: it stands for a slow reader.
        spin.wait(
            || woken.get(),
            may_spin,
            || {
                thread::sleep(after);
                woken.set(true)
            },
        )
    }

    fn long(spin: &mut Spin) -> Waited {
        woken_by_park(spin, true, LONG_WAIT * 2)
    }

    fn short(spin: &mut Spin) -> Waited {
        woken_by_park(spin, true, Duration::ZERO)
    }

    const SPUN_OUT: Waited = Waited::Parked { spun: true };
    const PARKED: Waited = Waited::Parked { spun: false };

    /// Spins followed by long waits back off: after the first, one wait
    /// parks at once; after the second in a row, three; then seven.
    #[test]
    fn long_waits_back_off_doubling() {
        let mut spin = Spin::default();
        let spun: Vec<bool> = (0..11).map(|_| long(&mut spin) == SPUN_OUT).collect();
        let expected = [
            true, false, // a long wait; one wait skipped
            true, false, false, false, // three
            true, false, false, false, false, // seven...
        ];
        assert_eq!(spun, expected);
    }

    /// The back-off stops at one spin in `2^MAX_BACKOFF` waits.
    #[test]
    fn the_back_off_is_bounded() {
        let mut spin = Spin::default();
        let spins = (0..200).filter(|_| long(&mut spin) == SPUN_OUT).count();
        // Waits 0, 2, 6, 14, 30 and 62 spin on the way to the cap (skips
        // of 1, 3, 7, 15, 31, then 63), then 126 and 190.
        assert_eq!(spins, 8);
    }

    /// A spin that runs out before a short wait (the other side was slow
    /// to wake, not slow) does not back off: the next wait spins.
    #[test]
    fn a_short_wait_after_a_spin_keeps_spinning() {
        let mut spin = Spin::default();
        assert_eq!(short(&mut spin), SPUN_OUT);
        assert_eq!(short(&mut spin), SPUN_OUT);
        // And ends a back-off: after it, a long wait skips one, as the first.
        assert_eq!(long(&mut spin), SPUN_OUT);
        assert_eq!(long(&mut spin), PARKED);
        assert_eq!(long(&mut spin), SPUN_OUT);
        assert_eq!(short(&mut spin), PARKED);
        assert_eq!(short(&mut spin), PARKED);
        assert_eq!(short(&mut spin), PARKED);
        assert_eq!(short(&mut spin), SPUN_OUT);
        assert_eq!(long(&mut spin), SPUN_OUT);
        assert_eq!(short(&mut spin), PARKED);
        assert_eq!(short(&mut spin), SPUN_OUT);
    }

    /// A spin that catches its wake-up ends the back-off too.
    #[test]
    fn a_spin_that_catches_the_wake_up_resets_the_back_off() {
        let mut spin = Spin {
            failures: 3,
            skip: 0,
        };
        // Not set at the wait's first look, set at the spin's.
        let looks = Cell::new(0);
        let is_woken = || {
            looks.set(looks.get() + 1);
            looks.get() > 1
        };
        let waited = spin.wait(is_woken, true, || unreachable!("parked"));
        assert_eq!(waited, Waited::Spun);
        assert_eq!(long(&mut spin), SPUN_OUT);
        assert_eq!(long(&mut spin), PARKED);
        assert_eq!(long(&mut spin), SPUN_OUT);
    }

    /// A flag set before the wait costs neither a spin nor a park.
    #[test]
    fn a_wake_before_the_wait_costs_nothing() {
        let mut spin = Spin::default();
        let waited = spin.wait(|| true, true, || unreachable!("parked"));
        assert_eq!(waited, Waited::Set);
    }

    /// A worker that may not spin (more threads than cores, nothing in
    /// flight) parks at once, and its back-off is left as it was.
    #[test]
    fn a_wait_that_may_not_spin_parks_at_once() {
        let mut spin = Spin::default();
        assert_eq!(woken_by_park(&mut spin, false, Duration::ZERO), PARKED);
        assert_eq!(long(&mut spin), SPUN_OUT);
        assert_eq!(woken_by_park(&mut spin, false, Duration::ZERO), PARKED);
        // Still the one wait to skip from the long wait above.
        assert_eq!(short(&mut spin), PARKED);
        assert_eq!(short(&mut spin), SPUN_OUT);
    }
}
