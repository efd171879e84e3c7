//! Helpers for legacy blocking code on the worker threads.
//!
//! - [`service_fn`]: a synchronous closure `FnMut(Request<B>) -> Response<R>`
//!   as a [`Service`](tower_service::Service).
//! - [`try_service_fn`]: the same for a closure that returns
//!   `Result<Response<R>, E>`, so `?` works; an error answers `500`.
//! - [`IterBody`]: a response body from an `Iterator` of chunks
//!   ([`IterBody::from_chunks`] for chunks that cannot fail).
//! - [`ReaderBody`]: a response body from a [`std::io::Read`], in
//!   fixed-size chunks (the large-file case).
//! - [`BodyReader`]: the request body as a [`std::io::Read`], with a size
//!   limit.
//!
//! A response body's `next()` or `read()` runs on the worker between
//! frames, only when the response has room in its buffer: a blocking
//! iterator streams with backpressure and never buffers ahead of its reader.
//!
//! ```
//! use std::io::Read;
//! use http::{Request, Response};
//! use tower::{Service, ServiceExt};
//! use tower_affinity::{blocking, ThreadAffinityLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = blocking::try_service_fn(|req: Request<String>| {
//!     let mut upload = String::new();
//!     // Past the limit, `?` answers 500; match on `LengthLimitError` for a 413.
//!     blocking::BodyReader::new(req.into_body())
//!         .limit(1024)
//!         .read_to_string(&mut upload)?;
//!     let lines: Vec<String> = upload.lines().map(|line| format!("{line}!\n")).collect();
//!     Ok::<_, std::io::Error>(Response::new(blocking::IterBody::from_chunks(lines)))
//! });
//! let mut svc = ThreadAffinityLayer::new(1).service(svc);
//! let response = svc.ready().await.unwrap().call(Request::new("a\nb".into())).await.unwrap();
//! # use http_body_util::BodyExt;
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "a!\nb!\n");
//! # }
//! ```

mod iter;
mod read;
mod reader;
mod service_fn;
mod try_service_fn;

pub use self::iter::{Chunks, IterBody};
pub(crate) use self::read::thread_waker;
pub use self::read::BodyReader;
pub use self::reader::ReaderBody;
pub use self::service_fn::{service_fn, ServiceFn};
pub use self::try_service_fn::{try_service_fn, TryServiceFn};
/// The error a [`BodyReader`] fails with past its limit: http-body-util's,
/// re-exported, so that one downcast catches it from either crate.
pub use http_body_util::LengthLimitError;
