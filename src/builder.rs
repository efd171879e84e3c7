//! The builder of a [`ThreadAffinityLayer`].

use std::hash::{BuildHasher, Hash};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::HeaderName;

use crate::pool::{Config, Pool};
use crate::{ThreadAffinityLayer, WorkerId};

/// What a [`ThreadAffinity`](crate::ThreadAffinity) does when its queue
/// is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overload {
    /// `poll_ready` returns `Pending` until a place in the queue is free,
    /// as tower's `Buffer` does, so `LoadShed`, `ConcurrencyLimit` and
    /// hyper's backpressure compose with it. Dropping a service that was
    /// ready without calling it frees its place.
    #[default]
    Wait,
    /// `poll_ready` is always ready, and a request that finds the queue full
    /// is answered at once with `503 Service Unavailable` and
    /// `Retry-After: 1`.
    Reject,
}

/// Configures a [`ThreadAffinityLayer`].
///
/// | setting                      | default                       | bounds                                        |
/// |------------------------------|-------------------------------|-----------------------------------------------|
/// | [`workers`](Self::workers)   | available parallelism         | core threads, always running                  |
/// | [`max_workers`](Self::max_workers) | 64 (at least `workers`) | threads while handlers block (spares)       |
/// | [`keep_alive`](Self::keep_alive) | 10 s                      | idle time before a spare retires              |
/// | [`queue_capacity`](Self::queue_capacity) | 1024              | requests waiting for a worker                 |
/// | [`overload`](Self::overload) | [`Overload::Wait`]            | a full queue: wait in `poll_ready`, or `503`  |
/// | [`queue_timeout`](Self::queue_timeout) | none                | longest wait in a queue before a `503`        |
/// | [`response_deadline`](Self::response_deadline) | none        | longest time a streamed response may run      |
/// | [`max_streams_per_worker`](Self::max_streams_per_worker) | 256 | requests one worker serves at once        |
/// | [`body_buffer`](Self::body_buffer) | 8                       | frames buffered per streamed response         |
/// | [`merge_frames`](Self::merge_frames) | 16 KiB                | size up to which small data frames merge      |
/// | [`thread_name`](Self::thread_name) | `"tower-affinity"`      | threads are named `{prefix}-{index}`          |
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    config: Config,
    // `None`: the default, raised to `workers` if that is more.
    max_workers: Option<usize>,
}

/// The default [`Builder::max_workers`].
const DEFAULT_MAX_WORKERS: usize = 64;

