//! Spare workers: started while every worker is blocked and unkeyed work
//! waits, never for keyed work or CPU-bound handlers, never above
//! `max_workers`; full workers (instances, hooks) that retire when idle;
//! a refused thread loses nothing; shutdown drains them.
//!
//! Each test waits on channels and barriers, or on the pool's own counters
//! (`stalls`: the supervisor's looks) to know that a spare was *not*
//! started, never on a sleep; one test sleeps past a `keep_alive`, as a
//! lower bound that correct code passes however long it lasts.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::{collect, get, until, within, Gate};
use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_affinity::blocking::ServiceFn;
use tower_affinity::{blocking, ThreadAffinity, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

type Entered = mpsc::UnboundedSender<String>;

fn name() -> String {
    thread::current().name().unwrap_or_default().to_owned()
}

/// A handler that reports its thread, then waits at `gate`, and answers
/// with its thread's name.
fn gated(
    layer: &ThreadAffinityLayer,
    entered: Entered,
    gate: Gate,
) -> ThreadAffinity<ServiceFn<impl FnMut(Request<()>) -> Response<String> + Clone + Send>> {
    layer.layer(blocking::service_fn(move |_: Request<()>| {
        let _ = entered.send(name());
        gate.wait();
        Response::new(name())
    }))
}

/// Sends `n` unkeyed requests at once; each task yields the thread that
/// answered.
fn send_all<S>(svc: &S, n: usize) -> Vec<JoinHandle<String>>
where
    S: tower::Service<Request<()>, Response = Response<tower_affinity::ThreadAffinityBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    (0..n)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let response = svc.oneshot(Request::new(())).await.unwrap();
                assert_eq!(response.status(), 200);
                String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap()
            })
        })
        .collect()
}

async fn answers(tasks: Vec<JoinHandle<String>>) -> Vec<String> {
    let mut names = Vec::new();
    for task in tasks {
        names.push(within("an answer", task).await.unwrap());
    }
    names
}

/// The thread name of worker `index` (default prefix).
fn name_of(_: &ThreadAffinityLayer, index: usize) -> String {
    format!("tower-affinity-{index}")
}

/// With one core worker blocked and unkeyed work waiting, spares start:
/// three handlers meet at a barrier of three, on three threads.
#[tokio::test]
async fn spares_start_when_every_worker_blocks() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(3)
        .thread_name("grow")
        .build();
    let barrier = Arc::new(Barrier::new(3));
    let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
        barrier.wait();
        Response::new(name())
    }));
    let names: HashSet<_> = answers(send_all(&svc, 3)).await.into_iter().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 2);
    assert_eq!(stats.threads(), 3);
    let spares: Vec<_> = stats.workers().iter().filter(|w| w.is_spare()).collect();
    assert_eq!(spares.len(), 2);
    assert!(spares.iter().all(|w| w.index() >= 1 && w.is_alive()));
}

/// While every thread blocks and work waits, the pool doubles at each look
/// instead of adding a thread or two: 32 handlers meet at a barrier of 32
/// on 32 threads, started from one core worker within 20 of the
/// supervisor's looks (5 here). Growing by what it missed of `workers`,
/// one spare a look, took about 60.
#[tokio::test]
async fn a_pool_whose_threads_all_block_doubles_at_each_look() {
    const THREADS: usize = 32;
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(THREADS)
        .build();
    let barrier = Arc::new(Barrier::new(THREADS));
    let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
        barrier.wait();
        Response::new(name())
    }));
    let names: HashSet<_> = answers(send_all(&svc, THREADS)).await.into_iter().collect();
    assert_eq!(names.len(), THREADS, "{names:?}");
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), THREADS as u64 - 1);
    assert!(
        stats.stalls() <= 20,
        "{} looks to reach {THREADS} threads",
        stats.stalls()
    );
}

