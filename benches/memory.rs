//! Memory: resident memory per idle worker, per queued request and per
//! stalled stream, each against a baseline measured in the same run.
//!
//! Each measurement runs in a fresh child process (this bench binary run
//! again with `MEMORY_CHILD=<measurement>`): memory that one measurement
//! frees would otherwise be reused by the next and hide its cost. A child
//! warms up what it measures (one-time costs go into its baseline), reads
//! `VmRSS` from `/proc/self/status`, creates `count` items, lets them
//! settle, reads it again, and prints the growth. The exact page count
//! (`Rss` in `/proc/self/smaps_rollup`, which walks the page tables; `VmRSS`
//! is kept in per-cpu counters and may lag by a few pages) is printed
//! beside it. Each measurement runs `MEMORY_ROUNDS` times (default 3); the
//! median per item is reported, with the range.
//!
//! - `idle_worker`: a layer with `MEMORY_WORKERS` (default 64) workers,
//!   every one of them started and idle: `workers` requests whose handler
//!   waits on a `std::sync::Barrier` of `workers`, so each has run on its
//!   own thread, then have all finished. Per worker.
//! - `idle_worker_q1`: the same with `queue_capacity(1)`: each worker has a
//!   queue of its own (for keyed requests), allocated at build with room
//!   for `queue_capacity` jobs; the difference is that queue's cost.
//! - `idle_thread` (baseline): as many bare `std::thread`s, each having
//!   allocated once and blocked in a channel `recv`.
//! - `queued`: 2 workers held busy by a handler blocked on a condition
//!   variable, `MEMORY_QUEUED` (default 10,000) requests queued behind them
//!   (`queue_capacity` above that), their response futures held. Per
//!   request. The queues' slots are allocated at build (see `idle_worker_q1`)
//!   and are in the baseline.
//! - `queued_naive` (baseline): 2 threads fed round-robin through
//!   `std::sync::mpsc`, answering through a tokio oneshot (as in the
//!   dispatch bench), both blocked, the same number of jobs queued.
//! - `stalled`: `MEMORY_STREAMS` (default 1,000) streamed responses of
//!   `MEMORY_CHUNK_KIB` (default 64) KiB chunks, each a fresh allocation
//!   filled with data (as a file read would be), from a `blocking::IterBody`
//!   with `body_buffer(MEMORY_BODY_BUFFER)` (default 8), whose readers stop
//!   after the head: they hold the response and never poll its body. The
//!   growth per stream is checked against the bound `body_buffer` × chunk
//!   plus 4 KiB, and the chunks produced are counted (exactly
//!   `body_buffer` per stream, and no more after a pause).
//! - `stalled_spawn_blocking` (baseline): each stream produced in
//!   `spawn_blocking` into a bounded tokio channel of `body_buffer` with
//!   `blocking_send` (its thread blocked in it), the receivers held and
//!   never read.
//!
//! Item containers (the `Vec`s of held futures, responses and receivers)
//! are allocated and touched before the baseline, so they do not count.
//! `MEMORY_ONLY=name,name` runs a subset. A child that runs more than
//! `MEMORY_TIMEOUT_SECS` (default 120) is killed and the bench fails.
//!
//! Run with `cargo bench --bench memory`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{env_or, loadavg, median};

/// The knobs, read the same way by the parent and every child.
#[derive(Clone, Copy)]
struct Config {
    workers: usize,
    queued: usize,
    streams: usize,
    chunk: usize,
    body_buffer: usize,
}

impl Config {
    fn from_env() -> Self {
        Self {
            workers: env_or("MEMORY_WORKERS", 64usize).max(1),
            queued: env_or("MEMORY_QUEUED", 10_000usize).max(1),
            streams: env_or("MEMORY_STREAMS", 1_000usize).max(1),
            chunk: env_or("MEMORY_CHUNK_KIB", 64usize).max(1) * 1024,
            body_buffer: env_or("MEMORY_BODY_BUFFER", 8usize).max(1),
        }
    }

    /// The bound a stalled stream must stay within, in bytes.
    fn stalled_bound(&self) -> f64 {
        (self.body_buffer * self.chunk + 4096) as f64
    }
}

// ---------------------------------------------------------------------------
// Reading memory
// ---------------------------------------------------------------------------

