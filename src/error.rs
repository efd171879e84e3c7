//! Errors and the responses the layer gives for its own failures.
//!
//! The layer never adds a variant to the inner service's error type: like
//! tower-http's `Timeout`, it answers its own failures with a status code, so
//! a service whose error is `Infallible` stays `Infallible` and drops straight
//! into axum and tonic.
//!
//! | failure                                   | before the head          | after the head               |
//! |-------------------------------------------|--------------------------|------------------------------|
//! | queue full (reject policy, or a keyed queue) | `503 Service Unavailable`, `Retry-After: 1` | — |
//! | pool shut down                            | `503 Service Unavailable`| —                            |
//! | waited past the queue timeout             | `503 Service Unavailable`| —                            |
//! | no worker thread left (its worker, or every core worker, given up after failing to start again and again) | `503 Service Unavailable` | — |
//! | a worker calling into itself              | `500 Internal Server Error` | —                         |
//! | response deadline passed                  | —                        | body error [`Elapsed`]       |
//! | panic in the inner service                | `500 Internal Server Error` | body error [`Panicked`]   |
//! | worker thread died                        | `500 Internal Server Error` | body error [`WorkerGone`] |
//! | inner body error                          | —                        | body error (the inner error) |
//! | a [`try_service_fn`](crate::blocking::try_service_fn) handler's `Err` | `500 Internal Server Error` (the error is not echoed) | — |
//! | [`PrebufferLayer`](crate::prebuffer::PrebufferLayer): body over the limit, or failing | `413 Payload Too Large`, `400 Bad Request` | — |
//!
//! Each status response carries a short `text/plain` body saying what happened.
//! The last two come from services outside the pool, whose responses carry
//! a [`ResponseBody`]: the inner body, or that short text.

use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

pub use crate::response_body::ResponseBody;
use crate::ThreadAffinityBody;

/// A type-erased error, as used by the body of every response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The inner service panicked while producing a response body.
///
/// Yielded by [`ThreadAffinityBody`] when the panic came after the head had
/// been sent; before that, the caller gets a `500` response instead.
#[derive(Debug)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    pub(crate) fn new(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            String::from("non-string panic payload")
        };
        Self { message }
    }

    /// The panic message, when the payload was a string.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inner service panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

/// The worker thread stopped before the response ended.
///
/// Yielded by [`ThreadAffinityBody`] instead of a clean end of stream, so a
/// truncated response is never mistaken for a complete one.
#[derive(Debug)]
pub struct WorkerGone {
    _priv: (),
}

impl WorkerGone {
    pub(crate) fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for WorkerGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("worker thread stopped before the response ended")
    }
}

impl std::error::Error for WorkerGone {}

/// The response deadline passed before the body ended.
///
/// Yielded by [`ThreadAffinityBody`]; the inner body is dropped on its
/// worker (at once, or, if the worker is stuck producing a frame, when that
/// frame's poll returns). See
/// [`Builder::response_deadline`](crate::Builder::response_deadline).
#[derive(Debug)]
pub struct Elapsed {
    _priv: (),
}

impl Elapsed {
    pub(crate) fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Why the layer answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The shared queue is full.
    Overloaded,
    /// The pool is shutting down.
    ShutDown,
    /// The request waited longer than the queue timeout.
    TimedOut,
    /// A worker called into a service that only it could serve.
    WouldDeadlock,
    /// The inner service panicked before its head was sent.
    Panicked,
    /// The worker thread stopped before answering.
    WorkerGone,
    /// No thread will serve the request: its worker (or, for a request
    /// without a key, every core worker) was given up, its thread failing
    /// to start again and again.
    NoWorker,
}

impl Failure {
    fn status(self) -> StatusCode {
        match self {
            Failure::Overloaded | Failure::ShutDown | Failure::TimedOut | Failure::NoWorker => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Failure::Panicked | Failure::WorkerGone | Failure::WouldDeadlock => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::Overloaded => "service overloaded: request queue is full\n",
            Failure::ShutDown => "service is shutting down\n",
            Failure::TimedOut => "service overloaded: request waited too long for a worker\n",
            Failure::WouldDeadlock => {
                "internal error: a worker thread called a service only it could serve\n"
            }
            Failure::Panicked => "internal error: handler panicked\n",
            Failure::WorkerGone => "internal error: worker thread stopped\n",
            Failure::NoWorker => "service unavailable: no worker thread could be started\n",
        }
    }

    /// The plain-text response for this failure.
    pub(crate) fn response(self) -> Response<ThreadAffinityBody> {
        let mut response = ThreadAffinityBody::plain_text(
            self.status(),
            Bytes::from_static(self.message().as_bytes()),
        );
        if self == Failure::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
