//! Run blocking (and `!Send`) HTTP services on a pool of worker threads,
//! each request pinned to one thread, with streamed response bodies.
//!
//! [`ThreadAffinityLayer`] is a Tower layer for the code that cannot become
//! async this year: synchronous handlers, `rusqlite` connections, blocking
//! clients, C libraries with thread-bound state, per-thread caches. Where
//! `tokio::task::spawn_blocking` per request gives no thread affinity, an
//! unbounded queue, up to 512 threads and a thread held for the whole life
//! of a streamed response, this layer gives:
//!
//! - **one thread per request**: the inner service's `poll_ready`, `call`,
//!   its future, every poll of its response body and the body's drop run on
//!   one worker thread;
//! - **one service instance per worker**, so per-thread state (a database
//!   connection, a cache) lives with its thread, and the inner service, its
//!   future and its body need not be `Send`;
//! - **streaming with backpressure**: a slow client costs a bounded buffer,
//!   never a blocked thread, and a worker serves other requests meanwhile;
//! - **bounded everything**, **cancellation** on the worker, **panics**
//!   contained to their request, and **HTTP fidelity** (status, headers,
//!   extensions, exact `size_hint`, trailers).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use tower::{Service, ServiceExt};
//! use tower_affinity::{blocking, ThreadAffinityLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Infallible> {
//! let layer = ThreadAffinityLayer::new(2);
//! let mut svc = layer.service(blocking::service_fn(|req: Request<String>| {
//!     // Plain blocking code: it runs on a worker thread, never on the runtime.
//!     let greeting = format!("hello, {}", req.body());
//!     Response::new(greeting)
//! }));
//!
//! let response = svc.ready().await?.call(Request::new("world".to_owned())).await?;
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "hello, world");
//! # Ok(())
//! # }
//! ```
//!
//! # With axum, tonic and tower
//!
//! - `Router::new().route_service("/path", layer.service(svc))` runs one
//!   blocking service (a [`blocking::service_fn`] or
//!   [`blocking::try_service_fn`], say) on the workers.
//! - `router.layer(layer)` runs every route of `router` on the workers,
//!   its fallback included. Its handlers are still `async fn`s to axum, but
//!   may block freely: they run on a worker thread. Extractors, `State`, and
//!   `Extension<WorkerId>` work as usual. `route_layer` does the same for
//!   the routes it follows only. Routes outside stay on the runtime.
//! - With tonic, `Server::builder().layer(layer)` runs every gRPC service
//!   on the workers; with the `tonic` feature,
//!   `add_service(layer.service(svc))` runs one.
//! - Every application of the layer shares its threads.
//! - tower's `Timeout` and `ConcurrencyLimit` outside the layer see the
//!   response future, not the body: a timeout that fires cancels the
//!   request (its future is dropped on its worker), and a concurrency
//!   permit is released when the head arrives. To bound streams, use
//!   [`response_deadline`](Builder::response_deadline) and
//!   [`max_streams_per_worker`](Builder::max_streams_per_worker).
//!   Layers that answer by themselves (tower-http's `TimeoutLayer`) use
//!   [`ThreadAffinityBody`]'s `Default`, an empty body.
//!
//! A whole router under the layer, beside a route that stays on the
//! runtime, and a large response read from a [`std::io::Read`] on the worker
//! and returned from an axum handler with `axum::body::Body::new`:
//!
//! ```
//! use axum::body::Body;
//! use axum::extract::Path;
//! use axum::http::{Request, StatusCode};
//! use axum::routing::get;
//! use axum::Router;
//! use tower::ServiceExt;
//! use tower_affinity::blocking::ReaderBody;
//! use tower_affinity::ThreadAffinityLayer;
//!
//! /// An axum handler of plain blocking code: it runs on a worker thread.
//! async fn report(Path(name): Path<String>) -> String {
//!     let rows = std::fs::read_to_string("Cargo.toml").map_or(0, |text| text.lines().count());
//!     format!("{name}: {rows} rows\n")
//! }
//!
//! /// A file streamed in chunks: each `read` runs on the worker, only when
//! /// the client has room for the next chunk.
//! async fn download() -> Result<Body, StatusCode> {
//!     let file = std::fs::File::open("big.csv").map_err(|_| StatusCode::NOT_FOUND)?;
//!     let len = file.metadata().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?.len();
//!     // With the length known, hyper sends `Content-Length`.
//!     Ok(Body::new(ReaderBody::new(file).with_length(len)))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ThreadAffinityLayer::new(4);
//! // Every route of `legacy`, and its fallback, runs on the workers.
//! let legacy = Router::new()
//!     .route("/reports/{name}", get(report))
//!     .route("/download", get(download))
//!     .layer(layer.clone());
//! let app = Router::new()
//!     .route("/health", get(|| async { "ok\n" })) // stays on the runtime
//!     .merge(legacy);
//!
//! let request = Request::get("/reports/q3").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let request = Request::get("/download").body(Body::empty()).unwrap();
//! assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::NOT_FOUND);
//! # }
//! ```
//!
//! # Fallible handlers
//!
//! [`blocking::try_service_fn`] takes a closure that returns
//! `Result<Response<B>, E>`, so `?` works on rusqlite's and `std::io`'s
//! errors: an `Err` answers `500` with a fixed plain-text body (the error's
//! text never reaches the client) and, with the `tracing` feature, is logged
//! at `ERROR`.
//!
//! ```
//! use http::{Request, Response};
//! use tower_affinity::{blocking, ThreadAffinityLayer, WorkerId};
//!
//! let layer = ThreadAffinityLayer::new(4);
//! let count = layer.service_with(|_worker: WorkerId| {
//!     let db = rusqlite::Connection::open_in_memory().unwrap(); // one per worker
//!     blocking::try_service_fn(move |_req: Request<axum::body::Body>| {
//!         let n: i64 = db.query_row("SELECT count(*) FROM orders", [], |row| row.get(0))?;
//!         Ok::<_, rusqlite::Error>(Response::new(format!("{n} orders\n")))
//!     })
//! });
//! let app: axum::Router = axum::Router::new().route_service("/orders/count", count);
//! # let _ = app;
//! ```
//!
//! # Threading model
//!
//! ```text
//!  caller (any runtime thread)                 worker thread i of N
//!  ThreadAffinity::call(req) ──▶ shared queue ──▶ event loop (a LocalSet, outside any block_on)
//!                                (bounded)        takes a job while active < max_streams_per_worker
//!                                                 svc_i.poll_ready, svc_i.call, poll future
//!  ResponseFuture ◀──────── head (+ the whole body when it came in one frame)
//!  ThreadAffinityBody ◀──── frames, at most body_buffer waiting per response
//!  drop body ─────────────▶ worker stops and drops the inner body here
//! ```
//!
//! | what                                 | runs on                         |
//! |--------------------------------------|---------------------------------|
//! | `ThreadAffinity::poll_ready`, `call` | the caller's thread (queues)    |
//! | inner `poll_ready`, `call`           | the request's worker            |
//! | inner future                         | the request's worker            |
//! | inner body `poll_frame`, `size_hint`, `is_end_stream` | the request's worker |
//! | drop of inner future, body, service  | the request's worker            |
//! | `ThreadAffinityBody::poll_frame`     | the caller's thread             |
//!
//! Each worker is a single-threaded executor. A request is a local task: it
//! is polled once inline when the worker takes it, and a response that is
//! ready in one frame goes back with its head in one message, without a
//! channel or a spawned task. A longer response streams through a bounded
//! channel; while it waits for its reader, the worker serves its other
//! requests. Tokio APIs (timers, channels, sockets) work inside handlers:
//! each worker enters the handle of the pool's driver, a current-thread
//! runtime whose own thread (`{prefix}-driver`) turns the timers and I/O,
//! and where tasks from `tokio::spawn` run (they must not block);
//! `spawn_local` tasks run on the worker. Since a worker polls user code
//! outside any runtime's `block_on`, that code may build, block on and
//! drop a runtime of its own, as under `spawn_blocking`: the sync
//! `postgres` client, `reqwest::blocking`, `Handle::block_on`,
//! `futures::executor::block_on`.
//!
//! Tasks that a handler spawns itself are not requests: the pool neither
//! counts nor waits for them. `tokio::task::spawn_local` tasks run on the
//! worker, between the requests' polls (a spare serving nothing else is
//! idle, and retires after its keep-alive); a worker that ends (a spare
//! retiring, a shutdown) drops them unfinished, on its thread, before its
//! [`on_thread_stop`](Builder::on_thread_stop) hook. `tokio::spawn` tasks
//! run on the driver's thread, until the pool is gone: they must not
//! block, since every worker's timers share that thread. Work that must
//! outlive the pool belongs on a runtime of its own (a `Handle` taken
//! outside).
//!
//! A worker blocked in user code cannot be preempted: interleaving only
//! happens between frames and between awaits. A handler that blocks for a
//! second blocks its worker's other requests for that second.
//!
//! Requests are taken from one shared queue by whichever worker has room,
//! so an idle worker picks up the next request while a busy one finishes.
//! With an [affinity key](Builder::affinity_key), a request goes instead to
//! its key's worker, through that worker's own queue, in order.
//!
//! # Per-thread state
//!
//! [`ThreadAffinityLayer::service`] (or [`Layer::layer`]) wraps a
//! `Clone + Send` service: each worker clones it once, on first use.
//! [`ThreadAffinityLayer::service_with`] takes a factory instead, called on
//! each worker thread, for services that are not `Send`: a database
//! connection, an `Rc<RefCell<_>>` cache, an FFI handle. The worker's
//! [`WorkerId`] is passed to the factory and put in each request's
//! extensions.
//!
//! [`ThreadAffinityLayer::worker_local`] gives a [`WorkerLocal`]: a value
//! per worker thread built there by a factory, reachable from any handler
//! on the pool's workers (ordinary axum handlers under `router.layer(layer)`
//! included) without `thread_local!`. [`jobs`] runs closures on a key's
//! worker ([`ThreadAffinityLayer::run_on_key`]) and on every worker
//! ([`ThreadAffinityLayer::broadcast`]), outside HTTP.
//!
//! # Choosing buffer sizes
//!
//! - [`workers`](Builder::workers): how many requests can run user code at
//!   the same instant. For CPU-bound handlers, the number of cores; for
//!   handlers that block on I/O, more.
//! - [`max_streams_per_worker`](Builder::max_streams_per_worker): how many
//!   requests one worker holds at once. Higher keeps slow readers from
//!   tying up workers; `1` gives each request its worker to itself until
//!   its response ends (for code that keeps per-request state in
//!   thread-locals).
//! - [`body_buffer`](Builder::body_buffer): frames waiting per response.
//!   Memory per stalled stream is about `body_buffer` × the larger of the
//!   chunk size and `merge_frames`.
//! - [`merge_frames`](Builder::merge_frames): while a reader is behind,
//!   small data frames already produced merge into the last one waiting,
//!   up to 16 KiB by default, so a body written one row per item streams
//!   as large frames. A waiting reader is never held back, trailers are
//!   never crossed, frames of the cap or more are never copied; `0` keeps
//!   one frame per item.
//! - [`queue_capacity`](Builder::queue_capacity): requests waiting for a
//!   worker; past it, `poll_ready` waits (or requests get `503`, under
//!   [`Overload::Reject`]).
//!
//! ## Sizing for handlers that block on I/O
//!
//! A worker inside a database query or a blocking HTTP call serves nothing
//! else until it returns, so for such handlers the pool's size is the
//! number of calls in flight at once, not a number of cores. Size it by the
//! resource the calls wait on:
//!
//! - `workers`: the calls you want running at steady state, and so the
//!   connections (or other per-worker resources) held open all the time:
//!   about `cores × (1 + wait / compute)` for a handler that waits `wait`
//!   and computes `compute`, rounded to what the backend serves well.
//! - `max_workers`: the ceiling. While every worker is blocked and
//!   unkeyed requests wait, the pool starts spare workers up to
//!   `max_workers` threads in all, and retires them after `keep_alive`
//!   idle. Each spare builds its own service instances (a factory given to
//!   [`service_with`](ThreadAffinityLayer::service_with) runs again there),
//!   so `max_workers` is also the most database connections the pool ever
//!   opens: set it to the connection limit you grant this process, and
//!   never above the database's own.
//! - Quick or CPU-bound handlers never start spares; keyed requests go to
//!   the core workers only.
//!
//! # Overload
//!
//! `poll_ready` reserves a place in the queue, as tower's `Buffer` does, so
//! `LoadShed`, `ConcurrencyLimit` and hyper's backpressure compose with the
//! layer. With affinity keys, `poll_ready` reserves nothing (the key is not
//! known yet): a keyed request is bounded by its worker's own queue, and an
//! unkeyed one waits for its place in its response future.
//! [`queue_timeout`](Builder::queue_timeout) answers `503` to a request that
//! waited too long (for a place in the queue, then in it), timed by the
//! caller so that it holds while every worker is stuck, and
//! [`response_deadline`](Builder::response_deadline) ends streams that run
//! too long. [`ThreadAffinityLayer::stats`] shows each worker's queue,
//! load, and how long its current poll has run. Slow uploads can be read
//! before dispatch with [`prebuffer::PrebufferLayer`], so that they do not
//! hold a worker.
//!
//! # Cancellation
//!
//! Dropping the [`ResponseFuture`](future::ResponseFuture) or the
//! [`ThreadAffinityBody`] cancels the request: the worker notices while the
//! inner future or body is pending (not only at the next frame), stops
//! polling, and drops them on its own thread.
//!
//! Blocking code that runs long (a loop over many rows, a call it
//! retries) can see the cut too: [`cancel::Cancellation::current`], called
//! from the handler on its worker, gives a handle to check
//! (`is_cancelled`), await (`cancelled`) or wait on (`wait_timeout`). It is
//! set the moment the caller drops the future or body, even while the
//! worker is blocked in the handler, and when the response deadline or a
//! shutdown's timeout cuts the request.
//!
//! # Panics
//!
//! A panic in the inner service, its future or its body fails only that
//! request: `500 Internal Server Error` before the head is sent, a body
//! error ([`error::Panicked`]) after. The worker keeps serving. A panic in
//! the `Drop` of a body, a future or a service instance is caught on the
//! worker and counted in [`stats::WorkerStats::panicked`]; the response it belonged
//! to stands. A panic that escapes anyway (in a panic payload's `Drop`, say) is counted; inside a
//! request's first poll it ends the thread, after one guarded cleanup and
//! the stop hook, and a fresh thread replaces it (services rebuilt there on
//! first use); inside a later poll it ends only that request.
//!
//! The layer's own failures are responses, not errors: see [`error`].
//!
//! # Shutdown
//!
//! The threads stop when the last layer and service handle is dropped:
//! requests still queued get `503`, requests already running finish, then
//! each worker drops its service instances and exits.
//! [`ThreadAffinityLayer::shutdown`] drains gracefully instead (queued
//! requests are served), and
//! [`shutdown_timeout`](ThreadAffinityLayer::shutdown_timeout) cuts what
//! is left after a deadline: it returns soon after the deadline even while
//! workers are stuck in blocking calls, with a [`ShutdownReport`] naming
//! them, and those threads end by themselves when their calls return.
//!
//! A wrapped service's instances do not wait for the pool: once the last
//! handle of a service (and its last queued request) is gone, each worker
//! drops its instance on its own thread.
//!
//! # Shutting down beside axum
//!
//! axum's graceful shutdown waits for every open connection, and a slow
//! download keeps its connection open for as long as the layer streams it:
//! a `shutdown_timeout` called after `serve` returns waits for the slowest
//! download first. Start the layer's shutdown inside the signal future, in
//! its own task (the signal future must resolve at once, or axum keeps
//! accepting during the drain):
//!
//! ```
//! use std::time::Duration;
//! use tower_affinity::ThreadAffinityLayer;
//!
//! async fn serve(app: axum::Router, layer: ThreadAffinityLayer) -> std::io::Result<()> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     let grace = Duration::from_secs(10);
//!     let signal = async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         // Admitted requests finish, later ones get 503, and streams still
//!         // running after `grace` end with an error, closing their
//!         // connections: axum's wait ends too.
//!         tokio::spawn(async move { layer.shutdown_timeout(grace).await });
//!     };
//!     axum::serve(listener, app).with_graceful_shutdown(signal).await
//! }
//! ```
//!
//! A response the layer has finished but the client has not read sits in
//! socket buffers, out of the layer's reach: bound axum's wait as well. The
//! `legacy_server` example does both, on SIGTERM and Ctrl-C.
//!
//! # Scaling out
//!
//! The layer is per process. Past one process, stickiness holds at two
//! levels when the load balancer hashes the same key as the layer: the
//! load balancer picks the process, [`affinity_header`](Builder::affinity_header)
//! picks the worker thread in it. nginx `hash $http_x_session consistent`,
//! HAProxy `balance hdr(x-session)` with `hash-type consistent`, Envoy
//! `RING_HASH` or `MAGLEV` with a header `hash_policy`, and ingress-nginx's
//! `upstream-hash-by` all do this; the repository's `deploy/` folder has
//! commented nginx and HAProxy configurations, tested in front of several
//! processes of the `legacy_server` example.
//!
//! A process that goes away moves only its own keys, and its sessions
//! start cold elsewhere: per-thread state is never replicated. nginx's
//! defaults (`max_fails=1 fail_timeout=10s`) move all of a server's keys
//! for 10 s after a single failed request. Keep authoritative state in a
//! database, and per-thread state to what can be rebuilt from it.
//!
//! # Feature flags
//!
//! - `tracing`: spans and events at each request's state changes
//!   (enqueued, started, head sent, ended, cancelled, panicked), in the
//!   caller's span carried to the worker. Off by default.
//! - `tonic`: [`ThreadAffinity`] forwards tonic's `NamedService`, so a
//!   wrapped gRPC service mounts with `Server::builder().add_service(..)`.
//!   Off by default (without it, wrap the whole server with
//!   `Server::builder().layer(layer)`).
//! - `metrics`: `ThreadAffinityLayer::publish_metrics` publishes the
//!   pool's figures (queues, active requests, threads and spares,
//!   blocked workers, admitted, rejected, timed out, panicked, replaced,
//!   spares started and retired, spawn failures, and a histogram of queue
//!   wait) through the `metrics` facade; see `metrics` for the names. Off
//!   by default.
//! - `serde`: [`stats::Stats`] is `serde::Serialize`, for an endpoint of
//!   your own. Off by default.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod blocking;
mod body;
mod builder;
pub mod cancel;
mod channel;
pub mod error;
pub mod future;
pub mod jobs;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod pool;
pub mod prebuffer;
mod reply;
mod response_body;
mod service;
mod shutdown;
pub mod stats;
#[cfg(feature = "tonic")]
mod tonic;
mod trace;
mod worker_id;
pub mod worker_local;

pub use self::body::ThreadAffinityBody;
pub use self::builder::{Builder, Overload};
pub use self::error::BoxError;
pub use self::layer::ThreadAffinityLayer;
pub use self::service::ThreadAffinity;
pub use self::shutdown::ShutdownReport;
pub use self::worker_id::WorkerId;
pub use self::worker_local::WorkerLocal;
/// Tower's `Layer` trait, re-exported so that `layer.layer(svc)` and
/// `ServiceBuilder::layer` work without a direct dependency on `tower-layer`.
pub use tower_layer::Layer;
