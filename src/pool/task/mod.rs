//! The task that serves one request on its worker: readiness and call, the
//! response future, the head, then the body's frames.
//!
//! Cancellation is watched at every step: while the inner service is not
//! ready or its future is pending, the task also waits on the reply
//! channel's closed signal; while the body is pending, on the frame
//! channel's. Either way the task returns and drops what it holds, on this
//! thread.

mod pump;
mod ready;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use self::pump::{stream_body, Stream};
use self::ready::{Instance, InstanceRef, Turn};
use crate::body::Msg;
use crate::cancel::{Scope, Scoped, Watch};
use crate::error::{BoxError, Failure};
use crate::future::Reply;
use crate::pool::inner::Inner;
use crate::pool::queue::job::{Job, JobHandle};
use crate::pool::worker::load::Active;
use crate::pool::worker::state::WorkerState;
use crate::pool::worker::unwind::{guard, Guarded};
use crate::pool::worker::LocalTask;
use crate::reply::{ReplyReceiver, ReplySender, Slot};
use crate::service::Wrapped;
use crate::trace::{self, Span};
use crate::ThreadAffinityBody;

/// A request for the service behind `wrapped`: the payload of its reply
/// slot, which the queue carries as the job.
pub(crate) struct Call<S, B> {
    wrapped: Arc<Wrapped<S>>,
    request: Request<B>,
    span: Span,
}

impl<S, B> Call<S, B> {
    /// The job to queue and the caller's end of its reply, in one
    /// allocation.
    pub(crate) fn queue<ResBody>(
        wrapped: Arc<Wrapped<S>>,
        request: Request<B>,
    ) -> (JobHandle, ReplyReceiver<Reply<S::Error>>)
    where
        S: Service<Request<B>, Response = Response<ResBody>> + 'static,
        S::Future: 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
        Wrapped<S>: Send + Sync,
        ResBody: Body + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let slot = Slot::new(Self {
            wrapped,
            request,
            span: Span::current(),
        });
        let job: Arc<dyn Job> = slot.clone();
        (JobHandle::new(job), ReplyReceiver::new(slot))
    }
}

impl<S, B, ResBody> Job for Slot<Reply<S::Error>, Call<S, B>>
where
    S: Service<Request<B>, Response = Response<ResBody>> + 'static,
    S::Future: 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    Wrapped<S>: Send + Sync,
    ResBody: Body + 'static,
    ResBody::Error: Into<BoxError>,
{
    fn start(self: Arc<Self>, worker: &WorkerState, active: Active) -> LocalTask {
        let job = self.take_job();
        // The slot watches for the caller's end going, for `Cancellation`.
        let watch: Arc<dyn Watch> = self.clone();
        let reply = ReplySender::new(self);
        let Some(Call {
            wrapped,
            mut request,
            span,
        }) = job
        else {
            // Not claimed: never happens (the worker claims first); the
            // dropped sender tells the caller.
            return Box::pin(std::future::ready(()));
        };
        request.extensions_mut().insert(worker.id().clone());
        let config = &worker.inner().config;
        let limits = Limits {
            body_buffer: config.body_buffer,
            deadline: config.response_deadline,
            merge: config.merge_frames,
        };
        span.in_scope(|| trace::debug!(worker = worker.id().index(), "started"));
        let handle = Arc::downgrade(&wrapped);
        let made = guard(|| {
            worker.instance(wrapped.id(), handle, || {
                Instance::new(wrapped.make(worker.id()))
            })
        });
        let Ok(service) = made else {
            answer_panic(reply, &active);
            // A zero-sized future: boxing it allocates nothing.
            return Box::pin(std::future::ready(()));
        };
        let inner = worker.inner().clone();
        let task = span.instrument(serve(
            service,
            request,
            reply,
            limits,
            active,
            (watch, inner),
        ));
        Box::pin(task)
    }

    fn claim(&self) -> bool {
        Slot::claim(self)
    }

    fn reject(self: Arc<Self>, failure: Failure) {
        if let Some(call) = self.take_job() {
            call.span.in_scope(|| trace::debug!(?failure, "rejected"));
        }
        answer(ReplySender::new(self), Ok(failure.response()));
    }

    fn abandon(&self) {
        Slot::abandon(self);
    }
}

/// The limits one response is served under.
#[derive(Clone, Copy)]
struct Limits {
    body_buffer: usize,
    deadline: Option<Duration>,
    merge: usize,
}

/// Serves one request, in three steps. Each step is its own future and
/// takes its input by value, so that the task's state holds one step's
/// values at a time: the task is boxed per request, and small is cheap.
async fn serve<S, B, ResBody>(
    service: InstanceRef<S>,
    request: Request<B>,
    reply: ReplySender<Reply<S::Error>>,
    limits: Limits,
    active: Active,
    (watch, inner): (Arc<dyn Watch>, Arc<Inner>),
) where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    // A deadline past what an `Instant` can hold (`Duration::MAX`) is none.
    let deadline = limits
        .deadline
        .and_then(|deadline| Instant::now().checked_add(deadline));
    // User code below runs in this request's scope (see `cancel`).
    let scope = Scope::new(watch, inner, deadline.map(Instant::into_std));
    let Some((future, reply)) = ready_and_call(service, request, reply, &active, &scope).await
    else {
        return;
    };
    let Some((response, reply)) = respond(future, reply, &active, &scope).await else {
        return;
    };
    let stream = Stream {
        deadline,
        merge: limits.merge,
    };
    let (parts, body) = response.into_parts();
    let response = Response::from_parts(parts, Scoped::new(&scope, body));
    send_head(response, reply, limits.body_buffer, stream, active, &scope).await;
}

