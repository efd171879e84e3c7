//! tower's own middleware stacked around `ThreadAffinityLayer` with
//! `ServiceBuilder`, and what each one means there.
//!
//! `ServiceBuilder` lists layers outermost first:
//!
//! ```text
//! ServiceBuilder::new()
//!     .load_shed()            // sheds when anything below is not ready
//!     .concurrency_limit(n)   // at most n calls awaiting their head
//!     .timeout(d)             // at most d from call to head
//!     .layer(affinity)        // queue + worker threads
//!     .service(blocking_app)
//! ```
//!
//! - **`LoadShed`** sheds (fails the call at once with its `Overloaded`
//!   error) whenever the service below it is not ready. Under
//!   `Overload::Wait` (the default) the affinity layer's `poll_ready` is
//!   `Pending` exactly while its queue is full, so `LoadShed` turns a full
//!   queue into an immediate error, and the request never reaches a worker.
//!   Under `Overload::Reject`, `poll_ready` is always ready, so `LoadShed`
//!   never sheds on the queue's account: the layer answers a full queue
//!   itself with `503` and `Retry-After: 1`.
//! - **`ConcurrencyLimit`** holds a permit from `poll_ready` until the
//!   response future completes: until the *head* arrives. A streamed body
//!   still being produced on a worker does not count, so it bounds requests
//!   waiting for or running their handler, not open streams; those are
//!   bounded by `max_streams_per_worker` and `body_buffer`. When its permits
//!   are taken it is not ready, so a `LoadShed` above it sheds.
//! - **`Timeout`** bounds the time from `call` to the head. When it fires it
//!   drops the layer's response future; the worker sees the request's reply
//!   channel close and drops the inner future (or the response it
//!   produced) on its own thread, then goes on serving. It cannot preempt a
//!   handler blocked in plain code: the caller gets its `Elapsed` error at
//!   once, but the worker stays busy until the handler returns, and only
//!   then drops the response, unsent. It does not bound the body: use
//!   `Builder::response_deadline` for that.
//!
//! Every test waits on channels, never on sleeps; threads are told apart by
//! name. The only timeouts are the `Timeout` layer under test and the hang
//! guard.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::{header, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::load_shed::error::Overloaded;
use tower::timeout::error::Elapsed;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_affinity::blocking::{self, IterBody};
use tower_affinity::{Overload, ThreadAffinityBody, ThreadAffinityLayer};

/// The hang guard: a test that waits longer for something than this fails.
const HANG: Duration = Duration::from_secs(30);

/// The timeout under test. It only has to cover handing a request to an
/// idle worker that has already served one, so that the request is surely
/// running when the timeout fires.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The worker threads' name prefix.
const PREFIX: &str = "stack-test";

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    common::within_for(HANG, what, future).await
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

fn assert_worker(name: &str) {
    let index = name
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_else(|| panic!("{name:?} is not a worker thread"));
    index.parse::<usize>().unwrap();
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn text(body: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(body.as_bytes())))
}

async fn collect(body: ThreadAffinityBody) -> Bytes {
    within("the body", body.collect()).await.unwrap().to_bytes()
}

/// A door that blocking handlers wait at, on their worker threads, after
/// saying (with their thread's name) that they got there. Each `open` lets
/// one through; dropping the `Door` lets everyone through, so a failing
/// test never leaves a worker blocked.
struct Door {
    arrived: mpsc::UnboundedReceiver<String>,
    open: std_mpsc::Sender<()>,
}

/// The handler's side of a [`Door`]: cheap to clone, `Send`.
#[derive(Clone)]
struct DoorSide {
    arrived: mpsc::UnboundedSender<String>,
    open: Arc<Mutex<std_mpsc::Receiver<()>>>,
}

fn door() -> (Door, DoorSide) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (open, open_rx) = std_mpsc::channel();
    let side = DoorSide {
        arrived: arrived_tx,
        open: Arc::new(Mutex::new(open_rx)),
    };
    (Door { arrived, open }, side)
}

