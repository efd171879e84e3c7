//! Streaming: `STREAM_BYTES` (default 1 GiB) in 64 KiB `Bytes` chunks from a
//! blocking iterator to an async reader, measured in one process run.
//!
//! Every chunk is a clone of one preallocated `Bytes` (a reference-count
//! increment), so the figures measure the transport, not memory bandwidth.
//! The reader runs on a 2-thread tokio runtime and checks that every chunk
//! arrives uncopied (pointer-equal to the original).
//!
//! - `tower_affinity`: `ThreadAffinityLayer` (2 workers, `body_buffer` 8),
//!   an `IterBody` over the chunks, read with `BodyExt::frame`;
//! - `spawn_blocking+mpsc`: the iterator in `spawn_blocking`, feeding a
//!   bounded tokio mpsc channel of 8 with `blocking_send`;
//! - `local_pool+mpsc`: the iterator in
//!   `LocalPoolHandle::new(2).spawn_pinned`, feeding a bounded tokio mpsc
//!   channel of 8 with `send().await`.
//!
//! Each variant is warmed up with a 64 MiB transfer, then measured
//! `STREAM_ROUNDS` times (default 15), interleaved (a 1 GiB transfer takes
//! only tens of milliseconds, and single runs are bimodal: whether the
//! reader's and the producer's threads park between chunks decides much of
//! it).
//!
//! Then the `rows` case (see `streaming/rows.rs`): `STREAM_ROWS` (default
//! 100,000; 0 skips it) rows of 100 bytes, one per item, for as many rounds.
//!
//! Ratios are taken per round against the baselines of the same round, and
//! the median (with worst and best) over rounds is reported, with the
//! context switches of the whole process per chunk (or frame) streamed.
//!
//! Run with `cargo bench --bench streaming`; `STREAM_BYTES=268435456
//! STREAM_ROUNDS=5` keeps it under a minute.

use std::convert::Infallible;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_util::task::LocalPoolHandle;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

#[path = "support/mod.rs"]
mod support;
use support::{context_switches, env_or, loadavg, median, Spread, Watchdog};

#[path = "streaming/rows.rs"]
mod rows;

const CHUNK: usize = 64 * 1024;
const BUFFER: usize = 8;
const THREADS: usize = 2;
const GIB: f64 = (1u64 << 30) as f64;

/// The blocking iterator every variant drains: `n` clones of `chunk`.
fn chunks(chunk: &Bytes, n: usize) -> impl Iterator<Item = Bytes> + Send + 'static {
    std::iter::repeat_n(chunk.clone(), n)
}

/// What the reader saw.
struct Received {
    bytes: u64,
    copied: u64,
}

impl Received {
    fn new() -> Self {
        Self {
            bytes: 0,
            copied: 0,
        }
    }

    fn take(&mut self, data: &Bytes, original: &Bytes) {
        self.bytes += data.len() as u64;
        if data.as_ptr() != original.as_ptr() {
            self.copied += 1;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ours,
    SpawnBlocking,
    LocalPool,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Ours, Variant::SpawnBlocking, Variant::LocalPool];

    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "tower_affinity",
            Variant::SpawnBlocking => "spawn_blocking+mpsc",
            Variant::LocalPool => "local_pool+mpsc",
        }
    }
}

/// The setups that live for the whole run (pools are started once).
struct Setup {
    chunk: Bytes,
    layer: ThreadAffinityLayer,
    local_pool: LocalPoolHandle,
}

