//! The WSGI application as a tower `Service`.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use pyo3::{Py, PyAny, Python};
use tower_service::Service;

use crate::app::App;
use crate::builder::{Builder, Config};
use crate::{respond, thread_state, BoxError, LoadError, WsgiBody};

/// A WSGI application as a [`Service`], to run behind a
/// [`ThreadAffinityLayer`](tower_affinity::ThreadAffinityLayer).
///
/// `call` runs the application (and its first iteration) right there, on
/// the calling thread, attached to the interpreter: behind the layer, that
/// is the request's worker thread, where its body is then iterated and its
/// iterable closed. Called from an async runtime thread directly, it would
/// block that thread; always wrap it.
///
/// Cheap to clone; clones share the application.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use tower_affinity::ThreadAffinityLayer;
/// use tower_affinity_wsgi::Wsgi;
///
/// let layer = ThreadAffinityLayer::builder().workers(4).build();
/// let flask = layer.service(Wsgi::builder().python_path(".").import("app:app"));
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" })) // Rust, on the runtime
///     .nest_service("/flask", flask); // SCRIPT_NAME is /flask
/// ```
#[derive(Clone)]
pub struct Wsgi {
    app: Arc<App>,
    config: Arc<Config>,
}

impl Wsgi {
    /// The WSGI callable `spec` names (`module:callable`), with the
    /// defaults of [`Builder`]; see [`Builder::import`].
    pub fn import(spec: impl Into<String>) -> Self {
        Self::builder().import(spec)
    }

    /// A WSGI callable already in hand.
    pub fn new(app: Py<PyAny>) -> Self {
        Self::builder().app(app)
    }

    /// Starts configuring a service.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Imports the application now, on the calling thread, rather than on
    /// the first request: for a program that wants to fail at start. Run it
    /// where Python may run, on a worker:
    ///
    /// ```no_run
    /// use http::{Request, Response};
    /// use tower::ServiceExt;
    /// use tower_affinity::{blocking, ThreadAffinityLayer};
    /// use tower_affinity_wsgi::Wsgi;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let layer = ThreadAffinityLayer::new(2);
    /// let wsgi = Wsgi::import("app:app");
    /// let load = blocking::service_fn({
    ///     let wsgi = wsgi.clone();
    ///     move |_: Request<()>| Response::new(wsgi.load().err().map(|e| e.to_string()).unwrap_or_default())
    /// });
    /// let response = layer.service(load).oneshot(Request::new(())).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(&self) -> Result<(), LoadError> {
        Python::attach(|py| {
            thread_state::pin(py);
            self.app.get(py).map(drop).map_err(LoadError::new)
        })
    }

    pub(crate) fn from_parts(app: Arc<App>, config: Arc<Config>) -> Self {
        Self { app, config }
    }
}

impl<B> Service<Request<B>> for Wsgi
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<WsgiBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<WsgiBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let response = Python::attach(|py| {
            thread_state::pin(py);
            respond::respond(py, &self.app, &self.config, request)
        });
        ready(Ok(response))
    }
}

impl fmt::Debug for Wsgi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wsgi")
            .field("app", &self.app)
            .field("config", &self.config)
            .finish()
    }
}
