//! A retired spare gives back what its thread held: its runtime's file
//! descriptors (an epoll instance and an eventfd, which any handle or
//! waker of that runtime keeps open). Its own binary, with one test, so
//! that no other test opens or closes descriptors while it counts them.
//! Linux only: it counts them in `/proc/self/fd`.
#![cfg(target_os = "linux")]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{until, within};
use http::{Request, Response};
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_affinity::{blocking, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

/// The process's open file descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// One core worker; two handlers meet at a barrier, so the second runs on
/// a spare, which retires once idle. The process then holds as many
/// descriptors as before the spare started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_spare_leaves_no_descriptor_open() {
    let (stopped, mut stops) = mpsc::unbounded_channel();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .keep_alive(Duration::from_millis(20))
        .on_thread_stop(move |id: &WorkerId| {
            let _ = stopped.send(id.index());
        })
        .build();
    let barrier = Arc::new(Barrier::new(2));
    let svc = layer.layer(blocking::service_fn(move |req: Request<()>| {
        if req.uri().path() == "/meet" {
            barrier.wait();
        }
        Response::new(String::new())
    }));
    // The core worker is up and has served: its runtime is counted.
    within("a first answer", svc.clone().oneshot(common::get("/")))
        .await
        .unwrap();
    let before = open_fds();

    let a = tokio::spawn(svc.clone().oneshot(common::get("/meet")));
    let b = tokio::spawn(svc.clone().oneshot(common::get("/meet")));
    within("the two handlers to meet", async {
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
    })
    .await;
    assert_eq!(layer.stats().spares_started(), 1);
    assert_eq!(within("the spare to retire", stops.recv()).await, Some(1));
    until(&layer, "one thread left", |s| s.threads() == 1).await;

    assert_eq!(
        open_fds(),
        before,
        "the retired spare left descriptors open"
    );
}
