//! Nested calls: code running on a worker that calls into its own pool in a
//! way only that worker could serve gets a `500` at once, never a deadlock.
//!
//! The handlers below are blocking code: they wait for the nested response
//! with `futures::executor::block_on`, as legacy code calling a client
//! would, and report what they got.

mod common;

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::executor::block_on;
use futures::poll;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::service_fn;
use tower_affinity::{ThreadAffinityBody, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

/// A guard against a test that never ends, not a timing claim.
const HANG: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if the whole test has not finished
/// within [`HANG`] (see `common::within_for`).
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    common::within_for(HANG, what, future).await
}

const KEY: HeaderName = HeaderName::from_static("x-key");

/// Answers the index of the worker it ran on.
fn echo_worker(request: Request<()>) -> Response<String> {
    let worker = request.extensions().get::<WorkerId>().unwrap();
    Response::new(worker.index().to_string())
}

/// Sends `request` through `svc` from blocking code and returns the status
/// and body it got.
fn call_blocking<S>(svc: &mut S, request: Request<()>) -> (StatusCode, String)
where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>>,
    S::Error: std::fmt::Debug,
{
    block_on(async {
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    })
}

async fn send<S>(svc: &mut S, request: Request<()>) -> Response<ThreadAffinityBody>
where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>>,
    S::Error: std::fmt::Debug,
{
    within("a response", async {
        svc.ready().await.unwrap().call(request).await.unwrap()
    })
    .await
}

async fn body_of(response: Response<ThreadAffinityBody>) -> String {
    let body = within("a body", response.into_body().collect()).await;
    String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap()
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn keyed(key: &str) -> Request<()> {
    Request::get("/echo").header(KEY, key).body(()).unwrap()
}

/// A handler calling, through `block_on`, a service of its own pool keyed
/// to its own worker gets `500` at once; keyed to the other worker, the
/// call is served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_keyed_to_the_calling_worker_gets_500() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .affinity_header(KEY)
        .build();
    let mut echo = layer.layer(service_fn(echo_worker));

    // A key for each worker, found by asking.
    let mut found = HashMap::new();
    for i in 0..64 {
        let key = format!("key-{i}");
        let worker: usize = body_of(send(&mut echo, keyed(&key)).await)
            .await
            .parse()
            .unwrap();
        found.entry(worker).or_insert(key);
        if found.len() == 2 {
            break;
        }
    }
    assert_eq!(found.len(), 2, "64 keys all went to one worker");
    let keys = Arc::new(OnceLock::new());
    keys.set(found).unwrap();

    let outer = {
        let keys = keys.clone();
        let mut echo = echo.clone();
        service_fn(move |request: Request<()>| {
            let me = request.extensions().get::<WorkerId>().unwrap().index();
            let keys = keys.get().unwrap();
            let (own, _) = call_blocking(&mut echo, keyed(&keys[&me]));
            let (other, served_by) = call_blocking(&mut echo, keyed(&keys[&(1 - me)]));
            Response::new(format!(
                "{me} {} {} {served_by}",
                own.as_u16(),
                other.as_u16()
            ))
        })
    };
    let mut outer = layer.layer(outer);
    // Outer requests keyed to each worker in turn, so that both are callers.
    for round in 0..4 {
        let worker = round % 2;
        let request = Request::get("/outer")
            .header(KEY, keys.get().unwrap()[&worker].as_str())
            .body(())
            .unwrap();
        let report = body_of(send(&mut outer, request).await).await;
        assert_eq!(
            report,
            format!("{worker} 500 200 {}", 1 - worker),
            "worker {worker}: own-key status, other-key status, other's index"
        );
    }
}

