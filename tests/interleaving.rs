//! Guarantee 4, measured by counting, not by clocks: while responses wait
//! for readers that do not read, their single worker serves other requests
//! and streams, and polls the stalled producers no further than their
//! buffers allow.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use tokio::sync::mpsc;
use tower_affinity::blocking::{service_fn, IterBody};
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{collect, next_data, next_frame, send, within};

type Chunks = Box<dyn Iterator<Item = Result<Bytes, Infallible>> + Send>;

/// Streams whose readers never read.
const STALLED: usize = 8;
const BUFFER: usize = 4;

/// With one worker, `STALLED` streams whose readers never read fill their
/// buffers (exactly `body_buffer` polls each) and then cost nothing: quick
/// requests and a 100-frame stream complete on that same worker while no
/// stalled producer is polled once more, and the stalled streams go on
/// intact afterwards. A worker that waits for room by blocking instead of
/// yielding never serves the quick requests (the test's time bound fails
/// it); one that polls a producer without room fails the count.
#[tokio::test]
async fn stalled_streams_cost_their_worker_no_polls_and_no_time() {
    let polls: Arc<Vec<AtomicUsize>> =
        Arc::new((0..STALLED).map(|_| AtomicUsize::new(0)).collect());
    let (polled_tx, mut polled) = mpsc::unbounded_channel::<()>();
    // Keyed: with one core worker every key lands on it, also if the pool
    // grows spare workers.
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .body_buffer(BUFFER)
        .affinity_header(HeaderName::from_static("x-key"))
        .build();
    let counters = polls.clone();
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        let path = req.uri().path();
        let chunks: Chunks = if let Some(n) = path.strip_prefix("/stalled/") {
            let (counters, polled_tx) = (counters.clone(), polled_tx.clone());
            let n: usize = n.parse().unwrap();
            Box::new(std::iter::from_fn(move || {
                let i = counters[n].fetch_add(1, Ordering::SeqCst);
                let _ = polled_tx.send(());
                Some(Ok(big_frame(n, i)))
            }))
        } else if path == "/stream" {
            Box::new((0..100).map(|i| Ok(Bytes::from(format!("{i};")))))
        } else {
            Box::new(std::iter::once(Ok(Bytes::from("quick"))))
        };
        Response::new(IterBody::new(chunks))
    }));
    let total = |polls: &[AtomicUsize]| {
        polls
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .sum::<usize>()
    };

    within("the whole test", async {
        let mut stalled = Vec::new();
        for n in 0..STALLED {
            stalled.push(
                send(&mut svc, keyed(&format!("/stalled/{n}")))
                    .await
                    .into_body(),
            );
        }
        // Every stalled producer fills its buffer.
        while total(&polls) < STALLED * BUFFER {
            polled.recv().await.unwrap();
        }

        // The same worker serves quick requests and a whole stream...
        for _ in 0..10 {
            let quick = send(&mut svc, keyed("/quick")).await;
            assert_eq!(collect(quick.into_body()).await, "quick");
        }
        let stream = send(&mut svc, keyed("/stream")).await;
        let want: String = (0..100).map(|i| format!("{i};")).collect();
        assert_eq!(collect(stream.into_body()).await, want);
        // ...and polled no stalled producer beyond its buffer's room.
        for (n, p) in polls.iter().enumerate() {
            assert_eq!(p.load(Ordering::SeqCst), BUFFER, "stalled stream {n}");
        }

        // The stalled streams are alive and intact.
        for (n, body) in stalled.iter_mut().enumerate() {
            for i in 0..BUFFER + 1 {
                assert_eq!(next_data(body).await, big_frame(n, i), "stream {n}");
            }
            assert!(next_frame(body).await.is_some());
        }
    })
    .await;
}

/// A 64 KiB frame (never merged by the channel) naming its stream and index.
fn big_frame(stream: usize, index: usize) -> Bytes {
    let mut data = format!("{stream:04}:{index:08}").into_bytes();
    data.resize(64 * 1024, b'.');
    Bytes::from(data)
}

/// A `GET` for `path`, keyed so that it goes to a core worker.
fn keyed(path: &str) -> Request<()> {
    Request::get(path).header("x-key", "k").body(()).unwrap()
}
