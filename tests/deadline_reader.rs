//! `response_deadline` holds while the worker is stuck inside a body's
//! `poll_frame` (#20, row 3): the reader keeps the deadline too, gets
//! `Elapsed` at it, and the expired stream holds nothing.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, next_frame, within};
use http::{Request, Response};
use http_body::{Body, Frame};
use tower::{Service, ServiceExt};
use tower_affinity::error::Elapsed;
use tower_affinity::{blocking, ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

/// A body whose first frame is ready and whose second `poll_frame` blocks
/// its worker until `release` is sent; it reports the thread it is dropped
/// on.
struct Stuck {
    entered: Option<tokio::sync::oneshot::Sender<()>>,
    release: mpsc::Receiver<()>,
    polls: usize,
    dropped: Option<tokio::sync::oneshot::Sender<ThreadId>>,
}

impl Body for Stuck {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls += 1;
        if self.polls == 2 {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
            }
            // Legacy code producing the next chunk: the worker is stuck.
            let _ = self.release.recv();
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk;")))))
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.send(thread::current().id());
        }
    }
}

/// A service that answers once with `body`, and reports its worker thread.
fn once<B: Body + Send + 'static>(
    layer: &ThreadAffinityLayer,
    body: B,
) -> (
    impl Service<Request<()>, Response = Response<ThreadAffinityBody>, Error = Infallible>,
    tokio::sync::oneshot::Receiver<ThreadId>,
)
where
    B::Data: Send,
    B::Error: Into<tower_affinity::BoxError>,
{
    let (worker_tx, worker) = tokio::sync::oneshot::channel();
    let slot = Arc::new(Mutex::new(Some((body, worker_tx))));
    let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
        let (body, worker) = slot.lock().unwrap().take().expect("one request");
        let _ = worker.send(thread::current().id());
        Response::new(body)
    }));
    (svc, worker)
}

/// A reader waiting for the second frame gets `Elapsed` at the deadline
/// while the worker is still blocked in that frame's `poll_frame` (the
/// body has not been released when the error arrives); once released, the
/// worker drops the inner body on its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_gets_elapsed_while_its_worker_is_stuck_in_poll_frame() {
    bounded(Duration::from_secs(10), async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(1)
            .response_deadline(Duration::from_millis(200))
            .build();
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, release_rx) = mpsc::channel();
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
        let body = Stuck {
            entered: Some(entered_tx),
            release: release_rx,
            polls: 0,
            dropped: Some(dropped_tx),
        };
        let (mut svc, worker) = once(&layer, body);
        let response = within(
            "the head",
            svc.ready().await.unwrap().call(Request::new(())),
        )
        .await
        .unwrap();
        let worker = worker.await.unwrap();
        let mut body = response.into_body();
        let first = next_frame(&mut body).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "chunk;");
        within("the worker stuck in the second frame", entered)
            .await
            .unwrap();

        let error = next_frame(&mut body)
            .await
            .expect("an error, not the end")
            .expect_err("no frame: the worker is stuck");
        assert!(error.is::<Elapsed>(), "unexpected error: {error}");
        assert!(body.is_end_stream());
        assert!(next_frame(&mut body).await.is_none());
        // Still stuck: nothing has released it yet.
        release.send(()).unwrap();
        assert_eq!(
            within("the inner body's drop", dropped).await.unwrap(),
            worker
        );
    })
    .await;
}

/// A body of endless frames whose `Bytes` count their own drops, so the
/// test sees which frames are still held anywhere.
struct Counted {
    made: Arc<AtomicUsize>,
    freed: Arc<AtomicUsize>,
}

/// The owner of one frame's bytes: counts its drop.
struct Owner(Arc<AtomicUsize>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        b"frame;"
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.made.fetch_add(1, SeqCst);
        let data = Bytes::from_owner(Owner(self.freed.clone()));
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// A stream past its deadline whose reader has stopped holds nothing: the
/// frames waiting in its buffer are freed at the deadline, before the
/// reader reads again, and its next read is the `Elapsed` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stream_frees_its_buffer_at_the_deadline() {
    bounded(Duration::from_secs(10), async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(1)
            .body_buffer(4)
            // Each frame waits on its own: the count is exact.
            .merge_frames(0)
            .response_deadline(Duration::from_millis(200))
            .build();
        let (made, freed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let body = Counted {
            made: made.clone(),
            freed: freed.clone(),
        };
        let (mut svc, _worker) = once(&layer, body);
        let response = within(
            "the head",
            svc.ready().await.unwrap().call(Request::new(())),
        )
        .await
        .unwrap();
        let mut body = response.into_body();
        // The reader stops at once: the buffer fills, then the deadline
        // passes while the worker waits for room.
        common::until(&layer, "every frame freed", |_| {
            let made = made.load(SeqCst);
            made > 0 && freed.load(SeqCst) == made
        })
        .await;
        let error = next_frame(&mut body)
            .await
            .expect("an error, not the end")
            .expect_err("the buffered frames are gone");
        assert!(error.is::<Elapsed>(), "unexpected error: {error}");
        assert!(next_frame(&mut body).await.is_none());
    })
    .await;
}

/// `response_deadline(Duration::MAX)` means no deadline: a stream runs to
/// its end, and nothing overflows on the worker or on the reader's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_duration_max_never_fires_and_never_overflows() {
    bounded(Duration::from_secs(10), async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .response_deadline(Duration::MAX)
            .build();
        let rows = (0..64).map(|i| Ok::<_, Infallible>(Bytes::from(format!("{i};"))));
        let (mut svc, _worker) = once(&layer, blocking::IterBody::new(rows));
        let response = within(
            "the head",
            svc.ready().await.unwrap().call(Request::new(())),
        )
        .await
        .unwrap();
        let data = common::collect(response.into_body()).await;
        let expected: String = (0..64).map(|i| format!("{i};")).collect();
        assert_eq!(data, expected.as_bytes());
        let stats = layer.stats();
        for worker in stats.workers() {
            assert_eq!((worker.panicked(), worker.replaced()), (0, 0));
        }
    })
    .await;
}