fn kib_field(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory as the kernel's counters have it, KiB.
fn vm_rss() -> u64 {
    kib_field("/proc/self/status", "VmRSS:")
}

/// Resident memory counted page by page, KiB.
fn exact_rss() -> u64 {
    kib_field("/proc/self/smaps_rollup", "Rss:")
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |dir| dir.count())
}

#[derive(Clone, Copy)]
struct Rss {
    vm: u64,
    exact: u64,
}

/// Lets freshly started threads and frees settle, then reads both figures.
fn settle_and_read() -> Rss {
    thread::sleep(Duration::from_millis(200));
    Rss {
        vm: vm_rss(),
        exact: exact_rss(),
    }
}

/// What a child reports: `count` items took `after - before`.
struct Measured {
    count: usize,
    before: Rss,
    after: Rss,
    threads: usize,
    note: String,
}

impl Measured {
    /// One line; the note is last and runs to its end.
    fn print(&self) {
        println!(
            "RESULT count={} vm_before={} vm_after={} exact_before={} exact_after={} threads={} note={}",
            self.count,
            self.before.vm,
            self.after.vm,
            self.before.exact,
            self.after.exact,
            self.threads,
            self.note,
        );
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `done` every millisecond until it holds; fails after 30 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: not after 30 s"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A gate that blocking handlers wait at until it opens.
#[derive(Default)]
struct Gate {
    entered: AtomicUsize,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.opened.wait(open).expect("gate");
        }
    }

    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
}

async fn body_string<B>(response: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

// ---------------------------------------------------------------------------
// Idle workers
// ---------------------------------------------------------------------------

/// A layer of `workers` threads, each of which has served one request.
fn idle_worker(config: Config, queue_capacity: Option<usize>) -> Measured {
    let rt = runtime();
    let build = |workers: usize, barrier: Arc<Barrier>| {
        let mut builder = ThreadAffinityLayer::builder().workers(workers);
        if let Some(capacity) = queue_capacity {
            builder = builder.queue_capacity(capacity);
        }
        let layer = builder.build();
        let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
            barrier.wait();
            Response::new(thread::current().name().unwrap_or_default().to_owned())
        }));
        (layer, svc)
    };
    // Every worker serves one request at the same time: each of them has
    // started, built its runtime and its service instance.
    let serve_all = |svc: &tower_affinity::ThreadAffinity<_>, workers: usize| {
        let names: HashSet<String> = rt.block_on(async {
            let calls: Vec<_> = (0..workers)
                .map(|_| {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        body_string(svc.oneshot(Request::new(())).await.expect("call")).await
                    })
                })
                .collect();
            let mut names = HashSet::new();
            for call in calls {
                names.insert(call.await.expect("caller"));
            }
            names
        });
        assert_eq!(names.len(), workers, "each request ran on its own worker");
    };

    // One-time costs (lazy statics, the first pool) go into the baseline.
    let (_warm_layer, warm) = build(1, Arc::new(Barrier::new(1)));
    serve_all(&warm, 1);
    let before = settle_and_read();

    let (layer, svc) = build(config.workers, Arc::new(Barrier::new(config.workers)));
    serve_all(&svc, config.workers);
    let after = settle_and_read();
    let active: usize = layer.stats().workers().iter().map(|w| w.active()).sum();
    assert_eq!(active, 0, "the workers are idle");
    Measured {
        count: config.workers,
        before,
        after,
        threads: thread_count(),
        note: format!(
            "queue_capacity {}",
            queue_capacity.map_or("default".into(), |c| c.to_string())
        ),
    }
}

/// Bare threads, each having allocated once, blocked in a channel `recv`.
fn idle_thread(config: Config) -> Measured {
    let spawn = |n: usize| {
        let started = Arc::new(Barrier::new(n + 1));
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let started = started.clone();
                let (tx, rx) = mpsc::channel::<()>();
                let handle = thread::spawn(move || {
                    std::hint::black_box(format!("thread {i}"));
                    started.wait();
                    let _ = rx.recv();
                });
                (tx, handle)
            })
            .collect();
        started.wait();
        threads
    };
    let warm = spawn(1);
    let before = settle_and_read();
    let threads = spawn(config.workers);
    let after = settle_and_read();
    let measured = Measured {
        count: config.workers,
        before,
        after,
        threads: thread_count(),
        note: String::new(),
    };
    for (tx, handle) in threads.into_iter().chain(warm) {
        drop(tx);
        handle.join().expect("thread");
    }
    measured
}

