//! How a spare worker ends: however it ends (retired when idle, killed by
//! a panic that escaped the shields, unable to start), it is
//! counted, so that `spares_started - spares_retired` stays the spares
//! running; and what it drops as it goes: tasks its handlers spawned
//! themselves, before its stop hook.

mod common;

use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::{get, until, within, Gate};
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_affinity::{blocking, Builder, ThreadAffinityLayer, WorkerId};

/// A panic payload whose `Drop` panics: the panic escapes every shield.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload's drop panics");
    }
}

/// What happened on which thread, in order.
type Log = Arc<Mutex<Vec<(String, ThreadId)>>>;

fn note(log: &Log, what: &str) {
    log.lock()
        .unwrap()
        .push((what.to_owned(), thread::current().id()));
}

/// Notes its drop: the end of a task it is moved into.
struct Noted(Log, &'static str);

impl Drop for Noted {
    fn drop(&mut self) {
        note(&self.0, self.1);
    }
}

/// A pool of one core worker and up to one spare, built from `builder`:
/// `/block` waits at the gate (sent first, it holds worker 0), `/die`
/// panics past the shields, `/spawn` spawns two tasks that never end
/// (one with `tokio::spawn`, one with `spawn_local`), each noting its drop.
/// Returns once worker 0 is blocked, with the blocked request's task.
async fn spare_pool(
    builder: Builder,
    log: Log,
) -> (
    ThreadAffinityLayer,
    impl Fn(&str) -> tokio::task::JoinHandle<StatusCode>,
    Gate,
    tokio::task::JoinHandle<StatusCode>,
) {
    let layer = builder.workers(1).max_workers(2).build();
    let gate = Gate::default();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let held = gate.clone();
    let svc = layer.service(blocking::service_fn(move |req: Request<()>| {
        match req.uri().path() {
            "/block" => {
                let _ = entered.send(());
                held.wait();
            }
            "/die" => std::panic::panic_any(Bomb),
            "/spawn" => {
                let spawned = Noted(log.clone(), "spawned task dropped");
                tokio::spawn(async move {
                    let _spawned = spawned;
                    std::future::pending::<()>().await
                });
                let local = Noted(log.clone(), "local task dropped");
                tokio::task::spawn_local(async move {
                    let _local = local;
                    std::future::pending::<()>().await
                });
            }
            _ => {}
        }
        Response::new(String::from("ok"))
    }));
    let send = move |path: &str| {
        let request = svc.clone().oneshot(get(path));
        tokio::spawn(async move { request.await.unwrap().status() })
    };
    let blocked = send("/block");
    within("worker 0 blocked", entries.recv()).await;
    (layer, send, gate, blocked)
}

/// A spare killed by a panic that escaped the shields is counted as
/// ended: `spares_retired` catches up with `spares_started`.
#[tokio::test]
async fn a_spare_that_dies_is_counted() {
    let log = Log::default();
    let (layer, send, gate, blocked) = spare_pool(ThreadAffinityLayer::builder(), log).await;
    let died = within("the spare's answer", send("/die")).await.unwrap();
    assert_eq!(died, StatusCode::INTERNAL_SERVER_ERROR);
    until(&layer, "the dead spare counted", |s| {
        s.spares_started() == 1 && s.spares_retired() == 1 && s.threads() == 1
    })
    .await;
    gate.open();
    assert_eq!(within("worker 0", blocked).await.unwrap(), StatusCode::OK);
}

/// A spare that cannot start on its thread is counted as ended, and lowers
/// the pool's ceiling as a refused thread does (the next would fail as
/// well); the request it was started for is served by worker 0.
#[tokio::test]
async fn a_spare_that_fails_to_start_is_counted() {
    let builder = ThreadAffinityLayer::builder().fail_starts_after(1);
    let (layer, send, gate, blocked) = spare_pool(builder, Log::default()).await;
    let waiting = send("/");
    until(
        &layer,
        "the failed spare counted, the ceiling lowered",
        |s| s.spares_retired() == 1 && s.threads() == 1 && s.max_workers() == 1,
    )
    .await;
    // No second try: the ceiling keeps the pool from starting one spare
    // after another that fails the same way.
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 1, "{stats:?}");
    assert_eq!(stats.spawn_failures(), 1, "{stats:?}");
    gate.open();
    assert_eq!(within("worker 0", blocked).await.unwrap(), StatusCode::OK);
    assert_eq!(
        within("the waiting request", waiting).await.unwrap(),
        StatusCode::OK
    );
}

/// Tasks a handler spawns do not keep a spare: it retires after its
/// keep-alive, drops its `spawn_local` tasks unfinished on its own thread,
/// and only then runs its stop hook. A `tokio::spawn` task runs on the
/// pool's driver thread, not the spare's, and outlives it.
#[tokio::test]
async fn a_retiring_spare_drops_spawned_tasks_before_its_stop_hook() {
    let log = Log::default();
    let (stopped, mut stops) = mpsc::unbounded_channel();
    let hook_log = log.clone();
    let builder = ThreadAffinityLayer::builder()
        .keep_alive(Duration::from_millis(20))
        .on_thread_stop(move |id: &WorkerId| {
            note(&hook_log, &format!("stop {}", id.index()));
            let _ = stopped.send(id.index());
        });
    let (layer, send, gate, blocked) = spare_pool(builder, log.clone()).await;
    let spawned = within("the spare's answer", send("/spawn")).await.unwrap();
    assert_eq!(spawned, StatusCode::OK);
    gate.open();
    assert_eq!(within("worker 0", blocked).await.unwrap(), StatusCode::OK);
    assert_eq!(within("the spare's stop hook", stops.recv()).await, Some(1));
    let log = log.lock().unwrap().clone();
    let what: Vec<&str> = log.iter().map(|(what, _)| what.as_str()).collect();
    assert_eq!(what, ["local task dropped", "stop 1"], "{log:?}");
    let spare = log[1].1;
    assert!(log.iter().all(|(_, thread)| *thread == spare), "{log:?}");
    // Counted as the thread ends, just after its stop hook.
    until(&layer, "the spare counted", |s| s.spares_retired() == 1).await;
}
