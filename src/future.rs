//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use tokio::sync::oneshot;

use crate::error::Failure;
use crate::ThreadAffinityBody;

/// What a worker sends back for one request: the head (and the whole body
/// when it came in one frame), or the inner service's error.
pub(crate) type Reply<E> = Result<Response<ThreadAffinityBody>, E>;

/// The future returned by [`ThreadAffinity`](crate::ThreadAffinity).
///
/// It resolves when the worker has the response head. Dropping it before
/// then cancels the request: the worker drops the inner future on its own
/// thread.
pub struct ResponseFuture<E> {
    state: State<E>,
}

enum State<E> {
    /// Waiting for the worker's reply.
    Waiting(oneshot::Receiver<Reply<E>>),
    /// Answered by the layer itself, without reaching a worker.
    Failed(Option<Failure>),
}

impl<E> ResponseFuture<E> {
    pub(crate) fn waiting(rx: oneshot::Receiver<Reply<E>>) -> Self {
        Self {
            state: State::Waiting(rx),
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
        match &mut self.get_mut().state {
            State::Waiting(rx) => Poll::Ready(match std::task::ready!(Pin::new(rx).poll(cx)) {
                Ok(reply) => reply,
                // The worker dropped the request without answering: its
                // thread died while holding it.
                Err(_) => Ok(Failure::WorkerGone.response()),
            }),
            State::Failed(failure) => Poll::Ready(Ok(failure
                .take()
                .expect("ResponseFuture polled after completion")
                .response())),
        }
    }
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting(_) => "waiting",
            State::Failed(_) => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
