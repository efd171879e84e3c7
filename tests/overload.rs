//! Admission and overload (guarantee 5): `poll_ready` reserves a place in the
//! shared queue, the reject policy answers `503` with `Retry-After`, the
//! queue timeout answers `503` without reaching the inner service, the layer
//! composes with `LoadShed` and `ConcurrencyLimit`, and a flood far past the
//! bounds is answered in full while the queue stays within its capacity.

mod common;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::poll;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Semaphore};
use tower::load_shed::error::Overloaded;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_affinity::{Overload, ThreadAffinity, ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

/// A guard against a test that never ends, not a timing claim.
const HANG: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if the whole test has not finished
/// within [`HANG`] (see `common::within_for`).
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    common::within_for(HANG, what, future).await
}

type Fut = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>>>>;

/// The inner service. `/block` reports that it started and then blocks its
/// worker thread until the test sends a token on `release`; `/park` reports
/// and then awaits a permit of `gate`, leaving its worker free; any other
/// path answers `200` with the path as its body. Every call logs its path.
#[derive(Clone)]
struct Inner {
    started: mpsc::UnboundedSender<String>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
    gate: Arc<Semaphore>,
    calls: Arc<Mutex<Vec<String>>>,
}

/// The test's ends of an [`Inner`].
struct Control {
    started: mpsc::UnboundedReceiver<String>,
    release: std_mpsc::Sender<()>,
    gate: Arc<Semaphore>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Control {
    /// Waits until a held request (`/block` or `/park`) runs on a worker.
    async fn started(&mut self) -> String {
        within("a held request to start", self.started.recv())
            .await
            .expect("the inner service is gone")
    }

    /// How many calls reached the inner service for `path`.
    fn calls_to(&self, path: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

fn inner() -> (Inner, Control) {
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let inner = Inner {
        started: started_tx,
        release: Arc::new(Mutex::new(release_rx)),
        gate: gate.clone(),
        calls: calls.clone(),
    };
    let control = Control {
        started: started_rx,
        release: release_tx,
        gate,
        calls,
    };
    (inner, control)
}

impl Service<Request<()>> for Inner {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Fut {
        let path = request.uri().path().to_owned();
        self.calls.lock().unwrap().push(path.clone());
        match path.as_str() {
            "/block" => {
                let _ = self.started.send(path.clone());
                // Blocks the worker thread, inside its first poll of this
                // request, as legacy blocking code does.
                let _ = self.release.lock().unwrap().recv();
                Box::pin(async move { Ok(Response::new(Full::from(path))) })
            }
            "/park" => {
                let started = self.started.clone();
                let gate = self.gate.clone();
                Box::pin(async move {
                    let _ = started.send(path.clone());
                    gate.acquire().await.expect("gate closed").forget();
                    Ok(Response::new(Full::from(path)))
                })
            }
            _ => Box::pin(async move { Ok(Response::new(Full::from(path))) }),
        }
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn body_of(response: Response<ThreadAffinityBody>) -> Bytes {
    within("the whole body", response.into_body().collect())
        .await
        .expect("the body failed")
        .to_bytes()
}

/// Polls `svc.poll_ready` exactly once.
async fn poll_ready_once<S>(svc: &mut S) -> Poll<Result<(), S::Error>>
where
    S: Service<Request<()>>,
{
    poll!(poll_fn(|cx| svc.poll_ready(cx)))
}

/// Sends `path` and awaits the head.
async fn send<S>(svc: &mut S, path: &str) -> Response<ThreadAffinityBody>
where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>>,
    S::Error: std::fmt::Debug,
{
    within(path, async {
        svc.ready().await.unwrap().call(get(path)).await.unwrap()
    })
    .await
}

/// Sends `path` on a clone of `svc` in a spawned task.
fn spawn_send(
    svc: &ThreadAffinity<Inner>,
    path: &'static str,
) -> tokio::task::JoinHandle<Response<ThreadAffinityBody>> {
    let mut svc = svc.clone();
    tokio::spawn(async move { send(&mut svc, path).await })
}

/// Asserts that `response` is `200` with `path` as its body.
async fn assert_served(response: Response<ThreadAffinityBody>, path: &str) {
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    assert_eq!(body_of(response).await, path);
}

/// Under `Overload::Wait`, `poll_ready` is `Pending` while the shared queue
/// holds `queue_capacity` places, and a clone that was ready but is dropped
/// without calling gives its place to a waiting one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_ready_waits_for_a_place_and_a_dropped_reservation_frees_it() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(2)
        .build();
    let (inner, mut control) = inner();
    let svc = layer.layer(inner);

    // The only worker is busy with a request that waits (without blocking
    // its thread) until the test opens the gate.
    let parked = spawn_send(&svc, "/park");
    control.started().await;

    // One place taken by a queued request, one by a reservation.
    let mut queued = svc.clone();
    assert!(poll_ready_once(&mut queued).await.is_ready());
    let queued_response = queued.call(get("/a"));
    let mut reserved = svc.clone();
    assert!(poll_ready_once(&mut reserved).await.is_ready());
    assert_eq!(layer.stats().queued(), 1);

    // The queue is full: a third caller waits.
    let mut waiting = svc.clone();
    assert!(
        poll_ready_once(&mut waiting).await.is_pending(),
        "poll_ready must be pending while the queue is full"
    );
    assert!(poll_ready_once(&mut waiting).await.is_pending());

    // The reservation goes back when its service is dropped without a call.
    drop(reserved);
    within("a freed place", poll_fn(|cx| waiting.poll_ready(cx)))
        .await
        .unwrap();
    let waiting_response = waiting.call(get("/b"));
    assert_eq!(layer.stats().queued(), 2);

    control.gate.add_permits(1);
    assert_served(within("/park", parked).await.unwrap(), "/park").await;
    for (response, path) in [(queued_response, "/a"), (waiting_response, "/b")] {
        assert_served(within(path, response).await.unwrap(), path).await;
    }
    assert_eq!(layer.stats().rejected(), 0);
}

/// `queue_capacity` counts requests waiting for a worker: with the only
/// worker blocked inside a handler (in its first poll, as blocking code is),
/// `queue_capacity(2)` still admits two more requests under `Overload::Wait`,
/// and only a third caller waits in `poll_ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_capacity_counts_waiting_requests_not_one_blocking_in_its_handler() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(2)
        .build();
    let (inner, mut control) = inner();
    let svc = layer.layer(inner);

    let blocked = spawn_send(&svc, "/block");
    control.started().await;

    let mut first = svc.clone();
    assert!(poll_ready_once(&mut first).await.is_ready());
    let first_response = first.call(get("/a"));
    let mut second = svc.clone();
    let second_ready = poll_ready_once(&mut second).await.is_ready();
    let mut third = svc.clone();
    let third_ready = poll_ready_once(&mut third).await.is_ready();
    // Unblock the worker before asserting, so that a failure does not leave
    // the thread blocked.
    control.release.send(()).unwrap();
    assert!(
        second_ready,
        "the second of queue_capacity(2) waiting requests must be admitted"
    );
    assert!(!third_ready, "a third waiting request must wait");
    let second_response = second.call(get("/b"));

    assert_served(within("/block", blocked).await.unwrap(), "/block").await;
    for (response, path) in [(first_response, "/a"), (second_response, "/b")] {
        assert_served(within(path, response).await.unwrap(), path).await;
    }
}

/// Under `Overload::Reject`, with the only worker blocked inside a handler,
/// `queue_capacity(2)` queues two more requests; the third gets `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_queue_capacity_counts_waiting_requests_not_one_blocking_in_its_handler() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(2)
        .overload(Overload::Reject)
        .build();
    let (inner, mut control) = inner();
    let mut svc = layer.layer(inner);

    let blocked = spawn_send(&svc, "/block");
    control.started().await;

    let first = svc.call(get("/a"));
    let second = svc.call(get("/b"));
    let third = svc.call(get("/c"));
    control.release.send(()).unwrap();

    assert_served(within("/block", blocked).await.unwrap(), "/block").await;
    let third = within("/c", third).await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    for (response, path) in [(first, "/a"), (second, "/b")] {
        assert_served(within(path, response).await.unwrap(), path).await;
    }
}

/// Under `Overload::Reject`, `poll_ready` is ready even when the queue is
/// full, and a request that finds it full is answered `503` with
/// `Retry-After` at once, without reaching the inner service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_is_always_ready_and_answers_503_with_retry_after() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(2)
        .overload(Overload::Reject)
        .build();
    let (inner, mut control) = inner();
    let mut svc = layer.layer(inner);

    let parked = spawn_send(&svc, "/park");
    control.started().await;
    let first = svc.call(get("/a"));
    let second = svc.call(get("/b"));
    assert_eq!(layer.stats().queued(), 2);

    let mut late = svc.clone();
    assert!(
        poll_ready_once(&mut late).await.is_ready(),
        "poll_ready must not wait under the reject policy"
    );
    let rejected = within("the 503", late.call(get("/c"))).await.unwrap();
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        rejected
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(!body_of(rejected).await.is_empty());
    assert_eq!(layer.stats().rejected(), 1);

    control.gate.add_permits(1);
    assert_served(within("/park", parked).await.unwrap(), "/park").await;
    for (response, path) in [(first, "/a"), (second, "/b")] {
        assert_served(within(path, response).await.unwrap(), path).await;
    }
    assert_eq!(control.calls_to("/c"), 0, "a rejected request ran");
}

/// `LoadShed` over the layer answers `Overloaded` while the queue is full
/// (the layer's `poll_ready` is pending), and serves again once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_sheds_while_the_queue_is_full() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(1)
        .build();
    let (inner, mut control) = inner();
    let svc = layer.layer(inner);
    let mut shed = ServiceBuilder::new().load_shed().service(svc.clone());

