//! A Tower layer that runs blocking (and `!Send`) HTTP services on a fixed
//! pool of worker threads, and streams their response bodies back.
//!
//! TODO docs
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod blocking;
pub mod error;
pub mod future;
mod layer;
mod pool;
mod service;

pub use self::body::ThreadAffinityBody;
pub use self::error::BoxError;
pub use self::layer::{Builder, ThreadAffinityLayer};
pub use self::service::ThreadAffinity;
