//! Every time setting at its extremes, `Duration::ZERO` and
//! `Duration::MAX` ("never"), through the public API: a request is served
//! (or, for a zero queue timeout, answered `503`), and no worker dies: the
//! layer's own deadline arithmetic saturates instead of overflowing.
//!
//! Each test waits on channels, a gate, or the pool's own counters.

mod common;

use std::convert::Infallible;
use std::thread;
use std::time::Duration;

use common::{collect, deaths, get, read_frames, until, within, Gate};
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::{self, IterBody};
use tower_affinity::error::Elapsed;
use tower_affinity::future::ResponseFuture;
use tower_affinity::{Builder, ThreadAffinityBody, ThreadAffinityLayer};

/// What `service` returns: the layer's service over the handler.
trait Svc:
    Service<
        Request<()>,
        Response = Response<ThreadAffinityBody>,
        Error = Infallible,
        Future = ResponseFuture<Infallible>,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Svc for S where
    S: Service<
            Request<()>,
            Response = Response<ThreadAffinityBody>,
            Error = Infallible,
            Future = ResponseFuture<Infallible>,
        > + Clone
        + Send
        + 'static
{
}

/// What the handler tells the test.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    /// A `/block` request is about to wait at the gate.
    Blocking,
    /// The worker that answered an `/idle` request has gone back to its
    /// event loop, which had nothing to do: a task the handler spawned on
    /// the worker's `LocalSet` runs only once that loop is pending.
    Idled,
}

/// On `/block`, signals and waits at `gate`; on `/idle`, signals once its
/// worker is idle again. Answers with the answering thread's id: on
/// `/stream`, streamed in three chunks (id, `-`, `end`), elsewhere in one
/// frame.
fn service(layer: &ThreadAffinityLayer, gate: Gate) -> (impl Svc, mpsc::UnboundedReceiver<Signal>) {
    let (signal, signals) = mpsc::unbounded_channel();
    let handler = move |req: Request<()>| {
        match req.uri().path() {
            "/block" => {
                let _ = signal.send(Signal::Blocking);
                gate.wait();
            }
            "/idle" => {
                let signal = signal.clone();
                tokio::task::spawn_local(async move { signal.send(Signal::Idled) });
            }
            _ => {}
        }
        let me = format!("{:?}", thread::current().id());
        let chunks = match req.uri().path() {
            "/stream" => vec![me, "-".into(), "end".into()],
            _ => vec![me],
        };
        Response::new(IterBody::from_chunks(chunks))
    };
    (layer.service(blocking::service_fn(handler)), signals)
}

/// Calls `svc` (readiness, then call) and awaits the head.
async fn call(svc: &mut impl Svc, path: &str) -> Response<ThreadAffinityBody> {
    within("the response head", async {
        svc.ready().await.unwrap().call(get(path)).await.unwrap()
    })
    .await
}

/// A pool of one worker built from `builder`, and the service on it.
fn one_worker(builder: Builder) -> (ThreadAffinityLayer, impl Svc) {
    let layer = builder.workers(1).max_workers(1).build();
    let (svc, _) = service(&layer, Gate::default());
    (layer, svc)
}

