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
//! Each caller keeps one clone of the service for its life and calls
//! `ready().await` then `call()` in a loop, `BLOCKING_CALLS` times
//! (default 2,000; a tenth of it for `spin2ms`). Each variant gets a fresh pool and is timed from its
//! first call: no warm-up is left out, since a pool that is slow to grow,
//! or that grows only once warm, is what a user sees. (An earlier version
//! timed 2 s after 0.5 s of unmeasured warm-up, with a fresh clone per
//! call, and reported 1.0x where this shape showed 0.5x.) Every round runs
//! every variant; the summary is the median over `BLOCKING_ROUNDS`
//! (default 3) of each round's ratio to the case's baseline, so both sides
//! of a ratio share a moment of the machine's noise. Short:
//! `BLOCKING_CALLS=200 BLOCKING_ROUNDS=1`. `BLOCKING_ONLY=wait2ms,mix` runs
//! some cases, `BLOCKING_VARIANTS=default` some variants (beside the
//! baseline). Beside the figures: the process's CPU time per call and its
//! threads' context switches per call.
//!
//! Run with `cargo bench --bench blocking`.

use std::future::Future;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{
    env_or, loadavg, median, process_cpu_nanos, switches_by_thread, switches_since, Watchdog,
};

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

    /// Calls per caller for `calls` asked: a tenth for `spin2ms`, whose
    /// calls share two CPUs (at 2,000 per caller, 128 s a variant).
    fn calls(self, calls: usize) -> usize {
        match self {
            Case::Spin2ms => (calls / 10).max(1),
            _ => calls,
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
    /// CPU time of the whole process per call, in µs.
    cpu_us: f64,
    /// Context switches of the process's threads per call.
    switches: f64,
}

impl Run {
    fn of(driven: Driven, threads: usize, spares: u64) -> Self {
        Self {
            calls_per_sec: driven.calls_per_sec,
            p99: driven.p99,
            threads,
            spares,
            cpu_us: driven.cpu_us,
            switches: driven.switches,
        }
    }
}

/// What `drive` measured.
struct Driven {
    calls_per_sec: f64,
    p99: Duration,
    cpu_us: f64,
    switches: f64,
}

/// One caller's side of a variant: what it keeps across its calls.
trait Caller: Send + 'static {
    fn call(&mut self, n: u64) -> impl Future<Output = Bytes> + Send + '_;
}

/// A caller through the layer: one clone of the service for its life, as
/// a connection task keeps one, and `ready` then `call` for each request.
struct Layered<S>(S);

impl<S> Caller for Layered<S>
where
    S: Service<Request<u64>, Response = Response<ThreadAffinityBody>> + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    async fn call(&mut self, n: u64) -> Bytes {
        let svc = self.0.ready().await.expect("ready");
        let response = svc.call(Request::new(n)).await.expect("call");
        let body = response.into_body().collect().await.expect("body");
        body.to_bytes()
    }
}

/// A caller that hands each request to `spawn_blocking`.
struct SpawnBlocking<H>(H);

impl<H> Caller for SpawnBlocking<H>
where
    H: Fn(Request<u64>) -> Response<String> + Clone + Send + Sync + 'static,
{
    fn call(&mut self, n: u64) -> impl Future<Output = Bytes> + Send + '_ {
        let handler = self.0.clone();
        async move {
            let response = tokio::task::spawn_blocking(move || handler(Request::new(n)))
                .await
                .expect("spawn_blocking");
            Bytes::from(response.into_body())
        }
    }
}

