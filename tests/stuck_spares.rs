//! Spares while a worker stays stuck (#20): a worker blocked for good
//! keeps a spare for as long as it stays blocked, whatever came and went in
//! between; a spare with nothing to do retires however its last request
//! ended; a worker that is registered as waiting but blocked in a local
//! task does not hold up the job it was woken for.
//!
//! Each test waits on channels, gates or the pool's counters; the one time
//! bound is the hang guard (`common::within`).

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{collect, get, until, within, Gate};
use http::{Request, Response};
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

fn name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

/// One core worker, up to three spares that retire after 50 ms idle.
fn pool(prefix: &str) -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(4)
        .keep_alive(Duration::from_millis(50))
        .thread_name(prefix)
        .build()
}

/// The thread that answered `path`.
async fn answer<S>(svc: &S, path: &str) -> String
where
    S: Service<Request<()>, Response = Response<tower_affinity::ThreadAffinityBody>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = within(path, svc.clone().oneshot(get(path))).await.unwrap();
    String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap()
}

/// Worker 0 stuck for good: its spare serves the quick requests, retires
/// while no work comes, and when work comes again a new spare serves it.
/// (A spare was owed once per blocked poll: after the first retired, none
/// started again for the same poll, and quick requests waited for good.)
#[tokio::test]
async fn a_worker_stuck_past_its_spares_keep_alive_gets_a_spare_again() {
    let layer = pool("stuck");
    let gate = Gate::default();
    let (entered, on_entered) = std::sync::mpsc::channel::<String>();
    let entered = Arc::new(Mutex::new(entered));
    let door = gate.clone();
    let svc = layer.layer(blocking::service_fn(move |request: Request<()>| {
        if request.uri().path() == "/hang" {
            entered.lock().unwrap().send(name()).unwrap();
            door.wait();
        }
        Response::new(name())
    }));
    let hung = tokio::spawn({
        let svc = svc.clone();
        async move { svc.oneshot(get("/hang")).await.map(drop) }
    });
    let stuck = tokio::task::spawn_blocking(move || on_entered.recv().unwrap());
    assert_eq!(within("worker 0 stuck", stuck).await.unwrap(), "stuck-0");
    assert_ne!(answer(&svc, "/quick").await, "stuck-0");
    until(&layer, "the spare retired", |s| {
        s.spares_retired() >= 1 && s.threads() == 1
    })
    .await;
    let again = answer(&svc, "/quick").await;
    assert!(again.starts_with("stuck-") && again != "stuck-0", "{again}");
    assert_eq!(layer.stats().spares_started(), 2);
    gate.open();
    within("the stuck request", hung).await.unwrap().unwrap();
}

/// A spare whose requests end after an `.await` (in a task of its event
/// loop, not inline) retires once traffic stops, like one whose requests
/// end inline: the pool goes back to its core worker.
#[tokio::test]
async fn a_spare_whose_requests_end_in_tasks_retires() {
    let layer = pool("tasks");
    let gate = Gate::default();
    let (entered, on_entered) = std::sync::mpsc::channel::<()>();
    let entered = Arc::new(Mutex::new(entered));
    let door = gate.clone();
    let svc = layer.layer(tower::service_fn(move |request: Request<()>| {
        let (entered, door) = (entered.clone(), door.clone());
        async move {
            if request.uri().path() == "/hang" {
                entered.lock().unwrap().send(()).unwrap();
                door.wait();
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, Infallible>(Response::new(name()))
        }
    }));
    let hung = tokio::spawn({
        let svc = svc.clone();
        async move { svc.oneshot(get("/hang")).await.map(drop) }
    });
    let stuck = tokio::task::spawn_blocking(move || on_entered.recv().unwrap());
    within("worker 0 stuck", stuck).await.unwrap();
    for _ in 0..3 {
        assert_ne!(answer(&svc, "/sleepy").await, "tasks-0");
    }
    until(&layer, "every spare retired", |s| {
        s.spares_started() >= 1 && s.spares_retired() == s.spares_started() && s.threads() == 1
    })
    .await;
    gate.open();
    within("the stuck request", hung).await.unwrap().unwrap();
}

/// A worker registered as waiting that then blocks in a local task of the
/// same turn (an async handler woken after its `.await`) is not free: the
/// job it is woken for is served by a spare, not held until it unblocks.
#[tokio::test]
async fn a_job_woken_for_a_worker_blocked_in_a_local_task_gets_a_spare() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .thread_name("local")
        .build();
    let gate = Gate::default();
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let resumed = Arc::new(Mutex::new(Some(resumed)));
    let (entered, on_entered) = std::sync::mpsc::channel::<()>();
    let entered = Arc::new(Mutex::new(entered));
    let door = gate.clone();
    let svc = layer.layer(tower::service_fn(move |request: Request<()>| {
        let (resumed, entered, door) = (resumed.clone(), entered.clone(), door.clone());
        async move {
            if request.uri().path() == "/park" {
                // Pending: the worker goes on to wait for work, then this
                // task blocks in the turn that resumes it.
                let resumed = resumed.lock().unwrap().take().unwrap();
                resumed.await.unwrap();
                entered.lock().unwrap().send(()).unwrap();
                door.wait();
            }
            Ok::<_, Infallible>(Response::new(name()))
        }
    }));
    let parked = tokio::spawn({
        let svc = svc.clone();
        async move { svc.oneshot(get("/park")).await.map(drop) }
    });
    until(&layer, "the parked request running", |s| {
        s.workers()[0].active() == 1
    })
    .await;
    resume.send(()).unwrap();
    let blocked = tokio::task::spawn_blocking(move || on_entered.recv().unwrap());
    within("worker 0 blocked in its task", blocked)
        .await
        .unwrap();
    assert_eq!(answer(&svc, "/quick").await, "local-1");
    gate.open();
    within("the parked request", parked).await.unwrap().unwrap();
}

/// A task a handler spawns with `spawn_local`, blocked in user code, is
/// seen by the blocked probe as its worker's: the next job gets a spare.
/// (Only the request tasks' polls were marked; such a task left its worker
/// looking free, and the job waited for it.)
#[tokio::test]
async fn a_worker_blocked_in_a_task_its_handler_spawned_gets_a_spare() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .thread_name("spawned")
        .build();
    let gate = Gate::default();
    let (entered, on_entered) = std::sync::mpsc::channel::<String>();
    let entered = Arc::new(Mutex::new(entered));
    let door = gate.clone();
    let svc = layer.layer(tower::service_fn(move |request: Request<()>| {
        let (entered, door) = (entered.clone(), door.clone());
        async move {
            if request.uri().path() == "/spawn" {
                tokio::task::spawn_local(async move {
                    entered.lock().unwrap().send(name()).unwrap();
                    door.wait();
                });
            }
            Ok::<_, Infallible>(Response::new(name()))
        }
    }));
    assert_eq!(answer(&svc, "/spawn").await, "spawned-0");
    let blocked = tokio::task::spawn_blocking(move || on_entered.recv().unwrap());
    assert_eq!(
        within("the task blocked", blocked).await.unwrap(),
        "spawned-0"
    );
    assert_eq!(answer(&svc, "/quick").await, "spawned-1");
    gate.open();
}
