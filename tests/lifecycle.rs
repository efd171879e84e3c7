//! Lifecycle and stuck work: graceful `shutdown`, `shutdown_timeout`, the
//! per-response deadline, and the replacement of a worker thread that a
//! panic killed.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use futures::poll;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::error::Elapsed;
use tower_affinity::{BoxError, ThreadAffinity, ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;

/// A guard against a test that never ends, not a timing claim.
const HANG: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if the whole test has not finished
/// within [`HANG`] (see `common::within_for`).
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    common::within_for(HANG, what, future).await
}

/// Something the inner service or a worker thread did, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// The inner service was called for this path.
    Called(String, ThreadId),
    /// The body of the response for this path was dropped.
    Dropped(String, ThreadId),
    /// A worker thread started (the `on_thread_start` hook).
    ThreadStarted(String, ThreadId),
    /// A worker thread stopped (the `on_thread_stop` hook).
    ThreadStopped(String, ThreadId),
}

type Events = mpsc::UnboundedSender<Event>;

/// What a [`TestBody`] yields.
enum Script {
    /// `frame {i};` for i in 0..n, then the end.
    Frames(usize),
    /// The request's path, in one frame.
    Path,
    /// `tick;` forever, each frame ready at once.
    Endless,
    /// One frame, `first;`, then pending forever (it never wakes).
    Stuck,
}

/// A response body that reports where it is dropped.
struct TestBody {
    script: Script,
    sent: usize,
    path: String,
    events: Events,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let data = match this.script {
            Script::Frames(n) if this.sent < n => Bytes::from(format!("frame {};", this.sent)),
            Script::Frames(_) => return Poll::Ready(None),
            Script::Path if this.sent == 0 => Bytes::from(this.path.clone()),
            Script::Path => return Poll::Ready(None),
            Script::Endless => Bytes::from_static(b"tick;"),
            Script::Stuck if this.sent == 0 => Bytes::from_static(b"first;"),
            Script::Stuck => return Poll::Pending,
        };
        this.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        match self.script {
            Script::Frames(n) => self.sent >= n,
            Script::Path => self.sent >= 1,
            Script::Endless | Script::Stuck => false,
        }
    }
}

impl Drop for TestBody {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Dropped(
            std::mem::take(&mut self.path),
            thread::current().id(),
        ));
    }
}

/// A panic payload whose `Drop` panics: it escapes every `catch_unwind`
/// that drops the payload outside its closure.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the panic payload exploded on drop");
    }
}

/// The inner service: `/stream/N` streams N frames, `/endless` streams
/// forever, `/stuck` yields one frame and then never another, `/die`
/// panics with a [`Bomb`], and any other path answers its path in one frame.
#[derive(Clone)]
struct Inner {
    events: Events,
}

impl Service<Request<()>> for Inner {
    type Response = Response<TestBody>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<TestBody>, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let _ = self
            .events
            .send(Event::Called(path.clone(), thread::current().id()));
        let script = if let Some(n) = path.strip_prefix("/stream/") {
            Script::Frames(n.parse().unwrap())
        } else if path == "/endless" {
            Script::Endless
        } else if path == "/stuck" {
            Script::Stuck
        } else if path == "/die" {
            std::panic::panic_any(Bomb);
        } else {
            Script::Path
        };
        std::future::ready(Ok(Response::new(TestBody {
            script,
            sent: 0,
            path,
            events: self.events.clone(),
        })))
    }
}

/// The test's view of the events.
struct Log {
    rx: mpsc::UnboundedReceiver<Event>,
    seen: Vec<Event>,
}

impl Log {
    /// Waits for the first event (from now, or already seen) that `pick`
    /// accepts.
    async fn wait<T>(&mut self, what: &str, pick: impl Fn(&Event) -> Option<T>) -> T {
        if let Some(found) = self.seen.iter().find_map(&pick) {
            return found;
        }
        within(what, async {
            loop {
                let event = self.rx.recv().await.expect("events closed");
                self.seen.push(event.clone());
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
        })
        .await
    }

    async fn called(&mut self, path: &str) -> ThreadId {
        self.wait(&format!("a call to {path}"), |e| match e {
            Event::Called(p, t) if p == path => Some(*t),
            _ => None,
        })
        .await
    }

    async fn dropped(&mut self, path: &str) -> ThreadId {
        self.wait(&format!("the drop of {path}'s body"), |e| match e {
            Event::Dropped(p, t) if p == path => Some(*t),
            _ => None,
        })
        .await
    }

    /// Takes in everything reported so far, without waiting.
    fn drain(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push(event);
        }
    }

    fn was_called(&mut self, path: &str) -> bool {
        self.drain();
        self.seen
            .iter()
            .any(|e| matches!(e, Event::Called(p, _) if p == path))
    }
}