impl Door {
    /// Waits until a handler is at the door; returns its thread's name.
    async fn arrival(&mut self) -> String {
        within("a handler at the door", self.arrived.recv())
            .await
            .unwrap()
    }

    /// Lets one waiting (or the next) handler through.
    fn let_one_through(&self) {
        self.open.send(()).unwrap();
    }
}

impl DoorSide {
    /// Blocks this thread until the test lets it through.
    fn wait(&self) {
        let _ = self.arrived.send(thread_name());
        let _ = self.open.lock().unwrap().recv();
    }
}

/// Reports the thread it is dropped on.
struct DropReport(mpsc::UnboundedSender<String>);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send(thread_name());
    }
}

/// A body that reports the thread it is dropped on.
struct ReportingBody {
    inner: Full<Bytes>,
    _report: DropReport,
}

impl Body for ReportingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `/wait` blocks at the door, then answers; anything else answers at once.
fn gated_app(
    side: DoorSide,
    calls: Arc<AtomicUsize>,
) -> impl Fn(Request<()>) -> Response<Full<Bytes>> + Clone + Send + 'static {
    move |request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        if request.uri().path() == "/wait" {
            side.wait();
            text("waited")
        } else {
            text("quick")
        }
    }
}

fn layer(workers: usize) -> tower_affinity::Builder {
    ThreadAffinityLayer::builder()
        .workers(workers)
        .thread_name(PREFIX)
}

// ---------------------------------------------------------------------------
// LoadShed
// ---------------------------------------------------------------------------