/// Runs `CALLERS` callers, each making `calls` calls in a row with the
/// caller `make` builds for it. Calls/s over the whole run, from the first
/// call: no warm-up is left out, so a pool slow to grow shows it.
async fn drive<C: Caller>(case: Case, make: impl Fn() -> C, calls: usize) -> Driven {
    let (cpu, switches) = (process_cpu_nanos(), switches_by_thread());
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut call = make();
            tokio::spawn(async move {
                let mut quick = Vec::with_capacity(calls);
                let mut n = caller as u64;
                for _ in 0..calls {
                    let t0 = Instant::now();
                    std::hint::black_box(call.call(n).await);
                    if !case.slow(n) {
                        quick.push(t0.elapsed().as_nanos() as u64);
                    }
                    n += CALLERS as u64;
                }
                quick
            })
        })
        .collect();
    let mut quick = Vec::new();
    for caller in callers {
        quick.extend(caller.await.expect("caller task"));
    }
    let elapsed = start.elapsed();
    quick.sort_unstable();
    let p99 = quick[((quick.len() - 1) as f64 * 0.99).round() as usize];
    let total = (calls * CALLERS) as f64;
    // Switches over the threads alive now: the pools' threads outlive the
    // run (the layer's until its shutdown, `spawn_blocking`'s for 10 s).
    Driven {
        calls_per_sec: total / elapsed.as_secs_f64(),
        p99: Duration::from_nanos(p99),
        cpu_us: process_cpu_nanos().saturating_sub(cpu) as f64 / 1e3 / total,
        switches: switches_since(&switches) as f64 / total,
    }
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

async fn run(case: Case, variant: &str, calls: usize) -> Run {
    let handler = case.handler();
    if variant == "spawn_blocking" {
        let driven = drive(case, || SpawnBlocking(handler.clone()), calls).await;
        return Run::of(driven, process_threads(), 0);
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
    let driven = drive(case, || Layered(svc.clone()), calls).await;
    let stats = layer.stats();
    let run = Run::of(driven, stats.threads(), stats.spares_started());
    layer.shutdown().await;
    run
}

fn main() {
    let rounds: usize = env_or("BLOCKING_ROUNDS", 3).max(1);
    let calls: usize = env_or("BLOCKING_CALLS", 2000).max(1);
    let only: Option<Vec<String>> = std::env::var("BLOCKING_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let variants: Option<Vec<String>> = std::env::var("BLOCKING_VARIANTS")
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
        "blocking: {CALLERS} callers, 2-thread tokio runtime, {rounds} round(s) of {calls} \
         calls per caller per variant, no warm-up"
    );
    println!(
        "machine: {} cpus, shared with other jobs (expect noise); load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();
    println!(
        "{:<6} {:<8} {:<15} {:>10} {:>10} {:>8} {:>7} {:>7} {:>6} {:>8} {:>8}",
        "round",
        "case",
        "variant",
        "calls/s",
        "p99 ms",
        "threads",
        "spares",
        "cpu µs",
        "cs",
        "×calls",
        "×p99"
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
                // The baseline always runs: the ratios need it.
                if v > 0
                    && variants
                        .as_ref()
                        .is_some_and(|o| !o.iter().any(|n| n == variant))
                {
                    continue;
                }
                let watchdog = Watchdog::arm(
                    format!("round {round} {} {variant}", case.name()),
                    Duration::from_secs(120),
                );
                let r = runtime.block_on(run(case, variant, case.calls(calls)));
                drop(watchdog);
                let base = *baseline.get_or_insert(r);
                let ratio = (
                    r.calls_per_sec / base.calls_per_sec,
                    r.p99.as_secs_f64() / base.p99.as_secs_f64(),
                );
                ratios[c][v].push(ratio);
                println!(
                    "{:<6} {:<8} {:<15} {:>10.0} {:>10.2} {:>8} {:>7} {:>7.1} {:>6.2} {:>8.2} {:>8.2}",
                    round,
                    case.name(),
                    variant,
                    r.calls_per_sec,
                    r.p99.as_secs_f64() * 1e3,
                    r.threads,
                    r.spares,
                    r.cpu_us,
                    r.switches,
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
            if ratios[c][v].is_empty() {
                continue; // left out by `BLOCKING_VARIANTS`
            }
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
