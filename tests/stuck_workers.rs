//! Time limits that hold while every worker is stuck in user code: the
//! queue timeout and `shutdown_timeout`. A handler here blocks its thread
//! on a channel that the test opens only after checking the limit held, so
//! a limit enforced only by a worker would hang the test.

mod common;

use std::convert::Infallible;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use common::{get, within};
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};

/// A handler that, on `/block`, tells the test it started and blocks its
/// thread until released; any other path answers at once. It counts calls
/// per path and reports its drop's thread.
struct Stuck {
    started: mpsc::UnboundedReceiver<ThreadId>,
    release: std_mpsc::Sender<()>,
    calls: Arc<Mutex<Vec<String>>>,
    dropped: mpsc::UnboundedReceiver<ThreadId>,
}

fn stuck_service(
    layer: &ThreadAffinityLayer,
) -> (
    impl Service<
            Request<()>,
            Response = Response<tower_affinity::ThreadAffinityBody>,
            Error = Infallible,
            Future = tower_affinity::future::ResponseFuture<Infallible>,
        > + Clone,
    Stuck,
) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, release_rx) = std_mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let svc = {
        let calls = calls.clone();
        layer.service_with(move |_| {
            let guard = DropProbe(dropped_tx.clone());
            let (started_tx, release_rx, calls) =
                (started_tx.clone(), release_rx.clone(), calls.clone());
            blocking::service_fn(move |req: Request<()>| {
                let _ = &guard;
                let path = req.uri().path().to_owned();
                calls.lock().unwrap().push(path.clone());
                if path == "/block" {
                    started_tx.send(thread::current().id()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                }
                Response::new(http_body_util::Full::new(Bytes::from(path)))
            })
        })
    };
    let stuck = Stuck {
        started,
        release,
        calls,
        dropped,
    };
    (svc, stuck)
}

/// Sends a message with its thread when the service instance is dropped.
struct DropProbe(mpsc::UnboundedSender<ThreadId>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        let _ = self.0.send(thread::current().id());
    }
}

impl Stuck {
    async fn started(&mut self) -> ThreadId {
        within("the blocking handler to start", self.started.recv())
            .await
            .unwrap()
    }

