//! Worker threads that cannot start or that die: `try_build`, the cleanup
//! of a failed `build`, respawn with backoff and its limit, keys of a
//! given-up worker, escaped panics contained and counted.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use common::{collect, until, within, HANG};
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_affinity::{ThreadAffinity, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

/// A panic payload whose `Drop` panics: the panic escapes every shield.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload's drop panics");
    }
}

/// The stop hook's reports: (worker index, thread).
fn stop_hook() -> (
    impl Fn(&WorkerId) + Send + Sync + 'static,
    std_mpsc::Receiver<(usize, ThreadId)>,
) {
    let (tx, rx) = std_mpsc::channel();
    let tx = Mutex::new(tx);
    let hook = move |id: &WorkerId| {
        let _ = tx
            .lock()
            .unwrap()
            .send((id.index(), thread::current().id()));
    };
    (hook, rx)
}

/// `try_build` returns the error of a refused thread, and the threads it
/// had started end (their stop hooks run).
#[test]
fn try_build_reports_a_refused_thread_and_ends_the_others() {
    let (hook, stops) = stop_hook();
    let result = ThreadAffinityLayer::builder()
        .workers(3)
        .fail_spawns_after(1)
        .on_thread_stop(hook)
        .try_build();
    assert!(result.is_err());
    let (index, _) = stops.recv_timeout(HANG).expect("worker 0 ends");
    assert_eq!(index, 0);
}

/// `build` panics on a refused thread, after ending the threads it started.
#[test]
fn build_ends_the_started_threads_before_it_panics() {
    let (hook, stops) = stop_hook();
    let built = std::panic::catch_unwind(|| {
        ThreadAffinityLayer::builder()
            .workers(2)
            .fail_spawns_after(1)
            .on_thread_stop(hook)
            .build()
    });
    assert!(built.is_err());
    assert_eq!(stops.recv_timeout(HANG).expect("worker 0 ends").0, 0);
}

/// The inner service: `/die` panics past the shields; others answer with
/// the worker's index. Its `Drop` panics when `fragile`.
#[derive(Clone)]
struct Inner {
    worker: usize,
    fragile: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.fragile {
            panic!("the service's drop panics");
        }
    }
}

impl Service<Request<()>> for Inner {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let answer = Response::new(Full::new(Bytes::from(self.worker.to_string())));
        match request.uri().path() {
            "/die" => std::panic::panic_any(Bomb),
            // Pending once (so the task is spawned), then a panic that
            // escapes the shields inside the spawned task.
            "/die-later" => {
                let mut polled = false;
                Box::pin(std::future::poll_fn(move |cx| {
                    if !polled {
                        polled = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    std::panic::panic_any(Bomb)
                }))
            }
            _ => Box::pin(std::future::ready(Ok(answer))),
        }
    }
}

fn service(layer: &ThreadAffinityLayer, fragile: bool) -> ThreadAffinity<Inner> {
    layer.service_with(move |id: WorkerId| Inner {
        worker: id.index(),
        fragile,
    })
}

