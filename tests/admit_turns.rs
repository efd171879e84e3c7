//! A burst of queued requests does not starve the requests a worker already
//! serves: its event loop yields to them after every 16 requests it takes.
//!
//! A stream waits for its turn while a blocked handler holds the worker and
//! 40 quick requests queue behind it. Once the handler returns, the worker
//! takes the quick ones one after another; the stream, when polled, reports
//! how many of them had run. Counted in requests, exactly, whatever the
//! machine's speed.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use common::{collect, get, within};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

/// The requests the event loop takes in a row before it yields.
const ADMIT_PER_TURN: usize = 16;

/// Quick requests queued behind the blocked handler: more than one turn.
const QUICK: usize = 40;

/// What the test and the handlers share.
#[derive(Default)]
struct Shared {
    /// Quick requests served so far.
    quick: AtomicUsize,
    /// Set when the stream may end; it then reports `quick`.
    go: AtomicBool,
    /// The stream's last waker.
    waker: Mutex<Option<Waker>>,
}

/// A body that waits until `go`, then ends with one frame: the number of
/// quick requests served when it was polled.
struct Waits {
    shared: Arc<Shared>,
    ended: bool,
}

impl Body for Waits {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if !self.shared.go.load(SeqCst) {
            *self.shared.waker.lock().unwrap() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.ended = true;
        let quick = self.shared.quick.load(SeqCst).to_string();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(quick)))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// After the stream and the blocked handler, the loop has taken 2 requests,
/// so it yields after the 14th quick one: the stream sees 14 served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_yields_to_running_streams_every_16() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .build();
    let shared = Arc::new(Shared::default());
    let (blocked, on_blocked) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let blocked = Arc::new(Mutex::new(blocked));
    let released = Arc::new(Mutex::new(released));
    let handler = {
        let shared = shared.clone();
        blocking::service_fn(move |request: Request<()>| -> Response<TestBody> {
            match request.uri().path() {
                "/stream" => Response::new(
                    Waits {
                        shared: shared.clone(),
                        ended: false,
                    }
                    .boxed_unsync(),
                ),
                "/block" => {
                    blocked.lock().unwrap().send(()).unwrap();
                    let _ = released.lock().unwrap().recv();
                    Response::new(Empty::new().boxed_unsync())
                }
                _ => {
                    shared.quick.fetch_add(1, SeqCst);
                    Response::new(Empty::new().boxed_unsync())
                }
            }
        })
    };
    let mut svc = layer.layer(handler);

    let stream = within("the stream's head", svc.clone().oneshot(get("/stream")))
        .await
        .unwrap();
    let block = tokio::spawn(svc.clone().oneshot(get("/block")));
    tokio::task::spawn_blocking(move || on_blocked.recv().unwrap())
        .await
        .unwrap();
    // The worker is blocked: the stream may go on, once polled.
    shared.go.store(true, SeqCst);
    if let Some(waker) = shared.waker.lock().unwrap().take() {
        waker.wake();
    }
    let mut quick = Vec::new();
    for _ in 0..QUICK {
        within("a place in the queue", svc.ready()).await.unwrap();
        quick.push(tokio::spawn(svc.call(get("/quick"))));
    }
    release.send(()).unwrap();

    let seen = collect(stream.into_body()).await;
    assert_eq!(seen, (ADMIT_PER_TURN - 2).to_string());
    within("/block", block).await.unwrap().unwrap();
    for call in quick {
        within("/quick", call).await.unwrap().unwrap();
    }
    assert_eq!(shared.quick.load(SeqCst), QUICK);
}
