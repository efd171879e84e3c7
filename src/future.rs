//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use tokio::time::Sleep;

use crate::error::Failure;
use crate::pool::Core;
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
    /// Waiting for the worker's reply.
    Waiting {
        rx: ReplyReceiver<Reply<E>>,
        timeout: Option<QueueTimeout>,
    },
    /// Answered by the layer itself, without reaching a worker.
    Failed(Option<Failure>),
}

/// The queue timeout of one request, kept by its caller.
pub(crate) struct QueueTimeout {
    // Boxed: most requests have no queue timeout, and `Sleep` is large.
    sleep: Pin<Box<Sleep>>,
    core: Arc<Core>,
}

impl QueueTimeout {
    /// A timer on the caller's runtime, or `None` off a Tokio runtime (the
    /// worker then checks the timeout when it takes the job).
    pub(crate) fn start(core: &Arc<Core>) -> Option<Self> {
        let timeout = core.config.queue_timeout?;
        tokio::runtime::Handle::try_current().ok()?;
        Some(Self {
            sleep: Box::pin(tokio::time::sleep(timeout)),
            core: core.clone(),
        })
    }
}

impl<E> ResponseFuture<E> {
    pub(crate) fn waiting(rx: ReplyReceiver<Reply<E>>, timeout: Option<QueueTimeout>) -> Self {
        Self {
            state: State::Waiting { rx, timeout },
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
            ready!(queue.sleep.as_mut().poll(cx));
            // The reply is checked first: a request answered and timed out
            // in the same instant keeps its answer.
            if rx.withdraw() {
                queue
                    .core
                    .counters
                    .timed_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                trace::debug!("queue timeout elapsed");
                *state = State::Failed(None);
                return Poll::Ready(Ok(Failure::TimedOut.response()));
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
            State::Waiting { .. } => "waiting",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
