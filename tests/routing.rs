//! Sticky keys, services built on their worker, hooks and dispatch of
//! unkeyed requests to the worker that has room.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityBody, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

const HANG_GUARD: Duration = Duration::from_secs(20);

fn session() -> HeaderName {
    HeaderName::from_static("x-session")
}

fn keyed(key: &str) -> Request<()> {
    Request::get("/").header(session(), key).body(()).unwrap()
}

/// Calls `svc` and returns the status and the body as a string.
async fn send<S>(svc: &mut S, request: Request<()>) -> (StatusCode, String)
where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>, Error = Infallible>,
{
    let call = async {
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    common::within_for(HANG_GUARD, "the response", call).await
}

/// A service answering with the index of the worker it ran on, read from the
/// request's extensions, after checking it names the current thread.
fn whoami() -> blocking::ServiceFn<impl FnMut(Request<()>) -> Response<String> + Clone> {
    blocking::service_fn(|req: Request<()>| {
        let worker = req.extensions().get::<WorkerId>().unwrap().clone();
        assert_eq!(Some(worker.name()), thread::current().name());
        assert_eq!(WorkerId::current(), Some(worker.clone()));
        Response::new(worker.index().to_string())
    })
}

/// A request with a key always goes to the same worker, sequentially and concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_same_worker() {
    let layer = ThreadAffinityLayer::builder()
        .workers(4)
        .affinity_header(session())
        .build();
    let svc = layer.layer(whoami());
    for key in ["alice", "bob", "carol", "dave", "erin"] {
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(send(&mut svc.clone(), keyed(key)).await.1);
        }
        let concurrent = (0..50).map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { send(&mut svc, keyed(key)).await.1 })
        });
        for handle in concurrent {
            seen.push(handle.await.unwrap());
        }
        assert!(seen.iter().all(|w| *w == seen[0]), "{key}: {seen:?}");
    }
}

/// Different keys spread over all workers: 10,000 random keys on 4 workers
/// land within ±20 % of an even share on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_workers() {
    let layer = ThreadAffinityLayer::builder()
        .workers(4)
        .affinity_key(|head| head.uri.query().map(str::to_owned))
        .build();
    let mut svc = layer.layer(whoami());
    let mut per_worker = [0u32; 4];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..10_000 {
        // xorshift: random keys without a dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let request = Request::get(format!("/?{state:x}")).body(()).unwrap();
        let (_, worker) = send(&mut svc, request).await;
        per_worker[worker.parse::<usize>().unwrap()] += 1;
    }
    for count in per_worker {
        assert!((2000..=3000).contains(&count), "{per_worker:?}");
    }
}

/// Keyed requests to one worker run in the order they were admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_requests_run_in_order() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .affinity_header(session())
        .build();
    let order = Arc::new(Mutex::new(Vec::new()));
    let log = order.clone();
    let svc = layer.layer(blocking::service_fn(move |req: Request<()>| {
        log.lock()
            .unwrap()
            .push(req.uri().path()[1..].parse::<u32>().unwrap());
        Response::new(String::new())
    }));
    // Call in order, then await together: admission order is call order.
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let request = Request::get(format!("/{i}"))
                .header(session(), "one-key")
                .body(())
                .unwrap();
            svc.clone().oneshot(request)
        })
        .collect();
    common::within_for(HANG_GUARD, "every call", futures::future::join_all(calls)).await;
    assert_eq!(*order.lock().unwrap(), (0..200).collect::<Vec<_>>());
}

