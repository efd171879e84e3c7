//! Which worker thread a piece of code runs on.

use std::cell::OnceCell;
use std::fmt;
use std::sync::Arc;

thread_local! {
    static CURRENT: OnceCell<WorkerId> = const { OnceCell::new() };
}

/// Identifies one worker thread of a pool: its index and its thread's name.
///
/// Given to the factory of [`ThreadAffinityLayer::service_with`], to the
/// [`on_thread_start`] and [`on_thread_stop`] hooks, and to the inner service
/// in each request's extensions:
///
/// ```
/// use http::{Request, Response};
/// use tower_affinity::{blocking, WorkerId};
///
/// let svc = blocking::service_fn(|req: Request<()>| {
///     let worker = req.extensions().get::<WorkerId>().cloned();
///     Response::new(format!("served by {worker:?}"))
/// });
/// # let _ = svc;
/// ```
///
/// A worker that is replaced after its thread died keeps its index.
///
/// [`ThreadAffinityLayer::service_with`]: crate::ThreadAffinityLayer::service_with
/// [`on_thread_start`]: crate::Builder::on_thread_start
/// [`on_thread_stop`]: crate::Builder::on_thread_stop
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WorkerId {
    pool: u64,
    index: usize,
    name: Arc<str>,
}

impl WorkerId {
    pub(crate) fn new(pool: u64, index: usize, name: Arc<str>) -> Self {
        Self { pool, index, name }
    }

    /// Whether this is worker `index` of pool `pool`.
    pub(crate) fn is(&self, pool: u64, index: usize) -> bool {
        self.pool == pool && self.index == index
    }

    /// The worker's index in its pool: `0..workers` for the core workers,
    /// then up to `max_workers - 1` for spares.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The worker thread's name, `{thread_name}-{index}`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker this thread is, or `None` off the worker threads.
    pub fn current() -> Option<WorkerId> {
        CURRENT.with(|current| current.get().cloned())
    }

    /// Marks this thread as the worker `self`.
    pub(crate) fn enter(&self) {
        CURRENT.with(|current| {
            let _ = current.set(self.clone());
        });
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerId")
            .field("index", &self.index)
            .field("name", &self.name)
            .finish()
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