    let parked = spawn_send(&svc, "/park");
    control.started().await;
    // `/a` takes the only place in the queue.
    let mut first = svc.clone();
    within("a place for /a", first.ready()).await.unwrap();
    let queued = first.call(get("/a"));
    assert_eq!(layer.stats().queued(), 1);

    let error = within("the shed call", async {
        shed.ready().await.unwrap().call(get("/shed")).await
    })
    .await
    .expect_err("a full queue must shed the request");
    assert!(error.is::<Overloaded>(), "unexpected error: {error}");
    assert_eq!(control.calls_to("/shed"), 0);

    control.gate.add_permits(1);
    assert_served(within("/park", parked).await.unwrap(), "/park").await;
    // Once `/a` is answered, a worker has taken it off the queue.
    assert_served(within("/a", queued).await.unwrap(), "/a").await;
    let served = within("the served call", async {
        shed.ready().await.unwrap().call(get("/shed")).await
    })
    .await
    .expect("a queue with room must not shed");
    assert_served(served, "/shed").await;
}

/// Under `ConcurrencyLimit` and `Overload::Wait`, callers past the queue's
/// capacity wait in `poll_ready` (theirs or the limit's) instead of getting
/// `503`, and all are served once the worker is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limited_callers_wait_instead_of_being_rejected() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(1)
        .build();
    let (inner, mut control) = inner();
    let svc = layer.layer(inner);
    let limited = ServiceBuilder::new()
        .concurrency_limit(4)
        .service(svc.clone());

    let parked = spawn_send(&svc, "/park");
    control.started().await;

    let paths: Vec<String> = (0..8).map(|i| format!("/c{i}")).collect();
    let mut calls: Vec<_> = paths
        .iter()
        .map(|path| Box::pin(limited.clone().oneshot(get(path))))
        .collect();
    for call in &mut calls {
        assert!(
            poll!(call.as_mut()).is_pending(),
            "a caller past the queue's capacity must wait, not be answered"
        );
    }
    assert_eq!(layer.stats().queued(), 1);
    assert_eq!(layer.stats().rejected(), 0);

    control.gate.add_permits(1);
    assert_served(within("/park", parked).await.unwrap(), "/park").await;
    let responses = within("every limited call", futures::future::join_all(calls)).await;
    for (response, path) in responses.into_iter().zip(&paths) {
        assert_served(response.unwrap(), path).await;
    }
    let stats = layer.stats();
    assert_eq!(stats.rejected(), 0);
    assert_eq!(stats.admitted(), 9);
}

