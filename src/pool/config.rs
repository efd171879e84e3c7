//! The settings a pool is built with.

use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;
use std::{fmt, io};

use http::request::Parts;

use crate::{Overload, WorkerId};

/// Maps a request's head to a key hash, with the pool's seed.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts, &RandomState) -> Option<u64> + Send + Sync>;

/// A hook run on each worker thread.
pub(crate) type Hook = Arc<dyn Fn(&WorkerId) + Send + Sync>;

/// The most threads a pool may run (`max_workers`, and so `workers`): each
/// has a slot (counters, an idle bit, a waker) made when the pool starts.
pub(crate) const MAX_THREADS: usize = 1 << 15;

/// The most places a queue may have: the admission semaphore's limit.
pub(crate) const MAX_QUEUE_CAPACITY: usize = tokio::sync::Semaphore::MAX_PERMITS;

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

impl Config {
    /// Refuses what no pool can be built with, before any thread starts:
    /// each of these would panic deep inside otherwise (naming a thread,
    /// making the semaphore, allocating the slots).
    pub(crate) fn check(&self) -> io::Result<()> {
        let refuse = |what: String| {
            let message = format!("tower-affinity: {what}");
            Err(io::Error::new(io::ErrorKind::InvalidInput, message))
        };
        if self.thread_name.contains('\0') {
            return refuse(format!(
                "thread_name must not contain a NUL byte: {:?}",
                self.thread_name
            ));
        }
        if self.queue_capacity > MAX_QUEUE_CAPACITY {
            return refuse(format!(
                "queue_capacity must be at most {MAX_QUEUE_CAPACITY}, not {}",
                self.queue_capacity
            ));
        }
        if self.max_workers > MAX_THREADS {
            return refuse(format!(
                "max_workers (and workers) must be at most {MAX_THREADS}, not {}",
                self.max_workers
            ));
        }
        Ok(())
    }
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
