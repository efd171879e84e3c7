//! Guarantee 5, counted exactly: a worker's queue admits `queue_capacity`
//! requests and not one more; the rest are answered `503` at once.

mod common;

use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use http::{header, HeaderName, Request, Response, StatusCode};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::service_fn;
use tower_affinity::{Overload, ThreadAffinityLayer};
use tower_layer::Layer;

use common::{collect, within};

const CAPACITY: usize = 16;
const EXTRA: usize = 40;

/// A keyed request for `path` (keyed requests go to core workers only, so
/// no spare worker drains the queue under test).
fn keyed(path: &str) -> Request<()> {
    Request::get(path).header("x-key", "k").body(()).unwrap()
}

/// With its only worker blocked in a handler, under `Overload::Reject`,
/// `CAPACITY + EXTRA` calls in a row: exactly the first `CAPACITY` are
/// queued (their futures pending, the worker's `queued` figure equal to
/// `CAPACITY`), exactly the `EXTRA` after them are answered `503` with
/// `Retry-After` before any worker sees them; once the worker is free the
/// queued ones are served, each with its own body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_admits_exactly_queue_capacity_and_answers_the_rest_503() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let (release, release_rx) = std_mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .queue_capacity(CAPACITY)
        .overload(Overload::Reject)
        .affinity_header(HeaderName::from_static("x-key"))
        .build();
    let log = calls.clone();
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        let path = req.uri().path().to_owned();
        log.lock().unwrap().push(path.clone());
        if path == "/block" {
            let _ = started_tx.send(());
            // Blocks the worker thread, as legacy code does; fails (ends
            // early) only if the test is gone.
            let _ = release_rx.lock().unwrap().recv();
        }
        Response::new(http_body_util::Full::new(Bytes::from(path)))
    }));

    let blocked = tokio::spawn(svc.clone().oneshot(keyed("/block")));
    within("/block to start", started.recv()).await.unwrap();

    let mut queued = Vec::new();
    let mut rejected = Vec::new();
    for n in 0..CAPACITY + EXTRA {
        let path = format!("/r{n}");
        let ready = within("poll_ready", svc.ready()).await.unwrap();
        let mut response = Box::pin(ready.call(keyed(&path)));
        match futures::poll!(response.as_mut()) {
            Poll::Pending => queued.push((n, path, response)),
            Poll::Ready(answer) => rejected.push((n, answer.unwrap())),
        }
    }
    let admitted: Vec<usize> = queued.iter().map(|(n, ..)| *n).collect();
    assert_eq!(admitted, (0..CAPACITY).collect::<Vec<_>>(), "queued");
    assert_eq!(rejected.len(), EXTRA);
    for (n, response) in rejected {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "/r{n}");
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
    // The worker is blocked: these figures cannot move under the test.
    let stats = layer.stats();
    assert_eq!(stats.workers()[0].queued(), CAPACITY);
    assert_eq!(stats.rejected() as usize, EXTRA);
    assert_eq!(*calls.lock().unwrap(), ["/block"], "only /block ran");

    release.send(()).unwrap();
    let blocked = within("/block", blocked).await.unwrap().unwrap();
    assert_eq!(collect(blocked.into_body()).await, "/block");
    for (n, path, response) in queued {
        let response = within("a queued request", response).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "/r{n}");
        assert_eq!(collect(response.into_body()).await, path);
    }
    let stats = layer.stats();
    assert_eq!(stats.admitted() as usize, CAPACITY + 1);
    assert_eq!(stats.rejected() as usize, EXTRA);
}
