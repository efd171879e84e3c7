//! `ThreadAffinityLayer::stats`: pool totals (admitted, rejected, timed
//! out), per-worker figures (queued, active, completed, panicked) and the
//! watchdog figure `current_poll`.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Semaphore};
use tower::{Service, ServiceExt};
use tower_affinity::{Overload, ThreadAffinity, ThreadAffinityBody, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

/// A guard against a test that never ends, not a timing claim.
const HANG: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if the whole test has not finished
/// within [`HANG`] (see `common::within_for`).
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    common::within_for(HANG, what, future).await
}

type Fut = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>>>>;

const KEY: HeaderName = HeaderName::from_static("x-key");

/// The inner service. Every response carries its worker's index in
/// `x-worker`. `/block` reports `(path, worker)` and blocks its thread until
/// the test sends a token on `release`; `/yield-block` does the same after
/// first yielding once (so it blocks in a later poll, not the first);
/// `/park` reports and awaits a permit of `gate` without blocking; `/panic`
/// reports and panics; any other path answers its path.
#[derive(Clone)]
struct Inner {
    started: mpsc::UnboundedSender<(String, usize)>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
    gate: Arc<Semaphore>,
}

struct Control {
    started: mpsc::UnboundedReceiver<(String, usize)>,
    release: std_mpsc::Sender<()>,
    gate: Arc<Semaphore>,
}

impl Control {
    /// Waits for the next report of a started request: its path and worker.
    async fn started(&mut self) -> (String, usize) {
        within("a request to start", self.started.recv())
            .await
            .expect("the inner service is gone")
    }
}

fn inner() -> (Inner, Control) {
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let gate = Arc::new(Semaphore::new(0));
    let inner = Inner {
        started: started_tx,
        release: Arc::new(Mutex::new(release_rx)),
        gate: gate.clone(),
    };
    let control = Control {
        started: started_rx,
        release: release_tx,
        gate,
    };
    (inner, control)
}

fn answer(path: String, worker: usize) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("x-worker", worker.to_string())
        .body(Full::from(path))
        .unwrap())
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
        let worker = request.extensions().get::<WorkerId>().unwrap().index();
        let started = self.started.clone();
        match path.as_str() {
            "/block" => {
                let _ = started.send((path.clone(), worker));
                let _ = self.release.lock().unwrap().recv();
                Box::pin(async move { answer(path, worker) })
            }
            "/yield-block" => {
                let release = self.release.clone();
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    let _ = started.send((path.clone(), worker));
                    let _ = release.lock().unwrap().recv();
                    answer(path, worker)
                })
            }
            "/park" => {
                let gate = self.gate.clone();
                Box::pin(async move {
                    let _ = started.send((path.clone(), worker));
                    gate.acquire().await.expect("gate closed").forget();
                    answer(path, worker)
                })
            }
            "/panic" => {
                let _ = started.send((path.clone(), worker));
                panic!("the handler panicked on purpose");
            }
            _ => Box::pin(async move { answer(path, worker) }),
        }
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn keyed(path: &str, key: &str) -> Request<()> {
    Request::get(path).header(KEY, key).body(()).unwrap()
}

async fn send(
    svc: &mut ThreadAffinity<Inner>,
    request: Request<()>,
) -> Response<ThreadAffinityBody> {
    within("a response", async {
        svc.ready().await.unwrap().call(request).await.unwrap()
    })
    .await
}

/// Sends `request` on a clone of `svc` in a spawned task.
fn spawn_send(
    svc: &ThreadAffinity<Inner>,
    request: Request<()>,
) -> tokio::task::JoinHandle<Response<ThreadAffinityBody>> {
    let mut svc = svc.clone();
    tokio::spawn(async move { send(&mut svc, request).await })
}

