//! The task that serves one request on its worker: readiness and call, the
//! response future, the head, then the body's frames.
//!
//! Cancellation is watched at every step: while the inner service is not
//! ready or its future is pending, the task also waits on the reply
//! channel's closed signal; while the body is pending, on the frame
//! channel's. Either way the task returns and drops what it holds, on this
//! thread.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use http::{Request, Response};
use http_body::Body;
use tokio::sync::oneshot;
use tower_service::Service;

use super::unwind::{guard, Guarded};
use super::worker::{LocalTask, WorkerState};
use super::Job;
use crate::body::{FrameSender, Msg};
use crate::error::{BoxError, Failure};
use crate::future::Reply;
use crate::service::Shared;
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
    fn start(self: Box<Self>, worker: &WorkerState) -> LocalTask {
        let Call {
            shared,
            mut request,
            reply,
        } = *self;
        request.extensions_mut().insert(worker.id().clone());
        let body_buffer = worker.config().body_buffer;
        let service = guard(|| worker.instance(shared.id(), || shared.make(worker.id())));
        Box::pin(async move {
            match service {
                Ok(service) => serve(service, request, reply, body_buffer).await,
                Err(_) => {
                    let _ = reply.send(Ok(Failure::Panicked.response()));
                }
            }
        })
    }

    fn reject(self: Box<Self>, failure: Failure) {
        let _ = self.reply.send(Ok(failure.response()));
    }
}

async fn serve<S, B, ResBody>(
    service: std::rc::Rc<std::cell::RefCell<S>>,
    request: Request<B>,
    mut reply: oneshot::Sender<Reply<S::Error>>,
    body_buffer: usize,
) where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
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
    drop(service);
    let future = match called {
        None => return,
        Some(Err(_)) => return answer(reply, Failure::Panicked),
        Some(Ok(Err(error))) => {
            let _ = reply.send(Err(error));
            return;
        }
        Some(Ok(Ok(future))) => future,
    };

    let mut future = pin!(Guarded::new(future));
    let response = poll_fn(|cx| {
        if reply.poll_closed(cx).is_ready() {
            return Poll::Ready(None);
        }
        future.as_mut().poll_future(cx).map(Some)
    })
    .await;
    let response = match response {
        None => return,
        Some(Err(_)) => return answer(reply, Failure::Panicked),
        Some(Ok(Err(error))) => {
            let _ = reply.send(Err(error));
            return;
        }
        Some(Ok(Ok(response))) => response,
    };

    let (parts, body) = response.into_parts();
    let mut body = pin!(Guarded::new(body));
    let Ok(hint) = body.size_hint() else {
        return answer(reply, Failure::Panicked);
    };
    // Try the body inline: most responses are one frame, ready at once, and
    // go back with the head in one message, without a channel.
    let first = match body.is_end_stream() {
        Err(_) => return answer(reply, Failure::Panicked),
        Ok(true) => Poll::Ready(Ok(None)),
        Ok(false) => poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await,
    };
    let first = match first {
        Poll::Ready(Err(_)) => return answer(reply, Failure::Panicked),
        Poll::Ready(Ok(Some(Ok(frame)))) if body.is_end_stream().unwrap_or(false) => {
            let body = ThreadAffinityBody::ready(Some(Ok(frame)), hint);
            let _ = reply.send(Ok(Response::from_parts(parts, body)));
            return;
        }
        Poll::Ready(Ok(item @ (None | Some(Err(_))))) => {
            let body = ThreadAffinityBody::ready(item, hint);
            let _ = reply.send(Ok(Response::from_parts(parts, body)));
            return;
        }
        Poll::Ready(Ok(Some(Ok(frame)))) => Some(frame),
        Poll::Pending => None,
    };

    // A streamed response: the head goes now, the frames follow.
    let (tx, stream) = ThreadAffinityBody::channel(body_buffer, hint);
    if let Some(frame) = first {
        // The channel is new and has room for at least one message.
        let _ = tx.try_send(Msg::Frame(frame));
    }
    if reply.send(Ok(Response::from_parts(parts, stream))).is_err() {
        return;
    }
    pump(body, &tx).await;
}

/// Answers with the layer's own response for `failure`.
fn answer<E>(reply: oneshot::Sender<Reply<E>>, failure: Failure) {
    let _ = reply.send(Ok(failure.response()));
}

/// Moves frames from the inner body to the channel until the body ends, it
/// fails, or the reader goes away.
async fn pump<B>(mut body: std::pin::Pin<&mut Guarded<B>>, tx: &FrameSender)
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut closed = pin!(tx.closed());
    let mut produced = 0usize;
    loop {
        // Room first: a frame produced with nowhere to go would either block
        // the thread or grow memory.
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        // Watch for the reader going away while the body is pending, not
        // only at the next send.
        let next = poll_fn(|cx| {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            body.as_mut().poll_frame(cx).map(Some)
        })
        .await;
        match next {
            None => return,
            Some(Ok(Some(Ok(frame)))) => permit.send(Msg::Frame(frame)),
            Some(Ok(Some(Err(error)))) => return permit.send(Msg::Error(error)),
            Some(Ok(None)) => return permit.send(Msg::End),
            Some(Err(panic)) => return permit.send(Msg::Error(panic.into())),
        }
        produced += 1;
        if produced % FRAMES_PER_TURN == 0 {
            tokio::task::yield_now().await;
        }
    }
}
