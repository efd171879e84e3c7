//! The task that serves one request on its worker: readiness and call, the
//! response future, the head, then the body's frames.
//!
//! Cancellation is watched at every step: while the inner service is not
//! ready or its future is pending, the task also waits on the reply
//! channel's closed signal; while the body is pending, on the frame
//! channel's. Either way the task returns and drops what it holds, on this
//! thread.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_service::Service;

use super::unwind::{guard, Guarded};
use super::worker::{Active, LocalTask, WorkerState};
use super::Job;
use crate::body::{FrameSender, Msg};
use crate::error::{BoxError, Elapsed, Failure};
use crate::future::Reply;
use crate::service::Shared;
use crate::trace::{self, Span};
use crate::ThreadAffinityBody;

/// How many frames a stream produces before it yields to the worker's other
/// tasks even if its reader keeps up.
const FRAMES_PER_TURN: usize = 16;

/// A request for the service behind `shared`.
pub(crate) struct Call<S, B>
where
    S: Service<Request<B>>,
{
    shared: Arc<Shared<S>>,
    request: Request<B>,
    reply: oneshot::Sender<Reply<S::Error>>,
    span: Span,
}

impl<S, B> Call<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(
        shared: Arc<Shared<S>>,
        request: Request<B>,
        reply: oneshot::Sender<Reply<S::Error>>,
    ) -> Self {
        Self {
            shared,
            request,
            reply,
            span: Span::current(),
        }
    }
}

impl<S, B, ResBody> Job for Call<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + 'static,
    S::Future: 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Body + 'static,
    ResBody::Error: Into<BoxError>,
{
    fn start(self: Box<Self>, worker: &WorkerState, active: Active) -> LocalTask {
        let Call {
            shared,
            mut request,
            reply,
            span,
        } = *self;
        request.extensions_mut().insert(worker.id().clone());
        let config = &worker.core().config;
        let limits = Limits {
            body_buffer: config.body_buffer,
            deadline: config.response_deadline,
        };
        span.in_scope(|| trace::debug!(worker = worker.id().index(), "started"));
        let made = guard(|| worker.instance(shared.id(), || shared.make(worker.id())));
        let Ok(service) = made else {
            answer_panic(reply, &active);
            // A zero-sized future: boxing it allocates nothing.
            return Box::pin(std::future::ready(()));
        };
        let task = span.instrument(serve(service, request, reply, limits, active));
        Box::pin(task)
    }

    fn reject(self: Box<Self>, failure: Failure) {
        self.span.in_scope(|| trace::debug!(?failure, "rejected"));
        answer(self.reply, Ok(failure.response()));
    }
}

/// The limits one response is served under.
#[derive(Clone, Copy)]
struct Limits {
    body_buffer: usize,
    deadline: Option<Duration>,
}

/// Serves one request, in three steps. Each step is its own future and
/// takes its input by value, so that the task's state holds one step's
/// values at a time: the task is boxed per request, and small is cheap.
async fn serve<S, B, ResBody>(
    service: Rc<RefCell<S>>,
    request: Request<B>,
    reply: oneshot::Sender<Reply<S::Error>>,
    limits: Limits,
    active: Active,
) where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    let deadline = limits.deadline.map(|deadline| Instant::now() + deadline);
    let Some((future, reply)) = call(service, request, reply, &active).await else {
        return;
    };
    let Some((response, reply)) = respond(future, reply, &active).await else {
        return;
    };
    send_head(response, reply, limits.body_buffer, deadline, active).await;
}