// ---------------------------------------------------------------------------
// Queued requests
// ---------------------------------------------------------------------------

/// The request that blocks its worker at the gate.
const BLOCK: u64 = u64::MAX;

fn hello(n: u64) -> String {
    format!("hello {n}")
}

/// Requests queued behind 2 workers that are blocked in their handlers.
fn queued(config: Config) -> Measured {
    const WORKERS: usize = 2;
    let rt = runtime();
    let gate = Arc::new(Gate::default());
    // No spares: they would serve the queue while the workers are blocked,
    // and this measures what a queued request costs.
    let layer = ThreadAffinityLayer::builder()
        .workers(WORKERS)
        .max_workers(WORKERS)
        .queue_capacity(config.queued + 2 * WORKERS)
        .build();
    let mut svc = layer.layer(blocking::service_fn({
        let gate = gate.clone();
        move |request: Request<u64>| {
            let n = *request.body();
            if n == BLOCK {
                gate.wait();
            }
            Response::new(hello(n))
        }
    }));
    // Warm up: both workers serve, the paths are taken once.
    rt.block_on(async {
        for n in 0..64 {
            let response = svc.ready().await.expect("ready").call(Request::new(n));
            assert_eq!(body_string(response.await.expect("call")).await, hello(n));
        }
    });
    // Hold both workers.
    let blocked: Vec<_> = (0..WORKERS)
        .map(|_| rt.spawn(svc.clone().oneshot(Request::new(BLOCK))))
        .collect();
    wait_until("both workers blocked", || {
        gate.entered.load(Ordering::SeqCst) == WORKERS
    });
    let mut held = Vec::with_capacity(config.queued);
    held.resize_with(config.queued, || None);
    let before = settle_and_read();

    rt.block_on(async {
        for (n, slot) in held.iter_mut().enumerate() {
            let svc = svc.ready().await.expect("ready");
            *slot = Some(svc.call(Request::new(n as u64)));
        }
    });
    assert_eq!(layer.stats().queued(), config.queued, "all queued");
    let after = settle_and_read();
    let threads = thread_count();

    gate.open();
    rt.block_on(async {
        for (n, future) in held.into_iter().enumerate() {
            let response = future.expect("held").await.expect("call");
            assert_eq!(body_string(response).await, hello(n as u64));
        }
        for call in blocked {
            let response = call.await.expect("blocked caller").expect("call");
            assert_eq!(body_string(response).await, hello(BLOCK));
        }
    });
    Measured {
        count: config.queued,
        before,
        after,
        threads,
        note: format!("queue_capacity {}", config.queued + 2 * WORKERS),
    }
}

type NaiveJob = (Request<u64>, oneshot::Sender<Response<String>>);

/// Jobs queued for a naive pool of 2 threads, both blocked.
fn queued_naive(config: Config) -> Measured {
    const THREADS: usize = 2;
    let rt = runtime();
    let gate = Arc::new(Gate::default());
    let (senders, threads): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<NaiveJob>();
            let gate = gate.clone();
            let handle = thread::spawn(move || {
                for (request, reply) in rx {
                    let n = *request.body();
                    if n == BLOCK {
                        gate.wait();
                    }
                    let _ = reply.send(Response::new(hello(n)));
                }
            });
            (tx, handle)
        })
        .unzip();
    let call = |i: usize, n: u64| {
        let (tx, rx) = oneshot::channel();
        senders[i % THREADS]
            .send((Request::new(n), tx))
            .expect("naive thread");
        rx
    };
    rt.block_on(async {
        for n in 0..64 {
            let response = call(n as usize, n).await.expect("reply");
            assert_eq!(body_string(response).await, hello(n));
        }
    });
    let blocked: Vec<_> = (0..THREADS).map(|i| call(i, BLOCK)).collect();
    wait_until("both threads blocked", || {
        gate.entered.load(Ordering::SeqCst) == THREADS
    });
    let mut held = Vec::with_capacity(config.queued);
    held.resize_with(config.queued, || None);
    let before = settle_and_read();

    for (n, slot) in held.iter_mut().enumerate() {
        *slot = Some(call(n, n as u64));
    }
    let after = settle_and_read();
    let thread_total = thread_count();

    gate.open();
    rt.block_on(async {
        for (n, rx) in held.into_iter().enumerate() {
            let response = rx.expect("held").await.expect("reply");
            assert_eq!(body_string(response).await, hello(n as u64));
        }
        for rx in blocked {
            rx.await.expect("blocked reply");
        }
    });
    drop(senders);
    for thread in threads {
        thread.join().expect("naive thread");
    }
    Measured {
        count: config.queued,
        before,
        after,
        threads: thread_total,
        note: String::new(),
    }
}

