//! Dispatch: a trivial blocking handler behind the whole `Service`, against
//! the ways users run blocking handlers today, measured in one process run.
//!
//! 64 concurrent callers on a 2-thread tokio runtime; every variant runs the
//! same handler (`format!("hello {n}")` into a `Response<String>`) and the
//! caller collects the body with `BodyExt::collect`:
//!
//! - `inline`: the handler called on the runtime thread (the ceiling);
//! - `spawn_blocking`: `tokio::task::spawn_blocking` per request;
//! - `local_pool`: `tokio_util::task::LocalPoolHandle::new(2).spawn_pinned`;
//! - `naive_pool`: 2 std threads fed round-robin through `std::sync::mpsc`,
//!   answering through a tokio oneshot;
//! - `tower_affinity`: `ThreadAffinityLayer` with 2 workers: `ready`, `call`,
//!   await the head, collect the body;
//! - `tower_affinity_fixed`: the same with `max_workers(2)`: no spare
//!   workers and no supervisor thread, to show what they cost here.
//!
//! Each variant runs `DISPATCH_WARMUP_SECS` (default 0.5) unmeasured, then
//! `DISPATCH_SECS` (default 2) measured; the whole set runs
//! `DISPATCH_ROUNDS` times (default 3), interleaved. Each ratio
//! (tower_affinity / variant) is taken per round, against the baseline of
//! that round, and reported as the median over rounds with the worst and
//! best beside it. `DISPATCH_ONLY=name,name` runs a subset.
//!
//! `inline` never reaches a pending await, so each runtime thread runs one
//! caller at a time: it measures the handler and `collect`, nothing else.
//!
//! Run with `cargo bench --bench dispatch`.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio_util::task::LocalPoolHandle;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{env_or, loadavg, median, report_spares, NaivePool, Spread, Watchdog};

const CALLERS: usize = 64;
const THREADS: usize = 2;

/// The handler every variant runs.
fn handler(request: Request<u64>) -> Response<String> {
    Response::new(format!("hello {}", request.body()))
}

/// Collects a response body into one `Bytes`.
async fn collect<B>(response: Response<B>) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// The result of one measured run.
#[derive(Clone, Copy)]
struct Stats {
    calls_per_sec: f64,
    p50: Duration,
    p99: Duration,
    calls: usize,
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    Duration::from_nanos(sorted[i])
}