/// Under `Overload::Wait`, a full affinity queue makes the layer not ready,
/// and `LoadShed` outside fails the call at once with its `Overloaded`
/// error, without the request reaching a worker; once the queue drains,
/// requests pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_sheds_when_the_affinity_queue_is_full() {
    let (mut door, side) = door();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(1).queue_capacity(1).overload(Overload::Wait).build();
    let svc = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(16)
        .timeout(HANG)
        .layer(layer.clone())
        .service(blocking::service_fn(gated_app(side, calls.clone())));

    // The only worker is blocked in a handler...
    let blocked = tokio::spawn(svc.clone().oneshot(get("/wait")));
    assert_worker(&door.arrival().await);
    // ...and the only place in the queue is taken: `call` has queued it.
    let mut queued = svc.clone();
    within("readiness", queued.ready()).await.unwrap();
    let queued = queued.call(get("/quick"));
    assert_eq!(layer.stats().queued(), 1);

    let shed = within("the shed call", svc.clone().oneshot(get("/quick"))).await;
    let error = shed.expect_err("a full queue must shed");
    assert!(error.is::<Overloaded>(), "{error}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only /wait reached a worker"
    );

    // Drain: the blocked and the queued requests complete, in order.
    door.let_one_through();
    let response = within("/wait", blocked).await.unwrap().unwrap();
    assert_eq!(collect(response.into_body()).await, "waited");
    let response = within("the queued request", queued).await.unwrap();
    assert_eq!(collect(response.into_body()).await, "quick");

    // Shedding was transient.
    let response = within("after", svc.clone().oneshot(get("/quick")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Under `Overload::Reject`, the layer is always ready, so `LoadShed` never
/// sheds for a full queue: the layer itself answers `503` with
/// `Retry-After: 1`, as a response, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_reject_a_full_queue_is_a_503_not_a_shed() {
    let (mut door, side) = door();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(1)
        .queue_capacity(1)
        .overload(Overload::Reject)
        .build();
    let svc = ServiceBuilder::new()
        .load_shed()
        .timeout(HANG)
        .layer(layer.clone())
        .service(blocking::service_fn(gated_app(side, calls.clone())));

    let blocked = tokio::spawn(svc.clone().oneshot(get("/wait")));
    assert_worker(&door.arrival().await);
    let mut queued = svc.clone();
    within("readiness", queued.ready()).await.unwrap();
    let queued = queued.call(get("/quick"));
    assert_eq!(layer.stats().queued(), 1);

    let response = within("the rejected call", svc.clone().oneshot(get("/quick")))
        .await
        .expect("no shed under Overload::Reject");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only /wait reached a worker"
    );

    door.let_one_through();
    within("/wait", blocked).await.unwrap().unwrap();
    let response = within("the queued request", queued).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------
// ConcurrencyLimit
// ---------------------------------------------------------------------------

/// `ConcurrencyLimit(2)` outside a 4-worker layer: of 6 concurrent callers,
/// never more than 2 are in a handler at once (though 4 workers could run
/// 4); a third caller is not ready while 2 are in flight (and a `LoadShed`
/// above sheds it); all 6 complete as the first ones finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_bounds_requests_in_flight() {
    const LIMIT: usize = 2;
    const CALLERS: usize = 6;
    let (mut door, side) = door();
    let layer = layer(4).build();
    let in_handler = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let app = {
        let (in_handler, most) = (in_handler.clone(), most.clone());
        move |_: Request<()>| {
            let now = in_handler.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            side.wait();
            in_handler.fetch_sub(1, Ordering::SeqCst);
            text("done")
        }
    };
    let svc = ServiceBuilder::new()
        .concurrency_limit(LIMIT)
        .layer(layer)
        .service(blocking::service_fn(app));

    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        callers.spawn(svc.clone().oneshot(get("/")));
    }
    for _ in 0..LIMIT {
        assert_worker(&door.arrival().await);
    }
    assert_eq!(in_handler.load(Ordering::SeqCst), LIMIT);

    // Both permits are held: one more caller is not ready...
    let mut probe = svc.clone();
    assert!(
        probe.ready().now_or_never().is_none(),
        "a third caller was ready"
    );
    // Dropped now: its pending acquire holds a place in the semaphore's
    // queue, and a permit handed to it (ahead of a caller spawned above
    // that had not polled yet) would never reach a caller.
    drop(probe);
    // ...and a `LoadShed` above sheds it.
    let shed = ServiceBuilder::new()
        .load_shed()
        .service(svc.clone())
        .oneshot(get("/"))
        .now_or_never()
        .expect("shedding is immediate");
    assert!(shed.expect_err("must shed").is::<Overloaded>());

    // Each one let through frees a permit for the next caller.
    for _ in LIMIT..CALLERS {
        door.let_one_through();
        assert_worker(&door.arrival().await);
    }
    for _ in 0..LIMIT {
        door.let_one_through();
    }
    while let Some(done) = within("the callers", callers.join_next()).await {
        let response = done.unwrap().unwrap();
        assert_eq!(collect(response.into_body()).await, "done");
    }
    assert_eq!(most.load(Ordering::SeqCst), LIMIT);
}

/// `ConcurrencyLimit` counts a request until its head arrives, not until its
/// streamed body ends: with a limit of 1, a second request is served while
/// the first one's body is still being produced on a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_releases_at_the_head_not_the_body_end() {
    let (mut door, side) = door();
    let layer = layer(2).build();
    let app = move |request: Request<()>| {
        let side = side.clone();
        let streamed = request.uri().path() == "/stream";
        let mut step = 0;
        // `/stream`: one chunk, then a second only once the door opens.
        let chunks = std::iter::from_fn(move || {
            step += 1;
            match (streamed, step) {
                (_, 1) => Some(Ok::<_, Infallible>(Bytes::from_static(b"first;"))),
                (true, 2) => {
                    side.wait();
                    Some(Ok(Bytes::from_static(b"second")))
                }
                _ => None,
            }
        });
        Response::new(IterBody::new(chunks))
    };
    let svc = ServiceBuilder::new()
        .concurrency_limit(1)
        .layer(layer)
        .service(blocking::service_fn(app));

    let response = within("/stream", svc.clone().oneshot(get("/stream")))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    // The producer is now blocked in its second chunk, on a worker.
    assert_worker(&door.arrival().await);

    // The permit went back with the head: the limit of 1 lets this through.
    let response = within("/quick", svc.clone().oneshot(get("/quick")))
        .await
        .unwrap();
    assert_eq!(collect(response.into_body()).await, "first;");

    door.let_one_through();
    assert_eq!(collect(body).await, "second");
}

