//! Guarantee 7: a panic in the inner service fails only its request (a
//! `500` before the head, a body error after) and the worker keeps serving.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::Service;
use tower_affinity::blocking::IterBody;
use tower_affinity::error::Panicked;
use tower_affinity::{ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

use common::{collect, frame_data, get, next_data, next_frame, send};

type Chunks = Box<dyn Iterator<Item = Result<Bytes, Infallible>> + Send>;
type Body = IterBody<Chunks>;

/// A service that panics where the path says: `/call`, `/future` (on the
/// future's first poll), `/future-later` (on its second), `/body` (on the body's second frame, after the
/// head); `poll_ready` panics once when `panic_ready` is set. `/stream/N`
/// streams N frames. Every call logs its thread.
#[derive(Clone, Default)]
struct Panicky {
    panic_ready: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<ThreadId>>>,
}

/// Yields (waking itself) this many times, then panics.
struct PanicsAfterYields(usize);

impl Future for PanicsAfterYields {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 == 0 {
            panic!("boom in the future");
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Service<Request<()>> for Panicky {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.panic_ready.swap(false, Ordering::SeqCst) {
            panic!("boom in poll_ready");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.calls.lock().unwrap().push(thread::current().id());
        let path = request.uri().path().to_owned();
        let chunks: Chunks = match path.as_str() {
            "/call" => panic!("boom in call"),
            "/future" => return Box::pin(PanicsAfterYields(0)),
            "/future-later" => return Box::pin(PanicsAfterYields(1)),
            "/body" => Box::new(
                std::iter::once(Ok(Bytes::from("first")))
                    .chain(std::iter::from_fn(|| panic!("boom in the body"))),
            ),
            _ => match path.strip_prefix("/stream/") {
                Some(n) => Box::new((0..n.parse().unwrap()).map(|i| Ok(frame_data(i)))),
                None => Box::new(std::iter::once(Ok(Bytes::from("fine")))),
            },
        };
        Box::pin(std::future::ready(Ok(Response::new(IterBody::new(chunks)))))
    }
}

/// Asserts that `response` is the layer's `500`, with a plain-text body.
async fn assert_500(response: Response<ThreadAffinityBody>) {
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(!collect(response.into_body()).await.is_empty());
}

/// A panic in `call` gives a `500` with a plain-text body, and the next
/// request on the same single worker succeeds, on the same thread.
#[tokio::test]
async fn panic_in_call_is_a_500_and_the_worker_lives_on() {
    let inner = Panicky::default();
    let calls = inner.calls.clone();
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(inner);

    assert_500(send(&mut svc, get("/call")).await).await;
    let response = send(&mut svc, get("/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, "fine");

    assert_one_thread(&calls, 2);
}

/// Asserts that every call so far ran on one thread: the worker that saw
/// the panic is the one that goes on serving, not a replacement.
fn assert_one_thread(calls: &Mutex<Vec<ThreadId>>, want: usize) {
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), want);
    assert!(
        calls.iter().all(|t| *t == calls[0]),
        "the panicking thread was replaced"
    );
}

/// A panic while polling the inner future, on its first poll or a later
/// one, gives a `500`; the worker lives on, on the same thread.
#[tokio::test]
async fn panic_in_the_future_is_a_500() {
    let inner = Panicky::default();
    let calls = inner.calls.clone();
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(inner);

    assert_500(send(&mut svc, get("/future")).await).await;
    assert_500(send(&mut svc, get("/future-later")).await).await;
    assert_eq!(
        collect(send(&mut svc, get("/")).await.into_body()).await,
        "fine"
    );
    assert_one_thread(&calls, 3);
}

/// A panic in the inner `poll_ready` gives a `500`; the instance and the
/// worker live on, on the same thread.
#[tokio::test]
async fn panic_in_poll_ready_is_a_500() {
    let inner = Panicky::default();
    let (calls, panic_ready) = (inner.calls.clone(), inner.panic_ready.clone());
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(inner);

    assert_eq!(
        collect(send(&mut svc, get("/")).await.into_body()).await,
        "fine"
    );
    panic_ready.store(true, Ordering::SeqCst);
    assert_500(send(&mut svc, get("/")).await).await;
    assert_eq!(
        collect(send(&mut svc, get("/")).await.into_body()).await,
        "fine"
    );
    assert_one_thread(&calls, 2);
}

/// A panic in `poll_frame` after the head and a first streamed frame is a
/// body error that downcasts to `Panicked`, never a clean end.
#[tokio::test]
async fn panic_in_the_body_after_the_head_is_a_body_error() {
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(Panicky::default());

    let response = send(&mut svc, get("/body")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await, "first");
    let error = match next_frame(&mut body).await {
        Some(Err(error)) => error,
        other => panic!("expected a body error, got {other:?}"),
    };
    let panicked = error
        .downcast_ref::<Panicked>()
        .unwrap_or_else(|| panic!("not a Panicked: {error}"));
    assert!(
        panicked.message().contains("boom in the body"),
        "{panicked}"
    );
    assert!(
        next_frame(&mut body).await.is_none(),
        "nothing after the error"
    );

    assert_eq!(
        collect(send(&mut svc, get("/")).await.into_body()).await,
        "fine"
    );
}

/// While other requests panic (in `call`, and in their body), the single
/// worker keeps serving a stream already in flight: it ends intact.
#[tokio::test]
async fn other_streams_survive_a_panic_on_their_worker() {
    const FRAMES: usize = 100;
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .body_buffer(2)
        // Read frame by frame below.
        .merge_frames(0)
        .build();
    let mut svc = layer.layer(Panicky::default());

    let mut stream = send(&mut svc, get(&format!("/stream/{FRAMES}")))
        .await
        .into_body();
    for i in 0..5 {
        assert_eq!(next_data(&mut stream).await, frame_data(i));
    }

    assert_500(send(&mut svc, get("/call")).await).await;
    let mut failed = send(&mut svc, get("/body")).await.into_body();
    assert_eq!(next_data(&mut failed).await, "first");
    assert!(next_frame(&mut failed).await.unwrap().is_err());

    let rest = common::within("the rest of the stream", stream.collect())
        .await
        .expect("the stream failed")
        .to_bytes();
    let want: Vec<u8> = (5..FRAMES).flat_map(|i| frame_data(i).to_vec()).collect();
    assert_eq!(rest, want);
}