/// Waits for its turn and for the service to be ready, and calls it;
/// `None` if the request was answered (error, panic) or cancelled meanwhile.
async fn ready_and_call<S, B>(
    service: InstanceRef<S>,
    request: Request<B>,
    mut reply: ReplySender<Reply<S::Error>>,
    active: &Active,
    scope: &Scope,
) -> Option<(S::Future, ReplySender<Reply<S::Error>>)>
where
    S: Service<Request<B>>,
{
    // Readiness and call happen in one poll: no other task on this thread
    // can run in between and use up the readiness this one saw. Only the
    // request whose turn it is polls readiness (see `ready`); the turn is
    // handed on when this function returns, whatever the outcome.
    let mut turn = Turn::new(service.clone());
    let mut request = Some(request);
    let called = poll_fn(|cx| {
        if reply.poll_closed(cx).is_ready() {
            return Poll::Ready(None);
        }
        if turn.poll_owner(cx).is_pending() {
            return Poll::Pending;
        }
        let polled = guard(|| {
            scope.enter(|| {
                let mut queue = service.borrow_mut();
                let service = &mut queue.service;
                match service.poll_ready(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                    Poll::Ready(Ok(())) => {
                        Poll::Ready(Ok(service.call(request.take().expect("called once"))))
                    }
                }
            })
        });
        match polled {
            Ok(Poll::Pending) => {
                turn.wait(cx);
                Poll::Pending
            }
            Ok(Poll::Ready(called)) => Poll::Ready(Some(Ok(called))),
            Err(panic) => Poll::Ready(Some(Err(panic))),
        }
    })
    .await;
    // The next waiter owns readiness now.
    turn.leave();
    match called {
        None => trace::debug!("cancelled"),
        Some(Err(_)) => answer_panic(reply, active),
        Some(Ok(Err(error))) => answer(reply, Err(error)),
        Some(Ok(Ok(future))) => return Some((future, reply)),
    }
    None
}

/// Polls the service's future to its response; `None` if the request was
/// answered (error, panic) or cancelled meanwhile.
async fn respond<F, T, E>(
    future: F,
    mut reply: ReplySender<Reply<E>>,
    active: &Active,
    scope: &Scope,
) -> Option<(T, ReplySender<Reply<E>>)>
where
    F: Future<Output = Result<T, E>>,
{
    let mut future = pin!(Guarded::new(future));
    let response = poll_fn(|cx| {
        if reply.poll_closed(cx).is_ready() {
            return Poll::Ready(None);
        }
        scope.enter(|| future.as_mut().poll_future(cx)).map(Some)
    })
    .await;
    match response {
        None => trace::debug!("cancelled"),
        Some(Err(_)) => answer_panic(reply, active),
        Some(Ok(Err(error))) => answer(reply, Err(error)),
        Some(Ok(Ok(response))) => return Some((response, reply)),
    }
    None
}

/// Sends the head: with the whole body when it is ready in one frame (the
/// common case, no channel), else with a channel the rest streams through.
async fn send_head<B, E>(
    response: Response<B>,
    reply: ReplySender<Reply<E>>,
    body_buffer: usize,
    pump: Stream,
    active: Active,
    scope: &Scope,
) where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    // Pinned in the task, which is allocated anyway: a response of one
    // frame costs no allocation here. The pump borrows it below.
    let mut body = pin!(Guarded::new(body));
    let Ok(hint) = body.size_hint() else {
        return answer_panic(reply, &active);
    };
    let first = match body.is_end_stream() {
        Err(_) => return answer_panic(reply, &active),
        Ok(true) => Poll::Ready(Ok(None)),
        Ok(false) => poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await,
    };
    // A panic here, before the head, is a 500 like any other.
    let Ok(ended) = body.is_end_stream() else {
        return answer_panic(reply, &active);
    };
    let first = match first {
        Poll::Ready(Err(_)) => return answer_panic(reply, &active),
        Poll::Ready(Ok(Some(Ok(frame)))) if ended => {
            trace::debug!(
                status = parts.status.as_u16(),
                streamed = false,
                "head sent"
            );
            let body = ThreadAffinityBody::ready(Some(Ok(frame)), hint);
            return answer(reply, Ok(Response::from_parts(parts, body)));
        }
        Poll::Ready(Ok(item @ (None | Some(Err(_))))) => {
            trace::debug!(
                status = parts.status.as_u16(),
                streamed = false,
                "head sent"
            );
            let body = ThreadAffinityBody::ready(item, hint);
            return answer(reply, Ok(Response::from_parts(parts, body)));
        }
        Poll::Ready(Ok(Some(Ok(frame)))) => Some(frame),
        Poll::Pending => None,
    };

    // A streamed response: the head goes now, the frames follow.
    let (tx, stream) = ThreadAffinityBody::channel(body_buffer, hint, pump.deadline);
    // Before the head goes: from then on, the body's drop is the cancel.
    scope.hand_over(tx.watch());
    if let Some(frame) = first {
        // The channel is new and has room for at least one message.
        let _ = tx.send(Msg::Frame(frame));
    }
    trace::debug!(status = parts.status.as_u16(), streamed = true, "head sent");
    if reply.send(Ok(Response::from_parts(parts, stream))).is_err() {
        return trace::debug!("cancelled");
    }
    // Boxed, so that only streamed responses pay for the pump's state.
    Box::pin(stream_body(body, tx, pump, active)).await;
}

/// Sends the reply; a caller that went away no longer wants it.
fn answer<E>(reply: ReplySender<Reply<E>>, with: Reply<E>) {
    let _ = reply.send(with);
}

/// Answers with a 500 for a panic, and counts it.
fn answer_panic<E>(reply: ReplySender<Reply<E>>, active: &Active) {
    trace::warning!("panicked");
    active.panicked();
    answer(reply, Ok(Failure::Panicked.response()));
}