/// A hot key saturates its worker's queue and then gets 503, while other
/// workers keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_gets_503_others_served() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_streams_per_worker(1)
        .queue_capacity(2)
        .affinity_header(session())
        .build();
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let hold_rx = Arc::new(Mutex::new(hold_rx));
    let svc = layer.layer(blocking::service_fn(move |req: Request<()>| {
        if req.uri().path() == "/hold" {
            started_tx.send(()).unwrap();
            hold_rx.lock().unwrap().recv().unwrap();
        }
        let worker = req.extensions().get::<WorkerId>().unwrap();
        Response::new(worker.index().to_string())
    }));
    let hot = |path: &str| {
        Request::get(path)
            .header(session(), "hot")
            .body(())
            .unwrap()
    };
    let hot_worker = send(&mut svc.clone(), hot("/")).await.1;

    // Hold the hot key's worker, then fill its queue.
    let held = tokio::spawn(svc.clone().oneshot(hot("/hold")));
    let mut started_rx = started_rx;
    started_rx.recv().await.unwrap();
    // `call` queues at once (`oneshot` would only queue when polled); this
    // service is always ready.
    let queued: Vec<_> = (0..2).map(|_| svc.clone().call(hot("/"))).collect();
    let (status, body) = send(&mut svc.clone(), hot("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("overloaded"), "{body}");

    // Unkeyed requests are served, by the other worker.
    for _ in 0..5 {
        let (status, worker) = send(&mut svc.clone(), Request::new(())).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(worker, hot_worker);
    }

    hold_tx.send(()).unwrap();
    held.await.unwrap().unwrap();
    for response in futures::future::join_all(queued).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
}

/// A `!Send` service built by a factory on each worker counts its own calls:
/// every worker's counter runs 1, 2, 3, … with no gaps or repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_rc_refcell_counts_per_worker() {
    let layer = ThreadAffinityLayer::new(2);
    let svc = layer.service_with(|worker: WorkerId| {
        let calls = Rc::new(RefCell::new(0u32));
        blocking::service_fn(move |_req: Request<()>| {
            *calls.borrow_mut() += 1;
            Response::new(format!("{} {}", worker.index(), calls.borrow()))
        })
    });
    let calls = (0..400).map(|_| {
        let mut svc = svc.clone();
        tokio::spawn(async move { send(&mut svc, Request::new(())).await.1 })
    });
    let mut counts: HashMap<usize, Vec<u32>> = HashMap::new();
    for call in calls {
        let answer = call.await.unwrap();
        let (worker, count) = answer.split_once(' ').unwrap();
        counts
            .entry(worker.parse().unwrap())
            .or_default()
            .push(count.parse().unwrap());
    }
    let total: usize = counts.values().map(Vec::len).sum();
    assert_eq!(total, 400);
    for counts in counts.values_mut() {
        counts.sort_unstable();
        let expected: Vec<u32> = (1..=counts.len() as u32).collect();
        assert_eq!(*counts, expected);
    }
}

/// The factory runs once per worker, on that worker's thread, with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_runs_once_per_worker_on_it() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        // Two threads exactly: a spare started while one worker waits at
        // the barrier would run the factory a third time.
        .max_workers(2)
        .thread_name("factory")
        .build();
    let built = Arc::new(Mutex::new(Vec::<(WorkerId, ThreadId)>::new()));
    let log = built.clone();
    // Both workers must serve: hold each request until two are running.
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let svc = layer.service_with(move |worker: WorkerId| {
        assert_eq!(Some(worker.name()), thread::current().name());
        log.lock().unwrap().push((worker, thread::current().id()));
        let barrier = barrier.clone();
        blocking::service_fn(move |req: Request<()>| {
            if req.uri().path() == "/both" {
                barrier.wait();
            }
            Response::new(format!("{:?}", thread::current().id()))
        })
    });
    let both: Vec<_> = (0..2)
        .map(|_| svc.clone().oneshot(Request::get("/both").body(()).unwrap()))
        .collect();
    common::within_for(HANG_GUARD, "every call", futures::future::join_all(both)).await;
    let mut threads = Vec::new();
    for _ in 0..100 {
        threads.push(send(&mut svc.clone(), Request::new(())).await.1);
    }

    let built = built.lock().unwrap().clone();
    assert_eq!(built.len(), 2, "{built:?}");
    let mut indexes: Vec<_> = built.iter().map(|(w, _)| w.index()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [0, 1]);
    for thread in threads {
        assert!(built.iter().any(|(_, id)| format!("{id:?}") == thread));
    }
}

