//! Blocking handlers: the default layer (spare workers while handlers
//! block) against `spawn_blocking` and fixed pools, in one process run.
//!
//! 64 concurrent callers on a 2-thread tokio runtime; cases:
//!
//! - `wait2ms`: the handler sleeps 2 ms (off the CPU, as a blocking database
//!   or HTTP client). Variants: `spawn_blocking`, the default layer
//!   (`ThreadAffinityLayer::builder().build()`), fixed `.workers(64)` and
//!   `.workers(128)` pools;
//! - `mix`: 1 call in 100 sleeps 50 ms, the rest are trivial; p99 is of the
//!   trivial calls. Variants: `spawn_blocking`, the default layer;
//! - `spin2ms`: the handler spins 2 ms on the CPU. Variants: a fixed
//!   2-thread pool (`.workers(2).max_workers(2)`), the default layer (which
//!   must start no spare), `spawn_blocking`.
//!
//! Each variant gets a fresh pool, runs `BLOCKING_WARMUP_SECS` (default
//! 0.5: spares start then) unmeasured and `BLOCKING_SECS` (default 2)
//! measured. Every round runs every variant; the summary is the median over
//! `BLOCKING_ROUNDS` (default 3) of each round's ratio to the case's
//! baseline, so both sides of a ratio share a moment of the machine's
//! noise. Short: `BLOCKING_SECS=0.5 BLOCKING_WARMUP_SECS=0.3
//! BLOCKING_ROUNDS=1`. `BLOCKING_ONLY=wait2ms,mix` runs some cases.
//!
//! Run with `cargo bench --bench blocking`.

use std::future::Future;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{env_or, loadavg, median, Watchdog};

const CALLERS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Wait2ms,
    Mix,
    Spin2ms,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Wait2ms => "wait2ms",
            Case::Mix => "mix",
            Case::Spin2ms => "spin2ms",
        }
    }

    /// The variants, the baseline first.
    fn variants(self) -> &'static [&'static str] {
        match self {
            Case::Wait2ms => &["spawn_blocking", "default", "workers64", "workers128"],
            Case::Mix => &["spawn_blocking", "default", "workers64"],
            Case::Spin2ms => &["fixed2", "default", "spawn_blocking"],
        }
    }

    /// Whether call `n` is one that blocks long (the p99 leaves them out).
    fn slow(self, n: u64) -> bool {
        self == Case::Mix && n % 100 == 0
    }

    fn handler(self) -> impl Fn(Request<u64>) -> Response<String> + Clone + Send + 'static {
        move |request: Request<u64>| {
            let n = *request.body();
            match self {
                Case::Wait2ms => thread::sleep(Duration::from_millis(2)),
                Case::Mix if self.slow(n) => thread::sleep(Duration::from_millis(50)),
                Case::Mix => {}
                Case::Spin2ms => {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_millis(2) {
                        std::hint::spin_loop();
                    }
                }
            }
            Response::new(format!("hello {n}"))
        }
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Run {
    calls_per_sec: f64,
    p99: Duration,
    threads: usize,
    spares: u64,
}

/// Runs `CALLERS` callers of `call` for `duration`; the p99 is of the calls
/// that `case` does not make slow on purpose.
async fn drive<F, Fut>(case: Case, call: Arc<F>, duration: Duration) -> (f64, Duration)
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
                let (mut calls, mut quick) = (0usize, Vec::new());
                let mut n = caller as u64;
                let mut t0 = Instant::now();
                while t0 < deadline {
                    std::hint::black_box(call(n).await);
                    let t1 = Instant::now();
                    if !case.slow(n) {
                        quick.push((t1 - t0).as_nanos() as u64);
                    }
                    calls += 1;
                    t0 = t1;
                    n += CALLERS as u64;
                }
                (calls, quick)
            })
        })
        .collect();
    let (mut calls, mut quick) = (0, Vec::new());
    for caller in callers {
        let (n, latencies) = caller.await.expect("caller task");
        calls += n;
        quick.extend(latencies);
    }
    let elapsed = start.elapsed();
    quick.sort_unstable();
    let p99 = quick[((quick.len() - 1) as f64 * 0.99).round() as usize];
    (
        calls as f64 / elapsed.as_secs_f64(),
        Duration::from_nanos(p99),
    )
}

fn process_threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Threads:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

