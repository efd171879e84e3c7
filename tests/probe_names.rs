//! The blocked probe reads the scheduler's state of a worker thread from
//! `/proc` (Linux), whatever the thread's name: a name the kernel cuts in
//! the middle of a character must not blind it.

#![cfg(target_os = "linux")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{collect, get, until, within};
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_affinity::{blocking, ThreadAffinityLayer};

/// Linux keeps 15 bytes of a thread's name: `datenbank-größe-0` is cut
/// inside `ß`, so its `/proc/.../stat` is not UTF-8. A handler that spins
/// on the CPU there, inside one poll for far longer than the 20 ms after
/// which a blind probe calls any poll blocked, is still seen running, and
/// no spare starts, though work waits.
#[tokio::test]
async fn a_name_cut_inside_a_character_still_tells_spinning_from_blocked() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(4)
        .thread_name("datenbank-größe")
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let (entered, mut entries) = mpsc::unbounded_channel();
    let spin = stop.clone();
    let svc = layer.service(blocking::service_fn(move |_: Request<()>| {
        let comm = std::fs::read("/proc/thread-self/comm").unwrap();
        let _ = entered.send(comm);
        while !spin.load(SeqCst) {
            std::hint::spin_loop();
        }
        Response::new(String::from("spun"))
    }));
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    let comm = within("a handler running", entries.recv()).await.unwrap();
    // The premise: the kernel's copy of the name is cut mid-character.
    assert!(std::str::from_utf8(&comm).is_err(), "{comm:?}");
    let long = Duration::from_millis(100);
    until(&layer, "a long poll, looked at", |s| {
        s.workers()[0].current_poll() >= Some(long) && s.stalls() >= 3
    })
    .await;
    let stats = layer.stats();
    assert!(!stats.workers()[0].blocked(), "{stats:?}");
    stop.store(true, SeqCst);
    for task in tasks {
        let response = within("an answer", task).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        collect(response.into_body()).await;
    }
    let stats = layer.stats();
    assert_eq!(stats.spares_started(), 0, "{stats:?}");
    assert_eq!(stats.threads(), 1, "{stats:?}");
}
