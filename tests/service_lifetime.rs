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