/// A request that waited in the queue longer than `queue_timeout` is
/// answered `503` and never reaches the inner service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_past_the_queue_timeout_gets_503_without_running() {
    let timeout = Duration::from_millis(250);
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_timeout(timeout)
        .build();
    let (inner, mut control) = inner();
    let mut svc = layer.layer(inner);

    let parked = spawn_send(&svc, "/park");
    control.started().await;
    within("a place for /late", svc.ready()).await.unwrap();
    let late = svc.call(get("/late"));
    assert_eq!(layer.stats().queued(), 1);
    // Not synchronization: this creates the condition under test, a request
    // that has waited in the queue for longer than the timeout.
    tokio::time::sleep(timeout * 2).await;

    control.gate.add_permits(1);
    assert_served(within("/park", parked).await.unwrap(), "/park").await;
    let late = within("/late", late).await.unwrap();
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(control.calls_to("/late"), 0, "a timed-out request ran");
    assert_eq!(layer.stats().timed_out(), 1);
}

/// A flood of 5,000 concurrent requests against two workers and a queue of
/// 16, under `Overload::Reject`: every request gets exactly one answer, `200`
/// with its own body or `503`, each `200` ran the inner service once and no
/// `503` did, and the totals match. (The exact queue bound is counted in
/// tests/queue_bound.rs: sampling `queued` here could not fail, as the
/// figure is the length of a queue already capped at its capacity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_answered_in_full_each_request_exactly_once() {
    const REQUESTS: usize = 5_000;
    const CLIENTS: usize = 64;
    const CAPACITY: usize = 16;
    const STREAMS: usize = 4;
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .max_streams_per_worker(STREAMS)
        .queue_capacity(CAPACITY)
        .overload(Overload::Reject)
        .build();
    let (inner, mut control) = inner();
    let svc = layer.layer(inner);

    // Both workers blocked at first, so that the flood meets a full queue.
    let blocked: Vec<_> = (0..2).map(|_| spawn_send(&svc, "/block")).collect();
    control.started().await;
    control.started().await;

    let next = Arc::new(AtomicUsize::new(0));
    let (results, mut outcomes) = mpsc::unbounded_channel();
    for _ in 0..CLIENTS {
        let mut svc = svc.clone();
        let next = next.clone();
        let results = results.clone();
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS {
                    break;
                }
                let path = format!("/r{n}");
                let response = svc.ready().await.unwrap().call(get(&path)).await.unwrap();
                let status = response.status();
                let retry_after = response.headers().contains_key(header::RETRY_AFTER);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let _ = results.send((n, status, retry_after, body == path));
            }
        });
    }
    drop(results);

    let mut answered = vec![0u32; REQUESTS];
    let (mut ok, mut unavailable) = (0usize, 0usize);
    let mut released = false;
    while let Some((n, status, retry_after, own_body)) =
        within("the next answer", outcomes.recv()).await
    {
        answered[n] += 1;
        match status {
            StatusCode::OK => {
                assert!(own_body, "request {n} got another request's body");
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry_after, "a 503 for overload must say when to retry");
                unavailable += 1;
            }
            other => panic!("request {n}: unexpected status {other}"),
        }
        if !released && ok + unavailable == 1_000 {
            // Free the workers: the rest of the flood runs against them.
            released = true;
            control.release.send(()).unwrap();
            control.release.send(()).unwrap();
        }
    }
    for handle in blocked {
        assert_served(within("/block", handle).await.unwrap(), "/block").await;
    }

    assert!(released);
    assert!(
        answered.iter().all(|&n| n == 1),
        "a request lost or answered twice"
    );
    assert_eq!(ok + unavailable, REQUESTS);
    assert!(ok > 0 && unavailable > 0, "ok {ok}, 503 {unavailable}");
    let stats = layer.stats();
    assert_eq!(stats.admitted() as usize, ok + 2);
    assert_eq!(stats.rejected() as usize, unavailable);
    // Every 200 ran the inner service once; no 503 did.
    let flood_calls = control
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with("/r"))
        .count();
    assert_eq!(flood_calls, ok);
}
