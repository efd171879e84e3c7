//! Streaming: one response of `STREAM_BYTES` (default 1 GiB) in 64 KiB
//! `Bytes` slices of one 1 MiB buffer, from a blocking body, read as fast
//! as possible, measured in one process run.
//!
//! Every chunk is a slice of the same buffer (a reference-count increment),
//! so the figures measure the transport, not memory bandwidth. The reader
//! is a task on a 2-thread tokio runtime (as a hyper connection is) and
//! checks that every chunk arrives uncopied (pointer-equal to its slice).
//!
//! - `tower_affinity`: `ThreadAffinityLayer` (2 workers, `body_buffer` 8),
//!   an `IterBody` over the slices;
//! - `local_pool+mpsc`: `LocalPoolHandle::new(2).spawn_pinned` with an
//!   async producer sending the slices into a tokio `mpsc(8)`;
//! - `naive_pool+mpsc`: a naive pool of 2 std threads (`support::NaivePool`)
//!   whose job sends the slices with `blocking_send` into `mpsc(8)`;
//! - `spawn_blocking+mpsc`: the same job in `spawn_blocking`.
//!
//! No warm-up is excluded: every round counts, the first one too. Each
//! round runs every variant once (`STREAM_ROUNDS`, default 7); ratios are
//! taken per round against the baselines of the same round, and the median
//! (with worst and best) over rounds is reported, beside three counts per
//! chunk: the voluntary context switches of the whole process (a thread
//! parking, to be woken), the CPU time of all its threads (what a hand-off
//! burns, robust to a loaded machine), and the reader's waits (polls that
//! returned `Pending`, each ended by one wake-up).
//!
//! Why this bench once said 1.03x `local_pool` while an independent run of
//! this shape said 0.17x: not found. The old bench differed in its reader
//! (in `Runtime::block_on` on the main thread, not a runtime task), its
//! chunks (clones of one 64 KiB `Bytes`), a 64 MiB warm-up it excluded, and
//! 256 MiB over 5 rounds whose per-round ratios ranged 0.31 to 2.13 (its
//! median said little). On 2026-12-07, on this machine, neither reader
//! placement reproduced 0.17x: as a task the layer ran at 0.8 to 1.7x
//! `local_pool` (load 0.5 to 11), in `block_on` at 0.77x (load 5.8). Every
//! variant's cost is in parking and waking threads (0.4 to 0.55 voluntary
//! switches per chunk, from `eventfd`, `epoll_wait` and `futex`), which
//! depends on how busy the CPUs are; an idle machine, where a parked vCPU
//! halts and a wake-up costs tens of microseconds, is the untested case.
//! `STREAM_READER=block_on` reads the old way, to see the difference.
//!
//! Since 2026-12-08 a worker whose stream waits for room spins (yielding)
//! up to 30 µs before it parks (`pool/worker/spin.rs`): the writer then
//! rarely parks, its reader rarely finds the buffer empty, and the parks
//! per chunk fell from about 0.3 to 0.14 to 0.18.
//!
//! Then the `rows` case (see `streaming/rows.rs`): `STREAM_ROWS` (default
//! 100,000; 0 skips it) rows of 100 bytes, one per item, for as many rounds.
//!
//! Run with `cargo bench --bench streaming`; `STREAM_ONLY=name,name` runs a
//! subset.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::sync::mpsc;
use tokio_util::task::LocalPoolHandle;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{
    cpu_nanos, env_or, loadavg, median, voluntary_switches, NaivePool, Spread, Watchdog,
};

#[path = "streaming/rows.rs"]
mod rows;

const CHUNK: usize = 64 * 1024;
const BUFFER_BYTES: usize = 1 << 20;
const BUFFER: usize = 8;
const THREADS: usize = 2;
const GIB: f64 = (1u64 << 30) as f64;

/// The blocking producer every variant drains: `n` slices of `buffer`, in
/// turn.
fn slices(buffer: &Bytes, n: usize) -> impl Iterator<Item = Bytes> + Send + 'static {
    let buffer = buffer.clone();
    (0..n).map(move |i| {
        let at = i * CHUNK % BUFFER_BYTES;
        buffer.slice(at..at + CHUNK)
    })
}

/// What the reader saw.
#[derive(Default)]
struct Received {
    bytes: u64,
    copied: u64,
    /// Polls of the reader that returned `Pending`.
    waits: u64,
}

