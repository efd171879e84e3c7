//! A wrapped service's instances live as long as the service's handles:
//! when the last handle is dropped, each worker drops its instance on its
//! own thread, without waiting for the pool to shut down.

mod common;

use std::sync::Arc;
use std::thread::{self, ThreadId};

use bytes::Bytes;
use common::{get, within};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_affinity::{blocking, ThreadAffinityLayer};

/// Reports the thread it is dropped on, and which service it belonged to.
struct Probe {
    service: usize,
    dropped: mpsc::UnboundedSender<(usize, ThreadId)>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.dropped.send((self.service, thread::current().id()));
    }
}

/// A service whose every instance holds a `Probe`, and the thread ids of
/// the workers that served it.
fn probed(
    layer: &ThreadAffinityLayer,
    service: usize,
    dropped: &mpsc::UnboundedSender<(usize, ThreadId)>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<tower_affinity::ThreadAffinityBody>,
    Error = std::convert::Infallible,
    Future = tower_affinity::future::ResponseFuture<std::convert::Infallible>,
> + Clone {
    let dropped = dropped.clone();
    layer.service_with(move |_| {
        let probe = Arc::new(Probe {
            service,
            dropped: dropped.clone(),
        });
        blocking::service_fn(move |_: Request<()>| {
            let _ = &probe;
            let id = format!("{:?}", thread::current().id());
            Response::new(Full::new(Bytes::from(id)))
        })
    })
}

/// Dropping the last handle of a used service drops its instance on the
/// worker that made it, while the pool keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_dropped_drops_the_instance_on_its_worker() {
    let layer = ThreadAffinityLayer::new(1);
    let (tx, mut dropped) = mpsc::unbounded_channel();
    let svc = probed(&layer, 7, &tx);
    let response = within("a response", svc.clone().oneshot(get("/")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let served_on = common::collect(response.into_body()).await;
    assert!(dropped.try_recv().is_err(), "dropped while a handle lives");

    drop(svc);
    let (service, thread) = within("the instance to drop", dropped.recv())
        .await
        .unwrap();
    assert_eq!(service, 7);
    assert_eq!(format!("{thread:?}"), String::from_utf8_lossy(&served_on));
    // The pool still serves other services.
    let other = probed(&layer, 8, &tx);
    let response = within("another", other.oneshot(get("/"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// 1,000 services made, used once on each of two workers and dropped leave
/// no instance behind: every one is dropped, each on a worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_lived_services_leave_no_instances() {
    const SERVICES: usize = 1_000;
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name("lifetime")
        .build();
    let (tx, mut dropped) = mpsc::unbounded_channel();
    let mut made = 0;
    for service in 0..SERVICES {
        let svc = probed(&layer, service, &tx);
        let response = within("a response", svc.oneshot(get("/"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        made += 1;
    }
    let mut seen = vec![false; SERVICES];
    within("every instance to drop", async {
        for _ in 0..made {
            let (service, _) = dropped.recv().await.unwrap();
            assert!(!seen[service], "service {service} dropped twice");
            seen[service] = true;
        }
    })
    .await;
    assert!(seen.iter().all(|&s| s));
}

/// A worker busy in a handler when a service loses its last handle drops
/// that service's instance at its next turn, before it serves the request
/// queued meanwhile: a worker that always has work still sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_drops_a_retired_instance_before_its_next_request() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        // No spare: the queued request waits for this worker.
        .max_workers(1)
        .build();
    let (tx, mut dropped) = mpsc::unbounded_channel();
    let retired = probed(&layer, 1, &tx);
    within("the instance to be made", retired.clone().oneshot(get("/")))
        .await
        .unwrap();

    // A service that blocks its worker on `/block` until released, and
    // reports into the same channel as the probe when it serves `/next`.
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let served = tx.clone();
    let other = layer.service(blocking::service_fn(move |req: Request<()>| {
        if req.uri().path() == "/block" {
            started_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        } else {
            served.send((2, thread::current().id())).unwrap();
        }
        Response::new(Full::new(Bytes::new()))
    }));
    let blocked = tokio::spawn(other.clone().oneshot(get("/block")));
    within("the handler to block", started.recv())
        .await
        .unwrap();
    let next = tokio::spawn(other.clone().oneshot(get("/next")));
    common::until(&layer, "the request to queue", |s| s.queued() == 1).await;

    drop(retired);
    release.send(()).unwrap();
    within("/block", blocked).await.unwrap().unwrap();
    within("/next", next).await.unwrap().unwrap();
    let first = within("an event", dropped.recv()).await.unwrap().0;
    let second = within("an event", dropped.recv()).await.unwrap().0;
    assert_eq!(
        (first, second),
        (1, 2),
        "the retired instance (1) must drop before the next request (2) runs"
    );
}
