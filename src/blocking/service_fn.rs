use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

/// Turns a synchronous closure into a [`Service`].
///
/// The closure runs inside `call`, so behind a
/// [`ThreadAffinityLayer`](crate::ThreadAffinityLayer) it runs on a worker
/// thread, where it may block. The service is always ready and never fails.
///
/// ```
/// use http::{Request, Response};
/// let svc = tower_affinity::blocking::service_fn(|req: Request<()>| {
///     Response::new(format!("you asked for {}", req.uri()))
/// });
/// # let _ = svc;
/// ```
pub fn service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn { f }
}

/// A synchronous closure as a [`Service`]; see [`service_fn`].
#[derive(Clone, Copy)]
pub struct ServiceFn<F> {
    f: F,
}

impl<F, B, R> Service<Request<B>> for ServiceFn<F>
where
    F: FnMut(Request<B>) -> Response<R>,
{
    type Response = Response<R>;
    type Error = Infallible;
    type Future = Ready<Result<Response<R>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok((self.f)(request)))
    }
}

impl<F> fmt::Debug for ServiceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}