/// Moves `n` chunks through `variant`; returns what arrived and how long it took.
async fn transfer(setup: &Setup, variant: Variant, n: usize) -> (Received, Duration) {
    let original = setup.chunk.clone();
    let mut received = Received::new();
    let start = Instant::now();
    match variant {
        Variant::Ours => {
            let chunk = setup.chunk.clone();
            let mut svc = setup
                .layer
                .layer(blocking::service_fn(move |_: Request<()>| {
                    Response::new(blocking::IterBody::new(
                        chunks(&chunk, n).map(Ok::<_, Infallible>),
                    ))
                }));
            let response = svc
                .ready()
                .await
                .expect("ready")
                .call(Request::new(()))
                .await
                .expect("call");
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("frame");
                if let Some(data) = frame.data_ref() {
                    received.take(data, &original);
                }
            }
        }
        Variant::SpawnBlocking => {
            let (tx, mut rx) = mpsc::channel(BUFFER);
            let iter = chunks(&setup.chunk, n);
            let producer = tokio::task::spawn_blocking(move || {
                for chunk in iter {
                    if tx.blocking_send(chunk).is_err() {
                        break;
                    }
                }
            });
            while let Some(data) = rx.recv().await {
                received.take(&data, &original);
            }
            producer.await.expect("producer");
        }
        Variant::LocalPool => {
            let (tx, mut rx) = mpsc::channel(BUFFER);
            let iter = chunks(&setup.chunk, n);
            let producer = setup.local_pool.spawn_pinned(move || async move {
                for chunk in iter {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(data) = rx.recv().await {
                received.take(&data, &original);
            }
            producer.await.expect("producer");
        }
    }
    (received, start.elapsed())
}

fn main() {
    let total: u64 = env_or("STREAM_BYTES", 1u64 << 30);
    let rounds: usize = env_or("STREAM_ROUNDS", 15).max(1);
    let n = (total / CHUNK as u64).max(1) as usize;
    let bytes = (n * CHUNK) as u64;
    let warmup_n = (64 << 20) / CHUNK;
    // STREAM_ONLY=name,name runs a subset (for profiling).
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
    let setup = Setup {
        chunk: Bytes::from(vec![0xa5u8; CHUNK]),
        layer: ThreadAffinityLayer::builder()
            .workers(THREADS)
            .body_buffer(BUFFER)
            .build(),
        local_pool: LocalPoolHandle::new(THREADS),
    };

    println!(
        "streaming: {:.3} GiB in {} chunks of {} KiB, buffer {BUFFER} chunks, \
         {THREADS}-thread tokio runtime, {rounds} round(s) per variant",
        bytes as f64 / GIB,
        n,
        CHUNK / 1024
    );
    println!(
        "machine: {} cpus, shared with other jobs (expect noise); load average at start: {}",
        thread::available_parallelism().map_or(0, usize::from),
        loadavg()
    );
    println!();

    let watchdog = Watchdog::arm("warmup".into(), Duration::from_secs(60));
    runtime.block_on(async {
        for &variant in &variants {
            let (received, _) = transfer(&setup, variant, warmup_n).await;
            assert_eq!(received.bytes, (warmup_n * CHUNK) as u64);
        }
    });
    drop(watchdog);

    println!("GiB/s per round (copied chunks in brackets: must be 0):");
    print!("{:<6}", "round");
    for variant in &variants {
        print!(" {:>24}", variant.name());
    }
    println!();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut switches: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        print!("{round:<6}");
        for (i, &variant) in variants.iter().enumerate() {
            let watchdog = Watchdog::arm(
                format!("round {round} {}", variant.name()),
                Duration::from_secs(60),
            );
            let before = context_switches();
            let (received, elapsed) = runtime.block_on(transfer(&setup, variant, n));
            switches[i].push((context_switches() - before) as f64 / n as f64);
            drop(watchdog);
            assert_eq!(received.bytes, bytes, "{} lost data", variant.name());
            let rate = bytes as f64 / GIB / elapsed.as_secs_f64();
            print!(" {:>20.2} [{}]", rate, received.copied);
            rates[i].push(rate);
        }
        println!();
    }

    println!("load average at end: {}", loadavg());
    // Ratios against tower_affinity, when it ran: per round, against the
    // baselines of the same round, then the median over rounds.
    let ours = variants.iter().position(|&v| v == Variant::Ours);
    let chunks_per_sec = |gib_per_sec: f64| gib_per_sec * GIB / CHUNK as f64;
    println!();
    println!("per variant over {rounds} rounds; tower_affinity / variant, per round:");
    println!(
        "{:<20} {:>12} {:>12} {:>12}   ours / variant: median (worst, best)",
        "variant", "median GiB/s", "chunks/s", "ctx sw/chunk"
    );
    for (i, variant) in variants.iter().enumerate() {
        let ratios: Vec<f64> = match ours {
            Some(o) => (0..rounds).map(|r| rates[o][r] / rates[i][r]).collect(),
            None => Vec::new(),
        };
        let rate = median(rates[i].clone());
        println!(
            "{:<20} {:>12.2} {:>12.0} {:>12.3}   {}",
            variant.name(),
            rate,
            chunks_per_sec(rate),
            median(switches[i].clone()),
            Spread::of(&ratios),
        );
    }
    println!("(×: higher is better for tower_affinity)");

    let rows: usize = env_or("STREAM_ROWS", 100_000);
    if rows > 0 {
        rows::run(&runtime, THREADS, &setup.local_pool, rows, rounds);
    }
}
