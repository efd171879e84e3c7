//! HTTP end to end: axum over hyper on 127.0.0.1, driven by a load client
//! in the same process, the same trivial handler run inline, in
//! `spawn_blocking` and behind the layer, measured in one process run.
//!
//! The server is `axum::serve` on a `TcpListener` bound to `127.0.0.1:0`
//! (`TCP_NODELAY` on), on a 2-thread multi-thread tokio runtime of its own
//! (threads named `srv`). The handler is `format!("hello {query}")` for a
//! `GET /?{n}`, returned as `text/plain`:
//!
//! - `inline`: an async axum handler (`get(|uri: Uri| async { .. })`), run
//!   on the runtime thread (the ceiling);
//! - `spawn_blocking`: the same, with the `format!` in
//!   `tokio::task::spawn_blocking`, awaited in the handler;
//! - `naive_pool`: the same, with the `format!` sent round-robin to 2 std
//!   threads through `std::sync::mpsc` and answered through a tokio
//!   oneshot: the simplest hop to a dedicated thread and back, what any
//!   design that runs the handler on another thread pays at least;
//! - `tower_affinity`: `ThreadAffinityLayer` with 2 workers around
//!   `blocking::service_fn`, mounted with `Router::route_service`;
//! - `tower_affinity_router`: the `inline` router with `.layer(layer)`
//!   (2 workers), so its async handler runs on a worker: what an app that
//!   wraps a whole router gets.
//!
//! The load client is hyper's own `client::conn::http1`, one keep-alive
//! connection per task, `HTTP_CONNS` (default 64) tasks each sending one
//! request after another (`GET /?{n}`, the body collected and, for each
//! connection's first request, checked). It runs on a second 2-thread
//! runtime (threads named `cli`), so the client has its own threads but
//! shares the machine's cores with the server: requests/s is what the
//! server gets done with what the client leaves it. The client's CPU per
//! request is about the same for every variant (the `cli` column); the
//! server's (`srv`) is the cost of each variant itself. Latency is taken
//! from sending a request to having its whole body.
//!
//! Per variant, a fresh server: `HTTP_WARMUP_SECS` (default 0.5) of load
//! unmeasured on its own connections, then `HTTP_SECS` (default 2) measured
//! on fresh connections, opened before the clock starts. The set runs
//! `HTTP_ROUNDS` times (default 3), interleaved; each variant reports the
//! median of its rounds, and each ratio (tower_affinity / variant) is taken
//! per round against that round's baseline, then its median over rounds
//! reported. `HTTP_ONLY=name,name` runs a subset.
//!
//! CPU per request is read from `/proc/self/task/*/stat` (user + system
//! time, in 10 ms ticks) over the measured window: `srv` counts the server
//! runtime's threads (its `spawn_blocking` threads included) and the
//! layer's workers (named `affinity-*`); `cli` the client's. The server
//! threads' context switches (`/proc/self/task/*/status`) are counted per
//! request too: each hop between threads that finds the other side asleep
//! costs a wake-up.
//!
//! Run with `cargo bench --bench http`.

use std::future::IntoFuture;
use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Barrier};
use tokio::task::JoinHandle;
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{env_or, loadavg, median, report_spares, NaivePool, Spread, Watchdog};

const WORKERS: usize = 2;
const SERVER_THREADS: usize = 2;
const CLIENT_THREADS: usize = 2;
/// The layer's thread name prefix, to count its threads' CPU time.
const WORKER_PREFIX: &str = "affinity";

/// The handler every variant runs.
fn hello(uri: &Uri) -> String {
    format!("hello {}", uri.query().unwrap_or_default())
}

