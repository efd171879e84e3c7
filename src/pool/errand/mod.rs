//! Errands: closures run on one worker's thread, outside HTTP, through its
//! inbox (`inbox.rs`), answered through a reply slot as requests are.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

pub(super) mod inbox;

use self::inbox::Posted;
use crate::error::Failure;
use crate::jobs::JobError;
use crate::pool::queue::job::{Job, JobHandle};
use crate::pool::worker::load::Active;
use crate::pool::worker::state::WorkerState;
use crate::pool::worker::unwind::guard;
use crate::pool::worker::LocalTask;
use crate::pool::Pool;
use crate::reply::{ReplyReceiver, ReplySender, Slot};
use crate::WorkerId;

/// What an errand answers.
type Answer<R> = Result<R, JobError>;

/// The closure of one errand: the payload of its reply slot.
struct Errand<F>(F);

impl<F, R> Job for Slot<Answer<R>, Errand<F>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    fn start(self: Arc<Self>, _worker: &WorkerState, active: Active) -> LocalTask {
        let errand = self.take_job();
        let reply = ReplySender::new(self);
        Box::pin(async move {
            let Some(Errand(f)) = errand else {
                return;
            };
            // Run in the task's first poll, counted as user code (a worker
            // stuck here shows as blocked, and may get a spare).
            let answer = guard(f).map_err(|panic| {
                active.panicked();
                JobError::panicked(panic)
            });
            drop(active);
            let _ = reply.send(answer);
        })
    }

    fn claim(&self) -> bool {
        Slot::claim(self)
    }

    fn reject(self: Arc<Self>, failure: Failure) {
        let _ = ReplySender::new(self).send(Err(JobError::failed(failure)));
    }

    fn abandon(&self) {
        Slot::abandon(self);
    }
}

/// How long a caller waits for its errand.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    /// Until it starts, for at most this long (`queue_timeout`); then
    /// until it ends.
    ToStart(Option<Duration>),
    /// Until it ends, for at most this long (`broadcast`).
    ToEnd(Duration),
}

impl Pool {
    /// Runs `f` on worker `index`, waiting as `wait` says.
    pub(crate) async fn run_on<F, R>(&self, index: usize, wait: Wait, f: F) -> Answer<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let slot = Slot::new(Errand(f));
        let job: Arc<dyn Job> = slot.clone();
        let mut rx: ReplyReceiver<Answer<R>> = ReplyReceiver::new(slot);
        match self.post(index, JobHandle::new(job)) {
            Err(failure) => return Err(JobError::failed(failure)),
            Ok(Posted::Stranded(failure)) if rx.withdraw() => {
                return Err(JobError::failed(failure));
            }
            Ok(_) => {}
        }
        let (limit, late) = match wait {
            Wait::ToStart(limit) => (limit, JobError::failed(Failure::TimedOut)),
            Wait::ToEnd(limit) => (Some(limit), JobError::late()),
        };
        // Off any Tokio runtime there is no timer, and the wait is unbounded
        // (as `queue_timeout` is for such a caller).
        let limit = limit.filter(|_| tokio::runtime::Handle::try_current().is_ok());
        let mut timer = std::pin::pin!(limit.map(tokio::time::sleep));
        let first = poll_fn(|cx| {
            if let Poll::Ready(answer) = rx.poll_recv(cx) {
                return Poll::Ready(Some(answer));
            }
            match timer.as_mut().as_pin_mut().map(|timer| timer.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        let answer = match first {
            Some(answer) => answer,
            // Not started: it never will be. Started: `queue_timeout`
            // bounds the wait before a start only; `broadcast` stops here.
            None if rx.withdraw() || matches!(wait, Wait::ToEnd(_)) => return Err(late),
            None => poll_fn(|cx| rx.poll_recv(cx)).await,
        };
        answer.unwrap_or_else(|_| Err(JobError::failed(Failure::WorkerGone)))
    }

    /// Runs `f` once on every worker thread alive now, each within `wait`.
    pub(crate) async fn broadcast<F, R>(&self, wait: Duration, f: F) -> Vec<(WorkerId, Answer<R>)>
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: Send + 'static,
    {
        let config = self.config();
        let f = Arc::new(f);
        let mut runs: Vec<_> = (0..config.max_workers)
            .filter(|&index| self.is_alive(index))
            .map(|index| {
                let f = f.clone();
                let name = format!("{}-{}", config.thread_name, index);
                let id = WorkerId::new(self.id(), index, name.into());
                let run = Box::pin(self.run_on(index, Wait::ToEnd(wait), move || f()));
                (id, run, None)
            })
            .collect();
        // Polled together, not one after another: each worker runs its
        // errand as soon as it takes it, and one stuck worker costs the
        // caller `wait` once, not once per worker.
        poll_fn(|cx| {
            let mut pending = false;
            for (_, run, answer) in &mut runs {
                if answer.is_none() {
                    match run.as_mut().poll(cx) {
                        Poll::Ready(done) => *answer = Some(done),
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        runs.into_iter()
            .map(|(id, _, answer)| (id, answer.expect("every run is done")))
            .collect()
    }
}
