//! The service: sends each request to a worker and awaits its head.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use crate::error::{BoxError, Failure};
use crate::future::{Admit, QueueTimeout, ResponseFuture};
use crate::pool::{Call, Inner, Pool};
use crate::trace;
use crate::{Overload, ThreadAffinityBody, WorkerId};

/// Runs an inner service on the worker threads of a [`ThreadAffinityLayer`].
///
/// Made by [`ThreadAffinityLayer::layer`] or
/// [`ThreadAffinityLayer::service_with`]. Cheap to clone; clones share the
/// pool and the workers' instances of the inner service. Each worker makes
/// its own instance (a clone of the service given to the layer, or one built
/// by the factory) the first time it serves a request for it, and drops it
/// on its own thread once the last clone of this handle (and the last
/// request for it) is gone, or when the pool shuts down.
///
/// The inner service's future and response body need not be `Send`: they
/// are created, polled and dropped on one worker thread. Only the request
/// and the response frames cross threads. Before calling the inner service,
/// the worker puts its [`WorkerId`] in the request's extensions.
///
/// # Errors
///
/// The error type is the inner service's: the layer answers its own
/// failures with a response (see [`error`](crate::error)).
///
/// [`ThreadAffinityLayer`]: crate::ThreadAffinityLayer
/// [`ThreadAffinityLayer::layer`]: crate::ThreadAffinityLayer
/// [`ThreadAffinityLayer::service_with`]: crate::ThreadAffinityLayer::service_with
pub struct ThreadAffinity<S> {
    wrapped: Arc<Wrapped<S>>,
    // Not in `Wrapped`: queued jobs hold that, and must not keep the pool
    // (and so its queues) open after the last handle is gone.
    pool: Pool,
    admission: PollSemaphore,
    // A place in the queue, taken by `poll_ready` for the next `call`.
    permit: Option<OwnedSemaphorePermit>,
    // The queue timeout of the next `call`, started by a `poll_ready` that
    // had to wait for a place: it bounds that wait too, and goes on in the
    // response future, so that it bounds the whole wait before a start.
    waited: Option<QueueTimeout>,
}

/// Builds a worker's instance of the inner service, on that worker.
type Factory<S> = Box<dyn Fn(WorkerId) -> S + Send + Sync>;

/// The wrapped service as every clone of one `ThreadAffinity`, and each of
/// its queued jobs, shares it: its id and how a worker makes its instance.
pub(crate) struct Wrapped<S> {
    id: u64,
    factory: Factory<S>,
    // Told when the last handle and queued job are gone, so that each
    // worker drops its instance. Not the pool itself: that would keep its
    // queues open.
    inner: Arc<Inner>,
}

impl<S> Drop for Wrapped<S> {
    fn drop(&mut self) {
        self.inner.retire_service();
    }
}

impl<S> Wrapped<S> {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// A new instance for the worker `worker`, on its thread.
    pub(crate) fn make(&self, worker: &WorkerId) -> S {
        (self.factory)(worker.clone())
    }
}

