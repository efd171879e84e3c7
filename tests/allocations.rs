//! Allocations per request made by the layer, counted by a global
//! allocator: on the caller's thread and on the worker's, for a request of
//! one frame, after warm-up. Counts are deterministic, so this is a test,
//! not a bench.
//!
//! What the layer allocates per such request today (6):
//! - the reply's oneshot (caller, `service.rs`),
//! - the boxed job (`Call`, caller, `service.rs`),
//! - the request's task (worker, `pool/task.rs`), which also holds the
//!   inner future and body,
//! - 3 for the `WorkerId` extension on a request that has no extensions
//!   yet: `http::Extensions` boxes its map, the map allocates its table, and
//!   each value is boxed. On a request that already carries extensions (as
//!   under hyper and axum) it is the value's box only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_affinity::blocking::service_fn;
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

/// Counts allocations (and reallocations) on the threads that opted in.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
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

/// The most the layer may allocate per request of one frame.
const LAYER_LIMIT: usize = 6;

/// A request of one frame through the layer costs at most `LAYER_LIMIT`
/// allocations, counted on the caller and the worker after warm-up, with an
/// inner service that allocates nothing itself.
#[test]
fn allocations_per_one_frame_request() {
    const REQUESTS: usize = 100;
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .on_thread_start(|_| COUNTED.set(true))
        .build();
    let mut svc = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from_static(b"hello")))
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut one = || {
        runtime.block_on(async {
            let response = svc.ready().await.unwrap().call(Request::new(())).await;
            let mut body = response.unwrap().into_body();
            assert!(!body.is_end_stream());
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "hello");
        })
    };
    // Warm-up: the worker's instance, the runtime's and channels' buffers.
    for _ in 0..REQUESTS {
        one();
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTED.set(true);
    for _ in 0..REQUESTS {
        one();
    }
    COUNTED.set(false);
    let total = ALLOCATIONS.load(Ordering::SeqCst) - before;
    println!("{total} allocations for {REQUESTS} requests");
    assert!(
        total <= LAYER_LIMIT * REQUESTS,
        "{total} allocations for {REQUESTS} requests: more than {LAYER_LIMIT} each"
    );
}