/// At `max_workers` the pool stops growing, however long work waits while
/// every worker blocks.
#[tokio::test]
async fn never_above_max_workers() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let svc = gated(&layer, entered, gate.clone());
    let tasks = send_all(&svc, 3);
    for _ in 0..2 {
        within("two handlers running", entries.recv()).await;
    }
    let seen = layer.stats().stalls();
    // The supervisor looked twice more with the third request waiting and
    // both threads blocked: it would have started a spare by now.
    until(&layer, "two more looks", |s| s.stalls() >= seen + 2).await;
    let stats = layer.stats();
    assert_eq!(stats.threads(), 2, "{stats:?}");
    assert_eq!(stats.spares_started(), 1);
    // Both wait at the gate, off the CPU: the signal shows in the stats.
    assert!(stats.workers().iter().all(|w| w.blocked()), "{stats:?}");
    gate.open();
    let names: HashSet<_> = answers(tasks).await.into_iter().collect();
    assert_eq!(names.len(), 2);
}

/// A CPU-bound handler is inside a long poll but on the CPU: no spare
/// starts, though work waits.
#[tokio::test]
async fn cpu_bound_handlers_do_not_grow_the_pool() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(4)
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let (entered, mut entries) = mpsc::unbounded_channel();
    let spin = stop.clone();
    let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
        let _ = entered.send(name());
        while !spin.load(SeqCst) {
            std::hint::spin_loop();
        }
        Response::new(name())
    }));
    let tasks = send_all(&svc, 3);
    within("a handler running", entries.recv()).await;
    until(&layer, "three looks", |s| s.stalls() >= 3).await;
    // Inside a long poll, but on the CPU: not blocked.
    assert!(!layer.stats().workers()[0].blocked());
    stop.store(true, SeqCst);
    answers(tasks).await;
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 0, "{stats:?}");
    assert_eq!(stats.threads(), 1);
}

/// Keyed requests wait for their own worker: a spare serves only the
/// shared queue, even while it idles and a keyed request waits.
#[tokio::test]
async fn keyed_work_never_goes_to_a_spare() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(3)
        .affinity_header(HeaderName::from_static("x-key"))
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let door = gate.clone();
    let svc = layer.layer(blocking::service_fn(move |req: Request<()>| {
        let _ = entered.send(name());
        if req.uri().path() == "/block" {
            door.wait();
        }
        Response::new(name())
    }));
    let keyed = |path: &str| Request::get(path).header("x-key", "k").body(()).unwrap();
    let first = tokio::spawn(svc.clone().oneshot(keyed("/block")));
    let core = within("the keyed request running", entries.recv())
        .await
        .unwrap();
    let second = tokio::spawn(svc.clone().oneshot(keyed("/quick")));
    until(&layer, "the keyed request queued", |s| {
        s.workers()[0].queued() == 1
    })
    .await;
    // Unkeyed work while the core worker blocks: a spare serves it.
    let response = within("the unkeyed answer", svc.clone().oneshot(Request::new(())))
        .await
        .unwrap();
    let spare = String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap();
    assert_ne!(spare, core);
    assert_eq!(within("", entries.recv()).await.unwrap(), spare);
    // The spare is free, and the keyed request still waits for its worker.
    let stats = layer.stats();
    assert_eq!(stats.workers()[0].queued(), 1, "{stats:?}");
    assert!(entries.try_recv().is_err());
    gate.open();
    for task in [first, second] {
        let response = within("a keyed answer", task).await.unwrap().unwrap();
        assert_eq!(collect(response.into_body()).await, core.as_bytes());
    }
}

/// Where an instance was made and dropped.
#[derive(Debug, PartialEq)]
enum Seen {
    Made(ThreadId),
    Dropped(ThreadId),
    Started(String),
    Stopped(String),
}

struct Probe(mpsc::UnboundedSender<Seen>);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.send(Seen::Dropped(thread::current().id()));
    }
}