/// A builder whose thread hooks report to `events`.
fn builder(events: &Events) -> tower_affinity::Builder {
    let started = events.clone();
    let stopped = events.clone();
    ThreadAffinityLayer::builder()
        .on_thread_start(move |id| {
            let _ = started.send(Event::ThreadStarted(
                id.name().to_owned(),
                thread::current().id(),
            ));
        })
        .on_thread_stop(move |id| {
            let _ = stopped.send(Event::ThreadStopped(
                id.name().to_owned(),
                thread::current().id(),
            ));
        })
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn send(svc: &mut ThreadAffinity<Inner>, path: &str) -> Response<ThreadAffinityBody> {
    within(path, async {
        svc.ready().await.unwrap().call(get(path)).await.unwrap()
    })
    .await
}

async fn next_frame(body: &mut ThreadAffinityBody) -> Option<Result<Frame<Bytes>, BoxError>> {
    within("the next frame", body.frame()).await
}

/// Reads `body` to its end or its first error: the data, and the error.
/// The guard is on the whole read, since an endless stream that is never
/// cut yields every frame at once.
async fn read_rest(body: &mut ThreadAffinityBody) -> (Vec<u8>, Option<BoxError>) {
    within("the rest of the body", async {
        let mut data = Vec::new();
        loop {
            match body.frame().await {
                None => return (data, None),
                Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(error)) => return (data, Some(error)),
            }
        }
    })
    .await
}

fn frames(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("frame {i};").into_bytes())
        .collect()
}

fn setup(
    builder: impl FnOnce(tower_affinity::Builder) -> tower_affinity::Builder,
) -> (ThreadAffinityLayer, ThreadAffinity<Inner>, Log) {
    let (tx, rx) = mpsc::unbounded_channel();
    let layer = builder(self::builder(&tx)).build();
    let svc = layer.layer(Inner { events: tx });
    let log = Log {
        rx,
        seen: Vec::new(),
    };
    (layer, svc, log)
}

/// `shutdown()` answers new requests `503` at once, but lets a running
/// stream and the requests already queued finish, byte for byte; it
/// resolves only then, after the worker thread has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_admitted_work_and_refuses_new_requests() {
    let (layer, mut svc, mut log) = setup(|b| {
        b.workers(1)
            .max_streams_per_worker(1)
            .body_buffer(2)
            // Unmerged, 64 frames cannot all fit in the buffer: the stream
            // keeps holding the worker.
            .merge_frames(0)
            .thread_name("drain")
    });

    // A stream the reader has not started reading: it holds the only worker
    // (max_streams_per_worker(1)), so the next two requests stay queued.
    let mut stream = send(&mut svc, "/stream/64").await.into_body();
    let worker = log.called("/stream/64").await;
    let mut first = svc.clone();
    let mut second = svc.clone();
    within("places in the queue", async {
        first.ready().await.unwrap();
        second.ready().await.unwrap();
    })
    .await;
    let queued = [first.call(get("/a")), second.call(get("/b"))];
    assert_eq!(layer.stats().queued(), 2);

    let mut shutdown = std::pin::pin!(layer.shutdown());
    assert!(poll!(shutdown.as_mut()).is_pending());

    // New requests are refused at once.
    let refused = send(&mut svc.clone(), "/new").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        poll!(shutdown.as_mut()).is_pending(),
        "shutdown must wait for the stream and the queued requests"
    );

    // The stream and the queued requests finish completely.
    let (data, error) = read_rest(&mut stream).await;
    assert!(error.is_none(), "the stream failed: {error:?}");
    assert_eq!(data, frames(64));
    for (response, path) in queued.into_iter().zip(["/a", "/b"]) {
        let response = within(path, response).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = within(path, response.into_body().collect()).await.unwrap();
        assert_eq!(body.to_bytes(), path);
    }

    within("shutdown", shutdown).await;
    let stopped = log
        .wait("the worker to stop", |e| match e {
            Event::ThreadStopped(name, thread) => Some((name.clone(), *thread)),
            _ => None,
        })
        .await;
    assert_eq!(stopped, ("drain-0".to_owned(), worker));
    assert!(!log.was_called("/new"), "a refused request ran");
    let after = send(&mut svc, "/after").await;
    assert_eq!(after.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// `shutdown_timeout(d)` cuts what does not finish within `d`: a stream
/// whose reader stalled and a stream whose producer never yields again both
/// end with a body error (not a clean end), their inner bodies are dropped
/// on the worker, a request still queued gets `503`, and the future
/// resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_streams_that_do_not_finish() {
    let (layer, mut svc, mut log) = setup(|b| {
        b.workers(1)
            .max_streams_per_worker(2)
            .body_buffer(2)
            .thread_name("cut")
    });

    // A reader that reads one frame, then stalls.
    let mut stalled = send(&mut svc, "/endless").await.into_body();
    assert!(next_frame(&mut stalled).await.unwrap().is_ok());
    // A producer that never yields after its first frame.
    let mut stuck = send(&mut svc, "/stuck").await.into_body();
    assert!(next_frame(&mut stuck).await.unwrap().is_ok());
    let worker = log.called("/stuck").await;
    // Both streams hold the worker: this one waits in the queue.
    let mut third = svc.clone();
    within("a place in the queue", third.ready()).await.unwrap();
    let queued = third.call(get("/queued"));

    within(
        "shutdown_timeout",
        layer.shutdown_timeout(Duration::from_millis(200)),
    )
    .await;

    // Dropped before either reader reads again: nothing but the abort
    // itself wakes a worker whose every stream is pending.
    assert_eq!(log.dropped("/endless").await, worker);
    assert_eq!(log.dropped("/stuck").await, worker);
    let (_, error) = read_rest(&mut stalled).await;
    assert!(error.is_some(), "a cut stream must end with an error");
    let (data, error) = read_rest(&mut stuck).await;
    assert!(data.is_empty());
    assert!(error.is_some(), "a cut stream must end with an error");
    let queued = within("the queued request", queued).await.unwrap();
    assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!log.was_called("/queued"));
    log.wait("the worker to stop", |e| {
        matches!(e, Event::ThreadStopped(_, t) if *t == worker).then_some(())
    })
    .await;
}

