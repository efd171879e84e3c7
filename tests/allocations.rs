//! Allocations per request made by the layer, counted by a global
//! allocator: on the caller's thread and on the worker's, for a request of
//! one frame, after warm-up. Counts are deterministic, so this is a test,
//! not a bench.
//!
//! What the layer allocates per such request, and why each remains:
//! - the job, which is also its reply slot (caller, `service.rs`): the
//!   request must cross to the worker and the head come back, and the
//!   caller must be able to withdraw it while it is queued;
//! - the request's task (worker, `pool/task.rs`), which also holds the
//!   inner future and body: it is boxed before its first poll, since a
//!   pending task is spawned and a polled future cannot move;
//! - the `WorkerId` extension: on a request that has no extensions yet, 3
//!   (`http::Extensions` boxes its map, the map allocates its table, and
//!   each value is boxed); on a request that already carries extensions,
//!   the value's box only. axum's router (path parameters, matched path)
//!   and tonic's transport server (connect info) insert extensions before
//!   the layer sees a request; plain hyper and hyper-util HTTP/1 requests
//!   arrive with none (unless they upgrade).
//!
//! So 5 for a bare request, 3 for one that carries an extension. Beside
//! them, the queues (unbounded channels, see `pool/queue`) allocate a
//! block of places as they go: one per [`QUEUE_BLOCK`] jobs, not one per
//! request.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_affinity::blocking::service_fn;
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

/// Counts allocations (and reallocations) on the threads that opted in
/// for the measurement under way.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The measurement under way (0: none). A thread counts while its mark is
/// this one: a worker of an earlier test's pool, still exiting, does not.
static CURRENT: AtomicUsize = AtomicUsize::new(0);

/// One measurement at a time: the tests of this file run in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    static COUNTED: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let mark = COUNTED.try_with(Cell::get).unwrap_or(0);
    if mark != 0 && mark == CURRENT.load(Ordering::SeqCst) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What the layer allocates per request of one frame that has no
/// extensions yet.
const BARE: usize = 5;

/// What it allocates per such request that already carries an extension.
const WITH_EXTENSION: usize = 3;

/// The jobs one block of a queue's places holds (`concurrent-queue`'s
/// unbounded channel: 31 a block).
const QUEUE_BLOCK: usize = 31;

/// Checks `total`, for `REQUESTS` requests, against `each` per request
/// and at most one queue block per [`QUEUE_BLOCK`] of them.
fn assert_per_request(total: usize, each: usize, what: &str) {
    let blocks = total.checked_sub(each * REQUESTS);
    assert!(
        blocks.is_some_and(|blocks| blocks <= REQUESTS.div_ceil(QUEUE_BLOCK)),
        "{total} allocations for {REQUESTS} {what}, not {each} each and a queue block per \
         {QUEUE_BLOCK}"
    );
}

/// A request of one frame with no extensions costs `BARE` allocations,
/// counted on the caller and the worker after warm-up, with an
/// inner service that allocates nothing itself.
#[test]
fn allocations_per_one_frame_request() {
    let total = count_requests(Request::new);
    assert_per_request(total, BARE, "bare requests");
}

/// An extension the caller's stack put on the request (as axum does).
#[derive(Clone)]
struct Routed;

/// A request that already carries an extension costs `WITH_EXTENSION`
/// allocations: the `WorkerId` is one more box in a map
/// that exists.
#[test]
fn allocations_per_request_with_extensions() {
    let total = count_requests(|()| {
        let mut request = Request::new(());
        request.extensions_mut().insert(Routed);
        request
    });
    assert_per_request(total, WITH_EXTENSION, "requests with an extension");
}

const REQUESTS: usize = 100;

/// Allocations made by `REQUESTS` requests after as many for warm-up; the
/// requests are built before counting starts.
fn count_requests(make: impl Fn(()) -> Request<()>) -> usize {
    static MARKS: AtomicUsize = AtomicUsize::new(1);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mark = MARKS.fetch_add(1, Ordering::SeqCst);
    CURRENT.store(mark, Ordering::SeqCst);
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .on_thread_start(move |_| COUNTED.set(mark))
        .build();
    let mut svc = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from_static(b"hello")))
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut one = |request: Request<()>| {
        runtime.block_on(async {
            let response = svc.ready().await.unwrap().call(request).await;
            let mut body = response.unwrap().into_body();
            assert!(!body.is_end_stream());
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "hello");
        })
    };
    // Warm-up: the worker's instance, the runtime's and channels' buffers.
    for _ in 0..REQUESTS {
        one(make(()));
    }
    let requests: Vec<_> = (0..REQUESTS).map(|_| make(())).collect();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTED.set(mark);
    for request in requests {
        one(request);
    }
    COUNTED.set(0);
    let total = ALLOCATIONS.load(Ordering::SeqCst) - before;
    println!("{total} allocations for {REQUESTS} requests");
    total
}
