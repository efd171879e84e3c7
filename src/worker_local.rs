//! Per-worker state without `thread_local!`: a typed slot that each worker
//! thread of a pool fills by a factory on first use.
//!
//! [`ThreadAffinityLayer::worker_local`] makes a [`WorkerLocal`]; any code
//! on one of that pool's workers (a handler of `router.layer(layer)`, a
//! service, a body, a job run with `run_on_key` or `broadcast`) reaches
//! this worker's value with [`WorkerLocal::with`]. The value need not be
//! `Send`: it is built, used and dropped on its worker, as service
//! instances are (see [`service_with`]), so a `rusqlite::Connection` or an
//! `Rc<RefCell<_>>` cache fits. It is dropped on its worker when the last
//! clone of the `WorkerLocal` is gone (at that worker's next turn), or
//! when the worker thread ends; a spare worker builds its own, so the pool
//! makes at most `max_workers` of them.
//!
//! ```
//! use std::cell::Cell;
//! use axum::{routing::get, Router};
//! use tower_affinity::{ThreadAffinityLayer, WorkerId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ThreadAffinityLayer::new(2);
//! // One counter per worker thread, never shared, never locked.
//! let hits = layer.worker_local(|_worker: &WorkerId| Cell::new(0u64));
//! let app: Router = Router::new()
//!     .route(
//!         "/hits",
//!         get(move || async move {
//!             // An ordinary axum handler: it runs on a worker, so `with` finds its value.
//!             let n = hits.with(|hits| {
//!                 hits.set(hits.get() + 1);
//!                 hits.get()
//!             });
//!             format!("{n:?}\n")
//!         }),
//!     )
//!     .layer(layer.clone());
//! # let _ = app;
//! # }
//! ```
//!
//! [`ThreadAffinityLayer::worker_local`]: crate::ThreadAffinityLayer::worker_local
//! [`service_with`]: crate::ThreadAffinityLayer::service_with

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use crate::pool::{Inner, Pool};
use crate::WorkerId;

thread_local! {
    /// This worker thread's values, one per live `WorkerLocal` of its pool
    /// that code on it has used. A list: a thread has a few.
    static VALUES: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// One worker's value of a `WorkerLocal`.
struct Kept {
    id: u64,
    /// Alive while any clone of the `WorkerLocal` is.
    handle: Weak<dyn Any + Send + Sync>,
    value: Rc<dyn Any>,
}

/// A value per worker thread of one pool, built there on first use; see
/// the [module docs](self).
pub struct WorkerLocal<T> {
    shared: Arc<Shared<T>>,
}

/// Builds a worker's value, on that worker.
type Factory<T> = Box<dyn Fn(&WorkerId) -> T + Send + Sync>;

struct Shared<T> {
    /// Unique in its pool (shared with the wrapped services' ids).
    id: u64,
    factory: Factory<T>,
    // Told when the last clone goes, so that every worker drops its value.
    inner: Arc<Inner>,
    // The values live on the workers only: the handle is `Send` and `Sync`
    // whatever `T` is.
    _values: PhantomData<fn() -> T>,
}

impl<T: 'static> WorkerLocal<T> {
    pub(crate) fn new<F>(pool: &Pool, factory: F) -> Self
    where
        F: Fn(&WorkerId) -> T + Send + Sync + 'static,
    {
        Self {
            shared: Arc::new(Shared {
                id: pool.next_service_id(),
                factory: Box::new(factory),
                inner: pool.inner().clone(),
                _values: PhantomData,
            }),
        }
    }

    /// Runs `f` with this worker's value, built by the factory on its first
    /// use here; `None` off the pool's worker threads (on the runtime, in
    /// another pool). The value is not borrowed from a shared table while
    /// `f` runs, so `f` may use other `WorkerLocal`s, or this one again.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let worker = WorkerId::current()?;
        if !worker.is(self.shared.inner.id, worker.index()) {
            return None;
        }
        let value = self.value(&worker);
        let value = value
            .downcast_ref::<T>()
            .expect("a worker-local id names one type");
        Some(f(value))
    }

    /// This worker's value, made now if it has none.
    fn value(&self, worker: &WorkerId) -> Rc<dyn Any> {
        let id = self.shared.id;
        let found = VALUES.with(|values| {
            let values = values.borrow();
            let kept = values.iter().find(|kept| kept.id == id);
            kept.map(|kept| kept.value.clone())
        });
        if let Some(value) = found {
            return value;
        }
        // Outside any borrow: the factory is user code, and may use other
        // `WorkerLocal`s.
        let value: Rc<dyn Any> = Rc::new((self.shared.factory)(worker));
        let shared: Arc<dyn Any + Send + Sync> = self.shared.clone();
        VALUES.with(|values| {
            values.borrow_mut().push(Kept {
                id,
                handle: Arc::downgrade(&shared),
                value: value.clone(),
            })
        });
        value
    }
}

/// Takes this thread's values whose `WorkerLocal` is gone, for the worker
/// to drop (see `WorkerState::sweep_retired`).
pub(crate) fn take_retired() -> Vec<Rc<dyn Any>> {
    VALUES
        .try_with(|values| {
            let mut values = values.borrow_mut();
            let (gone, kept): (Vec<Kept>, Vec<Kept>) = values
                .drain(..)
                .partition(|kept| kept.handle.strong_count() == 0);
            *values = kept;
            gone.into_iter().map(|kept| kept.value).collect()
        })
        .unwrap_or_default()
}

/// Takes every value of this thread, as its worker ends.
pub(crate) fn take_all() -> Vec<Rc<dyn Any>> {
    VALUES
        .try_with(|values| {
            let values = values.take();
            values.into_iter().map(|kept| kept.value).collect()
        })
        .unwrap_or_default()
}

impl<T> Clone for WorkerLocal<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        self.inner.retire_service();
    }
}

impl<T> fmt::Debug for WorkerLocal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerLocal")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}