/// `on_thread_start` runs on each worker thread before it serves, and
/// `on_thread_stop` on each when the pool shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_on_worker_threads() {
    let (tx, rx) = mpsc::channel::<(&'static str, WorkerId, Option<String>)>();
    let (start_tx, stop_tx) = (Mutex::new(tx.clone()), Mutex::new(tx));
    let layer = ThreadAffinityLayer::builder()
        .workers(3)
        .thread_name("hooked")
        .on_thread_start(move |id| {
            let name = thread::current().name().map(str::to_owned);
            start_tx
                .lock()
                .unwrap()
                .send(("start", id.clone(), name))
                .unwrap();
        })
        .on_thread_stop(move |id| {
            let name = thread::current().name().map(str::to_owned);
            stop_tx
                .lock()
                .unwrap()
                .send(("stop", id.clone(), name))
                .unwrap();
        })
        .build();
    let mut svc = layer.layer(whoami());
    send(&mut svc, Request::new(())).await;
    drop((svc, layer));

    let events = tokio::task::spawn_blocking(move || {
        (0..6)
            .map(|_| rx.recv_timeout(HANG_GUARD).expect("hook did not run"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (event, id, name) in &events {
        assert_eq!(name.as_deref(), Some(id.name()), "{event}");
        assert!(id.name().starts_with("hooked-"));
    }
    for kind in ["start", "stop"] {
        let mut indexes: Vec<_> = events
            .iter()
            .filter(|(event, ..)| *event == kind)
            .map(|(_, id, _)| id.index())
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 2], "{kind}");
    }
}

/// With one worker busy in a long blocking call, ten quick unkeyed requests
/// all complete on the other worker before the long one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_requests_go_to_the_worker_with_room() {
    // No spare: the quick requests must all go to the one worker with room.
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .build();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let svc = layer.layer(blocking::service_fn(move |req: Request<()>| {
        let worker = req.extensions().get::<WorkerId>().unwrap().index();
        if req.uri().path() == "/long" {
            started_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
        Response::new(worker.to_string())
    }));
    let long = tokio::spawn(svc.clone().oneshot(Request::get("/long").body(()).unwrap()));
    started_rx.recv().await.unwrap();

    let mut quick = Vec::new();
    for _ in 0..10 {
        quick.push(send(&mut svc.clone(), Request::new(())).await.1);
    }
    assert!(!long.is_finished());
    release_tx.send(()).unwrap();
    let long = long.await.unwrap().unwrap();
    let long_worker = long.into_body().collect().await.unwrap().to_bytes();
    assert!(
        quick.iter().all(|w| w.as_bytes() != long_worker),
        "{quick:?}"
    );
    assert!(quick.iter().all(|w| *w == quick[0]));
}

/// A worker that blocks in a later poll of a request (after waiting on
/// something first, so its event loop was already waiting for work) does
/// not keep new requests from the idle worker: they all complete there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_blocked_after_waiting_does_not_hold_new_work() {
    let layer = ThreadAffinityLayer::new(2);
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go_rx = Arc::new(Mutex::new(Some(go_rx)));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let (blocked_tx, mut blocked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (called_tx, mut called_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let svc = layer.layer(tower::service_fn(move |req: Request<()>| {
        let worker = req.extensions().get::<WorkerId>().unwrap().index();
        let slow = req.uri().path() == "/slow";
        let go = slow.then(|| go_rx.lock().unwrap().take().unwrap());
        if slow {
            called_tx.send(()).unwrap();
        }
        let (release, blocked) = (release_rx.clone(), blocked_tx.clone());
        async move {
            if let Some(go) = go {
                // Pending first: the task is spawned and the worker's event
                // loop goes back to waiting for work...
                go.await.unwrap();
                // ...then the handler blocks the worker thread.
                blocked.send(()).unwrap();
                release.lock().unwrap().recv().unwrap();
            }
            Ok::<_, Infallible>(Response::new(worker.to_string()))
        }
    }));
    let slow = tokio::spawn(svc.clone().oneshot(Request::get("/slow").body(()).unwrap()));
    // Only once the future is pending on its worker.
    called_rx.recv().await.unwrap();
    go_tx.send(()).unwrap();
    blocked_rx.recv().await.unwrap();

    let mut quick = Vec::new();
    for _ in 0..10 {
        quick.push(send(&mut svc.clone(), Request::new(())).await.1);
    }
    release_tx.send(()).unwrap();
    let slow = slow.await.unwrap().unwrap();
    let slow_worker = slow.into_body().collect().await.unwrap().to_bytes();
    assert!(
        quick.iter().all(|w| w.as_bytes() != slow_worker),
        "{quick:?}"
    );
}