/// A spare is a full worker: its hooks run on it, and it builds its own
/// instance of the service there and drops it there when it retires,
/// before its stop hook.
#[tokio::test]
async fn a_spare_builds_and_drops_its_instances_on_its_thread() {
    let (seen, mut events) = mpsc::unbounded_channel();
    let (start, stop) = (seen.clone(), seen.clone());
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .keep_alive(Duration::from_millis(20))
        .thread_name("full")
        .on_thread_start(move |id: &WorkerId| {
            let _ = start.send(Seen::Started(id.name().to_owned()));
        })
        .on_thread_stop(move |id: &WorkerId| {
            let _ = stop.send(Seen::Stopped(id.name().to_owned()));
        })
        .build();
    let barrier = Arc::new(Barrier::new(2));
    let svc = layer.service_with(move |_: WorkerId| {
        let _ = seen.send(Seen::Made(thread::current().id()));
        let probe = Probe(seen.clone());
        let barrier = barrier.clone();
        blocking::service_fn(move |_: Request<()>| {
            let _ = &probe;
            barrier.wait();
            Response::new(name())
        })
    });
    answers(send_all(&svc, 2)).await;
    // The spare retires after its keep-alive: the whole story, in order.
    let mut story = Vec::new();
    loop {
        let event = within("the spare's stop hook", events.recv())
            .await
            .unwrap();
        let done = event == Seen::Stopped("full-1".into());
        story.push(event);
        if done {
            break;
        }
    }
    assert!(story.contains(&Seen::Started("full-1".into())), "{story:?}");
    let made: Vec<_> = story
        .iter()
        .filter_map(|e| match e {
            Seen::Made(id) => Some(*id),
            _ => None,
        })
        .collect();
    let dropped: Vec<_> = story
        .iter()
        .filter_map(|e| match e {
            Seen::Dropped(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(made.len(), 2, "{story:?}");
    // The spare's instance: made on one thread, dropped there, and only it.
    assert_eq!(dropped.len(), 1, "{story:?}");
    assert!(made.contains(&dropped[0]));
    until(&layer, "the retirement counted", |s| {
        s.spares_retired() == 1
    })
    .await;
}

/// Spares retire after `keep_alive` without work, the pool returns to its
/// core workers, and the spares' slots can serve new spares.
#[tokio::test]
async fn spares_retire_and_threads_return_to_workers() {
    let (stopped, mut stops) = mpsc::unbounded_channel();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(3)
        .keep_alive(Duration::from_millis(20))
        .on_thread_stop(move |id: &WorkerId| {
            let _ = stopped.send(id.index());
        })
        .build();
    let barrier = Arc::new(Barrier::new(3));
    let svc = layer.layer(blocking::service_fn(move |req: Request<()>| {
        if req.uri().path() != "/after" {
            barrier.wait();
        }
        Response::new(name())
    }));
    answers(send_all(&svc, 3)).await;
    assert_eq!(layer.stats().threads(), 3);
    let mut retired: Vec<_> = vec![
        within("a spare retiring", stops.recv()).await.unwrap(),
        within("a spare retiring", stops.recv()).await.unwrap(),
    ];
    retired.sort();
    assert_eq!(retired, [1, 2]);
    until(&layer, "one thread left", |s| s.threads() == 1).await;
    let stats = layer.stats();
    assert_eq!(stats.spares_retired(), 2);
    assert!(stats.workers()[0].is_alive() && !stats.workers()[0].is_spare());
    // The core worker serves on.
    let after = Request::get("/after").body(()).unwrap();
    let response = within("an answer", svc.clone().oneshot(after))
        .await
        .unwrap();
    assert_eq!(collect(response.into_body()).await, name_of(&layer, 0));
    // The retired spares' slots are free again: the next round of blocked
    // handlers starts two spares again.
    let names: HashSet<_> = answers(send_all(&svc, 3)).await.into_iter().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(layer.stats().spares_started(), 4);
}

/// A pool of `workers` core workers (up to 4 threads) whose thread spawns
/// fail after the first `spawns`, with 4 requests sent to handlers that
/// wait at the returned gate; returns once two handlers run and a spawn was
/// refused.
async fn until_refused(
    workers: usize,
    spawns: usize,
) -> (ThreadAffinityLayer, Gate, Vec<JoinHandle<String>>) {
    let layer = ThreadAffinityLayer::builder()
        .workers(workers)
        .max_workers(4)
        .fail_spawns_after(spawns)
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let svc = gated(&layer, entered, gate.clone());
    let tasks = send_all(&svc, 4);
    for _ in 0..2 {
        within("two handlers running", entries.recv()).await;
    }
    until(&layer, "a refused spawn", |s| s.spawn_failures() >= 1).await;
    (layer, gate, tasks)
}

/// When the operating system refuses a spare's thread, no request is lost:
/// the pool serves on with the threads it has and lowers its ceiling.
#[tokio::test]
async fn a_refused_thread_loses_nothing() {
    // The core worker and one spare start; the next spawn fails.
    let (layer, gate, tasks) = until_refused(1, 2).await;
    let stats = layer.stats();
    assert_eq!(stats.max_workers(), 2, "{stats:?}");
    assert_eq!(stats.threads(), 2);
    gate.open();
    let names: HashSet<_> = answers(tasks).await.into_iter().collect();
    assert_eq!(names.len(), 2);
}

/// `shutdown` with spares running serves what was admitted, then every
/// thread, spares included, ends after its stop hook.
#[tokio::test]
async fn shutdown_with_spares_alive_drains() {
    let (stopped, mut stops) = mpsc::unbounded_channel();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(3)
        .on_thread_stop(move |id: &WorkerId| {
            let _ = stopped.send(id.index());
        })
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let svc = gated(&layer, entered, gate.clone());
    let tasks = send_all(&svc, 5);
    for _ in 0..3 {
        within("three handlers running", entries.recv()).await;
    }
    let shutdown = {
        let layer = layer.clone();
        tokio::spawn(async move { layer.shutdown().await })
    };
    gate.open();
    assert_eq!(answers(tasks).await.len(), 5);
    within("shutdown", shutdown).await.unwrap();
    let mut stops: Vec<_> = (0..3).map(|_| stops.try_recv().unwrap()).collect();
    stops.sort();
    assert_eq!(stops, [0, 1, 2]);
    assert_eq!(layer.stats().threads(), 0);
}

/// One blocked poll starts one spare, however many looks it lasts: worker
/// 0 blocks, its spare takes the next job and computes (not blocked), and
/// the supervisor, looking again and again while work waits, starts no
/// second spare for worker 0's same poll.
#[tokio::test]
async fn one_blocked_poll_starts_one_spare() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(4)
        .thread_name("once")
        .build();
    let gate = Gate::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (entered, mut entries) = mpsc::unbounded_channel();
    let (door, spin) = (gate.clone(), stop.clone());
    let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
        let _ = entered.send(name());
        if name() == "once-0" {
            door.wait();
        } else {
            while !spin.load(SeqCst) {
                std::hint::spin_loop();
            }
        }
        Response::new(name())
    }));
    let tasks = send_all(&svc, 8);
    let first = within("worker 0 blocked", entries.recv()).await.unwrap();
    assert_eq!(first, "once-0");
    let second = within("the spare serving", entries.recv()).await.unwrap();
    assert_eq!(second, "once-1");
    let looks = layer.stats().stalls();
    until(&layer, "three more looks", |s| s.stalls() >= looks + 3).await;
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 1, "{stats:?}");
    stop.store(true, SeqCst);
    gate.open();
    answers(tasks).await;
}