impl Received {
    fn take(&mut self, data: &Bytes, buffer: &Bytes) {
        self.bytes += data.len() as u64;
        let at = buffer.as_ptr() as usize;
        let inside = (at..at + BUFFER_BYTES).contains(&(data.as_ptr() as usize));
        self.copied += u64::from(!inside);
    }
}

/// Polls `next` until it is ready, counting its `Pending`s in `waits`.
async fn counted<F: Future>(waits: &mut u64, next: F) -> F::Output {
    let mut next = pin!(next);
    poll_fn(|cx| {
        let polled = next.as_mut().poll(cx);
        *waits += u64::from(polled.is_pending());
        polled
    })
    .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ours,
    LocalPool,
    Naive,
    SpawnBlocking,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Ours,
        Variant::LocalPool,
        Variant::Naive,
        Variant::SpawnBlocking,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "tower_affinity",
            Variant::LocalPool => "local_pool+mpsc",
            Variant::Naive => "naive_pool+mpsc",
            Variant::SpawnBlocking => "spawn_blocking+mpsc",
        }
    }
}

/// The naive pool's job: send every slice, blocking while the channel is full.
type Job = (Box<dyn Iterator<Item = Bytes> + Send>, mpsc::Sender<Bytes>);

fn send_all((slices, tx): Job) {
    for chunk in slices {
        if tx.blocking_send(chunk).is_err() {
            break;
        }
    }
}

/// The setups that live for the whole run (pools are started once).
struct Setup {
    buffer: Bytes,
    layer: ThreadAffinityLayer,
    local_pool: LocalPoolHandle,
    naive: NaivePool<Job, ()>,
}

