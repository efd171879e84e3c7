//! Cancellation that blocking code can see: is this request still wanted?
//!
//! When the caller drops the response future or body, the layer stops
//! polling and drops the inner future and body on their worker. But a
//! handler inside a long blocking loop (a report over millions of rows, a
//! call it retries) keeps going until it returns. [`Cancellation::current`],
//! called from the handler on its worker, gives it a cheap handle to ask:
//!
//! - [`is_cancelled`](Cancellation::is_cancelled): a check for a loop, a
//!   few atomic loads;
//! - [`cancelled`](Cancellation::cancelled): a future to await or select
//!   on, in an async handler;
//! - [`wait_timeout`](Cancellation::wait_timeout): a blocking wait (a
//!   back-off between retries) that ends early when the request is cut.
//!
//! A request is cut when its caller drops the response future (before the
//! head) or the body (before its end), the moment the drop happens on the
//! caller's thread, even while the worker is blocked in the handler; when
//! its [`response_deadline`](crate::Builder::response_deadline) passes; and
//! when [`shutdown_timeout`](crate::ThreadAffinityLayer::shutdown_timeout)
//! runs out.
//!
//! Asking costs one allocation per request, made on the first ask only; a
//! request whose handler never asks pays two thread-local writes per poll.
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{Service, ServiceExt};
//! use tower_affinity::{blocking, cancel::Cancellation, ThreadAffinityLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (done, ended) = mpsc::channel();
//! let layer = ThreadAffinityLayer::new(1);
//! let mut report = layer.service(blocking::service_fn(move |_req: Request<()>| {
//!     let cancel = Cancellation::current().expect("on a worker, serving a request");
//!     let mut rows = 0u64;
//!     // A loop that would run for ever, but for its client.
//!     while !cancel.is_cancelled() {
//!         rows += 1;
//!         cancel.wait_timeout(Duration::from_millis(1));
//!     }
//!     done.send(rows).unwrap();
//!     Response::new(String::new())
//! }));
//! let call = report.ready().await.unwrap().call(Request::new(()));
//! // The client gives up: the future is dropped, and the loop ends.
//! let _ = tokio::time::timeout(Duration::from_millis(20), call).await;
//! let rows = ended.recv().unwrap();
//! # let _ = rows;
//! # }
//! ```

mod scope;
mod signal;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use self::scope::{Scope, Scoped, Watch};
pub(crate) use self::signal::Signal;

/// Whether the request a handler serves is still wanted; see the
/// [module docs](self).
///
/// Cheap to clone (one reference count) and `Send`, so it can go to a
/// thread the handler starts.
#[derive(Clone)]
pub struct Cancellation {
    signal: Arc<Signal>,
}

impl Cancellation {
    /// The handle of the request whose code runs on this thread now: from
    /// the inner service's `poll_ready` and `call`, its future and its
    /// body's `poll_frame`, on their worker. `None` anywhere else (off the
    /// workers, or in a task the handler spawned with `spawn_local`: take
    /// the handle first and move it there).
    pub fn current() -> Option<Self> {
        scope::current_signal().map(|signal| Self { signal })
    }

    /// Whether the request was cut: its caller dropped the response future
    /// or body, its response deadline passed, or a shutdown's timeout ran
    /// out. Once `true`, always `true`.
    pub fn is_cancelled(&self) -> bool {
        self.signal.is_cut()
    }

    /// Resolves when the request is cut. Uses a Tokio timer for the
    /// response deadline, so poll it inside a runtime (a worker's own, in
    /// an async handler).
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let signal = self.signal.clone();
        async move {
            let deadline = signal.deadline().map(tokio::time::Instant::from_std);
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let mut expired = std::pin::pin!(expired);
            let mut cut = std::pin::pin!(signal.fired_or_aborted());
            std::future::poll_fn(|cx| {
                if cut.as_mut().poll(cx).is_ready() || expired.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
                std::task::Poll::Pending
            })
            .await
        }
    }

    /// Blocks this thread for up to `timeout` (`Duration::MAX`: until cut),
    /// returning early, with `true`, when the request is cut. Needs no
    /// runtime: for blocking handlers, between retries or pages.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.is_cancelled() || self.signal.wait_timeout(timeout)
    }
}

impl fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