    fn calls_to(&self, path: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// With one worker stuck in a handler, a request queued behind it gets
/// `503` once its queue timeout passes, while the worker is still stuck;
/// the handler never runs for it, even after the worker is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_timeout_holds_while_the_only_worker_is_stuck() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        // No spare: every worker stays stuck.
        .max_workers(1)
        // Long enough for the idle worker to start `/block` on a loaded
        // machine: a `/block` withdrawn before it starts would hang the test.
        .queue_timeout(Duration::from_millis(500))
        .build();
    let (svc, mut stuck) = stuck_service(&layer);
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    stuck.started().await;

    let late = within("the queue timeout", svc.clone().oneshot(get("/late")))
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(layer.stats().timed_out(), 1);

    stuck.release.send(()).unwrap();
    let blocked = within("/block", blocked).await.unwrap().unwrap();
    assert_eq!(blocked.status(), StatusCode::OK);
    // The worker has now taken the withdrawn job off its queue (a later
    // request is behind it); it was dropped unstarted.
    let after = within("/after", svc.clone().oneshot(get("/after")))
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(stuck.calls_to("/late"), 0, "a withdrawn request ran");
    assert_eq!(layer.stats().timed_out(), 1, "counted once");
}

/// A request that a worker has started is not cut by its queue timeout:
/// the timeout bounds the wait in the queue, not the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_request_outlives_its_queue_timeout() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        // No spare: every worker stays stuck.
        .max_workers(1)
        // Long enough for the idle worker to start `/block` on a loaded
        // machine (see above).
        .queue_timeout(Duration::from_millis(500))
        .build();
    let (svc, mut stuck) = stuck_service(&layer);
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    stuck.started().await;
    // Past the timeout while running: a timer for the queue that fired
    // now must not answer 503 for a request that is being served.
    let timed = tokio::spawn(svc.clone().oneshot(get("/late")));
    within("the queued request to time out", async {
        while layer.stats().timed_out() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    stuck.release.send(()).unwrap();
    let blocked = within("/block", blocked).await.unwrap().unwrap();
    assert_eq!(blocked.status(), StatusCode::OK);
    assert_eq!(
        within("/late", timed).await.unwrap().unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// `shutdown_timeout(d)` returns soon after `d` while the only worker is
/// stuck in a handler: the request queued behind it gets `503` at once,
/// the report names the stuck worker, and the thread ends by itself once
/// the handler returns, dropping its service instance on its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_returns_while_a_worker_is_stuck() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .build();
    let (svc, mut stuck) = stuck_service(&layer);
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    let worker = stuck.started().await;
    let mut queued_svc = svc.clone();
    within("a place in the queue", queued_svc.ready())
        .await
        .unwrap();
    let queued = tokio::spawn(queued_svc.call(get("/queued")));

    let report = within(
        "shutdown_timeout",
        layer.shutdown_timeout(Duration::from_millis(50)),
    )
    .await;
    assert!(!report.is_complete());
    assert_eq!(report.stuck(), &[0]);
    let queued = within("the queued request", queued).await.unwrap().unwrap();
    assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Only now does the stuck handler return.
    stuck.release.send(()).unwrap();
    let blocked = within("/block", blocked).await.unwrap().unwrap();
    assert_eq!(blocked.status(), StatusCode::OK);
    drop((svc, queued_svc));
    let dropped_on = within("the instance to drop", stuck.dropped.recv())
        .await
        .unwrap();
    assert_eq!(dropped_on, worker);
    assert_eq!(stuck.calls_to("/queued"), 0);
}

/// The same for a keyed request, which waits in the stuck worker's own
/// queue rather than the shared one: `shutdown_timeout` answers it `503`
/// while the worker is still stuck, and the handler never runs for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_answers_a_keyed_request_queued_behind_a_stuck_worker() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        // Every request keyed: all of them go to worker 0's own queue.
        .affinity_key(|_| Some("one key"))
        .build();
    let (svc, mut stuck) = stuck_service(&layer);
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    stuck.started().await;
    let queued = tokio::spawn(svc.clone().oneshot(get("/queued")));
    within("the keyed request to queue", async {
        while layer.stats().workers()[0].queued() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let report = within(
        "shutdown_timeout",
        layer.shutdown_timeout(Duration::from_millis(50)),
    )
    .await;
    assert_eq!(report.stuck(), &[0]);
    let queued = within("the keyed request", queued).await.unwrap().unwrap();
    assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);

    stuck.release.send(()).unwrap();
    within("/block", blocked).await.unwrap().unwrap();
    assert_eq!(stuck.calls_to("/queued"), 0);
}

/// A shutdown that finishes in time reports itself complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_in_time_is_complete() {
    let layer = ThreadAffinityLayer::new(2);
    let (svc, _stuck) = stuck_service(&layer);
    let ok = within("/ok", svc.clone().oneshot(get("/ok")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let report = within("shutdown", layer.shutdown_timeout(Duration::from_secs(5))).await;
    assert!(report.is_complete());
    assert!(report.stuck().is_empty());
}

type Answer =
    tokio::task::JoinHandle<Result<Response<tower_affinity::ThreadAffinityBody>, Infallible>>;

/// A pool of one worker (no spare), stuck in `/block`, whose queue of one
/// place holds `/queued`: the next caller waits for a place.
struct Full<S> {
    layer: ThreadAffinityLayer,
    svc: S,
    stuck: Stuck,
    blocked: Answer,
    queued: Answer,
}

async fn full_queue_behind_a_stuck_worker() -> Full<
    impl Service<
            Request<()>,
            Response = Response<tower_affinity::ThreadAffinityBody>,
            Error = Infallible,
            Future = tower_affinity::future::ResponseFuture<Infallible>,
        > + Clone,
> {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .queue_capacity(1)
        .build();
    let (svc, mut stuck) = stuck_service(&layer);
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    stuck.started().await;
    let mut queued_svc = svc.clone();
    within("a place", queued_svc.ready()).await.unwrap();
    let queued = tokio::spawn(queued_svc.call(get("/queued")));
    Full {
        layer,
        svc,
        stuck,
        blocked,
        queued,
    }
}

/// Callers waiting for a place in a full queue when the pool shuts down are
/// told it is shutting down, never that it is overloaded: the queues close
/// before admission wakes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_racing_a_shutdown_are_told_it_is_shutting_down() {
    const WAITERS: usize = 16;
    for _round in 0..20 {
        let Full {
            layer,
            svc,
            stuck,
            blocked,
            queued,
        } = full_queue_behind_a_stuck_worker().await;
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| tokio::spawn(svc.clone().oneshot(get("/waiter"))))
            .collect();
        tokio::task::yield_now().await;
        let shutdown = {
            let layer = layer.clone();
            tokio::spawn(async move { layer.shutdown_timeout(Duration::from_millis(10)).await })
        };
        for waiter in waiters {
            let response = within("a waiter", waiter).await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = common::collect(response.into_body()).await;
            assert_eq!(String::from_utf8_lossy(&body), "service is shutting down\n");
        }
        within("shutdown", shutdown).await.unwrap();
        stuck.release.send(()).unwrap();
        within("/block", blocked).await.unwrap().unwrap();
        let queued = within("/queued", queued).await.unwrap().unwrap();
        assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// In a pool with affinity keys, a keyed request does not wait for a place
/// in the full shared queue (its own queue bounds it), and an unkeyed one
/// waits for its place in its response future instead of getting `503`;
/// all are served once the worker is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_requests_do_not_wait_for_the_shared_queue() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        // No spare: every worker stays stuck.
        .max_workers(1)
        .queue_capacity(1)
        .affinity_header(http::HeaderName::from_static("x-key"))
        .build();
    let (svc, mut stuck) = stuck_service(&layer);
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    stuck.started().await;
    // The shared queue's one place, taken by an unkeyed request.
    let queued = tokio::spawn(svc.clone().oneshot(get("/queued")));
    within("/queued to be queued", async {
        while layer.stats().queued() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let mut keyed_svc = svc.clone();
    within("readiness for a keyed request", keyed_svc.ready())
        .await
        .unwrap();
    let keyed = Request::get("/keyed")
        .header("x-key", "session-1")
        .body(())
        .unwrap();
    let keyed = tokio::spawn(keyed_svc.call(keyed));
    let unkeyed = tokio::spawn(svc.clone().oneshot(get("/unkeyed")));
    within("the keyed request to be queued", async {
        while layer.stats().workers()[0].queued() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    stuck.release.send(()).unwrap();
    for (name, response) in [
        ("/block", blocked),
        ("/queued", queued),
        ("/keyed", keyed),
        ("/unkeyed", unkeyed),
    ] {
        let response = within(name, response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(common::collect(response.into_body()).await, name);
    }
}

/// `shutdown_timeout` cuts a stream whose reader keeps up, at its next
/// frame: such a stream never waits for room, so only a check in the pump
/// itself sees the shutdown (the worker's event loop gets its turn only
/// once per many task polls). Each item waits for a token from the test;
/// the tokens for the whole body are sent after the deadline has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_a_stream_whose_reader_keeps_up() {
    const ITEMS: usize = 5_000;
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        // Room for the whole body, one frame per item: the pump never waits.
        .body_buffer(ITEMS + 1)
        .merge_frames(0)
        .build();
    let (tokens, gate) = std_mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let svc = layer.service(blocking::service_fn(move |_: Request<()>| {
        let gate = gate.clone();
        let items = (0..ITEMS).map(move |i| {
            let _ = gate.lock().unwrap().recv();
            Ok::<_, Infallible>(Bytes::from(format!("{i};")))
        });
        Response::new(blocking::IterBody::new(items))
    }));
    tokens.send(()).unwrap();
    let response = within("the head", svc.oneshot(get("/"))).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(common::next_data(&mut body).await, "0;");

    // The worker waits for the second token meanwhile (or is about to).
    within("shutdown_timeout", layer.shutdown_timeout(Duration::ZERO)).await;
    for _ in 1..ITEMS {
        // Fails once the cut body, and its receiver, are dropped.
        let _ = tokens.send(());
    }
    let (frames, error) = common::read_frames(&mut body).await;
    assert!(error.is_some(), "a cut stream ends with an error");
    assert!(
        frames.len() <= 1,
        "{} frames produced after the shutdown deadline",
        frames.len()
    );
}

/// A graceful `shutdown` (no deadline) answers the callers waiting for a
/// place in a full queue at once, with `503`, although the only worker is
/// stuck and no place will free up until it returns; the request already
/// queued is still served once it does, as a graceful shutdown promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_answers_callers_waiting_for_a_place_at_once() {
    let Full {
        layer,
        svc,
        stuck,
        blocked,
        queued,
    } = full_queue_behind_a_stuck_worker().await;
    let waiter = tokio::spawn(svc.clone().oneshot(get("/waiter")));
    let shutdown = {
        let layer = layer.clone();
        tokio::spawn(async move { layer.shutdown().await })
    };

    // The worker is still stuck: only the shutdown can answer the waiter.
    let response = within("the waiter", waiter).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = common::collect(response.into_body()).await;
    assert_eq!(String::from_utf8_lossy(&body), "service is shutting down\n");
    assert!(!shutdown.is_finished());

    stuck.release.send(()).unwrap();
    within("/block", blocked).await.unwrap().unwrap();
    let queued = within("/queued", queued).await.unwrap().unwrap();
    assert_eq!(queued.status(), StatusCode::OK);
    within("shutdown", shutdown).await.unwrap();
    assert_eq!(stuck.calls_to("/waiter"), 0);
}
