//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Sleep;

use crate::error::Failure;
use crate::pool::{Inner, JobHandle, Pool};
use crate::reply::ReplyReceiver;
use crate::trace;
use crate::ThreadAffinityBody;

/// What a worker sends back for one request: the head (and the whole body
/// when it came in one frame), or the inner service's error.
pub(crate) type Reply<E> = Result<Response<ThreadAffinityBody>, E>;

/// The future returned by [`ThreadAffinity`](crate::ThreadAffinity).
///
/// It resolves when the worker has the response head. Dropping it before
/// then cancels the request: a queued request is never started, and a
/// running one has its inner future dropped on its worker's thread.
///
/// With a [`queue_timeout`](crate::Builder::queue_timeout), this future
/// also keeps the time: a request still queued when it passes is
/// withdrawn and answered `503`, even while every worker is stuck.
pub struct ResponseFuture<E> {
    state: State<E>,
}

enum State<E> {
    /// Waiting for a place in the shared queue: an unkeyed request of a
    /// pool with affinity keys, whose `poll_ready` reserved nothing.
    Admitting {
        admit: Box<Admit>,
        rx: ReplyReceiver<Reply<E>>,
        timeout: Option<QueueTimeout>,
    },
    /// Waiting for the worker's reply.
    Waiting {
        rx: ReplyReceiver<Reply<E>>,
        timeout: Option<QueueTimeout>,
    },
    /// Answered by the layer itself, without reaching a worker.
    Failed(Option<Failure>),
}

/// A job waiting for a place in the shared queue.
pub(crate) struct Admit {
    place: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
    job: Option<JobHandle>,
    // Keeps the queues open until the job is in one; the job itself must
    // not (see `ThreadAffinity`).
    pool: Pool,
}

impl Admit {
    /// Submits `job` once a place frees up.
    pub(crate) fn new(job: JobHandle, pool: Pool) -> Box<Self> {
        Box::new(Self {
            place: Box::pin(pool.admission().acquire_owned()),
            job: Some(job),
            pool,
        })
    }

    /// Ready once the job is queued, or refused.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        let place = ready!(self.place.as_mut().poll(cx));
        let job = self.job.take().expect("Admit polled after completion");
        Poll::Ready(match place {
            Ok(permit) => self.pool.submit(job, Some(permit), None),
            // Closed: the pool is shutting down.
            Err(_) => Err(Failure::ShutDown),
        })
    }
}

/// The queue timeout of one request, kept by its caller.
pub(crate) struct QueueTimeout {
    // Boxed: most requests have no queue timeout, and `Sleep` is large.
    sleep: Pin<Box<Sleep>>,
    inner: Arc<Inner>,
}

impl QueueTimeout {
    /// A timer on the caller's runtime, or `None` off a Tokio runtime (the
    /// worker then checks the timeout when it takes the job).
    pub(crate) fn start(inner: &Arc<Inner>) -> Option<Self> {
        let timeout = inner.config.queue_timeout?;
        tokio::runtime::Handle::try_current().ok()?;
        Some(Self {
            sleep: Box::pin(tokio::time::sleep(timeout)),
            inner: inner.clone(),
        })
    }

    /// Ready once the timeout has passed.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }

    pub(crate) fn is_elapsed(&self) -> bool {
        self.sleep.is_elapsed()
    }

    /// Counts a request answered for its timeout, and its answer.
    pub(crate) fn answer(&self) -> Failure {
        self.inner.counters.timed_out.fetch_add(1, Relaxed);
        trace::debug!("queue timeout elapsed");
        Failure::TimedOut
    }
}

impl<E> ResponseFuture<E> {
    pub(crate) fn waiting(rx: ReplyReceiver<Reply<E>>, timeout: Option<QueueTimeout>) -> Self {
        Self {
            state: State::Waiting { rx, timeout },
        }
    }

    pub(crate) fn admitting(
        admit: Box<Admit>,
        rx: ReplyReceiver<Reply<E>>,
        timeout: Option<QueueTimeout>,
    ) -> Self {
        Self {
            state: State::Admitting { admit, rx, timeout },
        }
    }

    pub(crate) fn failed(failure: Failure) -> Self {
        Self {
            state: State::Failed(Some(failure)),
        }
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Reply<E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().state;
        if let State::Admitting { admit, timeout, .. } = state {
            match admit.poll(cx) {
                Poll::Ready(Ok(())) => {
                    let State::Admitting { rx, timeout, .. } =
                        std::mem::replace(state, State::Failed(None))
                    else {
                        unreachable!()
                    };
                    *state = State::Waiting { rx, timeout };
                }
                Poll::Ready(Err(failure)) => return Poll::Ready(Ok(failure.response())),
                Poll::Pending => {
                    // Waiting for a place counts as waiting in the queue.
                    let Some(queue) = timeout else {
                        return Poll::Pending;
                    };
                    ready!(queue.poll_elapsed(cx));
                    return Poll::Ready(Ok(queue.answer().response()));
                }
            }
        }
        let State::Waiting { rx, timeout } = state else {
            let State::Failed(failure) = state else {
                unreachable!()
            };
            let failure = failure
                .take()
                .expect("ResponseFuture polled after completion");
            return Poll::Ready(Ok(failure.response()));
        };
        if let Poll::Ready(reply) = rx.poll_recv(cx) {
            return Poll::Ready(match reply {
                Ok(reply) => reply,
                // The worker dropped the request without answering: its
                // thread died while holding it.
                Err(_) => Ok(Failure::WorkerGone.response()),
            });
        }
        if let Some(queue) = timeout {
            ready!(queue.poll_elapsed(cx));
            // The reply is checked first: a request answered and timed out
            // in the same instant keeps its answer.
            if rx.withdraw() {
                let failure = queue.answer();
                *state = State::Failed(None);
                return Poll::Ready(Ok(failure.response()));
            }
            // A worker started it: the queue timeout no longer applies.
            *timeout = None;
        }
        Poll::Pending
    }
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Admitting { .. } => "admitting",
            State::Waiting { .. } => "waiting",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
