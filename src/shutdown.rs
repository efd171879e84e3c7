//! What a shutdown with a deadline left behind.

/// The outcome of [`ThreadAffinityLayer::shutdown_timeout`]: whether every
/// worker thread ended, or which were still inside user code when the
/// deadline passed.
///
/// A stuck worker cannot be preempted. Its queued requests have been
/// answered `503` and its streams cut; its thread ends by itself when the
/// blocking call returns, dropping what it holds on that thread.
///
/// ```no_run
/// # async fn f(layer: tower_affinity::ThreadAffinityLayer) {
/// use std::time::Duration;
///
/// let report = layer.shutdown_timeout(Duration::from_secs(5)).await;
/// if !report.is_complete() {
///     eprintln!("workers {:?} still blocked in a handler", report.stuck());
/// }
/// # }
/// ```
///
/// [`ThreadAffinityLayer::shutdown_timeout`]: crate::ThreadAffinityLayer::shutdown_timeout
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    stuck: Vec<usize>,
}

impl ShutdownReport {
    pub(crate) fn complete() -> Self {
        Self { stuck: Vec::new() }
    }

    pub(crate) fn with_stuck(stuck: Vec<usize>) -> Self {
        Self { stuck }
    }

    /// Whether every worker was out of user code when the call returned.
    pub fn is_complete(&self) -> bool {
        self.stuck.is_empty()
    }

    /// The indices of the workers still inside a poll of user code.
    pub fn stuck(&self) -> &[usize] {
        &self.stuck
    }
}
