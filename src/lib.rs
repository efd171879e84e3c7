//! Run blocking (and `!Send`) HTTP services on a fixed pool of threads,
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
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Infallible> {
//! let layer = ThreadAffinityLayer::new(2);
//! let mut svc = layer.layer(blocking::service_fn(|req: Request<String>| {
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
//! - `Router::new().route_service("/path", layer.layer(svc))` runs one
//!   blocking service (a [`blocking::service_fn`], say) on the workers.
//! - `router.layer(layer)` runs every route of `router` on the workers,
//!   its fallback included. Its handlers are still `async fn`s to axum, but
//!   may block freely: they run on a worker thread. Extractors, `State`, and
//!   `Extension<WorkerId>` work as usual. `route_layer` does the same for
//!   the routes it follows only. Routes outside stay on the runtime.
//! - With tonic, `Server::builder().layer(layer)` runs every gRPC service
//!   on the workers; with the `tonic` feature,
//!   `add_service(layer.layer(svc))` runs one.
//! - Every application of the layer shares its threads.
//! - tower's `Timeout` and `ConcurrencyLimit` outside the layer see the
//!   response future, not the body: a timeout that fires cancels the
//!   request (its future is dropped on its worker), and a concurrency
//!   permit is released when the head arrives. To bound streams, use
//!   [`response_deadline`](Builder::response_deadline) and
//!   [`max_streams_per_worker`](Builder::max_streams_per_worker).
//!
//! # Threading model
//!
//! ```text
//!  caller (any runtime thread)                 worker thread i of N
//!  ThreadAffinity::call(req) ──▶ shared queue ──▶ event loop (current-thread runtime + LocalSet)
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
//! each worker runs a runtime with its time and I/O drivers.
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
//! [`ThreadAffinityLayer::layer`](tower_layer::Layer::layer) wraps a
//! `Clone + Send` service: each worker clones it once, on first use.
//! [`ThreadAffinityLayer::service_with`] takes a factory instead, called on
//! each worker thread, for services that are not `Send`: a database
//! connection, an `Rc<RefCell<_>>` cache, an FFI handle. The worker's
//! [`WorkerId`] is passed to the factory and put in each request's
//! extensions.
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
//!   Memory per stalled stream is about `body_buffer` × the chunk size.
//! - [`queue_capacity`](Builder::queue_capacity): requests waiting for a
//!   worker; past it, `poll_ready` waits (or requests get `503`, under
//!   [`Overload::Reject`]).
//!
//! # Overload
//!
//! `poll_ready` reserves a place in the queue, as tower's `Buffer` does, so
//! `LoadShed`, `ConcurrencyLimit` and hyper's backpressure compose with the
//! layer. [`queue_timeout`](Builder::queue_timeout) answers `503` to a
//! request that waited too long, and
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
//! # Panics
//!
//! A panic in the inner service, its future or its body fails only that
//! request: `500 Internal Server Error` before the head is sent, a body
//! error ([`error::Panicked`]) after. The worker keeps serving. A panic that
//! escapes anyway (in a panic payload's `Drop`, say) is counted; inside a
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
//! is left after a deadline.
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
mod channel;
pub mod error;
pub mod future;
mod layer;
mod pool;
pub mod prebuffer;
mod service;
pub mod stats;
#[cfg(feature = "tonic")]
mod tonic;
mod trace;
mod worker_id;

pub use self::body::ThreadAffinityBody;
pub use self::builder::{Builder, Overload};
pub use self::error::BoxError;
pub use self::layer::ThreadAffinityLayer;
pub use self::service::ThreadAffinity;
pub use self::worker_id::WorkerId;
