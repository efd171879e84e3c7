//! The event loop takes a job from the queues only while fewer than
//! `max_streams_per_worker` requests are active on this thread. Each job
//! becomes a local task; its first poll happens inline, so a request whose
//! future and body are ready at once (the common case) never pays for a
//! spawned task. A task that waits (for its inner future, or for room in its
//! response's buffer) yields, and the thread serves the others meanwhile.
//!
//! With nothing to take, the loop registers in the idle list and the thread
//! parks in its runtime. Before it registers it yields its CPU a few times
//! (see `spin_before_waiting`), but only while the pool runs no more threads
//! than cores: with many threads, yielding costs the threads that have work
//! more than the wake-ups it saves; with few, it halves the context switches
//! per request (benches/http).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread;

use tokio::time::{Instant, Sleep};

use super::park;
use super::state::WorkerState;
use crate::error::Failure;
use crate::pool::idle::{Source, Taken};
use crate::pool::queue::job::Envelope;
use crate::pool::queue::Queues;

/// How many jobs the event loop admits in a row before it yields, so that
/// the tasks already running (streams waiting to produce) get their turn
/// while a burst of requests arrives.
const ADMIT_PER_TURN: usize = 16;

/// What the event loop does next.
enum Next {
    Job(Envelope),
    /// The queues closed and drained.
    Finished,
    /// A spare idle past its keep-alive.
    Retire,
}

/// The event loop: admit jobs while there is room, then drain on shutdown;
/// `true` if this spare retired.
pub(super) async fn run(queues: &Queues, state: &WorkerState) -> bool {
    let max = state.inner.config.max_streams_per_worker;
    let mut admitted = 0usize;
    let mut idle = IdleTimer::default();
    let retired = loop {
        state.load.below(max).await;
        let envelope = match next_job(queues, state, &mut idle).await {
            Next::Job(envelope) => envelope,
            Next::Finished => break false,
            Next::Retire => break true,
        };
        if queues.shared().is_closed() && !state.inner.lifecycle.phase().serves_queued() {
            // Every handle is gone: answer what is still queued, take no more.
            state.reject(envelope, Failure::ShutDown);
            continue;
        }
        state.run_job(envelope);
        admitted += 1;
        if admitted % ADMIT_PER_TURN == 0 {
            // The local tasks only run while this loop is pending.
            park::yield_now().await;
        }
    };
    // Let the requests already started finish before the services go.
    state.load.below(1).await;
    retired
}

