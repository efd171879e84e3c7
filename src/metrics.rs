//! The pool's figures through the [`metrics`](https://docs.rs/metrics)
//! facade, behind the `metrics` feature.
//!
//! The figures of [`Stats`] are published on demand, by
//! [`ThreadAffinityLayer::publish_metrics`](crate::ThreadAffinityLayer::publish_metrics):
//! call it where the exporter renders, in the `/metrics` handler before
//! rendering. Publishing then costs nothing between scrapes and the
//! figures are as fresh as the scrape; the pool's own counters are the
//! relaxed atomics that [`stats`](crate::ThreadAffinityLayer::stats) reads
//! anyway, so no request pays for metrics except the queue-wait histogram,
//! which can only be recorded when a worker takes a request (one
//! `Instant::now()` at enqueue and one histogram record at dequeue).
//!
//! Every name starts with `tower_affinity_`. Every figure has a `pool`
//! label: the pool's [`thread_name`](crate::Builder::thread_name) prefix,
//! so set distinct thread names to tell two pools apart. Per-worker
//! figures also have a `worker` label: the worker's index (spares follow
//! the core workers, and a retired spare's slot keeps its last figures
//! until the next spare reuses it).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tower_affinity_queued` | gauge | `pool` | requests waiting in the shared queue |
//! | `tower_affinity_threads` | gauge | `pool` | worker threads running now, core workers and spares |
//! | `tower_affinity_spares` | gauge | `pool` | spare workers running now |
//! | `tower_affinity_max_workers` | gauge | `pool` | the most threads the pool will run (lowered by spawn failures) |
//! | `tower_affinity_admitted_total` | counter | `pool` | requests queued for a worker |
//! | `tower_affinity_rejected_total` | counter | `pool` | requests answered `503` at once (queue full, shut down) |
//! | `tower_affinity_timed_out_total` | counter | `pool` | requests answered `503` after the queue timeout |
//! | `tower_affinity_spares_started_total` | counter | `pool` | spare workers started |
//! | `tower_affinity_spares_retired_total` | counter | `pool` | spare workers ended: retired after their keep-alive, or (rarely) died or failed to start |
//! | `tower_affinity_stalls_total` | counter | `pool` | looks of the spare supervisor that found work waiting and a worker stuck in a poll |
//! | `tower_affinity_spawn_failures_total` | counter | `pool` | threads the operating system refused to start |
//! | `tower_affinity_worker_queued` | gauge | `pool`, `worker` | keyed requests waiting in the worker's own queue |
//! | `tower_affinity_active` | gauge | `pool`, `worker` | requests the worker is serving, from call to end of body |
//! | `tower_affinity_current_poll_seconds` | gauge | `pool`, `worker` | time inside the current poll of user code (0 when not polling) |
//! | `tower_affinity_blocked` | gauge | `pool`, `worker` | 1 while the worker is blocked in user code (off the CPU), else 0 |
//! | `tower_affinity_completed_total` | counter | `pool`, `worker` | requests the worker finished serving |
//! | `tower_affinity_panicked_total` | counter | `pool`, `worker` | panics caught in the inner service |
//! | `tower_affinity_replaced_total` | counter | `pool`, `worker` | times the worker's thread died and was replaced |
//! | `tower_affinity_queue_wait_seconds` | histogram | `pool`, `worker` | time from enqueue to a worker taking the request |
//!
//! Counters are published with their absolute value (`Counter::absolute`),
//! as the pool counts them. Install the recorder before the layer serves
//! its first request: the histogram's handle is taken once per worker
//! thread, and a handle taken before any recorder is a no-op (as every
//! `metrics` handle is).
//!
//! With `metrics-exporter-prometheus`:
//!
//! ```
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! use tower_affinity::ThreadAffinityLayer;
//!
//! let recorder = PrometheusBuilder::new().build_recorder();
//! let prometheus = recorder.handle();
//! # let _guard = metrics::set_default_local_recorder(&recorder);
//! // In a server: metrics::set_global_recorder(recorder), before the layer serves.
//! let layer = ThreadAffinityLayer::builder().workers(2).thread_name("db").build();
//!
//! // The `/metrics` handler:
//! layer.publish_metrics();
//! let text = prometheus.render();
//! assert!(text.contains(r#"tower_affinity_threads{pool="db"} 2"#), "{text}");
//! ```

use std::cell::OnceCell;
use std::time::Instant;

use metrics::{Histogram, Unit};

use crate::stats::{Stats, WorkerStats};

/// How one figure is read from a snapshot.
enum Read<T> {
    Gauge(fn(&T) -> f64),
    Counter(fn(&T) -> u64),
}

/// One published figure: its full name, unit, help text, and reader.
/// A new figure of `Stats` or `WorkerStats` is one line in [`POOL`] or
/// [`WORKER`] (and one in the table above).
struct Figure<T> {
    name: &'static str,
    unit: Unit,
    help: &'static str,
    read: Read<T>,
}

const fn gauge<T>(name: &'static str, help: &'static str, read: fn(&T) -> f64) -> Figure<T> {
    Figure {
        name,
        unit: Unit::Count,
        help,
        read: Read::Gauge(read),
    }
}

