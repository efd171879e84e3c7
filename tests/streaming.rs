//! Guarantees 3 and 4: frames stream in order as they are produced, with
//! backpressure, and a stalled reader does not stall its worker.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::{service_fn, IterBody};
use tower_affinity::{ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

use common::{
    collect, frame_data, get, next_data, next_frame, send, within, Recorder, RecordingService,
    Script, What,
};

type Chunks = Box<dyn Iterator<Item = Result<Bytes, Infallible>> + Send>;

/// 10,000 frames, each carrying its index, arrive in order and intact,
/// followed by a clean end.
#[tokio::test]
async fn ten_thousand_frames_arrive_in_order() {
    const FRAMES: usize = 10_000;
    let frame = |i: usize| Bytes::from(format!("{i:05}:{}|", "x".repeat(i % 13)));
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .merge_frames(0)
        .build();
    let mut svc = layer.layer(service_fn(move |_: Request<()>| {
        Response::new(IterBody::new(
            (0..FRAMES).map(move |i| Ok::<_, Infallible>(frame(i))),
        ))
    }));

    let mut body = send(&mut svc, get("/")).await.into_body();
    for i in 0..FRAMES {
        assert_eq!(next_data(&mut body).await, frame(i), "frame {i}");
    }
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
}

/// The first frame reaches the caller before the producer makes the last:
/// the producer blocks its worker thread before making frame 2 until the
/// test, having received frame 1, lets it go on.
#[tokio::test]
async fn first_frame_arrives_before_the_last_is_made() {
    let (go_on, wait) = std_mpsc::channel::<()>();
    let wait = Arc::new(Mutex::new(wait));
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(service_fn(move |_: Request<()>| {
        let wait = wait.clone();
        let mut made = 0;
        let chunks = std::iter::from_fn(move || {
            made += 1;
            match made {
                1 => Some(Ok::<_, Infallible>(Bytes::from("one"))),
                2 => {
                    // A legitimately blocking producer; fails (ends the
                    // body early) only if the test is gone.
                    wait.lock().unwrap().recv().ok()?;
                    Some(Ok(Bytes::from("two")))
                }
                _ => None,
            }
        });
        Response::new(IterBody::new(chunks))
    }));

    let mut body = send(&mut svc, get("/")).await.into_body();
    assert_eq!(next_data(&mut body).await, "one");
    go_on.send(()).unwrap();
    assert_eq!(next_data(&mut body).await, "two");
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
}

/// A never-ending producer is polled exactly as far as its buffer has
/// room, never a frame beyond: with nothing read it stops at `body_buffer`
/// polls; after that it is woken only once the reader has drained the
/// buffer to half (`queued <= body_buffer / 2`), and then refills it to
/// exactly `read + body_buffer`. Frames are 64 KiB, which the channel never
/// merges, so one frame read is one slot freed.
#[tokio::test]
async fn producer_stays_at_most_body_buffer_ahead_of_a_stopped_reader() {
    const BUFFER: usize = 4;
    let polls = Arc::new(AtomicUsize::new(0));
    let (polled_tx, mut polled) = mpsc::unbounded_channel();
    // Keyed: with one core worker every key lands on it, also if the pool
    // grows spare workers, so `settle`'s request runs on the producer's
    // thread.
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .body_buffer(BUFFER)
        .merge_frames(0)
        .affinity_header(HeaderName::from_static("x-key"))
        .build();
    let counter = polls.clone();
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        let chunks: Chunks = match req.uri().path() {
            "/endless" => {
                let (counter, polled_tx) = (counter.clone(), polled_tx.clone());
                Box::new(std::iter::from_fn(move || {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = polled_tx.send(n);
                    Some(Ok(big_frame(n - 1)))
                }))
            }
            _ => Box::new(std::iter::once(Ok(Bytes::from("quick")))),
        };
        Response::new(IterBody::new(chunks))
    }));
    let mut endless = send(&mut svc, keyed("/endless")).await.into_body();
    // The first frame is polled before the head; the rest fill the buffer.
    let mut produced = BUFFER;
    let mut barrier = layer.layer(tower::service_fn(yield_twice));
    settle(&polls, &mut polled, &mut barrier, produced).await;
    assert_eq!(polls.load(Ordering::SeqCst), produced, "nothing read yet");

    for read in 1..=2 * BUFFER {
        assert_eq!(next_data(&mut endless).await, big_frame(read - 1));
        if produced - read <= BUFFER / 2 {
            // Drained to half: the producer is woken and refills.
            produced = read + BUFFER;
        }
        settle(&polls, &mut polled, &mut barrier, produced).await;
        assert_eq!(
            polls.load(Ordering::SeqCst),
            produced,
            "after reading {read} frames of a {BUFFER}-frame buffer"
        );
    }
}