/// A spare still starting when `shutdown` begins (held in its start hook)
/// does not outlive it: shutdown returns only after that spare's stop
/// hook ran, and the request queued for it is served.
#[tokio::test]
async fn a_spare_starting_during_shutdown_does_not_outlive_it() {
    let (started, mut starts) = mpsc::unbounded_channel();
    let (stopped, mut stops) = mpsc::unbounded_channel();
    let hold = Gate::default();
    let held = hold.clone();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .on_thread_start(move |id: &WorkerId| {
            if id.index() == 1 {
                let _ = started.send(());
                held.wait();
            }
        })
        .on_thread_stop(move |id: &WorkerId| {
            let _ = stopped.send(id.index());
        })
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let svc = gated(&layer, entered, gate.clone());
    let tasks = send_all(&svc, 2);
    within("worker 0 blocked", entries.recv()).await;
    within("the spare starting", starts.recv()).await;
    let mut shutdown = Box::pin({
        let layer = layer.clone();
        async move { layer.shutdown().await }
    });
    // One poll: the pool drains and closes its queues (its first step).
    tokio::select! {
        biased;
        _ = &mut shutdown => panic!("shutdown returned with a spare starting"),
        _ = std::future::ready(()) => {}
    }
    hold.open();
    gate.open();
    assert_eq!(answers(tasks).await.len(), 2);
    within("shutdown", shutdown).await;
    let mut stops: Vec<_> = (0..2).map(|_| stops.try_recv().unwrap()).collect();
    stops.sort();
    assert_eq!(stops, [0, 1], "both threads ended before shutdown returned");
    assert_eq!(layer.stats().threads(), 0);
}