impl Builder {
    pub(crate) fn new() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            max_workers: None,
            config: Config {
                workers,
                max_workers: workers,
                keep_alive: Duration::from_secs(10),
                spawn_limit: None,
                start_limit: None,
                queue_capacity: 1024,
                max_streams_per_worker: 256,
                body_buffer: 8,
                merge_frames: 16 * 1024,
                thread_name: String::from("tower-affinity"),
                overload: Overload::Wait,
                queue_timeout: None,
                response_deadline: None,
                affinity_key: None,
                on_thread_start: None,
                on_thread_stop: None,
            },
        }
    }

    /// How many core worker threads the pool runs: they start with the pool
    /// and run until it shuts down. Requests with an
    /// [`affinity_key`](Self::affinity_key) hash over these only, so a
    /// key's worker never changes. More threads (spares, up to
    /// [`max_workers`](Self::max_workers)) start only while these are
    /// blocked.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n > 0, "tower-affinity: workers must be at least 1");
        self.config.workers = n;
        self
    }

    /// The most worker threads the pool runs: the core
    /// [`workers`](Self::workers) and spare ones. Default 64, and never
    /// fewer than `workers`; `max_workers(n)` with `n <= workers` gives a
    /// fixed pool of `workers` threads.
    ///
    /// While unkeyed requests wait and no worker is free, a spare starts
    /// for each worker **blocked in user code**: inside one poll of a
    /// handler, future or body for over a millisecond and off the CPU
    /// (sleeping on a lock, a socket, a database; read from the scheduler
    /// on Linux, while elsewhere any poll longer than 20 ms counts), once
    /// per blocked poll however long it lasts, and only once two looks in a
    /// row (half a millisecond apart) have seen blocking: one sighting may
    /// be a moment's wait on a lock. Not only when *every* worker
    /// is blocked: with many threads some worker is always between two
    /// jobs, and the pool would stop growing far below what waits. So a handler that
    /// waits on I/O gets up to `max_workers` threads, as with
    /// `spawn_blocking`, while CPU-bound or quick handlers never grow the
    /// pool. A spare is a full worker (its own runtime, hooks,
    /// [`WorkerId`], interleaving) that serves unkeyed requests only, and
    /// retires after [`keep_alive`](Self::keep_alive) without work.
    ///
    /// **Each spare holds its own instance of every wrapped service** (its
    /// own clone, or one built by the
    /// [`service_with`](crate::ThreadAffinityLayer::service_with) factory),
    /// so `max_workers` is also the ceiling on per-thread resources: with a
    /// database connection per instance, keep it within the database's
    /// connection limit (minus what other processes need). A spare's
    /// instances are built on its thread when it first serves each service
    /// and dropped there when it retires.
    ///
    /// If the operating system refuses a thread, the pool keeps serving
    /// with the threads it has and lowers this ceiling to them (see
    /// [`Stats::spawn_failures`](crate::stats::Stats::spawn_failures)).
    /// At most 32,768 (see [`try_build`](Self::try_build)): each thread's
    /// slot is made when the pool starts.
    ///
    /// ```
    /// use tower_affinity::ThreadAffinityLayer;
    /// // 4 threads always; up to 32 while handlers wait on the database.
    /// let layer = ThreadAffinityLayer::builder().workers(4).max_workers(32).build();
    /// assert_eq!(layer.stats().max_workers(), 32);
    /// ```
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// How long a spare worker waits without work before it retires,
    /// dropping its service instances on its thread. Default 10 s (as
    /// tokio's blocking pool). Spares retire one at a time, at most one per
    /// quarter of this; core workers never do. `Duration::ZERO` retires a
    /// spare as soon as it is idle; `Duration::MAX`, never.
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        self.config.keep_alive = idle;
        self
    }

    /// Test seam: thread spawns after the first `n` fail as if the
    /// operating system had refused them.
    #[doc(hidden)]
    pub fn fail_spawns_after(mut self, n: usize) -> Self {
        self.config.spawn_limit = Some(n);
        self
    }

    /// Test seam: worker starts after the first `n` fail on their thread,
    /// as if the process were out of resources.
    #[doc(hidden)]
    pub fn fail_starts_after(mut self, n: usize) -> Self {
        self.config.start_limit = Some(n);
        self
    }

    /// How many requests may wait for a worker, in all. What happens past
    /// it is the [`overload`](Self::overload) policy. Each worker's own
    /// queue (for keyed requests) also holds at most this many; a keyed
    /// request finding its worker's queue full gets `503` under either
    /// policy. Up to 4,096 places are allocated when the pool starts, more
    /// as they fill; at most `usize::MAX >> 3` (see
    /// [`try_build`](Self::try_build)).
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
    /// thread, between frames. The default, 256, lets a worker hold many
    /// slow readers (each costs at most `body_buffer` frames of memory)
    /// before new requests queue behind them. Legacy code that keeps
    /// per-request state in thread-locals wants `1`: each request then has
    /// its worker to itself until its response ends, and a slow reader
    /// holds that worker.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn max_streams_per_worker(mut self, n: usize) -> Self {
        assert!(
            n > 0,
            "tower-affinity: max_streams_per_worker must be at least 1"
        );
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

    /// While a streamed response's reader is behind, data frames already
    /// produced are merged into the last one waiting, up to `bytes` bytes;
    /// `0` turns merging off (one frame per inner frame).
    ///
    /// Merging never holds a frame back: only frames that would wait in the
    /// buffer anyway are merged, and a reader that waits gets the next frame
    /// at once. It never crosses trailers, never copies a frame of `bytes`
    /// or more (large chunks stay zero-copy), and keeps bytes and order.
    /// Frame boundaries are not part of HTTP or gRPC semantics, and
    /// server-sent events are parsed from the byte stream (an event ends at
    /// a blank line), so none of them needs one frame per item.
    ///
    /// With merging, the [`body_buffer`](Self::body_buffer) bound counts
    /// items: each is one frame as produced, or merged small frames of at
    /// most `bytes` bytes. A stalled reader so costs at most `body_buffer`
    /// times the larger of `bytes` and the largest frame.
    ///
    /// ```
    /// let layer = tower_affinity::ThreadAffinityLayer::builder()
    ///     .merge_frames(0) // one frame per item, as the inner body made them
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn merge_frames(mut self, bytes: usize) -> Self {
        self.config.merge_frames = bytes;
        self
    }

    /// The prefix of the worker threads' names: `{prefix}-{index}`. It
    /// must not hold a NUL byte (see [`try_build`](Self::try_build)).
    /// Linux keeps the first 15 bytes of a name, as `top` and `/proc`
    /// show it.
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_name = prefix.into();
        self
    }

    /// What to do with a request when `queue_capacity` requests are already
    /// waiting: [`Overload::Wait`] (the default) or [`Overload::Reject`].
    pub fn overload(mut self, policy: Overload) -> Self {
        self.config.overload = policy;
        self
    }

    /// Answers `503 Service Unavailable` to a request that waited longer
    /// than `timeout` for a worker, without ever reaching the inner service.
    /// Off by default. The wait counts from the first `poll_ready` that had
    /// to wait for a place in the full queue (under [`Overload::Wait`]), or
    /// else from `call`, until a worker starts the request: a caller
    /// waiting in `poll_ready` is ready once the timeout has passed, and
    /// its `call` is answered `503` at once.
    ///
    /// The caller's [`ResponseFuture`](crate::future::ResponseFuture) keeps
    /// the time on the caller's Tokio runtime (it needs time enabled, as
    /// hyper, axum and tonic servers have), so the limit holds even while
    /// every worker is stuck in a blocking call. A request is either
    /// started by a worker or answered `503`, never both; one started
    /// before its timeout runs to its end. A withdrawn request keeps its
    /// place in the queue until a worker takes it off and drops it
    /// unstarted, so a stuck pool shows as a full queue, not as unbounded
    /// growth. Off a Tokio runtime, the worker checks the timeout when it
    /// takes the job. `Duration::ZERO` answers every request that has to
    /// wait at all; `Duration::MAX` is the same as none.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.config.queue_timeout = Some(timeout);
        self
    }

    /// Ends every streamed response body that has not finished within
    /// `deadline` of its request starting on a worker: the body ends with
    /// [`error::Elapsed`](crate::error::Elapsed) and the inner body is
    /// dropped on its worker. The worker checks it between frames and while
    /// waiting for the inner body or the reader, and then drops the frames
    /// still waiting, so an expired stream holds nothing. The reader keeps
    /// it too, with a timer on its own Tokio runtime: a reader waiting for a
    /// frame gets the error at the deadline even while the worker is stuck
    /// producing that frame (a frame that blocks its worker cannot be
    /// interrupted; the worker drops the inner body once the frame's poll
    /// returns). A deadline past what an `Instant` can hold
    /// (`Duration::MAX`) is no deadline. Off by default.
    ///
    /// It does not bound the wait for the head: put a `TimeoutLayer`
    /// outside this layer for that (dropping the response future cancels
    /// the request on its worker). `Duration::MAX` is the same as none.
    pub fn response_deadline(mut self, deadline: Duration) -> Self {
        self.config.response_deadline = Some(deadline);
        self
    }

    /// Pins requests to workers by a key taken from their head.
    ///
    /// A request for which `key` returns `Some` always goes to the same
    /// worker, for the life of the pool, and requests with keys on one worker
    /// run in the order they were admitted. A request for which it returns
    /// `None` goes to whichever worker has room. Use it where a worker's
    /// state is only warm for the keys it has seen: a session's cache, a
    /// tenant's database handle.
    ///
    /// Keys are hashed with a seed chosen at random for each pool, so that
    /// clients cannot choose keys that pile onto one worker on every server.
    /// Each worker's own queue holds at most `queue_capacity` requests: a hot
    /// key saturates its worker and then gets `503`, while the other workers
    /// keep serving.
    ///
    /// ```
    /// use tower_affinity::ThreadAffinityLayer;
    /// let layer = ThreadAffinityLayer::builder()
    ///     .affinity_key(|head| head.uri.path().split('/').nth(2).map(str::to_owned))
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn affinity_key<K, F>(mut self, key: F) -> Self
    where
        K: Hash,
        F: Fn(&Parts) -> Option<K> + Send + Sync + 'static,
    {
        self.config.affinity_key = Some(Arc::new(move |parts, seed| {
            key(parts).map(|key| seed.hash_one(key))
        }));
        self
    }

    /// Pins requests to workers by the value of a header (its bytes); see
    /// [`affinity_key`](Self::affinity_key). Requests without the header go
    /// to whichever worker has room.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_affinity::ThreadAffinityLayer;
    /// let layer = ThreadAffinityLayer::builder()
    ///     .affinity_header(HeaderName::from_static("x-session"))
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn affinity_header(mut self, name: HeaderName) -> Self {
        self.config.affinity_key = Some(Arc::new(move |parts, seed| {
            let value = parts.headers.get(&name)?;
            Some(seed.hash_one(value.as_bytes()))
        }));
        self
    }

    /// Runs `hook` on each worker thread when it starts, before it serves a
    /// request (and again on a thread that replaces a dead one): for
    /// thread-local setup such as a logging context or CPU pinning.
    pub fn on_thread_start<F>(mut self, hook: F) -> Self
    where
        F: Fn(&WorkerId) + Send + Sync + 'static,
    {
        self.config.on_thread_start = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` on each worker thread when it stops, after it has dropped
    /// its service instances and its runtime, with any task still on it
    /// (see "Threading model" in the crate docs): at shutdown, when a spare
    /// retires, and also on a thread that a panic escaping the shields
    /// ended (after its guarded cleanup) or whose runtime could not be
    /// built.
    pub fn on_thread_stop<F>(mut self, hook: F) -> Self
    where
        F: Fn(&WorkerId) + Send + Sync + 'static,
    {
        self.config.on_thread_stop = Some(Arc::new(hook));
        self
    }

    /// Starts the worker threads and returns the layer.
    ///
    /// # Panics
    ///
    /// Before any thread starts, if a setting is past what a pool can hold
    /// (see [`try_build`](Self::try_build)'s errors); or if a thread cannot
    /// be started (the threads already started end first).
    /// [`try_build`](Self::try_build) returns the error instead.
    pub fn build(self) -> ThreadAffinityLayer {
        let config = self.into_config();
        if let Err(error) = config.check() {
            panic!("{error}");
        }
        match Pool::launch(config) {
            Ok(pool) => ThreadAffinityLayer::from_pool(pool),
            Err(error) => panic!("tower-affinity: failed to start a worker thread: {error}"),
        }
    }

    /// Starts the worker threads and returns the layer, or the operating
    /// system's error if a core worker's thread cannot be started; the
    /// threads already started then end.
    ///
    /// # Errors
    ///
    /// Of kind [`InvalidInput`](io::ErrorKind::InvalidInput), before any
    /// thread starts: a [`thread_name`](Self::thread_name) holding a NUL
    /// byte, a [`queue_capacity`](Self::queue_capacity) above
    /// `usize::MAX >> 3` (Tokio's `Semaphore::MAX_PERMITS`), or
    /// [`max_workers`](Self::max_workers) or [`workers`](Self::workers)
    /// above 32,768. Otherwise, the operating system's error.
    ///
    /// ```
    /// let layer = tower_affinity::ThreadAffinityLayer::builder().workers(2).try_build()?;
    /// # let _ = layer;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_build(self) -> io::Result<ThreadAffinityLayer> {
        let config = self.into_config();
        config.check()?;
        Pool::launch(config).map(ThreadAffinityLayer::from_pool)
    }

    /// The configuration, settled: `max_workers` at its default if unset,
    /// and never below `workers`.
    pub(crate) fn into_config(mut self) -> Config {
        let max = self.max_workers.unwrap_or(DEFAULT_MAX_WORKERS);
        self.config.max_workers = max.max(self.config.workers);
        self.config
    }
}
