//! Shutdown by drop: when the last layer and service handle goes, queued
//! requests get `503`, running ones finish, and the worker threads end.

mod common;

use std::cell::RefCell;
use std::sync::{mpsc as std_mpsc, Arc, Barrier, Mutex};
use std::thread::{self, ThreadId};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::{service_fn, IterBody};
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{assert_worker_name, collect, frame_data, get, next_data, next_frame, send, within};

/// Sends its thread's id and name when its thread ends (thread-local
/// destructors run at thread exit).
struct ExitNotice {
    thread: ThreadId,
    name: String,
    tx: std_mpsc::Sender<(ThreadId, String)>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send((self.thread, std::mem::take(&mut self.name)));
    }
}

thread_local! {
    static EXIT_NOTICE: RefCell<Option<ExitNotice>> = const { RefCell::new(None) };
}

/// When the last layer and service handle is dropped, every worker thread
/// ends: each worker (both were held busy at once, at a barrier) set a
/// thread-local whose destructor reports the thread's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_end_when_the_last_handle_is_dropped() {
    let (exits, exited) = std_mpsc::channel();
    let barrier = Arc::new(Barrier::new(2));
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .thread_name("exits")
        .build();
    let svc = layer.layer(service_fn(move |_: Request<()>| {
        EXIT_NOTICE.with(|notice| {
            notice.borrow_mut().get_or_insert_with(|| ExitNotice {
                thread: thread::current().id(),
                name: common::thread_name(),
                tx: exits.clone(),
            });
        });
        barrier.wait();
        Response::new(Full::new(Bytes::from("here")))
    }));

    let (a, b) = within("two requests at the barrier", async {
        futures::join!(svc.clone().oneshot(get("/")), svc.clone().oneshot(get("/")))
    })
    .await;
    for response in [a, b] {
        assert_eq!(collect(response.unwrap().into_body()).await, "here");
    }

    drop(svc);
    drop(layer);
    let notices = tokio::task::spawn_blocking(move || {
        (0..2)
            .map(|_| {
                exited
                    .recv_timeout(common::HANG)
                    .expect("a worker thread did not end")
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (_, name) in &notices {
        assert_worker_name(name, "exits");
    }
    assert_ne!(notices[0].0, notices[1].0, "one thread reported twice");
}

/// Requests still queued when the last handle is dropped get `503`, while
/// the request running at that moment completes with `200`.
#[tokio::test]
async fn queued_requests_get_503_when_the_last_handle_is_dropped() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release, held) = std_mpsc::channel::<()>();
    let held = Arc::new(Mutex::new(held));
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .max_streams_per_worker(1)
        .build();
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        if req.uri().path() == "/hold" {
            let _ = started_tx.send(());
            held.lock().unwrap().recv().expect("the test let go");
            return Response::new(Full::new(Bytes::from("held")));
        }
        Response::new(Full::new(Bytes::from("ran")))
    }));

    let running = svc.ready().await.unwrap().call(get("/hold"));
    within("the held request starting", started.recv()).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(svc.ready().await.unwrap().call(get("/queued")));
    }
    drop(svc);
    drop(layer);
    release.send(()).unwrap();

    let response = within("the held response", running).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, "held");
    for waiting in queued {
        let response = within("a queued response", waiting).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert_ne!(collect(response.into_body()).await, "ran");
    }
}

/// A response still streaming when the last handle is dropped is not cut
/// short: it ends intact and cleanly.
#[tokio::test]
async fn a_running_stream_finishes_after_the_last_handle_is_dropped() {
    const FRAMES: usize = 100;
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .body_buffer(2)
        .merge_frames(0)
        .build();
    let mut svc = layer.layer(service_fn(|_: Request<()>| {
        Response::new(IterBody::new(
            (0..FRAMES).map(|i| Ok::<_, std::convert::Infallible>(frame_data(i))),
        ))
    }));

    let mut body = send(&mut svc, get("/")).await.into_body();
    assert_eq!(next_data(&mut body).await, frame_data(0));
    drop(svc);
    drop(layer);
    for i in 1..FRAMES {
        assert_eq!(next_data(&mut body).await, frame_data(i));
    }
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
}