// ---------------------------------------------------------------------------
// Stalled streams
// ---------------------------------------------------------------------------

/// One chunk of a stream: a fresh allocation, every page written.
fn make_chunk(i: usize, size: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8 + 1; size])
}

/// Streams whose readers took the head and stopped.
fn stalled(config: Config) -> Measured {
    const WORKERS: usize = 2;
    let rt = runtime();
    let produced = Arc::new(AtomicUsize::new(0));
    let layer = ThreadAffinityLayer::builder()
        .workers(WORKERS)
        .body_buffer(config.body_buffer)
        .max_streams_per_worker(config.streams)
        .queue_capacity(config.streams)
        .build();
    let chunk = config.chunk;
    let mut svc = layer.layer(blocking::service_fn({
        let produced = produced.clone();
        move |request: Request<usize>| {
            let produced = produced.clone();
            let chunks = (0..*request.body()).map(move |i| {
                produced.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(make_chunk(i, chunk))
            });
            Response::new(blocking::IterBody::new(chunks))
        }
    }));
    // Warm up: a few short streams read to their end, on both workers.
    rt.block_on(async {
        for _ in 0..4 {
            let response = svc.ready().await.expect("ready").call(Request::new(2));
            let body = response.await.expect("call").into_body().collect().await;
            assert_eq!(body.expect("body").to_bytes().len(), 2 * chunk);
        }
    });
    let mut held = Vec::with_capacity(config.streams);
    held.resize_with(config.streams, || None);
    let warm = produced.load(Ordering::SeqCst);
    let before = settle_and_read();

    // More chunks than the buffer holds: each stream has more to give.
    let chunks = 4 * config.body_buffer;
    rt.block_on(async {
        for slot in held.iter_mut() {
            let response = svc.ready().await.expect("ready").call(Request::new(chunks));
            *slot = Some(response.await.expect("call"));
        }
    });
    let full = config.streams * config.body_buffer;
    wait_until("every stream's buffer full", || {
        produced.load(Ordering::SeqCst) - warm >= full
    });
    let after = settle_and_read();
    let made = produced.load(Ordering::SeqCst) - warm;
    assert_eq!(made, full, "exactly body_buffer chunks per stalled stream");
    let active: usize = layer.stats().workers().iter().map(|w| w.active()).sum();
    assert_eq!(active, config.streams, "every stream still open");
    let threads = thread_count();

    // The readers leave: every stream is cancelled, on its worker.
    drop(held);
    wait_until("every stream cancelled", || {
        layer.stats().workers().iter().all(|w| w.active() == 0)
    });
    Measured {
        count: config.streams,
        before,
        after,
        threads,
        note: format!(
            "{} chunks per stream after the pause",
            made / config.streams
        ),
    }
}