async fn run(case: Case, variant: &str, warmup: Duration, duration: Duration) -> Run {
    let handler = case.handler();
    if variant == "spawn_blocking" {
        let call = Arc::new(move |n: u64| {
            let handler = handler.clone();
            async move {
                let response = tokio::task::spawn_blocking(move || handler(Request::new(n)))
                    .await
                    .expect("spawn_blocking");
                response.into_body().into()
            }
        });
        drive(case, call.clone(), warmup).await;
        let (calls_per_sec, p99) = drive(case, call, duration).await;
        return Run {
            calls_per_sec,
            p99,
            threads: process_threads(),
            spares: 0,
        };
    }
    let layer = match variant {
        "default" => ThreadAffinityLayer::builder().build(),
        "fixed2" => ThreadAffinityLayer::builder()
            .workers(2)
            .max_workers(2)
            .build(),
        "workers64" => ThreadAffinityLayer::builder().workers(64).build(),
        "workers128" => ThreadAffinityLayer::builder().workers(128).build(),
        other => unreachable!("unknown variant {other}"),
    };
    let svc = layer.layer(blocking::service_fn(handler));
    let call = Arc::new(move |n: u64| {
        let mut svc = svc.clone();
        async move {
            let svc = svc.ready().await.expect("ready");
            let response = svc.call(Request::new(n)).await.expect("call");
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        }
    });
    drive(case, call.clone(), warmup).await;
    let (calls_per_sec, p99) = drive(case, call, duration).await;
    let stats = layer.stats();
    let run = Run {
        calls_per_sec,
        p99,
        threads: stats.threads(),
        spares: stats.spares_started(),
    };
    layer.shutdown().await;
    run
}

fn main() {
    let rounds: usize = env_or("BLOCKING_ROUNDS", 3).max(1);
    let duration = Duration::from_secs_f64(env_or("BLOCKING_SECS", 2.0));
    let warmup = Duration::from_secs_f64(env_or("BLOCKING_WARMUP_SECS", 0.5));
    let only: Option<Vec<String>> = std::env::var("BLOCKING_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let cases: Vec<Case> = [Case::Wait2ms, Case::Mix, Case::Spin2ms]
        .into_iter()
        .filter(|c| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == c.name()))
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "blocking: {CALLERS} callers, 2-thread tokio runtime, {rounds} round(s) of {:.1}s \
         (+{:.1}s warmup) per variant",
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
        "{:<6} {:<8} {:<15} {:>10} {:>10} {:>8} {:>7} {:>8} {:>8}",
        "round", "case", "variant", "calls/s", "p99 ms", "threads", "spares", "×calls", "×p99"
    );
    // ratios[case][variant] = per-round (calls ratio, p99 ratio) to the baseline.
    let mut ratios: Vec<Vec<Vec<(f64, f64)>>> = cases
        .iter()
        .map(|c| vec![Vec::new(); c.variants().len()])
        .collect();
    for round in 1..=rounds {
        for (c, &case) in cases.iter().enumerate() {
            let mut baseline: Option<Run> = None;
            for (v, variant) in case.variants().iter().enumerate() {
                let watchdog = Watchdog::arm(
                    format!("round {round} {} {variant}", case.name()),
                    warmup + duration + Duration::from_secs(60),
                );
                let r = runtime.block_on(run(case, variant, warmup, duration));
                drop(watchdog);
                let base = *baseline.get_or_insert(r);
                let ratio = (
                    r.calls_per_sec / base.calls_per_sec,
                    r.p99.as_secs_f64() / base.p99.as_secs_f64(),
                );
                ratios[c][v].push(ratio);
                println!(
                    "{:<6} {:<8} {:<15} {:>10.0} {:>10.2} {:>8} {:>7} {:>8.2} {:>8.2}",
                    round,
                    case.name(),
                    variant,
                    r.calls_per_sec,
                    r.p99.as_secs_f64() * 1e3,
                    r.threads,
                    r.spares,
                    ratio.0,
                    ratio.1
                );
            }
        }
    }
    println!("load average at end: {}", loadavg());
    println!();
    println!("median over rounds of each round's ratio to the case's first variant:");
    println!(
        "{:<8} {:<15} {:>10} {:>10}",
        "case", "variant", "×calls/s", "×p99"
    );
    for (c, case) in cases.iter().enumerate() {
        for (v, variant) in case.variants().iter().enumerate() {
            let calls = median(ratios[c][v].iter().map(|r| r.0).collect());
            let p99 = median(ratios[c][v].iter().map(|r| r.1).collect());
            println!(
                "{:<8} {:<15} {:>10.2} {:>10.2}",
                case.name(),
                variant,
                calls,
                p99
            );
        }
    }
    println!("(×calls/s: higher is better; ×p99: lower is better; mix p99 is of trivial calls)");
}
