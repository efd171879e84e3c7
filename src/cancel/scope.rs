//! Which request the worker is running user code for, so that
//! [`Cancellation::current`](super::Cancellation::current) finds its
//! signal.
//!
//! Each request's task holds a [`Scope`]; around every call into user code
//! for that request (readiness and call, each poll of its future and of its
//! body) the task moves the scope's contents into a thread-local and back
//! out, so the common path costs two thread-local writes per poll and no
//! allocation. The signal itself is made only when a handler asks for it,
//! and kept by the [`Watch`] that holds the caller's end: the reply slot
//! until the head is sent, then the frame channel of a streamed body.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use super::signal::Signal;
use crate::pool::Inner;

thread_local! {
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// Where a request's caller's end lives: fires the signal when it goes.
pub(crate) trait Watch: Send + Sync {
    /// The request's signal, made by `make` on the first ask and fired at
    /// once if the caller's end is already gone.
    fn signal(&self, make: &mut dyn FnMut() -> Arc<Signal>) -> Arc<Signal>;

    /// The signal, if one was made, for the watch that takes over.
    fn existing(&self) -> Option<Arc<Signal>>;
}

/// What a request's signal is made from.
struct Current {
    watch: Arc<dyn Watch>,
    inner: Arc<Inner>,
    deadline: Option<Instant>,
}

/// One request's entry into the thread-local, held by its task.
pub(crate) struct Scope(Cell<Option<Current>>);

impl Scope {
    pub(crate) fn new(watch: Arc<dyn Watch>, inner: Arc<Inner>, deadline: Option<Instant>) -> Self {
        Self(Cell::new(Some(Current {
            watch,
            inner,
            deadline,
        })))
    }

    /// Runs `f` (user code) as this request's.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Puts the scope back however `f` ends: a panic is caught further
        /// out, and the task may be polled again (to drop it) after one.
        struct Leave<'a> {
            scope: &'a Scope,
            outer: Option<Current>,
        }
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                let _ = CURRENT.try_with(|current| self.scope.0.set(current.replace(outer)));
            }
        }
        // Empty: this scope is entered already, further out on this
        // thread (a body's `is_end_stream` called inside its poll, say), and
        // its contents are the current ones. Swapping them for nothing
        // would hide the request from the code inside.
        let Some(this) = self.0.take() else {
            return f();
        };
        let outer = CURRENT.with(|current| current.replace(Some(this)));
        let _leave = Leave { scope: self, outer };
        f()
    }

    /// The caller's end moved to `next` (a streamed body's channel): a
    /// signal already made goes with it.
    pub(crate) fn hand_over(&self, next: Arc<dyn Watch>) {
        let Some(mut current) = self.0.take() else {
            return;
        };
        if let Some(signal) = current.watch.existing() {
            next.signal(&mut || signal.clone());
        }
        current.watch = next;
        self.0.set(Some(current));
    }
}

/// The signal of the request whose user code runs on this thread now.
pub(crate) fn current_signal() -> Option<Arc<Signal>> {
    CURRENT.with(|cell| {
        let current = cell.take()?;
        let signal = current
            .watch
            .signal(&mut || Signal::new(current.inner.clone(), current.deadline));
        cell.set(Some(current));
        Some(signal)
    })
}

pin_project_lite::pin_project! {
    /// A response body whose polls run in its request's scope.
    pub(crate) struct Scoped<'a, B> {
        scope: &'a Scope,
        #[pin]
        body: B,
    }
}

impl<'a, B> Scoped<'a, B> {
    pub(crate) fn new(scope: &'a Scope, body: B) -> Self {
        Self { scope, body }
    }
}

impl<B: http_body::Body> http_body::Body for Scoped<'_, B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        this.scope.enter(|| this.body.poll_frame(cx))
    }

    fn is_end_stream(&self) -> bool {
        self.scope.enter(|| self.body.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.scope.enter(|| self.body.size_hint())
    }
}

#[cfg(all(test, not(tower_affinity_loom)))]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A watch that keeps the signal it is asked for.
    #[derive(Default)]
    struct Kept(Mutex<Option<Arc<Signal>>>);

    impl Watch for Kept {
        fn signal(&self, make: &mut dyn FnMut() -> Arc<Signal>) -> Arc<Signal> {
            self.0.lock().unwrap().get_or_insert_with(make).clone()
        }

        fn existing(&self) -> Option<Arc<Signal>> {
            self.0.lock().unwrap().clone()
        }
    }

    /// User code inside a scope entered twice (the outer entry still open)
    /// sees its request, inside and after the inner entry; outside both,
    /// none.
    #[test]
    fn a_scope_entered_inside_itself_stays_current() {
        let config = crate::ThreadAffinityLayer::builder().into_config();
        let pool = Arc::new(Inner::new(config).unwrap());
        let watch = Arc::new(Kept::default());
        let scope = Scope::new(watch.clone(), pool, None);
        let (nested, after) = scope.enter(|| {
            let nested = scope.enter(|| current_signal().is_some());
            (nested, current_signal().is_some())
        });
        assert!(nested, "the inner entry hid the request");
        assert!(after, "the inner entry's end hid the request");
        assert!(current_signal().is_none(), "outside the scope");
        assert!(watch.existing().is_some());
        // Entered again later, it is still the same request's.
        assert!(scope.enter(|| current_signal().is_some()));
    }
}