/// No spare while as many threads as core workers can take work: worker 0
/// blocks in a new poll while the pool's only other thread (a spare)
/// computes, and work waits; the supervisor looks and starts nothing, as
/// one more thread would only compete for the CPUs.
#[tokio::test]
async fn no_spare_while_core_many_threads_can_work() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(3)
        .thread_name("able")
        .build();
    let (first, rest) = (Gate::default(), Gate::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (entered, mut entries) = mpsc::unbounded_channel();
    let (a, b, spin) = (first.clone(), rest.clone(), stop.clone());
    let svc = layer.layer(blocking::service_fn(move |request: Request<u8>| {
        let what = ["a", "spin", "b", "c"][usize::from(*request.body())];
        let _ = entered.send(format!("{what} {}", name()));
        match what {
            "a" => a.wait(),
            "spin" => {
                while !spin.load(SeqCst) {
                    std::hint::spin_loop();
                }
            }
            _ => b.wait(),
        }
        Response::new(name())
    }));
    let send = |what: u8| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let response = svc.oneshot(Request::new(what)).await.unwrap();
            assert_eq!(response.status(), 200);
            collect(response.into_body()).await;
        })
    };
    let mut tasks = vec![send(0)];
    let entry = within("worker 0 blocked", entries.recv()).await.unwrap();
    assert_eq!(entry, "a able-0");
    // Queued in this order: the spare takes "spin", worker 0 then "b".
    for (n, what) in [1, 2, 3, 3].into_iter().enumerate() {
        tasks.push(send(what));
        until(&layer, "admitted", |s| s.admitted() > n as u64 + 1).await;
    }
    let entry = within("the spare computing", entries.recv()).await.unwrap();
    assert_eq!(entry, "spin able-1");
    first.open();
    let entry = within("worker 0 blocked again", entries.recv())
        .await
        .unwrap();
    assert_eq!(entry, "b able-0");
    let looks = layer.stats().stalls();
    until(&layer, "three more looks", |s| s.stalls() >= looks + 3).await;
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 1, "{stats:?}");
    stop.store(true, SeqCst);
    rest.open();
    for task in tasks {
        within("an answer", task).await.unwrap();
    }
}

/// Spares start only once the supervisor has seen blocking at two looks in
/// a row: seen once, it may be a moment's wait on a lock whose holder the
/// host preempted. So when the one spare starts, at least two looks have
/// found a long poll (`stalls`); with a spare per sighting it would start
/// at the first.
#[tokio::test]
async fn a_spare_starts_once_two_looks_in_a_row_see_blocking() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .thread_name("confirm")
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel::<()>();
    let gate = Gate::default();
    let svc = layer.layer(blocking::service_fn({
        let gate = gate.clone();
        move |request: Request<()>| {
            if request.uri().path() == "/block" {
                let _ = entered.send(());
                gate.wait();
            }
            Response::new(name())
        }
    }));
    let call = |path: &'static str| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let request = Request::get(path).body(()).unwrap();
            let response = svc.oneshot(request).await.unwrap();
            String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap()
        })
    };
    let blocked = call("/block");
    within("the worker blocked", entries.recv()).await.unwrap();
    // Waits in the shared queue: the supervisor looks.
    let quick = call("/quick");
    assert_eq!(
        within("the spare's answer", quick).await.unwrap(),
        "confirm-1"
    );
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 1, "{stats:?}");
    assert!(stats.stalls() >= 2, "{stats:?}");
    gate.open();
    assert_eq!(within("an answer", blocked).await.unwrap(), "confirm-0");
}

