//! The settings a pool is built with.

use std::fmt;
use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::{Overload, WorkerId};

/// Maps a request's head to a key hash, with the pool's seed.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts, &RandomState) -> Option<u64> + Send + Sync>;

/// A hook run on each worker thread.
pub(crate) type Hook = Arc<dyn Fn(&WorkerId) + Send + Sync>;

/// The settings a pool is built with (see [`Builder`](crate::Builder)).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    /// At least `workers` (the builder makes sure).
    pub(crate) max_workers: usize,
    pub(crate) keep_alive: Duration,
    /// Test seam: thread spawns past this many fail.
    pub(crate) spawn_limit: Option<usize>,
    /// Test seam: worker starts past this many fail.
    pub(crate) start_limit: Option<usize>,
    pub(crate) queue_capacity: usize,
    pub(crate) max_streams_per_worker: usize,
    pub(crate) body_buffer: usize,
    /// Merge data frames up to this many bytes while the reader is behind;
    /// 0: never.
    pub(crate) merge_frames: usize,
    pub(crate) thread_name: String,
    pub(crate) overload: Overload,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) response_deadline: Option<Duration>,
    pub(crate) affinity_key: Option<KeyFn>,
    pub(crate) on_thread_start: Option<Hook>,
    pub(crate) on_thread_stop: Option<Hook>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("max_workers", &self.max_workers)
            .field("keep_alive", &self.keep_alive)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_streams_per_worker", &self.max_streams_per_worker)
            .field("body_buffer", &self.body_buffer)
            .field("merge_frames", &self.merge_frames)
            .field("thread_name", &self.thread_name)
            .field("overload", &self.overload)
            .field("queue_timeout", &self.queue_timeout)
            .field("response_deadline", &self.response_deadline)
            .field("affinity_key", &self.affinity_key.is_some())
            .finish_non_exhaustive()
    }
}