const fn counter<T>(name: &'static str, help: &'static str, read: fn(&T) -> u64) -> Figure<T> {
    Figure {
        name,
        unit: Unit::Count,
        help,
        read: Read::Counter(read),
    }
}

const fn seconds<T>(name: &'static str, help: &'static str, read: fn(&T) -> f64) -> Figure<T> {
    Figure {
        name,
        unit: Unit::Seconds,
        help,
        read: Read::Gauge(read),
    }
}

/// Pool-wide figures, labelled `pool`.
const POOL: &[Figure<Stats>] = &[
    gauge(
        "tower_affinity_queued",
        "Requests waiting in the shared queue.",
        |s| s.queued() as f64,
    ),
    gauge(
        "tower_affinity_threads",
        "Worker threads running now, core workers and spares.",
        |s| s.threads() as f64,
    ),
    gauge("tower_affinity_spares", "Spare workers running now.", |s| {
        let spares = s.workers().iter().filter(|w| w.is_spare() && w.is_alive());
        spares.count() as f64
    }),
    gauge(
        "tower_affinity_max_workers",
        "The most worker threads the pool will run now.",
        |s| s.max_workers() as f64,
    ),
    counter(
        "tower_affinity_admitted_total",
        "Requests queued for a worker.",
        Stats::admitted,
    ),
    counter(
        "tower_affinity_rejected_total",
        "Requests answered 503 at once.",
        Stats::rejected,
    ),
    counter(
        "tower_affinity_timed_out_total",
        "Requests answered 503 after the queue timeout.",
        Stats::timed_out,
    ),
    counter(
        "tower_affinity_spares_started_total",
        "Spare workers started.",
        Stats::spares_started,
    ),
    counter(
        "tower_affinity_spares_retired_total",
        "Spare workers ended: retired after their keep-alive, or died or failed to start.",
        Stats::spares_retired,
    ),
    counter(
        "tower_affinity_stalls_total",
        "Supervisor looks that found work waiting and a worker stuck in a poll.",
        Stats::stalls,
    ),
    counter(
        "tower_affinity_spawn_failures_total",
        "Worker threads the operating system refused to start.",
        Stats::spawn_failures,
    ),
];

/// Per-worker figures, labelled `pool` and `worker`.
const WORKER: &[Figure<WorkerStats>] = &[
    gauge(
        "tower_affinity_worker_queued",
        "Keyed requests waiting in the worker's own queue.",
        |w| w.queued() as f64,
    ),
    gauge(
        "tower_affinity_active",
        "Requests the worker is serving.",
        |w| w.active() as f64,
    ),
    seconds(
        "tower_affinity_current_poll_seconds",
        "Time inside the current poll of user code.",
        |w| w.current_poll().map_or(0.0, |d| d.as_secs_f64()),
    ),
    gauge(
        "tower_affinity_blocked",
        "1 while the worker is blocked in user code, off the CPU.",
        |w| f64::from(u8::from(w.blocked())),
    ),
    counter(
        "tower_affinity_completed_total",
        "Requests the worker finished serving.",
        WorkerStats::completed,
    ),
    counter(
        "tower_affinity_panicked_total",
        "Panics caught in the inner service.",
        WorkerStats::panicked,
    ),
    counter(
        "tower_affinity_replaced_total",
        "Times the worker's thread was replaced.",
        WorkerStats::replaced,
    ),
];

const QUEUE_WAIT: &str = "tower_affinity_queue_wait_seconds";

/// Publishes `stats` of the pool named `pool` to the installed recorder.
pub(crate) fn publish(pool: &str, stats: &Stats) {
    let labels = [("pool", pool.to_owned())];
    for figure in POOL {
        emit(figure, stats, &labels);
    }
    for worker in stats.workers() {
        let labels = [
            ("pool", pool.to_owned()),
            ("worker", worker.index().to_string()),
        ];
        for figure in WORKER {
            emit(figure, worker, &labels);
        }
    }
    metrics::describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from enqueue to a worker taking the request."
    );
}

fn emit<T>(figure: &Figure<T>, from: &T, labels: &[(&'static str, String)]) {
    match figure.read {
        Read::Gauge(read) => {
            metrics::describe_gauge!(figure.name, figure.unit, figure.help);
            metrics::gauge!(figure.name, labels).set(read(from));
        }
        Read::Counter(read) => {
            metrics::describe_counter!(figure.name, figure.unit, figure.help);
            metrics::counter!(figure.name, labels).absolute(read(from));
        }
    }
}

thread_local! {
    // A worker thread serves one pool under one index for its whole life,
    // so its histogram handle is looked up once, not per request.
    static QUEUE_WAIT_HANDLE: OnceCell<Histogram> = const { OnceCell::new() };
}

/// Records how long a request waited, as worker `worker` of `pool` takes it.
pub(crate) fn queue_wait(pool: &str, worker: usize, enqueued: Option<Instant>) {
    let Some(enqueued) = enqueued else { return };
    let waited = enqueued.elapsed();
    QUEUE_WAIT_HANDLE.with(|handle| {
        handle
            .get_or_init(|| {
                let labels = [("pool", pool.to_owned()), ("worker", worker.to_string())];
                metrics::histogram!(QUEUE_WAIT, &labels)
            })
            .record(waited)
    });
}