/// Runs `CALLERS` callers of `call` for `duration` and measures every call.
async fn drive<F, Fut>(call: Arc<F>, duration: Duration) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Bytes> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut n = caller as u64;
                let mut t0 = Instant::now();
                while t0 < deadline {
                    black_box(call(n).await);
                    let t1 = Instant::now();
                    latencies.push((t1 - t0).as_nanos() as u64);
                    t0 = t1;
                    n += CALLERS as u64;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await.expect("caller task"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Stats {
        calls_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        calls: all.len(),
    }
}

/// Checks the variant's answer once, warms it up, then measures it.
async fn measure<F, Fut>(call: F, warmup: Duration, duration: Duration) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Bytes> + Send + 'static,
{
    let call = Arc::new(call);
    assert_eq!(call(42).await, "hello 42");
    drive(call.clone(), warmup).await;
    drive(call, duration).await
}

const VARIANTS: [&str; 6] = [
    "inline",
    "spawn_blocking",
    "local_pool",
    "naive_pool",
    "tower_affinity",
    "tower_affinity_fixed",
];

async fn run_variant(name: &str, warmup: Duration, duration: Duration) -> Stats {
    match name {
        "inline" => {
            measure(
                |n| async move { collect(handler(Request::new(n))).await },
                warmup,
                duration,
            )
            .await
        }
        "spawn_blocking" => {
            measure(
                |n| async move {
                    let response = tokio::task::spawn_blocking(move || handler(Request::new(n)))
                        .await
                        .expect("spawn_blocking");
                    collect(response).await
                },
                warmup,
                duration,
            )
            .await
        }
        "local_pool" => {
            let pool = LocalPoolHandle::new(THREADS);
            measure(
                move |n| {
                    let response =
                        pool.spawn_pinned(move || async move { handler(Request::new(n)) });
                    async move { collect(response.await.expect("spawn_pinned")).await }
                },
                warmup,
                duration,
            )
            .await
        }
        "naive_pool" => {
            let pool = NaivePool::new(THREADS, "naive", handler);
            measure(
                move |n| {
                    let response = pool.call(Request::new(n));
                    async move { collect(response.await.expect("naive reply")).await }
                },
                warmup,
                duration,
            )
            .await
        }
        "tower_affinity" | "tower_affinity_fixed" => {
            let mut builder = ThreadAffinityLayer::builder().workers(THREADS);
            if name == "tower_affinity_fixed" {
                builder = builder.max_workers(THREADS);
            }
            let layer = builder.build();
            let svc = layer.layer(blocking::service_fn(handler));
            let stats = measure(
                move |n| {
                    let mut svc = svc.clone();
                    async move {
                        let svc = svc.ready().await.expect("ready");
                        let response = svc.call(Request::new(n)).await.expect("call");
                        collect(response).await
                    }
                },
                warmup,
                duration,
            )
            .await;
            report_spares(name, &layer);
            stats
        }
        other => unreachable!("unknown variant {other}"),
    }
}

fn main() {
    let rounds: usize = env_or("DISPATCH_ROUNDS", 3).max(1);
    let duration = Duration::from_secs_f64(env_or("DISPATCH_SECS", 2.0));
    let warmup = Duration::from_secs_f64(env_or("DISPATCH_WARMUP_SECS", 0.5));
    // DISPATCH_ONLY=name,name runs a subset (for profiling).
    let only: Option<Vec<String>> = std::env::var("DISPATCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let variants: Vec<&str> = VARIANTS
        .into_iter()
        .filter(|name| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| o == name))
        })
        .collect();
    assert!(!variants.is_empty(), "DISPATCH_ONLY names no variant");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "dispatch: {CALLERS} callers, {THREADS}-thread tokio runtime, {THREADS} workers/threads per pool, \
         {rounds} round(s) of {:.1}s (+{:.1}s warmup) per variant",
        duration.as_secs_f64(),
        warmup.as_secs_f64()
    );
    println!(
        "machine: {} cpus, shared with other jobs (expect noise); load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();
    println!(
        "{:<6} {:<16} {:>12} {:>10} {:>10} {:>10}",
        "round", "variant", "calls/s", "p50 µs", "p99 µs", "calls"
    );

    let mut results: Vec<Vec<Stats>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (i, name) in variants.iter().enumerate() {
            let watchdog = Watchdog::arm(
                format!("round {round} {name}"),
                warmup + duration + Duration::from_secs(60),
            );
            let stats = runtime.block_on(run_variant(name, warmup, duration));
            drop(watchdog);
            println!(
                "{:<6} {:<16} {:>12.0} {:>10.1} {:>10.1} {:>10}",
                round,
                name,
                stats.calls_per_sec,
                stats.p50.as_secs_f64() * 1e6,
                stats.p99.as_secs_f64() * 1e6,
                stats.calls
            );
            results[i].push(stats);
        }
    }
    println!("load average at end: {}", loadavg());

    let Some(ours) = variants.iter().position(|name| *name == "tower_affinity") else {
        return;
    };
    // Ratios per round, against the baselines of that same round; then the
    // median over rounds (noise slows a whole round, both sides alike).
    let ratio = |i: usize, f: fn(&Stats) -> f64| -> Spread {
        let per_round: Vec<f64> = (0..rounds)
            .map(|r| f(&results[ours][r]) / f(&results[i][r]))
            .collect();
        Spread::of(&per_round)
    };
    let calls = |s: &Stats| s.calls_per_sec;
    let p99 = |s: &Stats| s.p99.as_secs_f64();
    println!();
    println!(
        "median over {rounds} rounds; tower_affinity / variant per round, median (worst, best):"
    );
    println!(
        "{:<16} {:>10} {:>10}   {:<34} p99, ours / variant",
        "variant", "calls/s", "p99 µs", "calls/s, ours / variant"
    );
    for (i, name) in variants.iter().enumerate() {
        let rates = median(results[i].iter().map(calls).collect());
        let p99s = median(results[i].iter().map(p99).collect());
        println!(
            "{:<16} {:>10.0} {:>10.1}   {:<34} {}",
            name,
            rates,
            p99s * 1e6,
            ratio(i, calls).to_string(),
            ratio(i, p99),
        );
    }
    println!("(calls/s ×: higher is better for tower_affinity; p99 ×: lower is better)");
}
