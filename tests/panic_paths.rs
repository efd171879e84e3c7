//! Guarantee 7 on every path user code runs on a worker: a panic in the
//! first `poll_frame`, `size_hint`, `is_end_stream`, the factory, `Clone`,
//! or a `Drop` (of the body, the future, the service instance) fails at
//! most its own request, is counted, and leaves the same worker thread
//! serving.

mod common;

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower::Service;
use tower_affinity::{ThreadAffinityBody, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

use common::{collect, get, next_data, next_frame, send, thread_name, within};

/// Where a [`Trap`] panics; chosen by the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    None,
    /// The body's first `poll_frame` (before the head is sent).
    FirstFrame,
    SizeHint,
    /// The first `is_end_stream` call.
    EndStream,
    /// The second `is_end_stream` call, after the first frame was polled
    /// and before the head is sent.
    EndStreamLater,
    DropBody,
    DropFuture,
}

impl Site {
    fn of(path: &str) -> Self {
        match path {
            "/first-frame" => Site::FirstFrame,
            "/size-hint" => Site::SizeHint,
            "/end-stream" => Site::EndStream,
            "/end-stream-later" => Site::EndStreamLater,
            "/drop-body" => Site::DropBody,
            "/drop-future" => Site::DropFuture,
            _ => Site::None,
        }
    }
}

