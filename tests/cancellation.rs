//! `Cancellation`: blocking code on a worker sees its request cut by the
//! client's disconnect, the body's drop, a shutdown's timeout and the
//! response deadline.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response};
use tokio::io::AsyncWriteExt;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::{self, IterBody};
use tower_affinity::cancel::Cancellation;
use tower_affinity::ThreadAffinityLayer;

use common::{bounded, HANG};

/// A loop that checks its request once per `go`, reporting each answer.
#[derive(Clone)]
struct Checker {
    go: Arc<Mutex<mpsc::Receiver<()>>>,
    checks: mpsc::Sender<bool>,
}

/// The test's ends of a [`Checker`].
struct Steps {
    go: mpsc::Sender<()>,
    checks: mpsc::Receiver<bool>,
}

fn checker() -> (Checker, Steps) {
    let (go, go_rx) = mpsc::channel();
    let (checks_tx, checks) = mpsc::channel();
    let checker = Checker {
        go: Arc::new(Mutex::new(go_rx)),
        checks: checks_tx,
    };
    (checker, Steps { go, checks })
}

impl Checker {
    /// Checks until cut, one check per `go`; how many checks it made.
    fn run(&self, cancel: &Cancellation) -> usize {
        let go = self.go.lock().unwrap();
        let mut checks = 0;
        while go.recv().is_ok() {
            checks += 1;
            let cut = cancel.is_cancelled();
            let _ = self.checks.send(cut);
            if cut {
                break;
            }
        }
        checks
    }
}

impl Steps {
    /// One check, run on the worker (blocking: call off the runtime).
    async fn check(&self) -> bool {
        self.go.send(()).unwrap();
        let checks = &self.checks;
        tokio::task::block_in_place(|| checks.recv_timeout(HANG).expect("a check"))
    }
}

/// Wraps a future and says when it is dropped (after its inner future).
struct DropSignal<F> {
    inner: Option<Pin<Box<F>>>,
    dropped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<F: Future> Future for DropSignal<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.inner
            .as_mut()
            .expect("polled after drop")
            .as_mut()
            .poll(cx)
    }
}

impl<F> Drop for DropSignal<F> {
    fn drop(&mut self) {
        drop(self.inner.take());
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.send(());
        }
    }
}

/// A blocking handler that loops checking its cancellation sees the
/// client's disconnect over HTTP at its first check after hyper dropped the
/// response future, while the worker thread was blocked in it the whole
/// time; it then returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_loop_ends_at_its_first_check_after_the_client_goes() {
    bounded(HANG, async {
        let layer = ThreadAffinityLayer::new(1);
        let (checker, steps) = checker();
        let (ended_tx, ended) = mpsc::channel();
        let svc = layer.service(blocking::service_fn(
            move |_req: Request<axum::body::Body>| {
                let cancel = Cancellation::current().expect("a request's handler");
                let _ = ended_tx.send(checker.run(&cancel));
                Response::new(axum::body::Body::empty())
            },
        ));
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
        let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
        let svc = svc.map_future(move |future| DropSignal {
            inner: Some(Box::pin(future)),
            dropped: dropped_tx.lock().unwrap().take(),
        });
        let router = axum::Router::new().route_service("/report", svc);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /report HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            assert!(!steps.check().await, "cut while its client waits");
        }
        drop(client);
        dropped.await.unwrap();
        assert!(steps.check().await, "the first check after the drop");
        let checks = tokio::task::block_in_place(|| ended.recv_timeout(HANG).unwrap());
        assert_eq!(checks, 4, "the loop went on after it saw the cut");
    })
    .await;
}

/// A body produced by a blocking loop sees its reader drop the body: the
/// signal moves from the reply to the body's channel when the head goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_loop_ends_at_its_first_check_after_the_body_is_dropped() {
    bounded(HANG, async {
        let layer = ThreadAffinityLayer::new(1);
        let (checker, steps) = checker();
        let (ended_tx, ended) = mpsc::channel();
        let mut svc = layer.service(blocking::service_fn(move |_req: Request<()>| {
            let (checker, ended_tx) = (checker.clone(), ended_tx.clone());
            let mut first = true;
            let chunks = std::iter::from_fn(move || {
                if std::mem::take(&mut first) {
                    return Some(Ok::<_, Infallible>(Bytes::from_static(b"first")));
                }
                let cancel = Cancellation::current().expect("in the body's poll");
                let _ = ended_tx.send(checker.run(&cancel));
                None
            });
            Response::new(IterBody::new(chunks))
        }));
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        let mut body = response.into_body();
        assert_eq!(common::next_data(&mut body).await, "first");
        assert!(!steps.check().await, "cut while its reader reads");
        drop(body);
        assert!(steps.check().await, "the first check after the drop");
        let checks = tokio::task::block_in_place(|| ended.recv_timeout(HANG).unwrap());
        assert_eq!(checks, 2);
    })
    .await;
}

/// A handler blocked in `wait_timeout(Duration::MAX)` returns `true` when
/// `shutdown_timeout` runs out, on its worker thread, while its caller
/// still waits; `Cancellation::current` is `None` off the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_timeout_ends_a_blocking_wait() {
    bounded(HANG, async {
        assert!(Cancellation::current().is_none());
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .thread_name("cut")
            .build();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let started_tx = Arc::new(Mutex::new(Some(started_tx)));
        let (woke_tx, woke) = mpsc::channel();
        let mut svc = layer.service(blocking::service_fn(move |_req: Request<()>| {
            let cancel = Cancellation::current().unwrap();
            let _ = started_tx.lock().unwrap().take().unwrap().send(());
            let cut = cancel.wait_timeout(Duration::MAX);
            let _ = woke_tx.send((cut, cancel.is_cancelled(), common::thread_name()));
            Response::new(String::new())
        }));
        let call = svc.ready().await.unwrap().call(Request::new(()));
        let call = tokio::spawn(call);
        started.await.unwrap();
        let report = layer.shutdown_timeout(Duration::from_millis(10)).await;
        let (cut, cancelled, thread) =
            tokio::task::block_in_place(|| woke.recv_timeout(HANG).unwrap());
        assert!(cut && cancelled, "the wait ended without the cut");
        common::assert_worker_name(&thread, "cut");
        drop(report);
        let _ = call.await;
    })
    .await;
}

/// An ordinary axum handler under `router.layer(layer)` awaits
/// `cancelled()` and wakes when the response deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_deadline_wakes_cancelled() {
    bounded(HANG, async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .response_deadline(Duration::from_millis(20))
            .build();
        let (woke_tx, woke) = tokio::sync::mpsc::unbounded_channel();
        let router = axum::Router::new()
            .route(
                "/wait",
                get(move || async move {
                    let cancel = Cancellation::current().unwrap();
                    cancel.cancelled().await;
                    let _ = woke_tx.send(cancel.is_cancelled());
                    "late"
                }),
            )
            .layer(layer.clone());
        let mut woke = woke;
        let request = Request::get("/wait")
            .body(axum::body::Body::empty())
            .unwrap();
        let call = tokio::spawn(router.oneshot(request));
        let woken = woke.recv().await;
        let response = call.await.unwrap().unwrap();
        assert_eq!(woken, Some(true), "answered {}", response.status());
    })
    .await;
}