/// How long a spare has had nothing to serve, across polls of its loop.
///
/// One timer for the thread's life, not one per idle spell: a spare goes
/// idle after every quick request. The timer may fire early (the spare was
/// busy since it was set); it is then set again for the rest.
#[derive(Default)]
struct IdleTimer {
    since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The next job (see `Idle::take`), or the end. A spare with nothing to
/// serve for its keep-alive retires.
async fn next_job(queues: &Queues, state: &WorkerState, idle: &mut IdleTimer) -> Next {
    let inner = &state.inner;
    let index = state.id.index();
    let busy = |i: usize| inner.counters.worker(i).is_polling();
    poll_fn(|cx| {
        // The loop's own code: not a poll of user code (see `run_thread`).
        let _between = inner.counters.between_polls(index);
        // Here, not in the loop around: an idle worker woken for a retired
        // service finds no job and waits again without leaving this poll.
        state.sweep_retired();
        spin_before_waiting(queues, state);
        let taken = inner.idle.take(index, queues, busy);
        if matches!(taken, Taken::Waiting) {
            // Registered now; a service retired before that woke no one.
            state.sweep_retired();
        }
        after_take(taken, cx, state, idle)
    })
    .await
}

/// How many times a worker going idle yields its CPU, looking for a job in
/// between, before it registers to be woken.
const SPINS_BEFORE_WAITING: u32 = 8;

/// Under load the next job is often a moment away: a worker about to wait
/// first gives its CPU to the threads that make it, which is cheaper than a
/// wake-up (a syscall on each side). Only while the pool runs no more
/// threads than there are cores: past that, a yielding thread competes with
/// the ones that have work. Only when going idle, not on every poll of an
/// event loop that already waits (woken by its local tasks).
fn spin_before_waiting(queues: &Queues, state: &WorkerState) {
    let inner = &state.inner;
    if inner.idle.is_waiting(state.id.index()) {
        return;
    }
    if state.threads() > state.cpus {
        return;
    }
    let has_work = || queues.more_shared() || queues.own().is_some_and(|own| !own.is_empty());
    for _ in 0..SPINS_BEFORE_WAITING {
        if has_work() {
            return;
        }
        thread::yield_now();
    }
}

/// What the event loop does with what `Idle::take` found.
fn after_take(
    taken: Taken<Envelope>,
    cx: &mut Context<'_>,
    state: &WorkerState,
    idle: &mut IdleTimer,
) -> Poll<Next> {
    let inner = &state.inner;
    let index = state.id.index();
    match taken {
        Taken::Job(envelope) => {
            idle.since = None;
            Poll::Ready(Next::Job(envelope))
        }
        Taken::Finished => Poll::Ready(Next::Finished),
        Taken::Waiting if !state.spare => Poll::Pending,
        Taken::Waiting if state.load.active() > 0 => {
            idle.since = None;
            // Its idle time starts when its last request ends. One that
            // ends in a local task, not inline, wakes nobody else: without
            // this, the spare would wait with no timer, never to retire.
            state.load.wake_on_exit(cx.waker());
            Poll::Pending
        }
        Taken::Waiting => {
            let keep_alive = inner.spares.keep_alive();
            let since = *idle.since.get_or_insert_with(Instant::now);
            let Some(due) = since.checked_add(keep_alive) else {
                return Poll::Pending; // `Duration::MAX`: never retire.
            };
            let timer = idle
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let wait = if now < due {
                // Set while this spare was busy: idle for less than that.
                Err(due - now)
            } else {
                inner.spares.may_retire()
            };
            match wait {
                // Leave the idle list first: a submitter that claimed this
                // spare meanwhile has a job for it.
                Ok(()) if inner.idle.leave(index) => Poll::Ready(Next::Retire),
                Ok(()) => {
                    idle.since = None;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Err(wait) => {
                    timer.as_mut().reset(now + wait);
                    let _ = timer.as_mut().poll(cx);
                    Poll::Pending
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;
    use std::time::Duration;

    use super::*;
    use crate::pool::inner::Inner;
    use crate::WorkerId;

    /// Polls `after_take` once for a spare (slot 1 of a pool of 1 core worker)
    /// that finds nothing to do and registers, after idling for longer than
    /// its keep-alive; `claim` runs between the registration and the poll,
    /// as a submitter may. Returns what `after_take` decided, and whether the
    /// idle spell is still counted.
    fn spare_past_its_keep_alive(claim: impl FnOnce(&Inner)) -> (Poll<Next>, bool) {
        let config = crate::ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(2)
            .keep_alive(Duration::from_millis(1))
            .into_config();
        let inner = Arc::new(Inner::new(config).unwrap());
        let (_sender, shared) = async_channel::bounded(1);
        let queues = Queues::spare(shared);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let spare = 1;
        let state = WorkerState::new(
            WorkerId::new(inner.id, spare, "spare".into()),
            inner.clone(),
        );
        assert!(state.spare);
        let taken = inner.idle.take(spare, &queues, |_| false);
        assert!(matches!(taken, Taken::Waiting));
        claim(&inner);
        // Idle since long before its keep-alive: the timer has fired.
        let mut idle = IdleTimer {
            since: Some(Instant::now() - Duration::from_secs(1)),
            timer: None,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let next = after_take(taken, &mut cx, &state, &mut idle);
        (next, idle.since.is_some())
    }

    /// The keep-alive ends a spare that nobody claimed.
    #[test]
    fn a_spare_idle_past_its_keep_alive_retires() {
        let (next, _) = spare_past_its_keep_alive(|_| {});
        assert!(matches!(next, Poll::Ready(Next::Retire)));
    }

    /// A spare whose keep-alive ends in the very poll in which a submitter
    /// claims it (the claim lands between its registration and its look at
    /// the timer) must stay for the job the claim announces: retiring would
    /// leave that job to whichever worker next looks at the shared queue.
    /// The window is inside one poll of the event loop, so the test drives
    /// `after_take` by hand, with the claim placed in it.
    #[test]
    fn a_spare_claimed_as_its_keep_alive_ends_stays_for_the_job() {
        let (next, still_idle) = spare_past_its_keep_alive(|inner| {
            assert!(
                inner.idle.wake_any(|_| false).any(),
                "the spare was waiting"
            );
        });
        assert!(
            matches!(next, Poll::Pending),
            "a claimed spare retired instead of taking its job"
        );
        // The idle spell ended: its next poll looks for the job afresh.
        assert!(!still_idle);
    }
}
