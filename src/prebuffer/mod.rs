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
//! Any response body type passes through, as an
//! [`error::ResponseBody`](crate::error::ResponseBody) (the inner body, or
//! its own short `413`/`400` text), so other layers may sit between it and
//! the pool. Its future is [`ResponseFuture`]: no box.
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

mod body;
mod future;

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

pub use self::body::PrebufferedBody;
pub use self::future::ResponseFuture;
use crate::error::{BoxError, ResponseBody};

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
    ///
    /// A `usize`, as [`BodyReader::limit`](crate::blocking::BodyReader::limit)
    /// and the ecosystem's body limits (axum's `DefaultBodyLimit`,
    /// tower-http's `RequestBodyLimitLayer`): one constant serves them all.
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

impl<S, B, ResBody> Service<Request<B>> for Prebuffer<S>
where
    S: Service<Request<PrebufferedBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    /// Always ready: readiness of the inner service is awaited after the
    /// body is read, so that a slow upload holds no place in its queue.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ResponseFuture::new(self.inner.clone(), request, self.config)
    }
}
