//! Guarantee 6: when the caller drops the response future or body, the
//! worker stops and drops the inner future or body on its own thread.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::service_fn;
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{
    assert_worker_name, collect, frame_data, get, next_data, send, within, Event, Recorder,
    RecordingService, Script, What,
};

/// Asserts that every recorded step ran on the thread of `on`, a worker of
/// the pool named `prefix`, not the test's thread.
fn all_on(seen: &[Event], on: &Event, prefix: &str) {
    assert_worker_name(&on.name, prefix);
    assert_ne!(on.thread, thread::current().id());
    for event in seen {
        assert_eq!(event.thread, on.thread, "{event:?} left {on:?}'s thread");
    }
}

/// Dropping the body mid-stream, while the worker waits for room in a full
/// buffer, drops the inner body on the worker; the worker polls it no more
/// and goes on serving.
#[tokio::test]
async fn dropping_the_body_mid_stream_drops_the_inner_body_on_the_worker() {
    const BUFFER: usize = 2;
    let (rec, mut events) = Recorder::new();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .body_buffer(BUFFER)
        // Small frames would merge and never fill the buffer.
        .merge_frames(0)
        .thread_name("cancel-body")
        .build();
    let mut endless = layer.layer(RecordingService::new(rec, Script::endless()));
    let mut quick = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from("quick")))
    }));

    let mut body = send(&mut endless, get("/")).await.into_body();
    for i in 0..2 {
        assert_eq!(next_data(&mut body).await, frame_data(i));
    }
    // Let the worker fill the buffer and stall on it.
    events.until(What::PollFrame(2 + BUFFER - 1)).await;
    drop(body);

    let dropped = events.until(What::DropBody).await;
    all_on(&events.seen, &dropped, "cancel-body");
    let polled = events.count(|w| matches!(w, What::PollFrame(_)));
    assert!(polled <= 2 + BUFFER + 2, "polled {polled} frames");

    // The worker serves another request, and still polls the body no more.
    assert_eq!(
        collect(send(&mut quick, get("/")).await.into_body()).await,
        "quick"
    );
    events.drain();
    let after = events.seen.iter().skip_while(|e| e.what != What::DropBody);
    assert_eq!(after.count(), 1, "steps after the drop: {:?}", events.seen);
}

/// Dropping the body while the inner body is pending (and will never wake
/// the worker) still drops the inner body, on the worker: the worker
/// watches for the reader leaving, not only at the next frame.
#[tokio::test]
async fn dropping_the_body_while_the_inner_body_is_pending_drops_it_on_the_worker() {
    let (rec, mut events) = Recorder::new();
    let stalls = Script {
        stall_after: Some(1),
        ..Script::endless()
    };
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .thread_name("cancel-pending-body")
        .build();
    let mut svc = layer.layer(RecordingService::new(rec, stalls));

    let mut body = send(&mut svc, get("/")).await.into_body();
    assert_eq!(next_data(&mut body).await, frame_data(0));
    events.until(What::PollFrame(1)).await;
    drop(body);

    let dropped = events.until(What::DropBody).await;
    all_on(&events.seen, &dropped, "cancel-pending-body");
}

/// Dropping the response future while the inner future is pending (forever,
/// never waking) drops the inner future on the worker, and frees the
/// worker's only slot for the next request.
#[tokio::test]
async fn dropping_the_response_future_drops_the_inner_future_on_the_worker() {
    let (rec, mut events) = Recorder::new();
    let never = Script {
        respond: false,
        ..Script::frames(1)
    };
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_streams_per_worker(1)
        .thread_name("cancel-future")
        .build();
    let mut pending = layer.layer(RecordingService::new(rec, never));
    let mut quick = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from("quick")))
    }));

    let waiting = ServiceExt::<Request<()>>::ready(&mut pending)
        .await
        .unwrap()
        .call(get("/"));
    events.until(What::PollFuture).await;
    drop(waiting);

    let dropped = events.until(What::DropFuture).await;
    all_on(&events.seen, &dropped, "cancel-future");
    // With one slot on one worker, this runs only if the slot was freed.
    assert_eq!(
        collect(send(&mut quick, get("/")).await.into_body()).await,
        "quick"
    );
}

/// Dropping the response future while the inner service is not ready (and
/// never will be, nor wake the worker) ends the request on the worker: the
/// worker's only slot goes to the next request.
#[tokio::test]
async fn dropping_the_response_future_while_not_ready_frees_the_worker() {
    /// Never ready, and keeps no waker; says when it is polled.
    #[derive(Clone)]
    struct NeverReady(Arc<tokio::sync::Notify>);
    impl Service<Request<()>> for NeverReady {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.0.notify_one();
            Poll::Pending
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            unreachable!("never ready")
        }
    }

    let polled = Arc::new(tokio::sync::Notify::new());
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_streams_per_worker(1)
        .build();
    let mut stuck = layer.layer(NeverReady(polled.clone()));
    let mut quick = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from("quick")))
    }));

    let waiting = stuck.ready().await.unwrap().call(get("/"));
    within("the inner poll_ready", polled.notified()).await;
    drop(waiting);

    // With one slot on one worker, this runs only if the slot was freed.
    assert_eq!(
        collect(send(&mut quick, get("/")).await.into_body()).await,
        "quick"
    );
}
