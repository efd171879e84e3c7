//! A stream that never has to wait still lets its worker serve others: the
//! pump yields after 16 frames sent, or after 1,024 frames polled (merged
//! ones included). Tokio holds a yielding task's wake-up until the end of
//! the scheduler's turn, so the event loop, which takes new requests, runs
//! right after the yield. (Were the task queued again at once, the local
//! set would poll it up to 61 times before the event loop: the merged case
//! allows for that.)
//!
//! The stream stops at frame `GATE` until the test has queued the quick
//! request, so the count of frames between the two is exact, whatever the
//! machine's speed: the quick request's handler, on the same worker,
//! answers with the frames polled so far.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, collect, within};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

/// The frame the stream stops at until the quick request is queued: early,
/// so that a pump yielding only every 1,024 frames serves the quick request
/// after 1,014 more.
const GATE: usize = 10;

/// The event loop's slowest turn: 61 task polls per tick of the local set.
const TICK: usize = 61;

/// An endless body of one-byte frames that counts its polls and stops at
/// frame `GATE` until told to go on.
struct Endless {
    polled: Arc<AtomicUsize>,
    entered: Option<tokio::sync::oneshot::Sender<()>>,
    go: mpsc::Receiver<()>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = self.polled.fetch_add(1, SeqCst) + 1;
        if n == GATE {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
            }
            // Blocks the worker until the quick request is queued.
            let _ = self.go.recv();
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// How many frames the stream polled between the quick request being
/// queued and its handler running, with `merge` and `body_buffer`. Nobody
/// reads the stream, so the pump never waits until its buffer is full.
async fn frames_before_served(merge: usize, body_buffer: usize) -> usize {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .merge_frames(merge)
        .body_buffer(body_buffer)
        .build();
    let polled = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (go_tx, go) = mpsc::channel();
    let stream = Arc::new(std::sync::Mutex::new(Some(Endless {
        polled: polled.clone(),
        entered: Some(entered_tx),
        go,
    })));
    let mut svc = layer.layer(blocking::service_fn({
        let polled = polled.clone();
        move |request: Request<()>| -> Response<TestBody> {
            match request.uri().path() {
                "/stream" => {
                    let body = stream.lock().unwrap().take().expect("one stream");
                    Response::new(body.boxed_unsync())
                }
                _ => Response::new(
                    Full::new(Bytes::from(polled.load(SeqCst).to_string())).boxed_unsync(),
                ),
            }
        }
    }));
    let get = |path: &str| Request::get(path).body(()).unwrap();
    let response = within(
        "the stream's head",
        svc.ready().await.unwrap().call(get("/stream")),
    )
    .await
    .unwrap();
    // Held, unread, to the end.
    let body = response.into_body();
    within("the stream at its gate", entered).await.unwrap();
    // Queued by `call`, before the stream goes on.
    let quick = svc.ready().await.unwrap().call(get("/quick"));
    go_tx.send(()).unwrap();
    let response = within("the quick answer", quick).await.unwrap();
    let at = String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap();
    drop(body);
    at.parse::<usize>().unwrap() - GATE
}

/// With every frame sent on its own (merging off) and room for them all
/// (a buffer of 4,096 frames), the pump never has to wait, and yields
/// every 16 frames: the quick request is served at the next yield, not
/// after 1,024 frames.
#[tokio::test]
async fn a_stream_that_never_waits_yields_every_16_frames() {
    bounded(Duration::from_secs(60), async {
        let frames = frames_before_served(0, 4096).await;
        assert!(frames <= 16, "{frames} frames");
    })
    .await;
}

/// One-byte frames that nobody reads merge into the frame waiting to be
/// read (16 KiB each, 8 of them before the buffer is full): the pump sends
/// few frames but yields every 1,024 polls, so the quick request is served
/// long before the buffer fills (8 × 16,384 frames).
#[tokio::test]
async fn a_stream_of_merged_frames_yields_every_1024_polls() {
    bounded(Duration::from_secs(60), async {
        let frames = frames_before_served(16 * 1024, 8).await;
        assert!(frames <= (TICK + 1) * 1024, "{frames} frames");
    })
    .await;
}