/// Waits until the producer has made `n` frames, then sends a request
/// through the same (only) worker whose future yields twice: the worker runs
/// its tasks in the order they were woken, so by its answer the producer
/// has had its turn (if it was woken: a wake-up the test means to detect)
/// and finished it, and any poll beyond `n` would have happened.
async fn settle<S>(
    polls: &AtomicUsize,
    polled: &mut mpsc::UnboundedReceiver<usize>,
    svc: &mut S,
    n: usize,
) where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>>,
    S::Error: std::fmt::Debug,
{
    within("the producer reaching its bound", async {
        // The channel wakes this loop at each poll; the counter says how many.
        while polls.load(Ordering::SeqCst) < n {
            polled.recv().await.unwrap();
        }
    })
    .await;
    let answer = send(svc, keyed("/barrier")).await;
    assert_eq!(collect(answer.into_body()).await, "yielded twice");
}

/// A handler that yields twice to its worker's other tasks, then answers.
async fn yield_twice(_: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    Ok(Response::new(Full::new(Bytes::from("yielded twice"))))
}

/// A 64 KiB frame (never merged by the channel) that starts with its index.
fn big_frame(index: usize) -> Bytes {
    let mut data = format!("{index:08}").into_bytes();
    data.resize(64 * 1024, b'.');
    Bytes::from(data)
}

/// A `GET` for `path`, keyed so that it goes to a core worker.
fn keyed(path: &str) -> Request<()> {
    Request::get(path).header("x-key", "k").body(()).unwrap()
}

/// With one worker, a client that stops reading its stream does not stop a
/// second request from completing, and its stream is still alive after.
#[tokio::test]
async fn stalled_reader_does_not_block_another_request() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .body_buffer(2)
        .merge_frames(0)
        .build();
    let mut svc = layer.layer(service_fn(|req: Request<()>| {
        let chunks: Chunks = match req.uri().path() {
            "/endless" => Box::new((0..).map(|i| Ok(frame_data(i)))),
            _ => Box::new(
                ["quick", " and", " done"]
                    .into_iter()
                    .map(|s| Ok(Bytes::from(s))),
            ),
        };
        Response::new(IterBody::new(chunks))
    }));

    let mut stalled = send(&mut svc, get("/endless")).await.into_body();
    assert_eq!(next_data(&mut stalled).await, frame_data(0));

    let quick = send(&mut svc, get("/quick")).await;
    assert_eq!(collect(quick.into_body()).await, "quick and done");

    assert_eq!(next_data(&mut stalled).await, frame_data(1));
}

/// With one worker, a request whose inner future is pending does not stop
/// the worker from starting and finishing another request.
#[tokio::test]
async fn pending_future_does_not_block_another_request() {
    let (rec, mut events) = Recorder::new();
    let never = Script {
        respond: false,
        ..Script::frames(1)
    };
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut pending = layer.layer(RecordingService::new(rec, never));
    let mut quick = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from("quick")))
    }));

    let waiting = ServiceExt::<Request<()>>::ready(&mut pending)
        .await
        .unwrap()
        .call(get("/"));
    events.until(What::PollFuture).await;
    let response = send(&mut quick, get("/")).await;
    assert_eq!(collect(response.into_body()).await, "quick");
    drop(waiting);
}