/// A service that panics at the [`Site`] its request's path names, and
/// reports the thread every call and every drop ran on. Its body has two
/// frames, "one" and "two".
#[derive(Clone)]
struct Trap {
    log: std_mpsc::Sender<(&'static str, String)>,
}

impl Trap {
    fn new() -> (Self, std_mpsc::Receiver<(&'static str, String)>) {
        let (log, rx) = std_mpsc::channel();
        (Self { log }, rx)
    }
}

impl Service<Request<()>> for Trap {
    type Response = Response<TrapBody>;
    type Error = Infallible;
    type Future = TrapFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> TrapFuture {
        let _ = self.log.send(("call", thread_name()));
        TrapFuture {
            site: Site::of(request.uri().path()),
            log: self.log.clone(),
        }
    }
}

struct TrapFuture {
    site: Site,
    log: std_mpsc::Sender<(&'static str, String)>,
}

impl Future for TrapFuture {
    type Output = Result<Response<TrapBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(Response::new(TrapBody {
            site: self.site,
            log: self.log.clone(),
            next: 0,
            end_stream_calls: Cell::new(0),
        })))
    }
}

impl Drop for TrapFuture {
    fn drop(&mut self) {
        let _ = self.log.send(("drop future", thread_name()));
        if self.site == Site::DropFuture {
            panic!("boom in the future's drop");
        }
    }
}

struct TrapBody {
    site: Site,
    log: std_mpsc::Sender<(&'static str, String)>,
    next: usize,
    end_stream_calls: Cell<usize>,
}

impl Body for TrapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.site == Site::FirstFrame {
            panic!("boom in the first poll_frame");
        }
        self.next += 1;
        Poll::Ready(match self.next {
            1 => Some(Ok(Frame::data(Bytes::from("one")))),
            2 => Some(Ok(Frame::data(Bytes::from("two")))),
            _ => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        let calls = self.end_stream_calls.get() + 1;
        self.end_stream_calls.set(calls);
        match (self.site, calls) {
            (Site::EndStream, 1) | (Site::EndStreamLater, 2) => panic!("boom in is_end_stream"),
            _ => self.next >= 2,
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.site == Site::SizeHint {
            panic!("boom in size_hint");
        }
        SizeHint::default()
    }
}

impl Drop for TrapBody {
    fn drop(&mut self) {
        let _ = self.log.send(("drop body", thread_name()));
        if self.site == Site::DropBody {
            panic!("boom in the body's drop");
        }
    }
}

/// Asserts that `response` is the layer's `500`, with a plain-text body.
async fn assert_500(response: Response<ThreadAffinityBody>) {
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = collect(response.into_body()).await;
    assert!(!text.is_empty());
}

/// Serves `/ok` to completion on the (only) worker: "one" then "two",
/// then a clean end. Its answer also means the worker has finished what
/// it did before (it is one thread), so stats read after it are settled.
async fn assert_serves<S>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>>,
    S::Error: std::fmt::Debug,
{
    let response = send(svc, get("/ok")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, "onetwo");
}

/// Every thread name logged so far, which must all be the worker `name`.
fn assert_all_on(
    log: &std_mpsc::Receiver<(&'static str, String)>,
    name: &str,
) -> Vec<&'static str> {
    let mut steps = Vec::new();
    while let Ok((step, thread)) = log.try_recv() {
        assert_eq!(thread, name, "{step} ran on another thread");
        steps.push(step);
    }
    steps
}

/// The one worker's panicked and replaced counts.
fn counts(layer: &ThreadAffinityLayer) -> (u64, u64) {
    let stats = layer.stats();
    let worker = &stats.workers()[0];
    (worker.panicked(), worker.replaced())
}

fn one_worker() -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(1)
        .thread_name("trap")
        // The tests read frame by frame.
        .merge_frames(0)
        .build()
}

/// A panic in the body's first `poll_frame`, before the head is sent, is a
/// `500` (never a clean empty `200`), counted once; the worker serves on.
#[tokio::test]
async fn panic_in_the_first_poll_frame_is_a_500() {
    let (trap, log) = Trap::new();
    let layer = one_worker();
    let mut svc = layer.layer(trap);

    assert_500(send(&mut svc, get("/first-frame")).await).await;
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    let steps = assert_all_on(&log, "trap-0");
    assert_eq!(steps[..3], ["call", "drop future", "drop body"]);
}

/// A panic in `size_hint`, or in the first `is_end_stream`, is a `500`,
/// counted once each; the worker serves on.
#[tokio::test]
async fn panic_in_size_hint_or_is_end_stream_is_a_500() {
    let (trap, log) = Trap::new();
    let layer = one_worker();
    let mut svc = layer.layer(trap);

    assert_500(send(&mut svc, get("/size-hint")).await).await;
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    assert_500(send(&mut svc, get("/end-stream")).await).await;
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (2, 0), "(panicked, replaced)");
    assert_all_on(&log, "trap-0");
}

/// A panic in `is_end_stream` after the first frame was polled, but before
/// the head is sent, is a `500` too: the panic is not swallowed, and the
/// panicked body is not polled again.
#[tokio::test]
async fn panic_in_a_later_is_end_stream_before_the_head_is_a_500() {
    let (trap, log) = Trap::new();
    let layer = one_worker();
    let mut svc = layer.layer(trap);

    assert_500(send(&mut svc, get("/end-stream-later")).await).await;
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    assert_all_on(&log, "trap-0");
}

/// A panic in the `Drop` of a body that was read to its end does not spoil
/// the response: both frames and a clean end arrive, the drop ran on the
/// worker, the panic is counted once, and the same worker serves on (no
/// replacement).
#[tokio::test]
async fn panic_in_the_body_drop_leaves_the_response_and_the_worker() {
    let (trap, log) = Trap::new();
    let layer = one_worker();
    let mut svc = layer.layer(trap);

    let mut body = send(&mut svc, get("/drop-body")).await.into_body();
    assert_eq!(next_data(&mut body).await, "one");
    assert_eq!(next_data(&mut body).await, "two");
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    let steps = assert_all_on(&log, "trap-0");
    assert_eq!(steps[..3], ["call", "drop future", "drop body"]);
}

/// A panic in the `Drop` of the inner future (dropped once it has given
/// the response) does not spoil the response, and the worker serves on.
#[tokio::test]
async fn panic_in_the_future_drop_leaves_the_response_and_the_worker() {
    let (trap, log) = Trap::new();
    let layer = one_worker();
    let mut svc = layer.layer(trap);

    let response = send(&mut svc, get("/drop-future")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, "onetwo");
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    let steps = assert_all_on(&log, "trap-0");
    assert_eq!(steps[..3], ["call", "drop future", "drop body"]);
}

/// A factory (`service_with`) that panics the first time is a `500`,
/// counted once; the next request builds the instance again, on the same
/// worker thread, and succeeds.
#[tokio::test]
async fn panic_in_the_factory_is_a_500_and_the_next_call_builds_again() {
    let (trap, log) = Trap::new();
    let trap = Mutex::new(trap);
    let built = Arc::new(Mutex::new(Vec::new()));
    let panic_once = AtomicBool::new(true);
    let layer = one_worker();
    let record = built.clone();
    let mut svc = layer.service_with(move |worker: WorkerId| {
        record.lock().unwrap().push((worker.index(), thread_name()));
        if panic_once.swap(false, Ordering::SeqCst) {
            panic!("boom in the factory");
        }
        trap.lock().unwrap().clone()
    });

    assert_500(send(&mut svc, get("/")).await).await;
    assert_serves(&mut svc).await;
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    let built = built.lock().unwrap().clone();
    assert_eq!(
        built,
        vec![(0, "trap-0".to_owned()); 2],
        "built twice, then kept"
    );
    assert_all_on(&log, "trap-0");
}

/// A service whose `Clone` panics the first time.
struct PanicsOnFirstClone {
    trap: Trap,
    panic: Arc<AtomicBool>,
}

impl Clone for PanicsOnFirstClone {
    fn clone(&self) -> Self {
        if self.panic.swap(false, Ordering::SeqCst) {
            panic!("boom in clone");
        }
        Self {
            trap: self.trap.clone(),
            panic: self.panic.clone(),
        }
    }
}

impl Service<Request<()>> for PanicsOnFirstClone {
    type Response = Response<TrapBody>;
    type Error = Infallible;
    type Future = TrapFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.trap.poll_ready(cx)
    }

