//! Reading request bodies into memory on the async side, before dispatch.
//!
//! A handler that reads its upload with
//! [`BodyReader`](crate::blocking::BodyReader) blocks its worker for as long
//! as the client takes to send it: a slow uploader pins a worker.
//! [`PrebufferLayer`], placed *outside* [`ThreadAffinityLayer`], reads the
//! body on the runtime first, up to a limit, so that the handler reads from
//! memory. A body over the limit is answered `413 Payload Too Large`
//! ([`OverLimit::Reject`], the default) or dispatched with what was read so
//! far, the rest streaming from the client ([`OverLimit::Stream`]).
//!
//! It is a layer of its own rather than a builder option because it changes
//! the request body type the inner service sees, to [`PrebufferedBody`].
//!
//! ```
//! use std::io::Read;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_affinity::prebuffer::{PrebufferLayer, PrebufferedBody};
//! use tower_affinity::{blocking, ThreadAffinityLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(PrebufferLayer::new(1024 * 1024))
//!     .layer(ThreadAffinityLayer::new(2))
//!     .service(blocking::service_fn(|req: Request<PrebufferedBody<String>>| {
//!         let mut upload = Vec::new();
//!         // Already in memory: this does not wait for the client.
//!         blocking::BodyReader::new(req.into_body()).read_to_end(&mut upload).unwrap();
//!         Response::new(format!("{} bytes", upload.len()))
//!     }));
//! let response = svc.oneshot(Request::new("hello".to_owned())).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # }
//! ```
//!
//! [`ThreadAffinityLayer`]: crate::ThreadAffinityLayer

use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::bytes_frame;
use crate::error::BoxError;
use crate::ThreadAffinityBody;

/// What to do with a request body larger than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverLimit {
    /// Answer `413 Payload Too Large` without calling the inner service.
    #[default]
    Reject,
    /// Call the inner service with what was read; the rest streams from
    /// the client while the handler reads (and may block its worker).
    Stream,
}

/// Reads request bodies into memory before calling the inner service; see
/// the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct PrebufferLayer {
    limit: usize,
    over_limit: OverLimit,
}

impl PrebufferLayer {
    /// Buffers bodies of up to `limit` bytes; larger ones get `413`.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            over_limit: OverLimit::Reject,
        }
    }

    /// Sets what happens to bodies larger than the limit.
    pub fn over_limit(mut self, policy: OverLimit) -> Self {
        self.over_limit = policy;
        self
    }
}

impl<S> Layer<S> for PrebufferLayer {
    type Service = Prebuffer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Prebuffer {
            inner,
            config: *self,
        }
    }
}

/// The service made by [`PrebufferLayer`].
#[derive(Debug, Clone)]
pub struct Prebuffer<S> {
    inner: S,
    config: PrebufferLayer,
}

impl<S, B> Service<Request<B>> for Prebuffer<S>
where
    S: Service<Request<PrebufferedBody<B>>, Response = Response<ThreadAffinityBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ThreadAffinityBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    /// Always ready: readiness of the inner service is awaited after the
    /// body is read, so that a slow upload holds no place in its queue.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut inner = self.inner.clone();
        let PrebufferLayer { limit, over_limit } = self.config;
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            let mut buffered = VecDeque::new();
            let mut size = 0usize;
            let complete = loop {
                if size > limit || body.size_hint().lower() > (limit - size.min(limit)) as u64 {
                    break false;
                }
                match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    None => break true,
                    Some(Err(_)) => return Ok(status(StatusCode::BAD_REQUEST)),
                    Some(Ok(frame)) => {
                        let frame = frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                        size += frame.data_ref().map_or(0, Bytes::len);
                        buffered.push_back(frame);
                    }
                }
            };
            if !complete && over_limit == OverLimit::Reject {
                return Ok(status(StatusCode::PAYLOAD_TOO_LARGE));
            }
            let body = PrebufferedBody {
                buffered,
                rest: (!complete).then_some(body),
            };
            poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}

/// A plain-text answer with `status`, its reason phrase as the body.
fn status(status: StatusCode) -> Response<ThreadAffinityBody> {
    let reason = status.canonical_reason().unwrap_or("error");
    ThreadAffinityBody::plain_text(status, format!("{reason}\n"))
}

pin_project! {
    /// A request body read into memory on the async side, possibly followed
    /// by the rest of the original body (under [`OverLimit::Stream`]).
    pub struct PrebufferedBody<B> {
        buffered: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Option<B>,
    }
}

impl<B> Body for PrebufferedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_pin_mut() {
            None => Poll::Ready(None),
            Some(rest) => rest.poll_frame(cx).map(bytes_frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.rest.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .buffered
            .iter()
            .filter_map(|frame| frame.data_ref().map(|data| data.len() as u64))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or(SizeHint::with_exact(0), B::size_hint);
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint.set_lower(rest.lower() + buffered);
        hint
    }
}

impl<B> fmt::Debug for PrebufferedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrebufferedBody")
            .field("buffered_frames", &self.buffered.len())
            .field("streaming", &self.rest.is_some())
            .finish()
    }
}