// ---------------------------------------------------------------------------
// Timeout
// ---------------------------------------------------------------------------

/// When `Timeout` fires while the inner (async) future is pending on a
/// worker, the caller gets `Elapsed`, the inner future is dropped on that
/// worker thread, and the worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_drops_the_pending_future_on_its_worker() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<String>();
    let inner = tower::service_fn(move |request: Request<()>| {
        let started = started_tx.clone();
        let dropped = dropped_tx.clone();
        async move {
            if request.uri().path() == "/hang" {
                let _report = DropReport(dropped);
                let _ = started.send(thread_name());
                // Pending until dropped.
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(text("ok"))
        }
    });
    let layer = layer(1).build();
    let svc = ServiceBuilder::new()
        .timeout(TIMEOUT)
        .layer(layer)
        .service(inner);

    // Warm up: the worker is running and holds its instance.
    let response = within("warm-up", svc.clone().oneshot(get("/ok")))
        .await
        .unwrap();
    assert_eq!(collect(response.into_body()).await, "ok");

    let error = within("the timeout", svc.clone().oneshot(get("/hang")))
        .await
        .expect_err("the timeout must fire");
    assert!(error.is::<Elapsed>(), "{error}");
    let ran_on = started
        .try_recv()
        .expect("the future ran before the timeout");
    assert_worker(&ran_on);
    let dropped_on = within("the drop", dropped.recv()).await.unwrap();
    assert_eq!(dropped_on, ran_on, "dropped on its own worker");

    let response = within("after", svc.clone().oneshot(get("/ok")))
        .await
        .unwrap();
    assert_eq!(collect(response.into_body()).await, "ok");
}

/// When `Timeout` fires while a blocking handler holds its worker, the
/// caller gets `Elapsed` at once, though the handler cannot be interrupted;
/// when it returns, its response (body included) is dropped unsent on that
/// worker, and the worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_while_a_handler_blocks_drops_its_response_on_the_worker() {
    let (mut door, side) = door();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<String>();
    let app = move |request: Request<()>| {
        if request.uri().path() == "/wait" {
            side.wait();
        }
        Response::new(ReportingBody {
            inner: Full::new(Bytes::from_static(b"answer")),
            _report: DropReport(dropped_tx.clone()),
        })
    };
    let layer = layer(1).build();
    let svc = ServiceBuilder::new()
        .timeout(TIMEOUT)
        .layer(layer)
        .service(blocking::service_fn(app));

    // Warm up (its body is dropped once read, on the worker).
    let response = within("warm-up", svc.clone().oneshot(get("/quick")))
        .await
        .unwrap();
    assert_eq!(collect(response.into_body()).await, "answer");
    assert_worker(&within("the warm-up drop", dropped.recv()).await.unwrap());

    let error = within("the timeout", svc.clone().oneshot(get("/wait")))
        .await
        .expect_err("the timeout must fire");
    assert!(error.is::<Elapsed>(), "{error}");
    // The handler got there before the timeout, and is still blocked.
    let ran_on = door.arrived.try_recv().expect("the handler ran");
    assert_worker(&ran_on);
    assert!(dropped.try_recv().is_err(), "no response exists yet");

    door.let_one_through();
    let dropped_on = within("the drop", dropped.recv()).await.unwrap();
    assert_eq!(dropped_on, ran_on, "dropped on its own worker");

    let response = within("after", svc.clone().oneshot(get("/quick")))
        .await
        .unwrap();
    assert_eq!(collect(response.into_body()).await, "answer");
}
