//! The frame channel's wake-ups, seen from outside: dropping a streamed
//! body wakes the worker before it drops the frames still queued (a frame
//! whose `Drop` panics, user code since `Bytes` can own anything, cannot
//! make the worker miss that its reader went away), and reading does not
//! wake a worker that waits on its own inner body.

mod common;

use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tower_affinity::blocking::service_fn;
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{collect, next_data, send, thread_name, within};

/// Bytes whose owner panics when dropped.
struct Grenade(Vec<u8>);

impl AsRef<[u8]> for Grenade {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Grenade {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a frame's owner panicked in drop");
        }
    }
}

/// Frame 0 plain, frame 1 a grenade, then plain frames for ever; reports
/// frame 1 being produced, and the thread it is dropped on.
struct Body3 {
    next: usize,
    produced: mpsc::UnboundedSender<usize>,
    dropped: mpsc::UnboundedSender<String>,
}

impl Body for Body3 {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = self.next;
        self.next += 1;
        let _ = self.produced.send(n);
        let data = match n {
            1 => Bytes::from_owner(Grenade(b"grenade".to_vec())),
            _ => Bytes::from(format!("frame {n}")),
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Drop for Body3 {
    fn drop(&mut self) {
        let _ = self.dropped.send(thread_name());
    }
}

/// With the buffer full and the worker waiting for room, dropping the body
/// panics on the reader's side (the grenade) and the worker still learns
/// the reader left: it drops the inner body, on its own thread.
#[tokio::test]
async fn reader_drop_wakes_the_worker_before_dropping_frames() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .body_buffer(1)
        // A small frame would be merged (copied) on the worker.
        .merge_frames(0)
        .thread_name("reader-drop")
        .build();
    let (produced_tx, mut produced) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let mut stream = layer.layer(service_fn(move |_: Request<()>| {
        Response::new(Body3 {
            next: 0,
            produced: produced_tx.clone(),
            dropped: dropped_tx.clone(),
        })
    }));
    let mut quick = layer.layer(service_fn(|_: Request<()>| {
        Response::new(http_body_util::Full::new(Bytes::from("quick")))
    }));

    let mut body = send(&mut stream, Request::new(())).await.into_body();
    assert_eq!(next_data(&mut body).await, "frame 0");
    within("frame 1", async {
        while produced.recv().await != Some(1) {}
    })
    .await;
    // The worker serves this only after the stream's task has returned
    // from its poll: then the grenade is queued and the worker waits for
    // room.
    assert_eq!(
        collect(send(&mut quick, Request::new(())).await.into_body()).await,
        "quick"
    );
    let exploded = catch_unwind(AssertUnwindSafe(move || drop(body)));
    assert!(
        exploded.is_err(),
        "the grenade went off in the reader's drop"
    );
    let on = within("the inner body's drop", dropped.recv())
        .await
        .unwrap();
    assert_eq!(on, "reader-drop-0");
}

/// Four frames, then pending for ever (never waking); counts its polls.
struct Stalls(Arc<AtomicUsize>);

impl Body for Stalls {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.fetch_add(1, Ordering::SeqCst) {
            n @ 0..4 => Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("frame {n}")))))),
            _ => Poll::Pending,
        }
    }
}

/// Serves one request that is pending a few times: on one worker, it is
/// answered only after every task woken before it has had its turns.
async fn flush<S>(quick: &mut S) -> Bytes
where
    S: tower::Service<Request<()>, Response = Response<tower_affinity::ThreadAffinityBody>>,
    S::Error: std::fmt::Debug,
{
    collect(send(quick, Request::new(())).await.into_body()).await
}

/// A worker waiting on its inner body (not for room) is not woken by the
/// reader taking frames: the body is polled once per frame plus once
/// pending, however the reads go.
#[tokio::test]
async fn reads_do_not_wake_a_worker_waiting_on_its_body() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .merge_frames(0)
        .build();
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let mut stream = layer.layer(service_fn(move |_: Request<()>| {
        Response::new(Stalls(counter.clone()))
    }));
    // Pending a few times: its task queues behind the ones woken before.
    let mut quick = layer.layer(tower::service_fn(|_: Request<()>| async {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
            "quick",
        ))))
    }));
    let mut body = send(&mut stream, Request::new(())).await.into_body();
    // Served after the stream's task has produced what it can and waits on
    // its body (one worker, tasks in turn).
    assert_eq!(flush(&mut quick).await, "quick");
    assert_eq!(polls.load(Ordering::SeqCst), 5, "four frames, one pending");
    for n in 0..4 {
        assert_eq!(next_data(&mut body).await, format!("frame {n}"));
    }
    assert_eq!(flush(&mut quick).await, "quick");
    assert_eq!(polls.load(Ordering::SeqCst), 5, "a read woke the worker");
}
