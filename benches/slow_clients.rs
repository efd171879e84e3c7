//! Slow clients: many streamed responses to readers that take one chunk
//! every few milliseconds, while fast requests keep arriving, measured in
//! one process run.
//!
//! Per variant: `SLOW_STREAMS` (default 256) streamed responses of
//! `SLOW_CHUNKS` (default 200) chunks of `SLOW_CHUNK_KIB` (default 16) KiB,
//! each chunk a fresh allocation (as a file read would be), each read one
//! chunk every `SLOW_READ_MS` (default 5) ms with `tokio::time::interval`.
//! Meanwhile one fast request (`format!("hello {n}")`) every `FAST_EVERY_MS`
//! (default 2) ms for `FAST_SECS` (default 2) s, each on its own task, its
//! latency taken from its issue to its collected body. A fast request not
//! answered `STARVE_SECS` (default 5) s after the fast window closes counts
//! as starved (its latency is then a lower bound, shown with `>=`), and the
//! variant is cancelled (every reader dropped).
//!
//! A sampler thread reads the thread count (`/proc/self/task`) and resident
//! memory (`VmRSS` in `/proc/self/status`) every 10 ms.
//!
//! Variants, all with 2 workers/threads where the pool is fixed:
//!
//! - `tower_affinity/N`: `max_streams_per_worker(N)`, N = `MAX_STREAMS`
//!   (default 256, the layer's default), so one worker could admit every
//!   stream;
//! - `tower_affinity/64`: `max_streams_per_worker(64)`: 128 streams in
//!   flight, the rest (and the fast requests behind them) queued: what a
//!   threshold below the number of slow clients costs;
//! - `naive_pool`: 2 std threads sharing a `std::sync::mpsc` queue, each
//!   running a request to completion (a stream is produced whole with
//!   `blocking_send` into a bounded tokio channel before the next request);
//! - `spawn_blocking`: each request in `spawn_blocking`; a stream produces
//!   into a bounded tokio channel with `blocking_send`, holding its thread.
//!
//! The bounded channels hold 8 chunks, as the layer's default `body_buffer`.
//! `spawn_blocking` runs last: its idle threads linger for 10 s.
//!
//! `SLOW_ROUNDS` (default 1) repeats the whole set; each ratio is taken
//! within a round and its median over rounds reported.
//!
//! Run with `cargo bench --bench slow_clients`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinity, ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{env_or, loadavg, Spread};

const WORKERS: usize = 2;
const BUFFER: usize = 8;

#[derive(Clone, Copy)]
struct Config {
    streams: usize,
    chunks: usize,
    chunk_size: usize,
    read_every: Duration,
    fast_every: Duration,
    fast_for: Duration,
    starve_after: Duration,
    max_streams: usize,
}

impl Config {
    fn from_env() -> Self {
        Self {
            streams: env_or("SLOW_STREAMS", 256),
            chunks: env_or("SLOW_CHUNKS", 200),
            chunk_size: env_or::<usize>("SLOW_CHUNK_KIB", 16) * 1024,
            read_every: Duration::from_millis(env_or("SLOW_READ_MS", 5)),
            fast_every: Duration::from_millis(env_or("FAST_EVERY_MS", 2)),
            fast_for: Duration::from_secs_f64(env_or("FAST_SECS", 2.0)),
            starve_after: Duration::from_secs_f64(env_or("STARVE_SECS", 5.0)),
            max_streams: env_or("MAX_STREAMS", 256),
        }
    }
}

/// One chunk of a slow stream: a fresh allocation.
fn make_chunk(i: usize, size: usize) -> Bytes {
    Bytes::from(vec![i as u8; size])
}

fn hello(n: u64) -> Bytes {
    Bytes::from(format!("hello {n}"))
}

/// What a request asks for.
enum Ask {
    Slow { chunks: usize, chunk_size: usize },
    Fast(u64),
}

type Chunks = Box<dyn Iterator<Item = Result<Bytes, Infallible>>>;

type Handler = fn(Request<Ask>) -> Response<blocking::IterBody<Chunks>>;

/// The blocking handler behind the layer.
fn handler(request: Request<Ask>) -> Response<blocking::IterBody<Chunks>> {
    let chunks: Chunks = match *request.body() {
        Ask::Slow { chunks, chunk_size } => {
            Box::new((0..chunks).map(move |i| Ok(make_chunk(i, chunk_size))))
        }
        Ask::Fast(n) => Box::new(std::iter::once(Ok(hello(n)))),
    };
    Response::new(blocking::IterBody::new(chunks))
}