/// Moves `n` chunks through `variant`; returns what arrived and how long it took.
async fn transfer(setup: &Setup, variant: Variant, n: usize) -> (Received, Duration) {
    let buffer = &setup.buffer;
    let mut got = Received::default();
    let start = Instant::now();
    let mut rx = match variant {
        Variant::Ours => {
            let buffer = buffer.clone();
            let mut svc = setup
                .layer
                .layer(blocking::service_fn(move |_: Request<()>| {
                    Response::new(blocking::IterBody::new(
                        slices(&buffer, n).map(Ok::<_, Infallible>),
                    ))
                }));
            let response = svc.ready().await.expect("ready");
            let response = response.call(Request::new(())).await.expect("call");
            let mut body = pin!(response.into_body());
            let mut waits = 0;
            while let Some(frame) =
                counted(&mut waits, poll_fn(|cx| body.as_mut().poll_frame(cx))).await
            {
                if let Some(data) = frame.expect("frame").data_ref() {
                    got.take(data, &setup.buffer);
                }
            }
            got.waits = waits;
            return (got, start.elapsed());
        }
        Variant::LocalPool => {
            let (tx, rx) = mpsc::channel(BUFFER);
            let slices = slices(buffer, n);
            // Detached: the channel's end tells the reader it is done.
            drop(setup.local_pool.spawn_pinned(move || async move {
                for chunk in slices {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            }));
            rx
        }
        Variant::Naive => {
            let (tx, rx) = mpsc::channel(BUFFER);
            drop(setup.naive.call((Box::new(slices(buffer, n)), tx)));
            rx
        }
        Variant::SpawnBlocking => {
            let (tx, rx) = mpsc::channel(BUFFER);
            let job: Job = (Box::new(slices(buffer, n)), tx);
            drop(tokio::task::spawn_blocking(move || send_all(job)));
            rx
        }
    };
    while let Some(data) = counted(&mut got.waits, rx.recv()).await {
        got.take(&data, buffer);
    }
    (got, start.elapsed())
}

/// Per variant over the rounds: GiB/s; per chunk, voluntary context
/// switches (parks), CPU time and the reader's waits.
#[derive(Default, Clone)]
struct Rounds {
    rates: Vec<f64>,
    switches: Vec<f64>,
    cpu: Vec<f64>,
    waits: Vec<f64>,
}

fn main() {
    let total: u64 = env_or("STREAM_BYTES", 1u64 << 30);
    let rounds: usize = env_or("STREAM_ROUNDS", 7).max(1);
    let n = (total / CHUNK as u64).max(1) as usize;
    let bytes = (n * CHUNK) as u64;
    let in_task = std::env::var("STREAM_READER").map_or(true, |r| r != "block_on");
    let only: Option<Vec<String>> = std::env::var("STREAM_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| o == v.name()))
        })
        .collect();
    assert!(!variants.is_empty(), "STREAM_ONLY names no variant");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let setup = std::sync::Arc::new(Setup {
        buffer: Bytes::from(vec![0xa5u8; BUFFER_BYTES]),
        layer: ThreadAffinityLayer::builder()
            .workers(THREADS)
            .body_buffer(BUFFER)
            .build(),
        local_pool: LocalPoolHandle::new(THREADS),
        naive: NaivePool::new(THREADS, "naive", send_all),
    });

    println!(
        "streaming: {:.3} GiB in {n} slices of {} KiB of one 1 MiB buffer, buffer {BUFFER} \
         chunks, {THREADS}-thread tokio runtime, reader {}, {rounds} round(s), no warm-up",
        bytes as f64 / GIB,
        CHUNK / 1024,
        if in_task {
            "a runtime task"
        } else {
            "in block_on"
        },
    );
    println!(
        "machine: {} cpus, shared with other jobs (expect noise); load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();
    println!("GiB/s per round (copied chunks in brackets: must be 0):");
    print!("{:<6}", "round");
    for variant in &variants {
        print!(" {:>24}", variant.name());
    }
    println!();
    let mut results = vec![Rounds::default(); variants.len()];
    for round in 1..=rounds {
        print!("{round:<6}");
        for (i, &variant) in variants.iter().enumerate() {
            let watchdog = Watchdog::arm(
                format!("round {round} {}", variant.name()),
                Duration::from_secs(60),
            );
            let (switches, cpu) = (voluntary_switches(), cpu_nanos());
            let (got, elapsed) = if in_task {
                let setup = setup.clone();
                runtime
                    .block_on(runtime.spawn(async move { transfer(&setup, variant, n).await }))
                    .expect("reader")
            } else {
                runtime.block_on(transfer(&setup, variant, n))
            };
            let (switches, cpu) = (voluntary_switches() - switches, cpu_nanos() - cpu);
            drop(watchdog);
            assert_eq!(got.bytes, bytes, "{} lost data", variant.name());
            let rate = bytes as f64 / GIB / elapsed.as_secs_f64();
            print!(" {:>20.2} [{}]", rate, got.copied);
            results[i].rates.push(rate);
            results[i].switches.push(switches as f64 / n as f64);
            results[i].cpu.push(cpu as f64 / 1e3 / n as f64);
            results[i].waits.push(got.waits as f64 / n as f64);
        }
        println!();
    }

    println!("load average at end: {}", loadavg());
    report(&variants, &results, rounds);

    let rows: usize = env_or("STREAM_ROWS", 100_000);
    if rows > 0 {
        rows::run(&runtime, THREADS, &setup.local_pool, rows, rounds);
    }
}

/// Prints the medians, and tower_affinity's ratio to each variant: per
/// round, against the baselines of the same round, then the median.
fn report(variants: &[Variant], results: &[Rounds], rounds: usize) {
    let ours = variants.iter().position(|&v| v == Variant::Ours);
    println!();
    println!("per variant over {rounds} rounds; tower_affinity / variant, per round:");
    println!(
        "{:<20} {:>12} {:>12} {:>12} {:>12} {:>12}   ours / variant: median (worst, best)",
        "variant", "median GiB/s", "chunks/s", "parks/chunk", "cpu µs/chunk", "waits/chunk"
    );
    for (i, variant) in variants.iter().enumerate() {
        let ratios: Vec<f64> = match ours {
            Some(o) => (0..rounds)
                .map(|r| results[o].rates[r] / results[i].rates[r])
                .collect(),
            None => Vec::new(),
        };
        let rate = median(results[i].rates.clone());
        println!(
            "{:<20} {:>12.2} {:>12.0} {:>12.3} {:>12.3} {:>12.3}   {}",
            variant.name(),
            rate,
            rate * GIB / CHUNK as f64,
            median(results[i].switches.clone()),
            median(results[i].cpu.clone()),
            median(results[i].waits.clone()),
            Spread::of(&ratios),
        );
    }
    println!("(×: higher is better for tower_affinity)");
}
