//! `queue_timeout` bounds the whole wait before a request starts, the wait
//! in `poll_ready` for a place in a full queue included, while the only
//! worker is stuck in user code: a limit kept by the workers, or by the
//! queue alone, would leave callers waiting until the worker comes back.

mod common;

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{collect, get, within};
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};

/// One worker, a queue of 2, a queue timeout of 100 ms; the worker stuck
/// in a handler until the test releases it. Eight callers each call
/// `ready()` then `call()`: two find a place in the queue, six wait in
/// `poll_ready` behind places that the first two keep (withdrawn jobs keep
/// theirs until a worker takes them off). All eight are answered `503`
/// before the worker is released.
#[tokio::test]
async fn callers_waiting_for_a_place_are_answered_within_the_queue_timeout() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .queue_capacity(2)
        .queue_timeout(Duration::from_millis(100))
        .build();
    let (started, mut starts) = mpsc::unbounded_channel();
    let (release, released) = std_mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let svc = layer.service(blocking::service_fn(move |req: Request<()>| {
        if req.uri().path() == "/block" {
            let _ = started.send(());
            let _ = released.lock().unwrap().recv();
        }
        Response::new(String::from("served"))
    }));
    let stuck = tokio::spawn(svc.clone().oneshot(get("/block")));
    within("the worker stuck", starts.recv()).await;
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let ready = svc.ready().await.unwrap();
                ready.call(get("/quick")).await.unwrap().status()
            })
        })
        .collect();
    for caller in callers {
        let status = within("every caller answered", caller).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(layer.stats().timed_out(), 8, "{:?}", layer.stats());
    release.send(()).unwrap();
    let response = within("the stuck request", stuck).await.unwrap().unwrap();
    assert_eq!(collect(response.into_body()).await, "served");
}
