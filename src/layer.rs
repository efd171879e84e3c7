//! The layer and its builder.

use std::fmt;

use tower_layer::Layer;

use crate::pool::{Config, Pool};
use crate::ThreadAffinity;

/// Wraps services so that they run on a fixed pool of worker threads.
///
/// Cheap to clone: every clone, and every service it wraps, shares one pool.
/// The threads start when the layer is built and stop when the last layer
/// and service handle is dropped.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Service, ServiceExt};
/// use tower_affinity::{blocking, ThreadAffinityLayer};
/// use tower_layer::Layer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Infallible> {
/// let layer = ThreadAffinityLayer::builder().workers(2).max_streams_per_worker(32).build();
/// let mut svc = layer.layer(blocking::service_fn(|_req: Request<String>| {
///     // Plain blocking code, on a worker thread.
///     Response::new(format!("hello from {}", std::thread::current().name().unwrap()))
/// }));
/// let response = svc.ready().await?.call(Request::new(String::new())).await?;
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ThreadAffinityLayer {
    pool: Pool,
}

impl ThreadAffinityLayer {
    /// A layer with `workers` threads and the other settings at their
    /// defaults (see [`Builder`]).
    ///
    /// # Panics
    ///
    /// If `workers` is 0, or a thread cannot be started.
    pub fn new(workers: usize) -> Self {
        Self::builder().workers(workers).build()
    }

    /// Starts configuring a layer.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<S> Layer<S> for ThreadAffinityLayer {
    type Service = ThreadAffinity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ThreadAffinity::new(inner, self.pool.clone())
    }
}

impl fmt::Debug for ThreadAffinityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadAffinityLayer")
            .field("pool", &self.pool)
            .finish()
    }
}

/// Configures a [`ThreadAffinityLayer`].
///
/// | setting                      | default                       | bounds                                        |
/// |------------------------------|-------------------------------|-----------------------------------------------|
/// | [`workers`](Self::workers)   | available parallelism         | threads in the pool                           |
/// | [`queue_capacity`](Self::queue_capacity) | 1024              | requests waiting for a worker; more get `503` |
/// | [`max_streams_per_worker`](Self::max_streams_per_worker) | 64 | requests one worker serves at once         |
/// | [`body_buffer`](Self::body_buffer) | 8                       | frames buffered per streamed response         |
/// | [`thread_name`](Self::thread_name) | `"tower-affinity"`      | threads are named `{prefix}-{index}`          |
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    config: Config,
}

impl Builder {
    fn new() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            config: Config {
                workers,
                queue_capacity: 1024,
                max_streams_per_worker: 64,
                body_buffer: 8,
                thread_name: String::from("tower-affinity"),
            },
        }
    }

    /// How many worker threads the pool runs.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n > 0, "tower-affinity: workers must be at least 1");
        self.config.workers = n;
        self
    }

    /// How many requests may wait for a worker. When the queue is full, a
    /// new request is answered at once with `503 Service Unavailable`.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        assert!(n > 0, "tower-affinity: queue_capacity must be at least 1");
        self.config.queue_capacity = n;
        self
    }

    /// How many requests one worker serves at once, from the call to the end
    /// of the response body. A worker takes new requests from the queue only
    /// while it serves fewer than this.
    ///
    /// Interleaving is what keeps a slow client from tying up a thread: while
    /// one response waits for its reader, the worker produces frames for
    /// others. It also means that two requests' code alternates on one
    /// thread, between frames. Legacy code that keeps per-request state in
    /// thread-locals wants `1`: each request then has its worker to itself
    /// until its response ends, and a slow reader holds that worker.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn max_streams_per_worker(mut self, n: usize) -> Self {
        assert!(n > 0, "tower-affinity: max_streams_per_worker must be at least 1");
        self.config.max_streams_per_worker = n;
        self
    }

    /// How many frames of one streamed response may wait for its reader.
    /// When they are all taken, the worker stops polling that body until the
    /// reader makes room. Memory per stalled stream is about this many
    /// frames.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn body_buffer(mut self, n: usize) -> Self {
        assert!(n > 0, "tower-affinity: body_buffer must be at least 1");
        self.config.body_buffer = n;
        self
    }

    /// The prefix of the worker threads' names: `{prefix}-{index}`.
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_name = prefix.into();
        self
    }

    /// Starts the worker threads and returns the layer.
    ///
    /// # Panics
    ///
    /// If a thread cannot be started.
    pub fn build(self) -> ThreadAffinityLayer {
        ThreadAffinityLayer {
            pool: Pool::start(self.config),
        }
    }
}
