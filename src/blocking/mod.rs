//! Helpers for legacy blocking code on the worker threads.
//!
//! - [`service_fn`]: a synchronous closure `FnMut(Request<B>) -> Response<R>`
//!   as a [`Service`](tower_service::Service).
//! - [`IterBody`]: a response body from an `Iterator` of chunks.
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
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use tower::{Service, ServiceExt};
//! use tower_affinity::{blocking, ThreadAffinityLayer};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = blocking::service_fn(|req: Request<String>| {
//!     let mut upload = String::new();
//!     blocking::BodyReader::new(req.into_body())
//!         .limit(1024)
//!         .read_to_string(&mut upload)
//!         .unwrap();
//!     let lines = upload.lines().map(|line| Ok::<_, std::io::Error>(Bytes::from(format!("{line}!\n"))));
//!     Response::new(blocking::IterBody::new(lines.collect::<Vec<_>>().into_iter()))
//! });
//! let mut svc = ThreadAffinityLayer::new(1).layer(svc);
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

pub use self::iter::IterBody;
pub use self::read::{BodyReader, LengthLimitError};
pub use self::reader::ReaderBody;
pub use self::service_fn::{service_fn, ServiceFn};