/// Streams produced in `spawn_blocking` into bounded channels nobody reads.
fn stalled_spawn_blocking(config: Config) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.streams + 16)
        .enable_all()
        .build()
        .expect("runtime");
    let produced = Arc::new(AtomicUsize::new(0));
    let stream = |chunks: usize| {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(config.body_buffer);
        let produced = produced.clone();
        let chunk = config.chunk;
        rt.spawn_blocking(move || {
            for i in 0..chunks {
                produced.fetch_add(1, Ordering::SeqCst);
                if tx.blocking_send(make_chunk(i, chunk)).is_err() {
                    break;
                }
            }
        });
        rx
    };
    rt.block_on(async {
        for _ in 0..4 {
            let mut rx = stream(2);
            let mut len = 0;
            while let Some(chunk) = rx.recv().await {
                len += chunk.len();
            }
            assert_eq!(len, 2 * config.chunk);
        }
    });
    let mut held = Vec::with_capacity(config.streams);
    held.resize_with(config.streams, || None);
    let warm = produced.load(Ordering::SeqCst);
    let before = settle_and_read();

    let chunks = 4 * config.body_buffer;
    for slot in held.iter_mut() {
        *slot = Some(stream(chunks));
    }
    // Each thread fills the channel, then makes one more chunk and blocks
    // sending it.
    let full = config.streams * (config.body_buffer + 1);
    wait_until("every channel full", || {
        produced.load(Ordering::SeqCst) - warm >= full
    });
    let after = settle_and_read();
    let made = produced.load(Ordering::SeqCst) - warm;
    let threads = thread_count();
    drop(held);
    Measured {
        count: config.streams,
        before,
        after,
        threads,
        note: format!(
            "{} chunks per stream, one thread each",
            made / config.streams
        ),
    }
}

// ---------------------------------------------------------------------------
// The parent: runs the children, prints the figures
// ---------------------------------------------------------------------------

const MEASUREMENTS: [(&str, &str); 7] = [
    ("idle_worker", "per idle worker"),
    ("idle_worker_q1", "per idle worker, queue_capacity(1)"),
    ("idle_thread", "per bare std thread (baseline)"),
    ("queued", "per queued request"),
    ("queued_naive", "per queued job, naive pool (baseline)"),
    ("stalled", "per stalled stream"),
    (
        "stalled_spawn_blocking",
        "per stalled stream, spawn_blocking",
    ),
];

fn child(name: &str, config: Config) {
    let measured = match name {
        "idle_worker" => idle_worker(config, None),
        "idle_worker_q1" => idle_worker(config, Some(1)),
        "idle_thread" => idle_thread(config),
        "queued" => queued(config),
        "queued_naive" => queued_naive(config),
        "stalled" => stalled(config),
        "stalled_spawn_blocking" => stalled_spawn_blocking(config),
        other => panic!("unknown measurement {other}"),
    };
    measured.print();
}

/// One child's figures.
struct Outcome {
    count: usize,
    vm_per_item: f64,
    exact_per_item: f64,
    threads: usize,
    note: String,
}

