//! The layer.

use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use tower_layer::Layer;

use crate::jobs::JobError;
use crate::pool::{Pool, Wait};
use crate::stats::Stats;
use crate::WorkerLocal;
use crate::{Builder, ShutdownReport, ThreadAffinity, WorkerId};

/// Wraps services so that they run on a pool of worker threads.
///
/// Cheap to clone: every clone, and every service it wraps, shares one pool.
/// The core threads start when the layer is built and stop when the last
/// layer and service handle is dropped; while they are all blocked in user
/// code and unkeyed requests wait, spare threads start, up to
/// [`Builder::max_workers`], and retire when idle.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Service, ServiceExt};
/// use tower_affinity::{blocking, ThreadAffinityLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Infallible> {
/// let layer = ThreadAffinityLayer::builder().workers(2).max_streams_per_worker(32).build();
/// let mut svc = layer.service(blocking::service_fn(|_req: Request<String>| {
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
    /// A layer with `workers` core threads and the other settings at their
    /// defaults (see [`Builder`]): up to 64 threads (or `workers`, if more)
    /// while handlers block.
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

    pub(crate) fn from_pool(pool: Pool) -> Self {
        Self { pool }
    }

    /// A snapshot of the pool: per-worker queue, load, counts, the length
    /// of each worker's current poll and whether it is blocked; spares and
    /// thread counts; see [`Stats`].
    pub fn stats(&self) -> Stats {
        self.pool.stats()
    }

    /// Publishes [`stats`](Self::stats) through the `metrics` facade, to
    /// the installed recorder: call it where the exporter renders. See
    /// [`metrics`](crate::metrics) for the names.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        crate::metrics::publish(&self.pool.config().thread_name, &self.pool.stats());
    }

    /// Shuts the pool down gracefully, for every layer and service that
    /// shares it: new requests get `503` at once, requests already admitted
    /// (queued or running, streams included) finish, then each worker drops
    /// its services and its thread ends. Resolves when every thread has
    /// ended.
    ///
    /// A worker blocked forever in user code never ends; see
    /// [`shutdown_timeout`](Self::shutdown_timeout).
    pub async fn shutdown(&self) {
        self.pool.shutdown(None).await;
    }

    /// As [`shutdown`](Self::shutdown), but after `deadline` the workers
    /// stop waiting: requests still queued get `503`, responses still
    /// streaming end with a body error, and their inner futures and bodies
    /// are dropped on their workers. Needs a Tokio runtime with time enabled.
    ///
    /// Returns within `deadline` plus about 100 ms even while workers are
    /// stuck in blocking calls; the report names them. Their threads end by
    /// themselves when those calls return.
    pub async fn shutdown_timeout(&self, deadline: Duration) -> ShutdownReport {
        self.pool.shutdown(Some(deadline)).await
    }

    /// Wraps `inner`, which each worker clones once, on first use there.
    ///
    /// The same as [`Layer::layer`], without importing the trait.
    ///
    /// ```
    /// use http::{Request, Response};
    /// use tower_affinity::{blocking, ThreadAffinityLayer};
    ///
    /// let layer = ThreadAffinityLayer::new(2);
    /// let svc = layer.service(blocking::service_fn(|_req: Request<()>| Response::new(String::from("hi"))));
    /// // With axum: Router::new().route_service("/hi", svc)
    /// # let _ = svc;
    /// ```
    pub fn service<S>(&self, inner: S) -> ThreadAffinity<S>
    where
        S: Clone + Send + 'static,
    {
        ThreadAffinity::new(inner, self.pool.clone())
    }

    /// Runs a service that `factory` builds on each worker thread, the first
    /// time that worker serves it.
    ///
    /// For services that are not `Send` or not `Clone`: a `rusqlite`
    /// connection, an `Rc<RefCell<_>>` cache, a raw FFI handle. The instance
    /// never leaves its worker; it is dropped there once every handle of the
    /// returned service is gone (or when the pool shuts down).
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    /// use http::{Request, Response};
    /// use tower_affinity::{blocking, ThreadAffinityLayer, WorkerId};
    ///
    /// let layer = ThreadAffinityLayer::new(2);
    /// let svc = layer.service_with(|worker: WorkerId| {
    ///     // Built on the worker: `Rc` never crosses threads.
    ///     let hits = Rc::new(RefCell::new(0u64));
    ///     blocking::service_fn(move |_req: Request<()>| {
    ///         *hits.borrow_mut() += 1;
    ///         Response::new(format!("{worker}: {} hits", hits.borrow()))
    ///     })
    /// });
    /// // With axum: Router::new().route_service("/hits", svc)
    /// # let _ = svc;
    /// ```
    pub fn service_with<S, F>(&self, factory: F) -> ThreadAffinity<S>
    where
        F: Fn(WorkerId) -> S + Send + Sync + 'static,
    {
        ThreadAffinity::with_factory(self.pool.clone(), factory)
    }

    /// A value per worker thread, that `factory` builds on each worker the
    /// first time code there asks for it, reachable from any handler on
    /// this pool's workers without `thread_local!`; see [`WorkerLocal`].
    ///
    /// ```
    /// use tower_affinity::{ThreadAffinityLayer, WorkerId};
    ///
    /// let layer = ThreadAffinityLayer::new(2);
    /// let db = layer.worker_local(|_worker: &WorkerId| {
    ///     rusqlite::Connection::open_in_memory().unwrap() // one per worker thread
    /// });
    /// // Off the workers there is no value.
    /// assert!(db.with(|db| db.is_autocommit()).is_none());
    /// ```
    pub fn worker_local<T, F>(&self, factory: F) -> WorkerLocal<T>
    where
        T: 'static,
        F: Fn(&WorkerId) -> T + Send + Sync + 'static,
    {
        WorkerLocal::new(&self.pool, factory)
    }

    /// Runs `f` on the core worker that requests with affinity key `key`
    /// go to, and returns its result; see [`jobs`](crate::jobs).
    ///
    /// `key` is hashed as [`affinity_key`](crate::Builder::affinity_key)
    /// hashes the key its function returns, so pass a value of that type
    /// (for [`affinity_header`](crate::Builder::affinity_header), the
    /// header's bytes as a `&[u8]`). The job waits in that worker's queue,
    /// ahead of its keyed requests, up to `queue_capacity` jobs (then
    /// [`JobError::is_overloaded`]); `queue_timeout` bounds its wait before
    /// it starts; a shutdown serves it if it was queued first.
    pub async fn run_on_key<K, F, R>(&self, key: K, f: F) -> Result<R, JobError>
    where
        K: Hash,
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let index = self.pool.worker_for(&key);
        let wait = Wait::ToStart(self.pool.config().queue_timeout);
        self.pool.run_on(index, wait, f).await
    }

    /// Runs `f` once on each worker thread alive now, core and spare, on
    /// that thread, and returns each result with its worker's id, in the
    /// order of their indices; see [`jobs`](crate::jobs).
    ///
    /// A worker that has not finished its run within `wait` (stuck in user
    /// code, or serving `max_streams_per_worker` streams) answers
    /// [`JobError::is_timed_out`]: its run is withdrawn if it had not
    /// started, and its result dropped if it had. A spare that starts after
    /// the call does not run `f`; one that retires meanwhile answers
    /// [`JobError::is_shut_down`]. Off a Tokio runtime there is no timer,
    /// and the wait is unbounded.
    pub async fn broadcast<F, R>(
        &self,
        wait: Duration,
        f: F,
    ) -> Vec<(WorkerId, Result<R, JobError>)>
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: Send + 'static,
    {
        self.pool.broadcast(wait, f).await
    }
}

/// Wraps `S`, which each worker clones once, on first use there.
impl<S> Layer<S> for ThreadAffinityLayer
where
    S: Clone + Send + 'static,
{
    type Service = ThreadAffinity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.service(inner)
    }
}

impl fmt::Debug for ThreadAffinityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadAffinityLayer")
            .field("pool", &self.pool)
            .finish()
    }
}