/// A naive fixed pool: threads share one queue and run each job to completion.
struct NaivePool {
    queue: Option<std_mpsc::Sender<NaiveJob>>,
    threads: Vec<JoinHandle<()>>,
}

enum NaiveJob {
    Slow(mpsc::Sender<Bytes>),
    Fast(u64, oneshot::Sender<Bytes>),
}

impl NaivePool {
    fn new(threads: usize, config: Config) -> Self {
        let (tx, rx) = std_mpsc::channel::<NaiveJob>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads)
            .map(|i| {
                let rx = rx.clone();
                thread::Builder::new()
                    .name(format!("naive-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().expect("queue lock").recv();
                        match job {
                            Err(_) => return,
                            Ok(NaiveJob::Fast(n, reply)) => {
                                let _ = reply.send(hello(n));
                            }
                            Ok(NaiveJob::Slow(tx)) => {
                                for i in 0..config.chunks {
                                    if tx.blocking_send(make_chunk(i, config.chunk_size)).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    })
                    .expect("spawn")
            })
            .collect();
        Self {
            queue: Some(tx),
            threads,
        }
    }

    fn submit(&self, job: NaiveJob) {
        self.queue
            .as_ref()
            .expect("open")
            .send(job)
            .expect("naive pool alive");
    }
}

impl Drop for NaivePool {
    fn drop(&mut self) {
        self.queue.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

type OurService = ThreadAffinity<blocking::ServiceFn<Handler>>;

enum Backend {
    Ours(OurService, Config),
    Naive(NaivePool),
    SpawnBlocking(Config),
}

/// The reading end of one slow stream.
enum Reader {
    Body(ThreadAffinityBody),
    Channel(mpsc::Receiver<Bytes>),
}

impl Reader {
    /// The next chunk's length, or `None` at the end.
    async fn next(&mut self) -> Option<usize> {
        match self {
            Reader::Body(body) => loop {
                let frame = body.frame().await?.expect("body frame");
                if let Some(data) = frame.data_ref() {
                    return Some(data.len());
                }
            },
            Reader::Channel(rx) => rx.recv().await.map(|data| data.len()),
        }
    }
}

impl Backend {
    async fn call_ours(svc: &OurService, ask: Ask) -> Response<ThreadAffinityBody> {
        let mut svc = svc.clone();
        let svc = svc.ready().await.expect("ready");
        svc.call(Request::new(ask)).await.expect("call")
    }

    async fn slow(&self) -> Reader {
        match self {
            Backend::Ours(svc, config) => {
                let ask = Ask::Slow {
                    chunks: config.chunks,
                    chunk_size: config.chunk_size,
                };
                Reader::Body(Self::call_ours(svc, ask).await.into_body())
            }
            Backend::Naive(pool) => {
                let (tx, rx) = mpsc::channel(BUFFER);
                pool.submit(NaiveJob::Slow(tx));
                Reader::Channel(rx)
            }
            Backend::SpawnBlocking(config) => {
                let (tx, rx) = mpsc::channel(BUFFER);
                let config = *config;
                tokio::task::spawn_blocking(move || {
                    for i in 0..config.chunks {
                        if tx.blocking_send(make_chunk(i, config.chunk_size)).is_err() {
                            break;
                        }
                    }
                });
                Reader::Channel(rx)
            }
        }
    }

    async fn fast(&self, n: u64) -> Bytes {
        match self {
            Backend::Ours(svc, _) => Self::call_ours(svc, Ask::Fast(n))
                .await
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes(),
            Backend::Naive(pool) => {
                let (tx, rx) = oneshot::channel();
                pool.submit(NaiveJob::Fast(n, tx));
                rx.await.expect("naive reply")
            }
            Backend::SpawnBlocking(_) => tokio::task::spawn_blocking(move || hello(n))
                .await
                .expect("spawn_blocking"),
        }
    }
}

/// Peak thread count and resident memory, sampled on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, u64)>,
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |dir| dir.count())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("sampler".into())
                .spawn(move || {
                    let (mut threads, mut rss) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        threads = threads.max(thread_count());
                        rss = rss.max(rss_kib());
                        thread::sleep(Duration::from_millis(10));
                    }
                    (threads, rss)
                })
                .expect("spawn sampler")
        };
        Self { stop, thread }
    }

    fn finish(self) -> (usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

struct Outcome {
    fast: Vec<(Duration, bool)>,
    fast_during_streams: Vec<(Duration, bool)>,
    // When the slowest fast request was issued, from the start of the run.
    slowest_at: Duration,
    starved: usize,
    streams_done: usize,
    streams_time: Duration,
    threads_before: usize,
    threads_peak: usize,
    rss_before: u64,
    rss_peak: u64,
}

/// Nearest-rank percentile; the flag says the value is only a lower bound.
fn percentile(sorted: &[(Duration, bool)], p: f64) -> (Duration, bool) {
    if sorted.is_empty() {
        return (Duration::ZERO, false);
    }
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn show((latency, lower_bound): (Duration, bool)) -> String {
    let ms = latency.as_secs_f64() * 1e3;
    if lower_bound {
        format!(">={ms:.0}")
    } else {
        format!("{ms:.3}")
    }
}

async fn run(backend: Arc<Backend>, config: Config) -> Outcome {
    let threads_before = thread_count();
    let rss_before = rss_kib();
    let sampler = Sampler::start();
    let active = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();

    let streams: Vec<_> = (0..config.streams)
        .map(|_| {
            let backend = backend.clone();
            let active = active.clone();
            active.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut reader = backend.slow().await;
                let mut every = tokio::time::interval(config.read_every);
                every.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut bytes = 0;
                loop {
                    every.tick().await;
                    match reader.next().await {
                        Some(len) => bytes += len,
                        None => break,
                    }
                }
                active.fetch_sub(1, Ordering::SeqCst);
                bytes
            })
        })
        .collect();

    let mut fast = Vec::new();
    let mut every = tokio::time::interval(config.fast_every);
    let fast_end = start + config.fast_for;
    for n in 0.. {
        every.tick().await;
        // From now, not from the tick's deadline: the timer's lag (up to a
        // millisecond) is not the request's.
        let issued = Instant::now();
        if issued >= fast_end {
            break;
        }
        let during = active.load(Ordering::SeqCst) > 0;
        let backend = backend.clone();
        let task = tokio::spawn(async move {
            let body = backend.fast(n).await;
            assert_eq!(body, format!("hello {n}"));
            issued.elapsed()
        });
        fast.push((issued, during, task));
    }

    // Fast requests not answered by the cutoff are starved: cancel them.
    let cutoff = tokio::time::Instant::from_std(fast_end + config.starve_after);
    let mut latencies = Vec::new();
    let mut during_streams = Vec::new();
    let mut starved = 0;
    let (mut slowest, mut slowest_at) = (Duration::ZERO, Duration::ZERO);
    for (issued, during, mut task) in fast {
        let latency = match tokio::time::timeout_at(cutoff, &mut task).await {
            Ok(latency) => (latency.expect("fast request"), false),
            Err(_) => {
                task.abort();
                starved += 1;
                (cutoff.into_std().duration_since(issued), true)
            }
        };
        if latency.0 > slowest {
            (slowest, slowest_at) = (latency.0, issued - start);
        }
        latencies.push(latency);
        if during {
            during_streams.push(latency);
        }
    }

    // Streams get until the same cutoff (or 2 s past the fast window if
    // the streams are that slow), then their readers are dropped.
    let cutoff = cutoff.max(tokio::time::Instant::from_std(
        fast_end + Duration::from_secs(2),
    ));
    let mut streams_done = 0;
    for mut stream in streams {
        match tokio::time::timeout_at(cutoff, &mut stream).await {
            Ok(bytes) => {
                assert_eq!(bytes.expect("stream"), config.chunks * config.chunk_size);
                streams_done += 1;
            }
            Err(_) => stream.abort(),
        }
    }
    let streams_time = start.elapsed();
    let (threads_peak, rss_peak) = sampler.finish();

    latencies.sort_unstable();
    during_streams.sort_unstable();
    Outcome {
        fast: latencies,
        fast_during_streams: during_streams,
        slowest_at,
        starved,
        streams_done,
        streams_time,
        threads_before,
        threads_peak,
        rss_before,
        rss_peak,
    }
}