    fn call(&mut self, request: Request<()>) -> TrapFuture {
        self.trap.call(request)
    }
}

/// A `Clone` of the wrapped service that panics (on the worker, when it
/// makes its instance) is a `500`, counted once; the next request clones
/// again and succeeds on the same worker.
#[tokio::test]
async fn panic_in_clone_is_a_500_and_the_next_call_clones_again() {
    let (trap, log) = Trap::new();
    let panic = Arc::new(AtomicBool::new(false));
    let layer = one_worker();
    let mut svc = layer.layer(PanicsOnFirstClone {
        trap,
        panic: panic.clone(),
    });
    // Arm it only now: the layer may clone on the caller's side too.
    panic.store(true, Ordering::SeqCst);

    let first = send(&mut svc, get("/")).await;
    if panic.load(Ordering::SeqCst) {
        panic!("the worker did not clone the service for its instance");
    }
    assert_500(first).await;
    assert_serves(&mut svc).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
    assert_all_on(&log, "trap-0");
}

/// A service whose instance reports where it is dropped, and panics in
/// its `Drop` when named "panics".
struct Dropper {
    name: &'static str,
    dropped: std_mpsc::Sender<(&'static str, String)>,
}
impl Service<Request<()>> for Dropper {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _request: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(self.name.to_owned())))
    }
}
impl Drop for Dropper {
    fn drop(&mut self) {
        let _ = self.dropped.send((self.name, thread_name()));
        if self.name == "panics" {
            panic!("boom in the service's drop");
        }
    }
}

/// A service instance whose `Drop` panics at shutdown does not stop the
/// worker from dropping its other instance, on that worker, nor shutdown
/// from completing; the panic is counted once.
#[tokio::test]
async fn panic_in_a_service_instance_drop_at_shutdown() {
    let (dropped, drops) = std_mpsc::channel();
    let layer = one_worker();
    let mut services = Vec::new();
    for name in ["panics", "fine"] {
        let dropped = Mutex::new(dropped.clone());
        let mut svc = layer.service_with(move |_| Dropper {
            name,
            dropped: dropped.lock().unwrap().clone(),
        });
        let response = send(&mut svc, get("/")).await;
        assert_eq!(collect(response.into_body()).await, name);
        services.push(svc);
    }
    drop(dropped);

    within("shutdown", layer.shutdown()).await;
    let mut seen: Vec<_> = drops.try_iter().collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("fine", "trap-0".to_owned()),
            ("panics", "trap-0".to_owned())
        ]
    );
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
}

/// A service instance whose `Drop` panics when its last handle is dropped
/// (while the pool runs) is dropped on its worker, the panic is counted
/// once, and the worker serves on.
#[tokio::test]
async fn panic_in_a_retired_service_instance_drop_is_counted() {
    let (dropped, drops) = std_mpsc::channel();
    let layer = one_worker();
    let sender = Mutex::new(dropped);
    let mut svc = layer.service_with(move |_| Dropper {
        name: "panics",
        dropped: sender.lock().unwrap().clone(),
    });
    let response = send(&mut svc, get("/")).await;
    assert_eq!(collect(response.into_body()).await, "panics");
    drop(svc);

    let (trap, _log) = Trap::new();
    let mut other = layer.layer(trap);
    // The worker sweeps before it takes a job: once the drop is seen, the
    // next answer comes after the sweep (and its count) ended.
    let seen = within(
        "the instance's drop",
        tokio::task::spawn_blocking(move || drops.recv()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(seen, ("panics", "trap-0".to_owned()));
    assert_serves(&mut other).await;
    assert_eq!(counts(&layer), (1, 0), "(panicked, replaced)");
}
