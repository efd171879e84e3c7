//! A WSGI (PEP 3333) gateway on [`tower_affinity`]: a Python web
//! application (Flask, Django, anything WSGI) served from a Rust server,
//! each request called, iterated and closed on one worker thread, with
//! slow readers that cost a bounded buffer and no thread.
//!
//! [`Wsgi`] is a tower `Service`; wrap it with a
//! [`ThreadAffinityLayer`](tower_affinity::ThreadAffinityLayer) and mount
//! it anywhere axum takes a service:
//!
//! ```no_run
//! use axum::Router;
//! use tower_affinity::ThreadAffinityLayer;
//! use tower_affinity_wsgi::Wsgi;
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let layer = ThreadAffinityLayer::builder().workers(4).max_workers(16).build();
//! let app = Router::new()
//!     .nest_service("/blog", layer.service(Wsgi::import("blog.wsgi:application")))
//!     .fallback_service(layer.service(Wsgi::builder().python_path(".").import("app:app")));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # Threading model
//!
//! Python runs on the layer's worker threads only. `call` attaches to the
//! interpreter, builds the environ, calls the application and iterates it
//! until the head is known, then detaches. The body attaches for each
//! `next()`, which the layer asks for only when the response has room in
//! its buffer, and detaches between chunks; its `close()` runs on the same
//! thread, exactly once, whether the response ended, failed or its client
//! went away. While a worker waits (for a client, for the next request),
//! it holds no GIL. Each worker keeps one Python thread state for its life,
//! so `threading.local` values (Django's database connections) last from
//! one request to the next on that thread.
//!
//! # PEP 3333
//!
//! - The environ: the CGI variables, `SCRIPT_NAME` and `PATH_INFO` (under
//!   `nest_service`, the mount point is the `SCRIPT_NAME`), `wsgi.input`
//!   reading the request body from the connection as the application asks
//!   (`read(n)`, `read()`, `readline`, `readlines`, iteration), never all of
//!   it ahead, `wsgi.errors` to the log, `wsgi.url_scheme`,
//!   `wsgi.multithread` true, `wsgi.file_wrapper`, and
//!   `tower_affinity.worker`, the worker's index.
//! - `start_response` with `exc_info`: the head can change until the first
//!   non-empty chunk; later, `exc_info` is re-raised. It may be called from
//!   the first iteration. Its `write()` callable works.
//! - A `Content-Length` from the application is the body's exact size; the
//!   iterable is closed once that many bytes went out, and a body that
//!   breaks it fails rather than end short.
//! - A list (or tuple) of bytes up to [`Builder::single_frame`] is one
//!   frame, sent with its head in one hand-off.
//! - An exception before the head answers `500` with a fixed body (the
//!   traceback goes to the log); after it, the body ends with [`AppError`],
//!   and the client sees the connection cut, never a short response that
//!   looks whole.
//!
//! # Limits
//!
//! - The GIL: Python code runs on one thread at a time (Python 3.11), so
//!   more workers help applications that wait (on a database, on I/O with
//!   the GIL released), not CPU-bound Python.
//! - A worker blocked inside the application (a `next()` that sleeps, an
//!   SSE generator waiting for its next event, a `wsgi.input` read waiting
//!   for a slow upload) blocks its worker's other streams. Give such routes
//!   `max_streams_per_worker(1)`, or a layer (a pool) of their own.
//! - `write()` data waits until the application returns (at most
//!   [`Builder::write_buffer`]): return an iterable to stream.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod app;
mod body;
mod builder;
mod environ;
mod error;
mod file_wrapper;
mod input;
mod iterable;
mod log;
mod respond;
mod service;
mod start_response;
mod thread_state;

pub use self::body::WsgiBody;
pub use self::builder::Builder;
pub use self::error::{AppError, LoadError};
pub use self::service::Wsgi;
pub use tower_affinity::BoxError;
