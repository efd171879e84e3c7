//! Settings past what the pool can hold are refused where they are made
//! into a pool: `try_build` returns an `io::Error` of kind `InvalidInput`
//! and `build` panics with the same message, never a panic deep inside
//! (a thread's name, a semaphore, an allocation). Huge settings that are
//! allowed allocate as they are used, not up front.

mod common;

use std::io;

use common::{collect, deaths, get, send, within, Gate};
use http::{HeaderName, Request, Response};
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::{self, IterBody};
use tower_affinity::{Builder, ThreadAffinityLayer};

/// The error `builder` is refused with; it must not panic.
fn refused(builder: Builder) -> io::Error {
    let error = builder.try_build().expect_err("a setting past its limit");
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    error
}

/// Serves one request on `layer`, keyed by `x-key` when `keyed`.
async fn serves(layer: &ThreadAffinityLayer, keyed: bool) {
    let mut svc = layer.service(blocking::service_fn(|_: Request<()>| {
        Response::new(String::from("ok"))
    }));
    let mut request = get("/");
    if keyed {
        request.headers_mut().insert("x-key", "k".parse().unwrap());
    }
    let response = send(&mut svc, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(collect(response.into_body()).await, "ok");
}

/// A NUL in `thread_name` cannot name an OS thread: `try_build` says so.
#[test]
fn a_nul_in_the_thread_name_is_an_error() {
    let error = refused(ThreadAffinityLayer::builder().thread_name("db\0pool"));
    assert!(error.to_string().contains("thread_name"), "{error}");
}

/// `build` refuses it with a clear panic, before any thread starts.
#[test]
#[should_panic(expected = "tower-affinity: thread_name")]
fn build_panics_at_a_nul_in_the_thread_name() {
    let _ = ThreadAffinityLayer::builder()
        .thread_name("db\0pool")
        .build();
}

/// A queue past the admission semaphore's limit (`usize::MAX >> 3`
/// places) is an error, not a panic in `try_build`.
#[test]
fn a_queue_past_the_semaphore_limit_is_an_error() {
    for capacity in [Semaphore::MAX_PERMITS + 1, usize::MAX] {
        let error = refused(ThreadAffinityLayer::builder().queue_capacity(capacity));
        assert!(error.to_string().contains("queue_capacity"), "{error}");
    }
}

/// More threads than a pool may run (each has a slot made at start) is an
/// error, whether asked through `max_workers` or `workers`.
#[test]
fn thread_counts_past_the_limit_are_errors() {
    let builders = [
        ThreadAffinityLayer::builder().max_workers(usize::MAX),
        ThreadAffinityLayer::builder().workers(usize::MAX),
    ];
    for builder in builders {
        let error = refused(builder);
        assert!(error.to_string().contains("max_workers"), "{error}");
    }
}

/// The largest queue allowed costs nothing up front: the pool starts and
/// serves, unkeyed and keyed (each worker's own queue is that large too).
#[tokio::test]
async fn the_largest_queue_is_allocated_as_used() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .queue_capacity(Semaphore::MAX_PERMITS)
        .affinity_header(HeaderName::from_static("x-key"))
        .try_build()
        .unwrap();
    serves(&layer, false).await;
    serves(&layer, true).await;
}

/// A worker's own queue past the size allocated up front is still bounded
/// by `queue_capacity`: with its worker stuck, 4,097 keyed requests queue
/// and the next one is answered `503` at once.
#[tokio::test]
async fn a_large_own_queue_still_holds_at_most_its_capacity() {
    const CAPACITY: usize = 4097;
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .queue_capacity(CAPACITY)
        .affinity_header(HeaderName::from_static("x-key"))
        .build();
    let gate = Gate::default();
    let (entered, mut entries) = tokio::sync::mpsc::unbounded_channel();
    let held = gate.clone();
    let mut svc = layer.service(blocking::service_fn(move |req: Request<()>| {
        if req.uri().path() == "/block" {
            let _ = entered.send(());
            held.wait();
        }
        Response::new(String::from("ok"))
    }));
    let keyed = |path: &str| {
        let mut request = get(path);
        request.headers_mut().insert("x-key", "k".parse().unwrap());
        request
    };
    let stuck = tokio::spawn(svc.clone().oneshot(keyed("/block")));
    within("the worker stuck", entries.recv()).await;
    let mut queued = Vec::new();
    for _ in 0..CAPACITY {
        queued.push(svc.ready().await.unwrap().call(keyed("/")));
    }
    assert_eq!(layer.stats().workers()[0].queued(), CAPACITY);
    let over = send(&mut svc, keyed("/")).await;
    assert_eq!(over.status(), 503);
    gate.open();
    for response in queued {
        assert_eq!(
            within("a queued request", response).await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        within("the stuck request", stuck)
            .await
            .unwrap()
            .unwrap()
            .status(),
        200
    );
}

/// Streams 64 small chunks through a pool built from `builder`, reading
/// only once all are produced (so that they wait, and merge), and checks
/// every byte arrives in order, with no worker death.
async fn streams_whole(builder: Builder) {
    let layer = builder.workers(1).max_workers(1).build();
    let (produced, mut done) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = layer.service(blocking::service_fn(move |_: Request<()>| {
        let produced = produced.clone();
        let chunks = (0..64).map(move |i| {
            if i == 63 {
                let _ = produced.send(());
            }
            format!("{i},")
        });
        Response::new(IterBody::from_chunks(chunks))
    }));
    let response = send(&mut svc, get("/")).await;
    within("every chunk produced", done.recv()).await;
    let body = collect(response.into_body()).await;
    let expected: String = (0..64).map(|i| format!("{i},")).collect();
    assert_eq!(body, expected.as_bytes());
    assert_eq!(deaths(&layer.stats()), (0, 0), "{:?}", layer.stats());
}

/// `body_buffer(usize::MAX)` is room allocated as frames wait, never up
/// front: the stream is served whole.
#[tokio::test]
async fn the_largest_body_buffer_is_allocated_as_used() {
    streams_whole(ThreadAffinityLayer::builder().body_buffer(usize::MAX)).await;
}

/// `merge_frames(usize::MAX)`: merged frames grow as they merge, never
/// allocated at the cap up front.
#[tokio::test]
async fn the_largest_merge_size_is_allocated_as_used() {
    streams_whole(ThreadAffinityLayer::builder().merge_frames(usize::MAX)).await;
}