/// With `response_deadline(d)`, a stream whose producer never yields
/// another frame ends with `Elapsed` once `d` has passed, and its inner
/// body is dropped on its worker; a stream that ends in time is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_deadline_ends_a_stuck_stream_with_elapsed() {
    let (_layer, mut svc, mut log) = setup(|b| {
        b.workers(1)
            .response_deadline(Duration::from_millis(200))
            .body_buffer(2)
    });

    let mut stuck = send(&mut svc, "/stuck").await.into_body();
    let worker = log.called("/stuck").await;
    let first = next_frame(&mut stuck).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    let (data, error) = read_rest(&mut stuck).await;
    assert!(data.is_empty());
    let error = error.expect("a stream past its deadline must end with an error");
    assert!(error.is::<Elapsed>(), "unexpected error: {error}");
    assert_eq!(log.dropped("/stuck").await, worker);

    let mut quick = send(&mut svc, "/stream/4").await.into_body();
    let (data, error) = read_rest(&mut quick).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(data, frames(4));
}

/// With `response_deadline(d)`, a stream that produces frames forever, read
/// as fast as it comes, still ends with `Elapsed`: the deadline is checked
/// between frames, not only while the body is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_deadline_ends_an_endless_stream_read_eagerly() {
    let (_layer, mut svc, mut log) = setup(|b| {
        b.workers(1)
            .response_deadline(Duration::from_millis(200))
            .body_buffer(4)
    });

    let mut endless = send(&mut svc, "/endless").await.into_body();
    let worker = log.called("/endless").await;
    let (data, error) = read_rest(&mut endless).await;
    assert!(!data.is_empty());
    let error = error.expect("a stream past its deadline must end with an error");
    assert!(error.is::<Elapsed>(), "unexpected error: {error}");
    assert_eq!(log.dropped("/endless").await, worker);
}

/// A panic that escapes the shields (its payload panics when dropped) ends
/// the worker thread: the request fails cleanly with `500`, a stream the
/// thread held ends with a body error, the worker is counted as replaced,
/// and the next request runs on a fresh thread with the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_by_an_escaping_panic_is_replaced() {
    let (layer, mut svc, mut log) = setup(|b| {
        b.workers(1)
            .max_streams_per_worker(4)
            .body_buffer(2)
            .thread_name("phoenix")
    });
    let (name, first_thread) = log
        .wait("the worker to start", |e| match e {
            Event::ThreadStarted(name, thread) => Some((name.clone(), *thread)),
            _ => None,
        })
        .await;
    assert_eq!(name, "phoenix-0");

    let before = send(&mut svc, "/before").await;
    assert_eq!(before.status(), StatusCode::OK);
    assert_eq!(log.called("/before").await, first_thread);

    // A stream held by the thread when it dies.
    let mut held = send(&mut svc, "/endless").await.into_body();
    assert!(next_frame(&mut held).await.unwrap().is_ok());

    let died = send(&mut svc, "/die").await;
    assert_eq!(died.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let (_, error) = read_rest(&mut held).await;
    assert!(
        error.is_some(),
        "a stream of a dead worker must end with an error"
    );
    assert_eq!(log.dropped("/endless").await, first_thread);

    let (name, second_thread) = log
        .wait("a replacement thread to start", |e| match e {
            Event::ThreadStarted(name, thread) if *thread != first_thread => {
                Some((name.clone(), *thread))
            }
            _ => None,
        })
        .await;
    assert_eq!(name, "phoenix-0");
    assert_eq!(layer.stats().workers()[0].replaced(), 1);

    for path in ["/after-1", "/after-2"] {
        let response = send(&mut svc, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(log.called(path).await, second_thread);
    }
    assert_eq!(layer.stats().workers()[0].replaced(), 1);
}
