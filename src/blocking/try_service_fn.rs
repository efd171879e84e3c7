use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_service::Service;

use crate::error::ResponseBody;
use crate::trace;

/// What the client reads when a handler fails: nothing of the error itself.
const FAILED: &str = "internal error: handler failed\n";

/// Turns a fallible synchronous closure into a [`Service`]: `?` works.
///
/// As [`service_fn`](super::service_fn), but the closure returns
/// `Result<Response<B>, E>`. An `Err` becomes a `500 Internal Server Error`
/// with a fixed plain-text body that does not include the error (its text
/// may hold SQL, paths or other internals that must not reach a client).
/// With the `tracing` feature, the error is logged at `ERROR` level (target
/// `tower_affinity`, field `error`), in the caller's span; then it is
/// dropped, on the worker. The service itself never fails.
///
/// ```
/// use http::{Request, Response};
/// use tower_affinity::{blocking, ThreadAffinityLayer, WorkerId};
///
/// let layer = ThreadAffinityLayer::new(2);
/// let orders = layer.service_with(|_worker: WorkerId| {
///     let db = rusqlite::Connection::open_in_memory().unwrap();
///     blocking::try_service_fn(move |_req: Request<()>| {
///         // A failed query answers 500; the client never sees its text.
///         let count: i64 = db.query_row("SELECT count(*) FROM orders", [], |row| row.get(0))?;
///         Ok::<_, rusqlite::Error>(Response::new(format!("{count} orders\n")))
///     })
/// });
/// // With axum: Router::new().route_service("/orders/count", orders)
/// # let _ = orders;
/// ```
pub fn try_service_fn<F>(f: F) -> TryServiceFn<F> {
    TryServiceFn { f }
}

/// A fallible synchronous closure as a [`Service`]; see [`try_service_fn`].
#[derive(Clone, Copy)]
pub struct TryServiceFn<F> {
    f: F,
}

impl<F, B, R, E> Service<Request<B>> for TryServiceFn<F>
where
    F: FnMut(Request<B>) -> Result<Response<R>, E>,
    E: fmt::Display,
{
    type Response = Response<ResponseBody<R>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(match (self.f)(request) {
            Ok(response) => response.map(ResponseBody::new),
            Err(error) => {
                trace::error!(error = %error, "handler failed");
                drop(error);
                ResponseBody::plain_text(StatusCode::INTERNAL_SERVER_ERROR, FAILED)
            }
        }))
    }
}

impl<F> fmt::Debug for TryServiceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryServiceFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}