fn worker_of(response: &Response<ThreadAffinityBody>) -> usize {
    response.headers()["x-worker"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The pool totals count requests admitted to a queue, rejected at once
/// (queue full) and timed out in the queue, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_count_admitted_rejected_and_timed_out_requests() {
    let timeout = Duration::from_millis(250);
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .queue_capacity(1)
        .overload(Overload::Reject)
        .queue_timeout(timeout)
        .build();
    let (inner, mut control) = inner();
    let mut svc = layer.layer(inner);
    let stats = layer.stats();
    assert_eq!(
        (stats.admitted(), stats.rejected(), stats.timed_out()),
        (0, 0, 0)
    );

    let parked = spawn_send(&svc, get("/park"));
    control.started().await;
    let late = svc.call(get("/late"));
    let full = [svc.call(get("/full-1")), svc.call(get("/full-2"))];
    for response in full {
        let response = within("a 503", response).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let stats = layer.stats();
    assert_eq!(
        (stats.admitted(), stats.rejected(), stats.timed_out()),
        (2, 2, 0)
    );

    // Not synchronization: this creates the condition under test, a request
    // that has waited in the queue for longer than the timeout.
    tokio::time::sleep(timeout * 2).await;
    control.gate.add_permits(1);
    assert_eq!(
        within("/park", parked).await.unwrap().status(),
        StatusCode::OK
    );
    let late = within("/late", late).await.unwrap();
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A request withdrawn by its queue timeout keeps its place until the
    // worker takes it off the queue and drops it.
    within("the withdrawn request to leave the queue", async {
        while layer.stats().queued() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let after = send(&mut svc, get("/after")).await;
    assert_eq!(after.status(), StatusCode::OK);

    // After shutdown every figure is final.
    within("shutdown", layer.shutdown()).await;
    let stats = layer.stats();
    assert_eq!(
        (stats.admitted(), stats.rejected(), stats.timed_out()),
        (3, 2, 1)
    );
    let worker = &stats.workers()[0];
    // `/park` and `/after` ran; `/late` never reached the worker's service.
    assert_eq!(worker.completed(), 2);
    assert_eq!(worker.active(), 0);
    assert_eq!(worker.panicked(), 0);
    assert_eq!(stats.queued(), 0);
}

/// Each worker counts the requests it finished (a panicked one included)
/// and the panics it caught, and `active` shows a request while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_count_completed_and_panicked_requests_and_show_active_ones() {
    let layer = ThreadAffinityLayer::builder().workers(2).build();
    let (inner, mut control) = inner();
    let mut svc = layer.layer(inner);

    let mut completed = [0u64; 2];
    let mut panicked = [0u64; 2];
    for round in 0..12 {
        if round % 4 == 3 {
            let response = send(&mut svc, get("/panic")).await;
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let (_, worker) = control.started().await;
            completed[worker] += 1;
            panicked[worker] += 1;
            // Not read here: the 500 may reach us before the worker counts
            // the panic; the figures are checked once final, after shutdown.
        } else {
            let response = send(&mut svc, get("/ok")).await;
            assert_eq!(response.status(), StatusCode::OK);
            completed[worker_of(&response)] += 1;
        }
    }

    let blocked = spawn_send(&svc, get("/block"));
    let (_, worker) = control.started().await;
    completed[worker] += 1;
    // (The other worker may still be finishing its last request: its
    // figure is only final after shutdown.)
    assert_eq!(layer.stats().workers()[worker].active(), 1);
    control.release.send(()).unwrap();
    assert_eq!(
        within("/block", blocked).await.unwrap().status(),
        StatusCode::OK
    );

    within("shutdown", layer.shutdown()).await;
    let stats = layer.stats();
    for (index, worker) in stats.workers().iter().enumerate() {
        assert_eq!(worker.index(), index);
        assert_eq!(worker.completed(), completed[index], "worker {index}");
        assert_eq!(worker.panicked(), panicked[index], "worker {index}");
        assert_eq!(worker.active(), 0, "worker {index}");
        assert_eq!(worker.replaced(), 0, "worker {index}");
    }
    assert_eq!(stats.admitted(), 13);
}

/// `current_poll` is `None` for a worker that is not running user code,
/// and `Some` and growing while a worker is blocked in a handler, whether
/// it blocks in the request's first poll or a later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_poll_grows_while_a_worker_is_blocked_and_is_none_when_idle() {
    for path in ["/block", "/yield-block"] {
        // A fresh pool each time: the worker that does not take the request
        // has never run user code.
        let layer = ThreadAffinityLayer::builder().workers(2).build();
        let (inner, mut control) = inner();
        let svc = layer.layer(inner);
        assert!(layer
            .stats()
            .workers()
            .iter()
            .all(|w| w.current_poll().is_none()));

        let blocked = spawn_send(&svc, get(path));
        let (_, worker) = control.started().await;
        let before = layer.stats().workers()[worker]
            .current_poll()
            .unwrap_or_else(|| panic!("{path}: no current poll while blocked"));
        // Not synchronization: the worker stays blocked; this lets the time
        // that the figure must show go by.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = layer.stats();
        let after = stats.workers()[worker].current_poll().unwrap();
        assert!(
            after >= before + Duration::from_millis(50),
            "{path}: {before:?} then {after:?}"
        );
        assert_eq!(
            stats.workers()[1 - worker].current_poll(),
            None,
            "{path}: the idle worker"
        );
        control.release.send(()).unwrap();
        assert_eq!(
            within(path, blocked).await.unwrap().status(),
            StatusCode::OK
        );

        within("shutdown", layer.shutdown()).await;
        assert!(layer
            .stats()
            .workers()
            .iter()
            .all(|w| w.current_poll().is_none()));
    }
}

/// `queued` counts requests waiting in the shared queue, and each worker's
/// `queued` the keyed requests waiting in its own queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_counts_the_shared_queue_and_each_workers_own_queue() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .max_streams_per_worker(1)
        .affinity_header(KEY)
        .build();
    let (inner, mut control) = inner();
    let mut svc = layer.layer(inner);

    // A key for each worker, found by asking.
    let mut keys = HashMap::new();
    for i in 0..64 {
        let key = format!("key-{i}");
        let response = send(&mut svc, keyed("/probe", &key)).await;
        keys.entry(worker_of(&response)).or_insert(key);
        if keys.len() == 2 {
            break;
        }
    }
    assert_eq!(keys.len(), 2, "64 keys all went to one worker");

    // Both workers busy (one request each is their limit).
    let parked: Vec<_> = (0..2).map(|_| spawn_send(&svc, get("/park"))).collect();
    let mut busy = [control.started().await.1, control.started().await.1];
    busy.sort_unstable();
    assert_eq!(busy, [0, 1]);

    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(svc.call(get("/shared")));
    }
    for _ in 0..3 {
        waiting.push(svc.call(keyed("/own", &keys[&0])));
    }
    waiting.push(svc.call(keyed("/own", &keys[&1])));
    let stats = layer.stats();
    assert_eq!(stats.queued(), 2);
    assert_eq!(stats.workers()[0].queued(), 3);
    assert_eq!(stats.workers()[1].queued(), 1);

    control.gate.add_permits(2);
    for handle in parked {
        assert_eq!(
            within("/park", handle).await.unwrap().status(),
            StatusCode::OK
        );
    }
    for response in waiting {
        let response = within("a queued request", response).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = within("its body", response.into_body().collect()).await;
        assert!(!body.unwrap().to_bytes().is_empty());
    }
    let stats = layer.stats();
    assert_eq!(stats.queued(), 0);
    assert!(stats.workers().iter().all(|w| w.queued() == 0));
}
