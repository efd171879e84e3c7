//! The `rows` case: one response of `ROWS` rows of 100 bytes, one row per
//! item, as a CSV export written the obvious way produces it.
//!
//! - `tower_affinity`: an `IterBody` yielding one row per item (frame
//!   merging at its default);
//! - `tower_affinity, merging off`: the same with `merge_frames(0)`;
//! - `local_pool+mpsc`: the rows sent one per message through a tokio mpsc
//!   channel of 8 from `LocalPoolHandle::spawn_pinned`;
//! - `no layer`: the same `IterBody` polled on the caller's runtime, as an
//!   inline handler's body would be: the cost of making the rows, the floor.
//!
//! Each round runs every variant once; ratios are taken per round, and
//! their median reported. Context switches of the whole process (every
//! live thread, from `/proc/self/task/*/status`) are counted per frame the
//! reader receives.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::task::LocalPoolHandle;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

use crate::support::{context_switches, median, Spread, Watchdog};

const ROW: usize = 100;

/// Row `i`: 100 bytes, made when asked, as a cursor hands out its rows: a
/// fixed row with the index written into its first ten bytes, one small
/// allocation and copy. (Formatting with `format!` and padding cost about
/// 0.5 µs per row, which hid the layer's own cost behind the bench's; the
/// `no layer` line shows what making the rows costs.)
fn row(i: usize) -> Bytes {
    let mut row = [b'0'; ROW];
    row[10] = b',';
    row[ROW - 1] = b'\n';
    let mut n = i;
    for digit in row[..10].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    Bytes::copy_from_slice(&row)
}

/// The rows as the layer's variants and `no layer` yield them: one per item.
fn rows_body(rows: usize) -> blocking::IterBody<impl Iterator<Item = Result<Bytes, Infallible>>> {
    blocking::IterBody::new((0..rows).map(|i| Ok(row(i))))
}

/// Reads `body` to its end: (bytes, data frames).
async fn read<B>(mut body: B) -> (usize, u64)
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let (mut bytes, mut frames) = (0, 0);
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("frame").data_ref() {
            bytes += data.len();
            frames += 1;
        }
    }
    (bytes, frames)
}

#[derive(Clone, Copy)]
enum Variant {
    Ours,
    Unmerged,
    LocalPool,
    NoLayer,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Ours,
        Variant::Unmerged,
        Variant::LocalPool,
        Variant::NoLayer,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "tower_affinity",
            Variant::Unmerged => "tower_affinity, merging off",
            Variant::LocalPool => "local_pool+mpsc",
            Variant::NoLayer => "no layer",
        }
    }
}

/// One transfer: (elapsed, frames received, context switches).
async fn transfer(
    variant: Variant,
    layers: &[ThreadAffinityLayer; 2],
    pool: &LocalPoolHandle,
    rows: usize,
) -> (Duration, u64, u64) {
    let switches = context_switches();
    let start = Instant::now();
    let mut bytes = 0usize;
    let mut frames = 0u64;
    match variant {
        Variant::Ours | Variant::Unmerged => {
            let layer = &layers[matches!(variant, Variant::Unmerged) as usize];
            let mut svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
                Response::new(rows_body(rows))
            }));
            let response = svc
                .ready()
                .await
                .expect("ready")
                .call(Request::new(()))
                .await
                .expect("call");
            (bytes, frames) = read(response.into_body()).await;
        }
        Variant::LocalPool => {
            let (tx, mut rx) = mpsc::channel(8);
            let producer = pool.spawn_pinned(move || async move {
                for i in 0..rows {
                    if tx.send(row(i)).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(data) = rx.recv().await {
                bytes += data.len();
                frames += 1;
            }
            producer.await.expect("producer");
        }
        Variant::NoLayer => (bytes, frames) = read(rows_body(rows)).await,
    }
    let elapsed = start.elapsed();
    assert_eq!(bytes, rows * ROW, "{} lost data", variant.name());
    (elapsed, frames, context_switches() - switches)
}

/// Runs the case: `rows` rows per response, `rounds` rounds.
pub fn run(runtime: &Runtime, threads: usize, pool: &LocalPoolHandle, rows: usize, rounds: usize) {
    let layers = [
        ThreadAffinityLayer::builder().workers(threads).build(),
        ThreadAffinityLayer::builder()
            .workers(threads)
            .merge_frames(0)
            .build(),
    ];
    println!();
    println!(
        "rows: one response of {rows} rows of {ROW} bytes, one row per item, \
         {rounds} round(s)"
    );
    let watchdog = Watchdog::arm("rows warmup".into(), Duration::from_secs(120));
    runtime.block_on(async {
        for variant in Variant::ALL {
            transfer(variant, &layers, pool, rows / 10 + 1).await;
        }
    });
    drop(watchdog);
    let mut results: Vec<Vec<(Duration, u64, u64)>> = vec![Vec::new(); Variant::ALL.len()];
    for round in 1..=rounds {
        for (i, variant) in Variant::ALL.into_iter().enumerate() {
            let watchdog = Watchdog::arm(
                format!("rows round {round} {}", variant.name()),
                Duration::from_secs(120),
            );
            results[i].push(runtime.block_on(transfer(variant, &layers, pool, rows)));
            drop(watchdog);
        }
    }
    println!(
        "{:<28} {:>10} {:>10} {:>14} {:>12}   tower_affinity / variant",
        "variant", "ms", "MB/s", "frames/resp", "ctx sw/frame"
    );
    for (i, variant) in Variant::ALL.into_iter().enumerate() {
        let secs = median(results[i].iter().map(|r| r.0.as_secs_f64()).collect());
        let frames = median(results[i].iter().map(|r| r.1 as f64).collect());
        let per_frame = median(results[i].iter().map(|r| r.2 as f64 / r.1 as f64).collect());
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| results[i][r].0.as_secs_f64() / results[0][r].0.as_secs_f64())
            .collect();
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>14.0} {:>12.3}   {}",
            variant.name(),
            secs * 1e3,
            (rows * ROW) as f64 / secs / 1e6,
            frames,
            per_frame,
            Spread::of(&ratios),
        );
    }
    println!("(medians over rounds; ratios per round, higher is better for tower_affinity)");
}