/// The handler as a blocking service: the same body and content type as
/// axum gives a `String`.
fn blocking_hello(request: Request<axum::body::Body>) -> Response<String> {
    let mut response = Response::new(hello(request.uri()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

const VARIANTS: [&str; 5] = [
    "inline",
    "spawn_blocking",
    "naive_pool",
    "tower_affinity",
    "tower_affinity_router",
];

fn layer() -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(WORKERS)
        .thread_name(WORKER_PREFIX)
        .build()
}

/// The variant's router, and its layer (to shut down) if it has one.
fn app(name: &str) -> (Router, Option<ThreadAffinityLayer>) {
    match name {
        "inline" => (
            Router::new().route("/", get(|uri: Uri| async move { hello(&uri) })),
            None,
        ),
        "spawn_blocking" => (
            Router::new().route(
                "/",
                get(|uri: Uri| async move {
                    tokio::task::spawn_blocking(move || hello(&uri))
                        .await
                        .expect("spawn_blocking")
                }),
            ),
            None,
        ),
        "naive_pool" => {
            // Named like the layer's workers, so that their CPU counts as
            // the server's.
            let pool = Arc::new(NaivePool::new(WORKERS, WORKER_PREFIX, |uri: Uri| {
                hello(&uri)
            }));
            let router = Router::new().route(
                "/",
                get(move |uri: Uri| {
                    let answer = pool.call(uri);
                    async move { answer.await.expect("naive reply") }
                }),
            );
            (router, None)
        }
        "tower_affinity" => {
            let layer = layer();
            let svc = layer.layer(blocking::service_fn(blocking_hello));
            (Router::new().route_service("/", svc), Some(layer))
        }
        "tower_affinity_router" => {
            let layer = layer();
            let router = Router::new()
                .route("/", get(|uri: Uri| async move { hello(&uri) }))
                .layer(layer.clone());
            (router, Some(layer))
        }
        other => unreachable!("unknown variant {other}"),
    }
}

/// `axum::serve` on an ephemeral loopback port, shut down gracefully.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = axum::serve(listener, router).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serve.into_future());
        Self { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within 10 s")
            .expect("server task")
            .expect("serve");
    }
}

/// What this process's threads have used so far, split into the server's
/// (runtime and workers) and the client's.
#[derive(Clone, Copy, Default)]
struct Usage {
    /// User + system time, in clock ticks.
    server_ticks: u64,
    client_ticks: u64,
    /// Voluntary and involuntary context switches of the server's threads.
    server_switches: u64,
}

fn usage() -> Usage {
    let mut usage = Usage::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return usage;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `tid (comm) state ...`: the name may hold spaces, so split at the
        // last parenthesis; utime and stime are the 12th and 13th fields
        // after it.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let time: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
        if name.starts_with("srv") || name.starts_with(WORKER_PREFIX) {
            usage.server_ticks += time;
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            usage.server_switches += status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if name.starts_with("cli") {
            usage.client_ticks += time;
        }
    }
    usage
}

/// Linux reports thread times in USER_HZ ticks, 100 a second.
const TICK_US: f64 = 1e6 / 100.0;

/// The result of one measured run.
#[derive(Clone, Copy)]
struct Stats {
    requests_per_sec: f64,
    p50: Duration,
    p99: Duration,
    requests: usize,
    /// Server CPU time per request, µs.
    server_cpu: f64,
    /// Client CPU time per request, µs.
    client_cpu: f64,
    /// Context switches of the server's threads per request.
    server_switches: f64,
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    Duration::from_nanos(sorted[i])
}

/// One keep-alive connection sending requests one after another until
/// `duration` after everyone is connected; the latency of each.
async fn connection(
    addr: SocketAddr,
    first: u64,
    step: u64,
    duration: Duration,
    start: Arc<Barrier>,
) -> Vec<u64> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    start.wait().await;

    let deadline = Instant::now() + duration;
    let mut latencies = Vec::with_capacity(1 << 14);
    let mut n = first;
    let mut t0 = Instant::now();
    while t0 < deadline {
        sender.ready().await.expect("connection ready");
        let request = Request::get(format!("/?{n}"))
            .header(HOST, "127.0.0.1")
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        if latencies.is_empty() {
            assert_eq!(body, format!("hello {n}"));
        }
        black_box(body);
        let t1 = Instant::now();
        latencies.push((t1 - t0).as_nanos() as u64);
        t0 = t1;
        n += step;
    }
    // Dropping the sender closes the connection once it is idle.
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    latencies
}

/// Runs `conns` connections against `addr` for `duration` (from the moment
/// they are all open) and measures every request.
async fn drive(addr: SocketAddr, conns: usize, duration: Duration) -> Stats {
    let start = Arc::new(Barrier::new(conns + 1));
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(connection(
                addr,
                c as u64,
                conns as u64,
                duration,
                start.clone(),
            ))
        })
        .collect();
    start.wait().await;
    let usage0 = usage();
    let t0 = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let elapsed = t0.elapsed();
    let usage1 = usage();
    all.sort_unstable();
    let per_request =
        |before: u64, after: u64| after.saturating_sub(before) as f64 / all.len().max(1) as f64;
    Stats {
        requests_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        requests: all.len(),
        server_cpu: per_request(usage0.server_ticks, usage1.server_ticks) * TICK_US,
        client_cpu: per_request(usage0.client_ticks, usage1.client_ticks) * TICK_US,
        server_switches: per_request(usage0.server_switches, usage1.server_switches),
    }
}

