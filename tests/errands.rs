//! Work outside HTTP: `run_on_key` on a key's worker, `broadcast` on every
//! live worker (core and spare), with their limits, a stuck worker and
//! shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use tokio::sync::mpsc;
use tower_affinity::{blocking, ThreadAffinityLayer, WorkerId};

use common::{bounded, collect, send, Gate, HANG};

fn name() -> String {
    thread::current().name().unwrap_or_default().to_owned()
}

/// A keyed pool whose handler answers with its thread's name, after
/// reporting it and waiting at `gate` when the path is `/gated`.
fn keyed(
    layer: &ThreadAffinityLayer,
    entered: mpsc::UnboundedSender<String>,
    gate: Gate,
) -> tower_affinity::ThreadAffinity<
    impl tower::Service<Request<()>, Response = Response<String>, Error = std::convert::Infallible>
        + Clone
        + Send,
> {
    layer.service(blocking::service_fn(move |req: Request<()>| {
        let _ = entered.send(name());
        if req.uri().path() == "/gated" {
            gate.wait();
        }
        Response::new(name())
    }))
}

fn session(path: &str, key: &str) -> Request<()> {
    Request::get(path)
        .header("x-session", key)
        .body(())
        .unwrap()
}

fn layer(workers: usize, max_workers: usize) -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(workers)
        .max_workers(max_workers)
        .keep_alive(Duration::from_secs(3600))
        .thread_name("errand")
        .affinity_header(HeaderName::from_static("x-session"))
        .build()
}

/// `run_on_key` runs on the thread that the key's requests run on (the
/// header's bytes hash as the layer's key function hashes them), for
/// every key tried, and returns the closure's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_key_runs_where_the_keys_requests_run() {
    bounded(HANG, async {
        let layer = layer(4, 4);
        let (entered, _entered) = mpsc::unbounded_channel();
        let mut svc = keyed(&layer, entered, Gate::default());
        let mut homes = std::collections::HashSet::new();
        for key in ["alice", "bob", "carol", "dave", "erin", "frank", "grace"] {
            let response = send(&mut svc, session("/", key)).await;
            let served_on =
                String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap();
            let ran_on = layer
                .run_on_key(key.as_bytes(), name)
                .await
                .expect("the job ran");
            assert_eq!(ran_on, served_on, "key {key}");
            homes.insert(ran_on);
        }
        assert!(homes.len() > 1, "every key on one worker: {homes:?}");
    })
    .await;
}

/// `broadcast` runs its closure once on each live worker, the core ones
/// and a spare started while both were blocked, each on its own thread
/// (the thread's name is its `WorkerId`'s), and returns them by index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_runs_once_on_every_live_worker_spares_included() {
    bounded(HANG, async {
        let layer = layer(2, 3);
        let gate = Gate::default();
        let (entered, mut entered_rx) = mpsc::unbounded_channel();
        let svc = keyed(&layer, entered, gate.clone());
        // Both core workers blocked, and one unkeyed request waiting: a
        // spare starts for it.
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let request = Request::get("/gated").body(()).unwrap();
                    send(&mut svc, request).await.status()
                })
            })
            .collect();
        let mut blocked = Vec::new();
        for _ in 0..3 {
            blocked.push(entered_rx.recv().await.unwrap());
        }
        blocked.sort();
        assert_eq!(blocked, ["errand-0", "errand-1", "errand-2"]);
        gate.open();
        for call in calls {
            assert!(call.await.unwrap().is_success());
        }

        let runs = Arc::new(Mutex::new(Vec::new()));
        let seen = runs.clone();
        let answers = layer
            .broadcast(HANG, move || {
                seen.lock().unwrap().push(name());
                (name(), WorkerId::current())
            })
            .await;
        let indices: Vec<usize> = answers.iter().map(|(id, _)| id.index()).collect();
        assert_eq!(indices, [0, 1, 2]);
        for (id, answer) in answers {
            let (thread, current) = answer.expect("ran on its worker");
            assert_eq!(thread, id.name());
            assert_eq!(current, Some(id));
        }
        let mut runs = runs.lock().unwrap().clone();
        runs.sort();
        assert_eq!(runs, ["errand-0", "errand-1", "errand-2"], "once each");
    })
    .await;
}

/// A worker stuck in user code answers `broadcast` with a timeout once the
/// wait is over, while the others answer; its run is withdrawn, never run
/// once the worker frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_says_which_worker_is_stuck() {
    bounded(HANG, async {
        let layer = layer(2, 2);
        let gate = Gate::default();
        let (entered, mut entered_rx) = mpsc::unbounded_channel();
        let mut svc = keyed(&layer, entered, gate.clone());
        let stuck =
            tokio::spawn(async move { send(&mut svc, session("/gated", "alice")).await.status() });
        let stuck_on = entered_rx.recv().await.unwrap();
        let (ran_tx, mut ran) = mpsc::unbounded_channel();
        let answers = layer
            .broadcast(Duration::from_millis(50), move || {
                let _ = ran_tx.send(name());
                name()
            })
            .await;
        assert_eq!(answers.len(), 2);
        for (id, answer) in &answers {
            if id.name() == stuck_on {
                let error = answer.as_ref().unwrap_err();
                assert!(error.is_timed_out(), "{error}");
            } else {
                assert_eq!(answer.as_ref().unwrap(), id.name());
            }
        }
        gate.open();
        assert!(stuck.await.unwrap().is_success());
        // The freed worker skips the withdrawn run: only the other one ran.
        layer.shutdown().await;
        let mut ran_on = Vec::new();
        while let Some(thread) = ran.recv().await {
            ran_on.push(thread);
        }
        assert_eq!(ran_on.len(), 1);
        assert_ne!(ran_on[0], stuck_on);
    })
    .await;
}

/// `run_on_key` goes through its worker's bounded queue: behind a stuck
/// worker, `queue_capacity` jobs wait and the next is refused as
/// overloaded; after shutdown a job is refused as shut down. A panic in a
/// job fails that job only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_key_is_bounded_isolated_and_stops_with_the_pool() {
    bounded(HANG, async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .queue_capacity(1)
            .build();
        let gate = Gate::default();
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let blocked_gate = gate.clone();
        let blocking_layer = layer.clone();
        let first = tokio::spawn(async move {
            blocking_layer
                .run_on_key(1, move || {
                    let _ = entered_tx.send(());
                    blocked_gate.wait();
                })
                .await
        });
        entered.recv().await.unwrap();
        // Polled once: that posts it, into the one place of its worker's queue.
        let mut queued = Box::pin(layer.run_on_key(1, name));
        assert!(futures::poll!(queued.as_mut()).is_pending());
        let refused = layer.run_on_key(1, || ()).await.unwrap_err();
        assert!(refused.is_overloaded());
        gate.open();
        first.await.unwrap().unwrap();
        assert!(queued.await.unwrap().starts_with("tower-affinity-"));

        let panicked = layer.run_on_key(1, || panic!("a job's panic")).await;
        assert!(panicked.unwrap_err().is_panic());
        assert_eq!(layer.run_on_key(1, || 5).await.unwrap(), 5);

        layer.shutdown().await;
        let late = layer.run_on_key(1, || ()).await.unwrap_err();
        assert!(late.is_shut_down(), "{late}");
    })
    .await;
}