impl<S> ThreadAffinity<S> {
    /// Wraps a service that each worker clones once.
    pub(crate) fn new(inner: S, pool: Pool) -> Self
    where
        S: Clone + Send + 'static,
    {
        // The lock makes `S: Send` enough for the handle to be `Sync`; it is
        // taken once per worker, to clone.
        let prototype = Mutex::new(inner);
        Self::with_factory(pool, move |_| {
            prototype
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Wraps a service that `factory` builds once on each worker.
    pub(crate) fn with_factory<F>(pool: Pool, factory: F) -> Self
    where
        F: Fn(WorkerId) -> S + Send + Sync + 'static,
    {
        Self {
            admission: PollSemaphore::new(pool.admission()),
            permit: None,
            waited: None,
            wrapped: Arc::new(Wrapped {
                id: pool.next_service_id(),
                factory: Box::new(factory),
                inner: pool.inner().clone(),
            }),
            pool,
        }
    }

    /// Whether `worker` is the thread calling: it would wait on itself.
    fn is_calling_thread(&self, worker: Option<usize>) -> bool {
        let pool = &self.pool;
        let Some(me) = WorkerId::current() else {
            return false;
        };
        // An unkeyed request may go to any worker: only a single-worker
        // pool is sure to need the caller itself.
        // Unkeyed, only a pool of one thread, spares included, has no
        // other to serve the call: with spares allowed, the calling worker
        // blocks waiting for the answer, and a spare starts for it.
        let config = pool.config();
        let target = match (worker, config.workers, config.max_workers) {
            (Some(index), _, _) => index,
            (None, 1, 1) => 0,
            (None, _, _) => return false,
        };
        me.is(pool.id(), target)
    }
}

/// A clone shares the pool and the workers' instances, but not a place in
/// the queue that the original reserved.
impl<S> Clone for ThreadAffinity<S> {
    fn clone(&self) -> Self {
        Self {
            wrapped: self.wrapped.clone(),
            pool: self.pool.clone(),
            admission: self.admission.clone(),
            permit: None,
            waited: None,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ThreadAffinity<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + 'static,
    S::Future: 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ThreadAffinityBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    /// Reserves a place in the queue. Under [`Overload::Wait`] (the
    /// default) it is `Pending` while the queue is full; under
    /// [`Overload::Reject`] it is always ready, and `call` answers `503`
    /// when the queue is full. Never fails: after shutdown it is ready, and
    /// `call` answers `503`. With a
    /// [`queue_timeout`](crate::Builder::queue_timeout), it is ready once
    /// the timeout has passed without a place, and `call` answers `503`;
    /// the timeout so bounds this wait and the wait in the queue together.
    ///
    /// With affinity keys configured it reserves nothing and is always
    /// ready, since the request's key is not known yet: a keyed request
    /// goes to its worker's own queue (`503` when that is full), and an
    /// unkeyed one waits for a place in its response future instead (under
    /// `Wait`; the queue timeout covers that wait).
    ///
    /// [`Overload::Wait`]: crate::Overload::Wait
    /// [`Overload::Reject`]: crate::Overload::Reject
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A worker waiting for a place that only it could free would wait
        // forever: let `call` answer it instead.
        if self.pool.config().workers == 1 && self.is_calling_thread(None) {
            return Poll::Ready(Ok(()));
        }
        // With affinity keys, nothing is reserved here: a keyed request goes
        // to its worker's own queue, bounded by itself, and must not wait
        // for (or hold) a place in the shared one. `call` admits the others.
        let keyed_pool = self.pool.config().affinity_key.is_some();
        if self.permit.is_none() && !keyed_pool && self.pool.config().overload == Overload::Wait {
            if let Poll::Ready(permit) = self.admission.poll_acquire(cx) {
                // `None` means the pool shut down: `call` will say so.
                self.permit = permit;
                return Poll::Ready(Ok(()));
            }
            // Places are freed only as workers take jobs: with every worker
            // stuck, none is (withdrawn jobs keep theirs, so that a stuck
            // pool shows as a full queue). So the queue timeout bounds this
            // wait too: past it, `call` answers `503`.
            if self.waited.is_none() {
                self.waited = QueueTimeout::start(self.pool.inner());
            }
            let Some(waited) = &mut self.waited else {
                return Poll::Pending;
            };
            ready!(waited.poll_elapsed(cx));
            // Out of the semaphore's line: a place given to a handle that
            // waits no more would stay with it, unused.
            self.admission = PollSemaphore::new(self.pool.admission());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Taken first: a refused call must give its place back.
        let permit = self.permit.take();
        let waited = self.waited.take();
        if let Some(waited) = waited.as_ref().filter(|_| permit.is_none()) {
            if waited.is_elapsed() {
                return ResponseFuture::failed(waited.answer());
            }
        }
        let pool = &self.pool;
        let (request, worker) = pool.route(request);
        if self.is_calling_thread(worker) {
            return ResponseFuture::failed(Failure::WouldDeadlock);
        }
        // One allocation: the job is its own reply slot.
        let (job, rx) = Call::queue(self.wrapped.clone(), request);
        let wait_for_place = worker.is_none()
            && permit.is_none()
            && pool.config().affinity_key.is_some()
            && pool.config().overload == Overload::Wait;
        let permit = match permit {
            None if wait_for_place => match pool.admission().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::Closed) => None,
                Err(TryAcquireError::NoPermits) => {
                    // The shared queue is full: the response future waits
                    // for a place, as `poll_ready` would have.
                    let timeout = waited.or_else(|| QueueTimeout::start(pool.inner()));
                    return ResponseFuture::admitting(Admit::new(job, pool.clone()), rx, timeout);
                }
            },
            permit => permit,
        };
        // Without a reservation (the reject policy, or a caller that skipped
        // `poll_ready`), `submit` tries to take a place at once.
        match pool.submit(job, permit, worker) {
            Ok(()) => {
                trace::debug!(?worker, "enqueued");
                let timeout = waited.or_else(|| QueueTimeout::start(pool.inner()));
                ResponseFuture::waiting(rx, timeout)
            }
            Err(failure) => {
                trace::debug!(?failure, "rejected");
                ResponseFuture::failed(failure)
            }
        }
    }
}

impl<S> fmt::Debug for ThreadAffinity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadAffinity")
            .field("service", &std::any::type_name::<S>())
            .field("id", &self.wrapped.id)
            .field("pool", &self.pool)
            .finish()
    }
}