/// Serves one streamed request on a pool built from `builder`, checks its
/// bytes, and that no worker died.
async fn serves_a_stream(builder: Builder) -> ThreadAffinityLayer {
    let (layer, mut svc) = one_worker(builder);
    let response = call(&mut svc, "/stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = collect(response.into_body()).await;
    assert!(body.ends_with(b"-end"), "{body:?}");
    assert_eq!(deaths(&layer.stats()), (0, 0), "{:?}", layer.stats());
    layer
}

/// `response_deadline(Duration::MAX)` means no deadline: the stream is
/// served whole, and its worker survives.
#[tokio::test]
async fn a_response_deadline_of_max_never_fires() {
    let layer =
        serves_a_stream(ThreadAffinityLayer::builder().response_deadline(Duration::MAX)).await;
    // The same worker serves the next one too.
    serves_a_stream_again(&layer).await;
}

/// A second stream on the same pool, answered by the same thread.
async fn serves_a_stream_again(layer: &ThreadAffinityLayer) {
    let (mut svc, _signals) = service(layer, Gate::default());
    let one = collect(call(&mut svc, "/a").await.into_body()).await;
    let two = collect(call(&mut svc, "/stream").await.into_body()).await;
    // Answered by the same thread: the worker was not replaced in between.
    assert!(two.starts_with(&one), "{one:?} {two:?}");
    assert_eq!(deaths(&layer.stats()), (0, 0), "{:?}", layer.stats());
}

/// `response_deadline(Duration::ZERO)`: a streamed body ends at once with
/// `Elapsed` (or, if it was whole before the first check, cleanly); the
/// head is served and the worker survives.
#[tokio::test]
async fn a_response_deadline_of_zero_ends_the_stream_with_elapsed() {
    let (layer, mut svc) =
        one_worker(ThreadAffinityLayer::builder().response_deadline(Duration::ZERO));
    let response = call(&mut svc, "/stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    if let (_, Some(error)) = read_frames(&mut body).await {
        assert!(error.is::<Elapsed>(), "{error}");
    }
    assert_eq!(deaths(&layer.stats()), (0, 0), "{:?}", layer.stats());
}

/// `queue_timeout(Duration::MAX)` means no timeout: served.
#[tokio::test]
async fn a_queue_timeout_of_max_never_fires() {
    let layer = serves_a_stream(ThreadAffinityLayer::builder().queue_timeout(Duration::MAX)).await;
    assert_eq!(layer.stats().timed_out(), 0);
}

/// `queue_timeout(Duration::ZERO)`: a request that waits at all is
/// answered `503`; whichever way it goes, the pool serves on.
#[tokio::test]
async fn a_queue_timeout_of_zero_answers_or_serves() {
    let (layer, mut svc) = one_worker(ThreadAffinityLayer::builder().queue_timeout(Duration::ZERO));
    for _ in 0..4 {
        let response = call(&mut svc, "/stream").await;
        match response.status() {
            StatusCode::OK => assert!(collect(response.into_body()).await.ends_with(b"-end")),
            status => assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE),
        }
    }
    assert_eq!(deaths(&layer.stats()), (0, 0), "{:?}", layer.stats());
}

/// A pool of one core worker and one spare, the core worker blocked at
/// the returned gate (its request's task is returned too).
async fn with_a_spare(
    keep_alive: Duration,
) -> (
    ThreadAffinityLayer,
    impl Svc,
    Gate,
    tokio::task::JoinHandle<Result<Response<ThreadAffinityBody>, Infallible>>,
    mpsc::UnboundedReceiver<Signal>,
) {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .keep_alive(keep_alive)
        .build();
    let gate = Gate::default();
    let (svc, mut signals) = service(&layer, gate.clone());
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    let blocking = within("worker 0 blocked", signals.recv()).await;
    assert_eq!(blocking, Some(Signal::Blocking));
    (layer, svc, gate, blocked, signals)
}

/// `keep_alive(Duration::MAX)`: a spare never retires, and going idle does
/// not kill it: the spare that served one request (while core worker 0 is
/// blocked) goes idle, then serves the next on the same thread.
#[tokio::test]
async fn a_keep_alive_of_max_keeps_the_spare_alive() {
    let (layer, mut svc, gate, blocked, mut signals) = with_a_spare(Duration::MAX).await;
    let first = collect(call(&mut svc, "/idle").await.into_body()).await;
    let idled = within("the spare idle", signals.recv()).await;
    assert_eq!(idled, Some(Signal::Idled));
    let second = collect(call(&mut svc, "/quick").await.into_body()).await;
    assert_eq!(
        first,
        second,
        "the spare died while idle: {:?}",
        layer.stats()
    );
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 1, "{stats:?}");
    assert_eq!(stats.threads(), 2, "{stats:?}");
    assert_eq!(deaths(&stats), (0, 0), "{stats:?}");
    gate.open();
    let response = within("the blocked request", blocked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// `keep_alive(Duration::ZERO)`: a spare retires as soon as it is idle,
/// without dying.
#[tokio::test]
async fn a_keep_alive_of_zero_retires_the_spare_at_once() {
    let (layer, mut svc, gate, blocked, _) = with_a_spare(Duration::ZERO).await;
    let quick = call(&mut svc, "/quick").await;
    assert_eq!(quick.status(), StatusCode::OK);
    collect(quick.into_body()).await;
    gate.open();
    within("the blocked request", blocked)
        .await
        .unwrap()
        .unwrap();
    until(&layer, "the spare retired", |s| {
        s.spares_retired() == 1 && s.threads() == 1
    })
    .await;
    assert_eq!(deaths(&layer.stats()), (0, 0), "{:?}", layer.stats());
}

/// `shutdown_timeout` at both extremes returns, with every thread ended
/// and nothing reported stuck.
#[tokio::test]
async fn shutdown_timeouts_of_zero_and_max_return() {
    for deadline in [Duration::ZERO, Duration::MAX] {
        let layer = serves_a_stream(ThreadAffinityLayer::builder()).await;
        let report = within("shutdown", layer.shutdown_timeout(deadline)).await;
        assert!(report.is_complete(), "{deadline:?}: {report:?}");
        assert_eq!(layer.stats().threads(), 0, "{deadline:?}");
    }
}