/// Waits for the service to be ready and calls it; `None` if the request
/// was answered (error, panic) or cancelled meanwhile.
async fn call<S, B>(
    service: Rc<RefCell<S>>,
    request: Request<B>,
    mut reply: oneshot::Sender<Reply<S::Error>>,
    active: &Active,
) -> Option<(S::Future, oneshot::Sender<Reply<S::Error>>)>
where
    S: Service<Request<B>>,
{
    // Readiness and call happen in one poll: no other task on this thread
    // can run in between and use up the readiness this one saw.
    let mut request = Some(request);
    let called = poll_fn(|cx| {
        if reply.poll_closed(cx).is_ready() {
            return Poll::Ready(None);
        }
        let polled = guard(|| {
            let mut service = service.borrow_mut();
            match service.poll_ready(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Ok(service.call(request.take().expect("called once"))))
                }
            }
        });
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(called)) => Poll::Ready(Some(Ok(called))),
            Err(panic) => Poll::Ready(Some(Err(panic))),
        }
    })
    .await;
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
    mut reply: oneshot::Sender<Reply<E>>,
    active: &Active,
) -> Option<(T, oneshot::Sender<Reply<E>>)>
where
    F: Future<Output = Result<T, E>>,
{
    let mut future = pin!(Guarded::new(future));
    let response = poll_fn(|cx| {
        if reply.poll_closed(cx).is_ready() {
            return Poll::Ready(None);
        }
        future.as_mut().poll_future(cx).map(Some)
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
    reply: oneshot::Sender<Reply<E>>,
    body_buffer: usize,
    deadline: Option<Instant>,
    active: Active,
) where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    // Boxed: a streamed body moves on into its own future below.
    let mut body = Box::pin(Guarded::new(body));
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
    let (tx, stream) = ThreadAffinityBody::channel(body_buffer, hint);
    if let Some(frame) = first {
        // The channel is new and has room for at least one message.
        tx.send(Msg::Frame(frame));
    }
    trace::debug!(status = parts.status.as_u16(), streamed = true, "head sent");
    if reply.send(Ok(Response::from_parts(parts, stream))).is_err() {
        return trace::debug!("cancelled");
    }
    // Boxed, so that only streamed responses pay for the pump's state.
    Box::pin(stream_body(body, tx, deadline, active)).await;
}

/// Streams the rest of a body, then records how it ended.
async fn stream_body<B>(
    mut body: Pin<Box<Guarded<B>>>,
    tx: FrameSender,
    deadline: Option<Instant>,
    active: Active,
) where
    B: Body,
    B::Error: Into<BoxError>,
{
    // Yield once before producing more: the head and first frame are out,
    // and the worker's event loop and other streams get their turn before
    // this one fills its buffer.
    tokio::task::yield_now().await;
    match pump(body.as_mut(), &tx, deadline).await {
        Pumped::Done => trace::debug!("ended"),
        Pumped::Cancelled => trace::debug!("cancelled"),
        Pumped::Panicked => {
            trace::warning!("panicked");
            active.panicked();
        }
        Pumped::Elapsed => {
            trace::debug!("deadline elapsed");
            // Drop the inner body now, on this thread, and make room for
            // other requests; then tell the reader, once it makes room.
            body.as_mut().clear();
            drop(active);
            if poll_fn(|cx| tx.poll_ready(cx)).await.is_ok() {
                tx.send(Msg::Error(Elapsed::new().into()));
            }
        }
    }
}

/// Sends the reply; a caller that went away no longer wants it.
fn answer<E>(reply: oneshot::Sender<Reply<E>>, with: Reply<E>) {
    let _ = reply.send(with);
}

/// Answers with a 500 for a panic, and counts it.
fn answer_panic<E>(reply: oneshot::Sender<Reply<E>>, active: &Active) {
    trace::warning!("panicked");
    active.panicked();
    answer(reply, Ok(Failure::Panicked.response()));
}

/// How a pump ended.
enum Pumped {
    /// The body ended or failed, and the reader was told.
    Done,
    /// The reader went away.
    Cancelled,
    /// The body panicked (and the reader was told).
    Panicked,
    /// The deadline passed; the reader has not been told.
    Elapsed,
}

/// Moves frames from the inner body to the channel until the body ends, it
/// fails, the reader goes away, or the deadline passes.
async fn pump<B>(
    mut body: Pin<&mut Guarded<B>>,
    tx: &FrameSender,
    deadline: Option<Instant>,
) -> Pumped
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut elapsed = pin!(async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    });
    let mut produced = 0usize;
    loop {
        // Room first: a frame produced with nowhere to go would either block
        // the thread or grow memory.
        let ready = poll_fn(|cx| {
            if elapsed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Pumped::Elapsed));
            }
            tx.poll_ready(cx).map_err(|_| Pumped::Cancelled)
        });
        if let Err(end) = ready.await {
            return end;
        }
        // Watch for the reader going away while the body is pending, not
        // only at the next send.
        let next = poll_fn(|cx| {
            if tx.poll_closed(cx).is_ready() {
                return Poll::Ready(Err(Pumped::Cancelled));
            }
            if elapsed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Pumped::Elapsed));
            }
            body.as_mut().poll_frame(cx).map(Ok)
        })
        .await;
        let (msg, end) = match next {
            Err(end) => return end,
            Ok(Ok(Some(Ok(frame)))) => (Msg::Frame(frame), None),
            Ok(Ok(Some(Err(error)))) => (Msg::Error(error), Some(Pumped::Done)),
            Ok(Ok(None)) => (Msg::End, Some(Pumped::Done)),
            Ok(Err(panic)) => (Msg::Error(panic.into()), Some(Pumped::Panicked)),
        };
        tx.send(msg);
        if let Some(end) = end {
            return end;
        }
        produced += 1;
        if produced % FRAMES_PER_TURN == 0 {
            tokio::task::yield_now().await;
        }
    }
}