/// Starts a server for `name`, warms it up, measures it, stops it.
fn run_variant(
    name: &str,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> Stats {
    let (router, layer) = app(name);
    let server = server_rt.block_on(Server::start(router));
    let addr = server.addr;
    client_rt.block_on(drive(addr, conns, warmup));
    let stats = client_rt.block_on(drive(addr, conns, duration));
    server_rt.block_on(async {
        server.stop().await;
        if let Some(layer) = layer {
            report_spares(name, &layer);
            tokio::time::timeout(Duration::from_secs(10), layer.shutdown())
                .await
                .expect("the layer's workers stop within 10 s");
        }
    });
    stats
}

/// Each figure's median over the rounds, taken separately.
fn median_stats(rounds: &[Stats]) -> Stats {
    let of = |f: fn(&Stats) -> f64| median(rounds.iter().map(f).collect());
    Stats {
        requests_per_sec: of(|s| s.requests_per_sec),
        p50: Duration::from_secs_f64(of(|s| s.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(of(|s| s.p99.as_secs_f64())),
        requests: of(|s| s.requests as f64) as usize,
        server_cpu: of(|s| s.server_cpu),
        client_cpu: of(|s| s.client_cpu),
        server_switches: of(|s| s.server_switches),
    }
}

fn header() {
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "variant",
        "req/s",
        "p50 µs",
        "p99 µs",
        "srv µs/r",
        "cli µs/r",
        "srv cs/r",
        "req/s ×",
        "p99 ×",
        "srv ×"
    );
}

/// Per round, ours / variant of `f`, against the same round's baseline;
/// summed up over rounds.
fn ratio(results: &[Vec<Stats>], ours: usize, i: usize, f: fn(&Stats) -> f64) -> Spread {
    let rounds = results[ours].len().min(results[i].len());
    let per_round: Vec<f64> = (0..rounds)
        .map(|r| f(&results[ours][r]) / f(&results[i][r]))
        .collect();
    Spread::of(&per_round)
}

/// The summary table: each variant's figures (medians over rounds), and
/// ours / it as the median of per-round ratios.
fn summary(variants: &[&str], results: &[Vec<Stats>], ours: usize) {
    println!();
    println!(
        "median over rounds (each figure separately); ratios tower_affinity / variant \
         taken per round, median over rounds:"
    );
    header();
    for (i, name) in variants.iter().enumerate() {
        let s = median_stats(&results[i]);
        println!(
            "{:<22} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name,
            s.requests_per_sec,
            s.p50.as_secs_f64() * 1e6,
            s.p99.as_secs_f64() * 1e6,
            s.server_cpu,
            s.client_cpu,
            s.server_switches,
            ratio(results, ours, i, |s| s.requests_per_sec).median,
            ratio(results, ours, i, |s| s.p99.as_secs_f64()).median,
            ratio(results, ours, i, |s| s.server_cpu).median,
        );
    }
}

fn main() {
    let rounds: usize = env_or("HTTP_ROUNDS", 3).max(1);
    let duration = Duration::from_secs_f64(env_or("HTTP_SECS", 2.0));
    let warmup = Duration::from_secs_f64(env_or("HTTP_WARMUP_SECS", 0.5));
    let conns: usize = env_or("HTTP_CONNS", 64).max(1);
    // HTTP_ONLY=name,name runs a subset (for profiling).
    let only: Option<Vec<String>> = std::env::var("HTTP_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let variants: Vec<&str> = VARIANTS
        .into_iter()
        .filter(|name| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| o == name))
        })
        .collect();
    assert!(!variants.is_empty(), "HTTP_ONLY names no variant");

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_THREADS)
        .thread_name("srv")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .thread_name("cli")
        .enable_all()
        .build()
        .expect("client runtime");

    println!(
        "http: axum::serve on 127.0.0.1, {SERVER_THREADS}-thread server runtime, {WORKERS} workers \
         per layer; client: {conns} keep-alive connections (hyper client::conn::http1, one \
         request at a time each) on its own {CLIENT_THREADS}-thread runtime, same process; \
         {rounds} round(s) of {:.1}s (+{:.1}s warmup) per variant",
        duration.as_secs_f64(),
        warmup.as_secs_f64()
    );
    println!(
        "machine: {} cpus shared by server and client (and other jobs: expect noise); \
         load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();
    println!(
        "{:<6} {:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round",
        "variant",
        "req/s",
        "p50 µs",
        "p99 µs",
        "requests",
        "srv µs/r",
        "cli µs/r",
        "srv cs/r"
    );

    let mut results: Vec<Vec<Stats>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (i, name) in variants.iter().enumerate() {
            let watchdog = Watchdog::arm(
                format!("round {round} {name}"),
                warmup + duration + Duration::from_secs(60),
            );
            let stats = run_variant(name, &server_rt, &client_rt, conns, warmup, duration);
            drop(watchdog);
            println!(
                "{:<6} {:<22} {:>10.0} {:>9.1} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>9.2}",
                round,
                name,
                stats.requests_per_sec,
                stats.p50.as_secs_f64() * 1e6,
                stats.p99.as_secs_f64() * 1e6,
                stats.requests,
                stats.server_cpu,
                stats.client_cpu,
                stats.server_switches,
            );
            results[i].push(stats);
        }
    }
    println!("load average at end: {}", loadavg());

    let Some(ours) = variants.iter().position(|name| *name == "tower_affinity") else {
        return;
    };
    summary(&variants, &results, ours);
    println!(
        "(req/s ×: higher is better for tower_affinity; p99 × and srv ×: lower is better; \
         srv/cli µs/r: CPU time per request of the server (runtime + workers) and the client; \
         srv cs/r: context switches of the server's threads per request)"
    );

    println!();
    let target = |name: &str, want: f64| {
        let Some(i) = variants.iter().position(|v| *v == name) else {
            return;
        };
        let spread = ratio(&results, ours, i, |s| s.requests_per_sec);
        println!(
            "target tower_affinity ≥ {want:.2}× {name} req/s: {spread} ({})",
            if spread.median >= want {
                "met"
            } else {
                "missed"
            }
        );
    };
    target("inline", 0.85);
    target("spawn_blocking", 1.4);
}