async fn call(svc: &ThreadAffinity<Inner>, path: &str, key: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(path);
    if let Some(key) = key {
        request = request.header("x-key", key);
    }
    let response = within(path, svc.clone().oneshot(request.body(()).unwrap()))
        .await
        .unwrap();
    let status = response.status();
    let body = collect(response.into_body()).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A worker whose replacement cannot start is retried with a
/// backoff, then given up after 5 failures in a row; its keys then go to
/// the live worker instead of `503` forever.
#[tokio::test]
async fn a_worker_that_cannot_restart_is_given_up_and_its_keys_move() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .affinity_header(HeaderName::from_static("x-key"))
        // The two first workers start; every later start fails.
        .fail_starts_after(2)
        .build();
    let svc = service(&layer, false);
    let mut key0 = None;
    for k in 0..64 {
        let key = format!("k{k}");
        if call(&svc, "/", Some(&key)).await.1 == "0" {
            key0 = Some(key);
            break;
        }
    }
    let key0 = key0.expect("a key on worker 0");
    let died = std::time::Instant::now();
    let (status, _) = call(&svc, "/die", Some(&key0)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // Sent during the backoff, it waits in worker 0's own queue, and is
    // answered when the worker is given up (or, sent late, runs on 1).
    let waiting = tokio::spawn({
        let (svc, key0) = (svc.clone(), key0.clone());
        async move { call(&svc, "/", Some(&key0)).await }
    });
    until(&layer, "worker 0 given up", |s| !s.workers()[0].is_alive()).await;
    // The backoff: 10, 20, 40 and 80 ms before the 2nd to 5th tries. A
    // lower bound only, which sleeps guarantee however slow the machine.
    let backoff = died.elapsed();
    assert!(backoff >= Duration::from_millis(150), "{backoff:?}");
    let answer = within("the request queued for worker 0", waiting)
        .await
        .unwrap();
    assert!(
        answer.0 == StatusCode::SERVICE_UNAVAILABLE || answer == (StatusCode::OK, "1".into()),
        "{answer:?}"
    );
    let stats = layer.stats();
    assert_eq!(stats.workers()[0].start_failures(), 5, "{stats:?}");
    assert_eq!(stats.workers()[0].replaced(), 5);
    assert_eq!(stats.threads(), 1);
    // Its key now runs on worker 1.
    assert_eq!(
        call(&svc, "/", Some(&key0)).await,
        (StatusCode::OK, "1".into())
    );
    assert_eq!(call(&svc, "/", None).await, (StatusCode::OK, "1".into()));
}

/// A panic that escapes the shields ends the thread, but the unwind stops
/// at the event loop: the services are dropped behind a guard (a service
/// whose `Drop` panics does not abort the process), the stop hook runs on
/// the dead thread, and a replacement serves on.
#[tokio::test]
async fn an_escaped_panic_cleans_up_once_and_the_stop_hook_runs() {
    let (hook, stops) = stop_hook();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .on_thread_stop(hook)
        .build();
    let svc = service(&layer, true);
    assert_eq!(call(&svc, "/", None).await.0, StatusCode::OK);
    let (status, _) = call(&svc, "/die", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (index, _) = stops
        .recv_timeout(HANG)
        .expect("the dead thread's stop hook");
    assert_eq!(index, 0);
    assert_eq!(call(&svc, "/", None).await, (StatusCode::OK, "0".into()));
    let stats = layer.stats();
    assert_eq!(stats.workers()[0].replaced(), 1);
    // The escaped panic, and the one in the service instance's `Drop`.
    assert_eq!(stats.workers()[0].panicked(), 2);
}

/// A panic that escapes the shields inside a spawned request task is
/// counted (tokio would catch it silently), and the thread serves on.
#[tokio::test]
async fn a_panic_escaping_a_spawned_task_is_counted() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .build();
    let svc = service(&layer, false);
    let response = within(
        "the answer",
        svc.clone()
            .oneshot(Request::get("/die-later").body(()).unwrap()),
    )
    .await;
    // The request fails (its reply went with the task), not hangs.
    assert_ne!(response.unwrap().status(), StatusCode::OK);
    // The reply may go before the worker has counted (it is still
    // unwinding): wait for the count.
    until(&layer, "the panic counted", |s| {
        s.workers()[0].panicked() > 0
    })
    .await;
    let stats = layer.stats();
    assert_eq!(stats.workers()[0].panicked(), 1, "{stats:?}");
    assert_eq!(stats.workers()[0].replaced(), 0);
    assert_eq!(call(&svc, "/", None).await, (StatusCode::OK, "0".into()));
}

/// With every core worker given up, a request has no worker to go to: it
/// gets `503` at once, keyed or not, not a place in a queue nobody takes
/// from.
#[tokio::test]
async fn a_request_with_every_worker_given_up_gets_503() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .affinity_header(HeaderName::from_static("x-key"))
        // The first worker starts; every later start fails.
        .fail_starts_after(1)
        .build();
    let svc = service(&layer, false);
    let (status, _) = call(&svc, "/die", Some("k")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    until(&layer, "worker 0 given up", |s| !s.workers()[0].is_alive()).await;
    for key in [Some("k"), Some("other"), None] {
        let (status, body) = call(&svc, "/", key).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{key:?}: {body}");
        assert_eq!(
            body,
            "service unavailable: no worker thread could be started\n"
        );
    }
}

/// A worker whose thread dies during a graceful `shutdown`, with keyed
/// requests still in its own queue, is replaced: the requests are served,
/// as a shutdown promises, not left in a queue nobody takes from.
#[tokio::test]
async fn a_worker_dying_during_shutdown_is_replaced_to_serve_its_queue() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .affinity_header(HeaderName::from_static("x-key"))
        .build();
    let (entered, on_entered) = std_mpsc::channel::<()>();
    let (cue, on_cue) = std_mpsc::channel::<()>();
    let entered = Arc::new(Mutex::new(entered));
    let on_cue = Arc::new(Mutex::new(on_cue));
    let mut svc = layer.layer(tower_affinity::blocking::service_fn(
        move |request: Request<()>| {
            if request.uri().path() == "/die" {
                entered.lock().unwrap().send(()).unwrap();
                let _ = on_cue.lock().unwrap().recv();
                std::panic::panic_any(Bomb);
            }
            Response::new(String::from("served"))
        },
    ));
    let keyed = |path: &str| Request::get(path).header("x-key", "k").body(()).unwrap();
    let dying = tokio::spawn(svc.clone().oneshot(keyed("/die")));
    tokio::task::spawn_blocking(move || on_entered.recv().unwrap())
        .await
        .unwrap();
    // Queued behind `/die`, in the worker's own queue.
    within("a place in the queue", svc.ready()).await.unwrap();
    let queued = tokio::spawn(svc.call(keyed("/after")));

    // Its first poll closes the queues; it then waits for the threads.
    let mut shutdown = std::pin::pin!(layer.shutdown());
    assert!(futures::poll!(shutdown.as_mut()).is_pending());
    cue.send(()).unwrap();

    let dying = within("/die", dying).await.unwrap().unwrap();
    assert_eq!(dying.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let queued = within("/after", queued).await.unwrap().unwrap();
    assert_eq!(queued.status(), StatusCode::OK);
    assert_eq!(collect(queued.into_body()).await, "served");
    within("the shutdown", shutdown).await;
    assert_eq!(layer.stats().workers()[0].replaced(), 1);
}
