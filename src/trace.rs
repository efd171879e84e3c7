//! Tracing at the request's state changes, behind the `tracing` feature.
//!
//! Events (target `tower_affinity`): `enqueued` and `rejected` on the
//! caller's thread; `started`, `head sent`, `ended`, `cancelled` at `DEBUG`
//! and `panicked` at `WARN` on the worker, inside the caller's span, which
//! is carried to the worker with the request; `handler failed` (a
//! `try_service_fn` error, in field `error`) at `ERROR`. Pool events:
//! `spare worker started` and `spare worker retired` at `INFO`, `could not
//! start a worker thread` at `WARN`. Without the feature these compile to
//! nothing.

#[cfg(feature = "tracing")]
macro_rules! debug {
    ($($arg:tt)+) => { ::tracing::debug!(target: "tower_affinity", $($arg)+) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! debug {
    ($($arg:tt)+) => {
        ()
    };
}

#[cfg(feature = "tracing")]
macro_rules! warning {
    ($($arg:tt)+) => { ::tracing::warn!(target: "tower_affinity", $($arg)+) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! warning {
    ($($arg:tt)+) => {
        ()
    };
}

#[cfg(feature = "tracing")]
macro_rules! info {
    ($($arg:tt)+) => { ::tracing::info!(target: "tower_affinity", $($arg)+) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! info {
    ($($arg:tt)+) => {
        ()
    };
}

#[cfg(feature = "tracing")]
macro_rules! error {
    ($($arg:tt)+) => { ::tracing::error!(target: "tower_affinity", $($arg)+) };
}

#[cfg(not(feature = "tracing"))]
macro_rules! error {
    ($($arg:tt)+) => {
        ()
    };
}

pub(crate) use {debug, error, info, warning};

/// The caller's span, carried to the worker.
#[cfg(feature = "tracing")]
#[derive(Debug, Clone)]
pub(crate) struct Span(tracing::Span);

/// The caller's span, carried to the worker (nothing, without `tracing`).
#[cfg(not(feature = "tracing"))]
#[derive(Debug, Clone)]
pub(crate) struct Span;

impl Span {
    pub(crate) fn current() -> Self {
        #[cfg(feature = "tracing")]
        return Span(tracing::Span::current());
        #[cfg(not(feature = "tracing"))]
        Span
    }

    /// Runs `f` inside this span.
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "tracing")]
        return self.0.in_scope(f);
        #[cfg(not(feature = "tracing"))]
        f()
    }

    /// Runs `future` inside this span.
    pub(crate) fn instrument<F: std::future::Future>(
        self,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> {
        #[cfg(feature = "tracing")]
        return tracing::Instrument::instrument(future, self.0);
        #[cfg(not(feature = "tracing"))]
        future
    }
}