/// Once its last handle is gone, the pool lets go of everything: the
/// worker threads and the spares' supervisor end, and the configuration
/// they share (here, a hook holding a marker) is dropped with them.
#[tokio::test]
async fn dropping_the_last_handle_ends_the_supervisor_too() {
    let marker = Arc::new(());
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .on_thread_start({
            let marker = marker.clone();
            move |_: &WorkerId| {
                let _ = &marker;
            }
        })
        .build();
    let svc = layer.layer(blocking::service_fn(|_: Request<()>| Response::new(name())));
    let response = within("an answer", svc.clone().oneshot(Request::new(())))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(Arc::strong_count(&marker), 2, "the pool holds its hook");
    drop((svc, layer, response));
    within("the pool's shared state dropped", async {
        while Arc::strong_count(&marker) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// A thread refused in a look that has just started a spare lowers the
/// ceiling to the threads running then, that spare included: two core
/// workers block at once, one spare starts, the next spawn is refused, and
/// the pool stays at three threads.
#[tokio::test]
async fn a_refusal_counts_the_spare_started_just_before() {
    // The two core workers and one spare start; the next spawn fails.
    let (layer, gate, tasks) = until_refused(2, 3).await;
    let stats = layer.stats();
    assert_eq!(stats.max_workers(), 3, "{stats:?}");
    assert_eq!(stats.threads(), 3, "{stats:?}");
    gate.open();
    // Every request is answered (by whichever thread took it first).
    assert_eq!(answers(tasks).await.len(), 4);
}

/// A spare serving a stream is not idle: past its `keep_alive` it still
/// takes work. Core worker 0 blocks; the spare started for it serves a
/// stream whose reader stopped (its producer waits for room, off the CPU),
/// then, long after `keep_alive`, a quick request, which only the spare
/// can serve. The sleep is a lower bound only: the longer it lasts, the
/// surer a spare that counted its streaming time as idle would have left.
/// Once the stream ends, the spare retires.
#[tokio::test]
async fn a_spare_serving_a_stream_still_takes_work_past_its_keep_alive() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(2)
        .keep_alive(Duration::from_millis(20))
        .body_buffer(1)
        .merge_frames(0)
        .build();
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Gate::default();
    let svc = {
        let gate = gate.clone();
        layer.layer(blocking::service_fn(move |req: Request<()>| {
            let body = match req.uri().path() {
                "/block" => {
                    let _ = entered.send(name());
                    gate.wait();
                    Vec::new()
                }
                "/stream" => vec![name(); 1000],
                _ => vec![name()],
            };
            Response::new(blocking::IterBody::from_chunks(body))
        }))
    };
    let blocked = tokio::spawn(svc.clone().oneshot(get("/block")));
    assert_eq!(
        within("worker 0 to block", entries.recv()).await.unwrap(),
        name_of(&layer, 0)
    );
    let stream = within("the stream's head", svc.clone().oneshot(get("/stream")))
        .await
        .unwrap();
    let mut stream = stream.into_body();
    let first = within("a frame", stream.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), name_of(&layer, 1));

    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick = within("the quick request", svc.clone().oneshot(get("/quick")))
        .await
        .unwrap();
    assert_eq!(collect(quick.into_body()).await, name_of(&layer, 1));
    assert_eq!(layer.stats().spares_retired(), 0);

    // Once its stream ends (the reader goes), the spare is idle and
    // retires, though worker 0 is still blocked: nothing waits for it.
    drop(stream);
    until(&layer, "the spare to retire once its stream ended", |s| {
        s.spares_retired() == 1 && s.threads() == 1
    })
    .await;
    gate.open();
    within("/block", blocked).await.unwrap().unwrap();
}