fn ours(config: Config, max_streams: usize) -> Backend {
    let layer = ThreadAffinityLayer::builder()
        .workers(WORKERS)
        .max_streams_per_worker(max_streams)
        .body_buffer(BUFFER)
        .build();
    Backend::Ours(
        layer.layer(blocking::service_fn(handler as Handler)),
        config,
    )
}

fn main() {
    let config = Config::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "slow_clients: {} streams x {} chunks x {} KiB, one chunk read every {:?}; \
         a fast request every {:?} for {:?}; starved after {:?} past the window",
        config.streams,
        config.chunks,
        config.chunk_size / 1024,
        config.read_every,
        config.fast_every,
        config.fast_for,
        config.starve_after
    );
    println!(
        "{WORKERS} workers/threads per fixed pool, channel/body buffer {BUFFER} chunks, \
         2-thread tokio runtime; machine: {} cpus, shared with other jobs (expect noise); \
         load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();

    let all: Vec<(String, Box<dyn Fn() -> Backend>)> = vec![
        (
            format!("tower_affinity/{}", config.max_streams),
            Box::new(move || ours(config, config.max_streams)),
        ),
        (
            "tower_affinity/64".into(),
            Box::new(move || ours(config, 64)),
        ),
        (
            "naive_pool".into(),
            Box::new(move || Backend::Naive(NaivePool::new(WORKERS, config))),
        ),
        (
            "spawn_blocking".into(),
            Box::new(move || Backend::SpawnBlocking(config)),
        ),
    ];
    // SLOW_ONLY=name,name runs a subset (one variant alone gives a clean
    // RSS figure: freed memory is reused by the next variant in a process).
    let only: Option<Vec<String>> = std::env::var("SLOW_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let variants: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| only.as_ref().is_none_or(|only| only.contains(name)))
        .collect();
    assert!(!variants.is_empty(), "SLOW_ONLY names no variant");

    println!(
        "{:<20} {:>5} {:>7} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>8} {:>7} {:>7} {:>12}",
        "variant",
        "fast",
        "starved",
        "p50 ms",
        "p99 ms",
        "max ms",
        "max at",
        "p99 str",
        "threads",
        "(before)",
        "RSS MiB",
        "(grew)",
        "streams"
    );
    let rounds: usize = env_or("SLOW_ROUNDS", 1).max(1);
    let mut results = Vec::new();
    for round in 0..rounds {
        for (name, make) in &variants {
            let backend = Arc::new(make());
            let outcome = runtime.block_on(run(backend.clone(), config));
            // Stop the pool (the naive pool joins its threads) before the next.
            drop(backend);
            thread::sleep(Duration::from_millis(300));
            println!(
            "{:<20} {:>5} {:>7} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>8} {:>7.1} {:>7.1} {:>12}",
            name,
            outcome.fast.len(),
            outcome.starved,
            show(percentile(&outcome.fast, 50.0)),
            show(percentile(&outcome.fast, 99.0)),
            show(percentile(&outcome.fast, 100.0)),
            format!("{:.2}s", outcome.slowest_at.as_secs_f64()),
            show(percentile(&outcome.fast_during_streams, 99.0)),
            outcome.threads_peak,
            outcome.threads_before,
            outcome.rss_peak as f64 / 1024.0,
            outcome.rss_peak.saturating_sub(outcome.rss_before) as f64 / 1024.0,
            format!(
                "{}/{} {:.1}s",
                outcome.streams_done,
                config.streams,
                outcome.streams_time.as_secs_f64()
            ),
        );
            results.push((round, name.clone(), outcome));
        }
    }

    println!("load average at end: {}", loadavg());
    println!();
    println!("max at: when the slowest fast request was issued, from the start of the variant");
    println!("p99 str: p99 of the fast requests issued while at least one slow stream was open");
    println!(
        "threads: peak count in /proc/self/task (main, 2 runtime threads and the sampler \
         are 4 of them), and the count before the variant started"
    );
    println!(
        "RSS: peak VmRSS, and its growth over the variant (memory freed by an earlier \
         variant is reused: run one alone with SLOW_ONLY=name for a clean figure)"
    );
    println!("streams: slow streams read to their end before the cutoff, and the run's length");
    println!("starved: fast requests unanswered at the cutoff (latency then a lower bound, >=)");

    let ours_name = format!("tower_affinity/{}", config.max_streams);
    if !results.iter().any(|(_, name, _)| *name == ours_name) {
        return;
    }
    println!();
    println!(
        "{ours_name} / variant, per round, median over {rounds} round(s) (worst, best); \
         below 1: {ours_name} lower:"
    );
    let p99 = |o: &Outcome| percentile(&o.fast, 99.0).0.as_secs_f64();
    let find = |round: usize, name: &str| {
        results
            .iter()
            .find(|(r, n, _)| *r == round && n == name)
            .map(|(_, _, outcome)| outcome)
    };
    for (name, _) in &variants {
        let per_round = |f: &dyn Fn(&Outcome) -> f64| {
            let ratios: Vec<f64> = (0..rounds)
                .filter_map(|r| Some(f(find(r, &ours_name)?) / f(find(r, name)?)))
                .collect();
            Spread::of(&ratios)
        };
        println!(
            "{:<20} fast p99 × {}   peak threads × {}",
            name,
            per_round(&p99),
            per_round(&|o| o.threads_peak as f64),
        );
    }
}