/// Runs one measurement in a fresh process; exits the bench if it fails
/// or runs past the time limit.
fn run_child(name: &str, limit: Duration) -> Outcome {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env("MEMORY_CHILD", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the measurement");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("{name}: no result after {limit:?}, giving up (hung?)");
            std::process::exit(2);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read the child's output");
    if !status.success() {
        eprintln!("{name}: measurement failed ({status})\n{out}");
        std::process::exit(1);
    }
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{name}: no RESULT line in {out:?}"));
    let field = |key: &str| -> &str {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{name}: no {key} in {line:?}"))
    };
    let num = |key: &str| -> f64 { field(key).parse().expect("a number") };
    let count = num("count");
    let per_item = |before: &str, after: &str| (num(after) - num(before)) * 1024.0 / count;
    Outcome {
        count: count as usize,
        vm_per_item: per_item("vm_before", "vm_after"),
        exact_per_item: per_item("exact_before", "exact_after"),
        threads: num("threads") as usize,
        note: line
            .split_once(" note=")
            .map_or_else(String::new, |(_, note)| note.to_owned()),
    }
}

/// Bytes, in the unit that reads best.
fn bytes(b: f64) -> String {
    if b.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// The median figures of one measurement over its rounds.
struct Summary {
    vm: f64,
    vm_min: f64,
    vm_max: f64,
    exact: f64,
}

fn main() {
    let config = Config::from_env();
    if let Ok(name) = std::env::var("MEMORY_CHILD") {
        return child(&name, config);
    }
    let rounds: usize = env_or("MEMORY_ROUNDS", 3usize).max(1);
    let limit = Duration::from_secs(env_or("MEMORY_TIMEOUT_SECS", 120));
    let only: Option<Vec<String>> = std::env::var("MEMORY_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let measurements: Vec<_> = MEASUREMENTS
        .into_iter()
        .filter(|(name, _)| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| o == name))
        })
        .collect();
    assert!(!measurements.is_empty(), "MEMORY_ONLY names no measurement");

    println!(
        "memory: {} idle workers; {} queued requests behind 2 blocked workers; {} stalled \
         streams of {} KiB chunks, body_buffer {}; each measurement in a fresh child process, \
         {rounds} round(s), median per item",
        config.workers,
        config.queued,
        config.streams,
        config.chunk / 1024,
        config.body_buffer
    );
    println!(
        "machine: {} cpus, shared with other jobs; load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();
    println!(
        "{:<6} {:<24} {:>7} {:>14} {:>14} {:>8}  note",
        "round", "measurement", "count", "VmRSS/item", "exact/item", "threads"
    );
    let mut outcomes: Vec<Vec<Outcome>> = measurements.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, (name, _)) in measurements.iter().enumerate() {
            let outcome = run_child(name, limit);
            println!(
                "{:<6} {:<24} {:>7} {:>14} {:>14} {:>8}  {}",
                round,
                name,
                outcome.count,
                bytes(outcome.vm_per_item),
                bytes(outcome.exact_per_item),
                outcome.threads,
                outcome.note
            );
            outcomes[i].push(outcome);
        }
    }
    println!("load average at end: {}", loadavg());

    let summaries: Vec<Summary> = outcomes
        .iter()
        .map(|rounds| {
            let vm: Vec<f64> = rounds.iter().map(|o| o.vm_per_item).collect();
            Summary {
                vm_min: vm.iter().copied().fold(f64::INFINITY, f64::min),
                vm_max: vm.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                vm: median(vm),
                exact: median(rounds.iter().map(|o| o.exact_per_item).collect()),
            }
        })
        .collect();
    let find = |name: &str| {
        measurements
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| &summaries[i])
    };

    println!();
    println!("median over rounds (VmRSS growth / count; range over rounds; exact: smaps_rollup):");
    println!("{:<38} {:>12} {:>25} {:>12}", "", "VmRSS", "range", "exact");
    for ((_, what), s) in measurements.iter().zip(&summaries) {
        println!(
            "{:<38} {:>12} {:>25} {:>12}",
            what,
            bytes(s.vm),
            format!("{} .. {}", bytes(s.vm_min), bytes(s.vm_max)),
            bytes(s.exact)
        );
    }

    println!();
    if let (Some(ours), Some(base)) = (find("idle_worker"), find("idle_thread")) {
        println!(
            "idle worker: {} per worker, {:.2}× a bare std thread ({})",
            bytes(ours.vm),
            ours.vm / base.vm,
            bytes(base.vm)
        );
    }
    if let (Some(ours), Some(q1)) = (find("idle_worker"), find("idle_worker_q1")) {
        // Each worker's own queue has queue_capacity slots, and the shared
        // queue's are spread over the workers.
        let slots = 1024.0 * (config.workers + 1) as f64 / config.workers as f64;
        println!(
            "  of which its queue's room for 1,024 jobs (queue_capacity default): {} per \
             worker, about {:.0} B per slot",
            bytes(ours.vm - q1.vm),
            (ours.vm - q1.vm) / slots
        );
    }
    if let (Some(ours), Some(base)) = (find("queued"), find("queued_naive")) {
        println!(
            "queued request: {} per request, {:.2}× the naive pool's queued job ({})",
            bytes(ours.vm),
            ours.vm / base.vm,
            bytes(base.vm)
        );
    }
    if let Some(ours) = find("stalled") {
        let bound = config.stalled_bound();
        println!(
            "stalled stream: {} per stream; bound body_buffer × chunk + 4 KiB = {} × {} KiB + 4 KiB \
             = {}; ratio to bound {:.3} (exact {:.3}): {}",
            bytes(ours.vm),
            config.body_buffer,
            config.chunk / 1024,
            bytes(bound),
            ours.vm / bound,
            ours.exact / bound,
            if ours.vm <= bound && ours.exact <= bound {
                "within the bound"
            } else {
                "OVER THE BOUND"
            }
        );
        if let Some(base) = find("stalled_spawn_blocking") {
            println!(
                "  spawn_blocking + channel: {} per stream and a thread each; \
                 tower_affinity / spawn_blocking {:.3}",
                bytes(base.vm),
                ours.vm / base.vm
            );
        }
    }
}
