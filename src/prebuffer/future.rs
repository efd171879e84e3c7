use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{OverLimit, PrebufferLayer, PrebufferedBody};
use crate::error::ResponseBody;

pin_project! {
    /// The response future of [`Prebuffer`](super::Prebuffer): reads the
    /// request body, then waits for the inner service's readiness, then
    /// for its response.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<PrebufferedBody<B>>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        // Every field an `Option` only so that the next state can take it.
        Reading {
            inner: Option<S>,
            parts: Option<Parts>,
            body: Option<B>,
            buffered: VecDeque<Frame<Bytes>>,
            size: usize,
            config: PrebufferLayer,
        },
        Waiting {
            inner: S,
            request: Option<Request<PrebufferedBody<B>>>,
        },
        // The service is kept until the response arrives: when it is the
        // pool's last handle, dropping it would shut the pool down under
        // the request.
        Calling {
            inner: S,
            #[pin]
            future: F,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<PrebufferedBody<B>>>,
{
    pub(super) fn new(inner: S, request: Request<B>, config: PrebufferLayer) -> Self {
        let (parts, body) = request.into_parts();
        Self {
            state: State::Reading {
                inner: Some(inner),
                parts: Some(parts),
                body: Some(body),
                buffered: VecDeque::new(),
                size: 0,
                config,
            },
        }
    }
}

/// The plain-text answers, their reason phrase as the body.
const BAD_REQUEST: &str = "Bad Request\n";
const PAYLOAD_TOO_LARGE: &str = "Payload Too Large\n";

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<PrebufferedBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body + Unpin,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Reading {
                    inner,
                    parts,
                    body,
                    buffered,
                    size,
                    config,
                } => {
                    let limit = config.limit;
                    let reading = body.as_mut().expect("polled after completion");
                    let complete = loop {
                        // Stop before a frame that the size hint already
                        // says cannot fit, not only after it arrived.
                        if *size > limit || reading.size_hint().lower() > (limit - *size) as u64 {
                            break false;
                        }
                        match ready!(Pin::new(&mut *reading).poll_frame(cx)) {
                            None => break true,
                            Some(Err(_)) => {
                                let answer =
                                    ResponseBody::plain_text(StatusCode::BAD_REQUEST, BAD_REQUEST);
                                return Poll::Ready(Ok(answer));
                            }
                            Some(Ok(frame)) => {
                                let frame =
                                    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                                *size += frame.data_ref().map_or(0, Bytes::len);
                                buffered.push_back(frame);
                            }
                        }
                    };
                    if !complete && config.over_limit == OverLimit::Reject {
                        let answer = ResponseBody::plain_text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            PAYLOAD_TOO_LARGE,
                        );
                        return Poll::Ready(Ok(answer));
                    }
                    let body = PrebufferedBody {
                        buffered: std::mem::take(buffered),
                        rest: if complete { None } else { body.take() },
                    };
                    let request = Request::from_parts(parts.take().expect("parts"), body);
                    let inner = inner.take().expect("inner service");
                    state.set(State::Waiting {
                        inner,
                        request: Some(request),
                    });
                }
                StateProj::Waiting { inner, request } => {
                    ready!(inner.poll_ready(cx))?;
                    let future = inner.call(request.take().expect("polled after completion"));
                    let inner = inner.clone();
                    state.set(State::Calling { inner, future });
                }
                StateProj::Calling { future, .. } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::new)));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<PrebufferedBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Reading { .. } => "reading",
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