/// In a single-worker pool, any nested call from its worker (keyed or not)
/// gets `500` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_nested_call_in_a_single_worker_pool_gets_500() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .affinity_header(KEY)
        .build();
    let echo = layer.layer(service_fn(echo_worker));
    let outer = {
        let mut echo = echo.clone();
        service_fn(move |_request: Request<()>| {
            let (unkeyed, _) = call_blocking(&mut echo, get("/echo"));
            let (keyed, _) = call_blocking(&mut echo, keyed("any"));
            Response::new(format!("{} {}", unkeyed.as_u16(), keyed.as_u16()))
        })
    };
    let mut outer = layer.layer(outer);
    for _ in 0..3 {
        let report = body_of(send(&mut outer, get("/outer")).await).await;
        assert_eq!(report, "500 500");
    }
    // The worker still serves.
    let mut echo = echo;
    assert_eq!(body_of(send(&mut echo, get("/echo")).await).await, "0");
}

/// With one core worker and spares allowed, an unkeyed nested call from
/// the worker is served by a spare (the worker blocks waiting for it); a
/// keyed one still gets `500`, since keys go to core workers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_nested_call_in_a_one_worker_pool_with_spares_is_served_by_a_spare() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .affinity_header(KEY)
        .build();
    let echo = layer.layer(service_fn(echo_worker));
    let outer = {
        let mut echo = echo.clone();
        service_fn(move |_request: Request<()>| {
            let (unkeyed, on) = call_blocking(&mut echo, get("/echo"));
            let (keyed, _) = call_blocking(&mut echo, keyed("any"));
            Response::new(format!("{} {on} {}", unkeyed.as_u16(), keyed.as_u16()))
        })
    };
    let mut outer = layer.layer(outer);
    let report = body_of(send(&mut outer, get("/outer")).await).await;
    assert_eq!(report, "200 1 500");
}

/// A nested call refused with `500` does not keep a place in the queue:
/// after it, the whole `queue_capacity` is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_nested_call_gives_back_its_place_in_the_queue() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .queue_capacity(1)
        .build();
    let echo = layer.layer(service_fn(echo_worker));
    let outer = {
        // This handle lives on the worker as long as the pool does.
        let mut echo = echo.clone();
        service_fn(move |_request: Request<()>| {
            let (status, _) = call_blocking(&mut echo, get("/echo"));
            Response::new(status.as_u16().to_string())
        })
    };
    let mut outer = layer.layer(outer);
    let report = body_of(send(&mut outer, get("/outer")).await).await;
    assert_eq!(report, "500");

    let mut probe = echo.clone();
    assert!(
        poll!(poll_fn(|cx| probe.poll_ready(cx))).is_ready(),
        "the queue's only place is still held after the refused call"
    );
}

/// In a single-worker pool whose queue is full, a nested call from the
/// worker gets `500` instead of waiting in `poll_ready` for a place that
/// only that worker could free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_waiting_for_a_place_only_its_worker_can_free_gets_500() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .queue_capacity(1)
        .build();
    let echo = layer.layer(service_fn(echo_worker));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (go, go_rx) = std_mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let outer = {
        let mut echo = echo.clone();
        service_fn(move |_request: Request<()>| {
            let _ = started_tx.send(());
            let _ = go_rx.lock().unwrap().recv();
            let (status, _) = call_blocking(&mut echo, get("/echo"));
            Response::new(status.as_u16().to_string())
        })
    };
    let mut outer = layer.layer(outer);
    let outer = tokio::spawn(async move { send(&mut outer, get("/outer")).await });
    within("the outer handler to start", started.recv())
        .await
        .unwrap();

    // Fill the queue while the worker is in the handler.
    let mut filler = echo.clone();
    assert!(poll!(poll_fn(|cx| filler.poll_ready(cx))).is_ready());
    let queued = filler.call(get("/echo"));
    assert_eq!(layer.stats().queued(), 1);
    go.send(()).unwrap();

    let report = body_of(within("the outer response", outer).await.unwrap()).await;
    assert_eq!(report, "500");
    assert_eq!(
        body_of(within("the queued request", queued).await.unwrap()).await,
        "0"
    );
}
