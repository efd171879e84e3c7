//! Shared helpers for the integration tests: a hang guard, an inner service
//! whose every step reports the thread it ran on, scripted bodies, and small
//! ways to call a service and read its body.
//!
//! Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::stats::Stats;
use tower_affinity::{BoxError, ThreadAffinityBody, ThreadAffinityLayer};

/// The time bound of a test that does not name its own: a guard against a
/// test that never ends, not a timing claim.
pub const HANG: Duration = Duration::from_secs(10);

thread_local! {
    /// When the test running on this thread must be done by: set by the
    /// first guard it meets ([`within_for`] or [`bounded`]). libtest runs
    /// each test on a thread of its own, so the bound is per test, not per
    /// step: a test of many slow steps fails as a whole. (Guards met on
    /// other threads, in spawned tasks, keep a bound of their own.)
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The current test's deadline, set to `limit` from now if it has none.
fn deadline(limit: Duration) -> Instant {
    DEADLINE.with(|deadline| match deadline.get() {
        Some(at) => at,
        None => {
            let at = Instant::now() + limit;
            deadline.set(Some(at));
            at
        }
    })
}

/// Awaits `future`, failing the test if the test as a whole (from its first
/// guard) has not finished within [`HANG`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(HANG, what, future).await
}

/// Awaits `future`, failing the test if the test as a whole (from its first
/// guard) has not finished within `limit`. The first guard of a test sets
/// its limit; later ones share it.
pub async fn within_for<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    let left = deadline(limit).saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, future).await {
        Ok(output) => output,
        Err(_) => panic!("hang: the test did not finish within {limit:?}, waiting for {what}"),
    }
}

/// Runs a whole test body under a bound of `limit` (see [`within_for`]).
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, test: F) {
    within_for(limit, "the end of the test", test).await
}

/// Sends `request` through `svc` (readiness, then call) and awaits the head.
pub async fn send<S, B>(svc: &mut S, request: Request<B>) -> Response<ThreadAffinityBody>
where
    S: Service<Request<B>, Response = Response<ThreadAffinityBody>>,
    S::Error: fmt::Debug,
{
    within("the response head", async {
        svc.ready().await.expect("poll_ready").call(request).await
    })
    .await
    .expect("the service failed")
}

/// Waits until `what` holds of the pool's stats (checked every
/// millisecond, within the hang guard).
pub async fn until(layer: &ThreadAffinityLayer, what: &str, f: impl Fn(&Stats) -> bool) {
    within(what, async {
        while !f(&layer.stats()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// A `GET` request for `path` with an empty body.
pub fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

/// The next frame of `body`.
pub async fn next_frame(body: &mut ThreadAffinityBody) -> Option<Result<Frame<Bytes>, BoxError>> {
    within("the next frame", body.frame()).await
}

/// The next frame of `body`, which must be a data frame.
pub async fn next_data(body: &mut ThreadAffinityBody) -> Bytes {
    match next_frame(body).await {
        Some(Ok(frame)) => frame.into_data().expect("a data frame"),
        Some(Err(error)) => panic!("body error instead of data: {error}"),
        None => panic!("end of body instead of data"),
    }
}

/// The whole body, which must end cleanly.
pub async fn collect(body: ThreadAffinityBody) -> Bytes {
    within("the whole body", body.collect())
        .await
        .expect("the body failed")
        .to_bytes()
}

/// Every frame of `body` up to its end or its first error.
pub async fn read_frames(body: &mut ThreadAffinityBody) -> (Vec<Frame<Bytes>>, Option<BoxError>) {
    let mut frames = Vec::new();
    loop {
        match next_frame(body).await {
            None => return (frames, None),
            Some(Ok(frame)) => frames.push(frame),
            Some(Err(error)) => return (frames, Some(error)),
        }
    }
}

/// The payload of frame `index` of a recorded or scripted stream.
pub fn frame_data(index: usize) -> Bytes {
    Bytes::from(format!("frame {index};"))
}

/// Asserts that `name` is a worker thread of the pool named `prefix`.
pub fn assert_worker_name(name: &str, prefix: &str) {
    let index = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_else(|| panic!("thread {name:?} is not a worker of {prefix:?}"));
    index
        .parse::<usize>()
        .unwrap_or_else(|_| panic!("thread {name:?} has no worker index"));
}

/// The current thread's name, or `""`.
pub fn thread_name() -> String {
    thread::current().name().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------
// Recording: every step of the inner service reports its thread.

/// A step of the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    PollReady,
    Call,
    PollFuture,
    DropFuture,
    /// A poll of the body for frame `n` (also the polls that return pending).
    PollFrame(usize),
    DropBody,
}

/// One step and the thread it ran on.
#[derive(Debug, Clone)]
pub struct Event {
    pub what: What,
    pub thread: ThreadId,
    pub name: String,
}

/// Reports steps to an [`Events`]; cheap to clone, `Send`.
#[derive(Debug, Clone)]
pub struct Recorder(mpsc::UnboundedSender<Event>);

impl Recorder {
    pub fn new() -> (Self, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self(tx),
            Events {
                rx,
                seen: Vec::new(),
            },
        )
    }

    pub fn record(&self, what: What) {
        let event = Event {
            what,
            thread: thread::current().id(),
            name: thread_name(),
        };
        // The test may be done listening; that is fine.
        let _ = self.0.send(event);
    }
}

/// The receiving end of a [`Recorder`]: everything received is kept in
/// `seen`, in order.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    pub seen: Vec<Event>,
}

impl Events {
    /// Waits for the first step (from now) that is `what`.
    pub async fn until(&mut self, what: What) -> Event {
        let context = format!("{what:?}");
        within(&context, async {
            loop {
                let event = self.rx.recv().await.expect("recorder dropped");
                self.seen.push(event.clone());
                if event.what == what {
                    return event;
                }
            }
        })
        .await
    }

    /// Takes in everything reported so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push(event);
        }
    }

    pub fn count(&self, pred: impl Fn(What) -> bool) -> usize {
        self.seen.iter().filter(|e| pred(e.what)).count()
    }
}

/// What a [`RecordingService`]'s future and body do.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    /// Frames the body yields before its end; `None`: it never ends.
    pub frames: Option<usize>,
    /// Return (self-waking) `Pending` once before each frame and before the
    /// response, so that every step takes more than one poll.
    pub pending_between: bool,
    /// After this many frames the body is pending forever, without waking.
    pub stall_after: Option<usize>,
    /// When false, the future is pending forever, without waking.
    pub respond: bool,
}

impl Script {
    pub fn frames(n: usize) -> Self {
        Self {
            frames: Some(n),
            pending_between: false,
            stall_after: None,
            respond: true,
        }
    }

    pub fn endless() -> Self {
        Self {
            frames: None,
            ..Self::frames(0)
        }
    }
}

/// An inner service whose `poll_ready`, `call`, future polls, body polls and
/// drops all report their thread. It is `Send` and `Clone`; its future and
/// body are plain (the `!Send` cases live in the tests that need them).
#[derive(Debug, Clone)]
pub struct RecordingService {
    rec: Recorder,
    script: Script,
}

impl RecordingService {
    pub fn new(rec: Recorder, script: Script) -> Self {
        Self { rec, script }
    }
}

impl<B> Service<Request<B>> for RecordingService {
    type Response = Response<RecordingBody>;
    type Error = Infallible;
    type Future = RecordingFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.rec.record(What::PollReady);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> RecordingFuture {
        self.rec.record(What::Call);
        RecordingFuture {
            rec: self.rec.clone(),
            script: self.script,
            yielded: false,
        }
    }
}

/// The future of a [`RecordingService`].
#[derive(Debug)]
pub struct RecordingFuture {
    rec: Recorder,
    script: Script,
    yielded: bool,
}

impl Future for RecordingFuture {
    type Output = Result<Response<RecordingBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.rec.record(What::PollFuture);
        if !self.script.respond {
            return Poll::Pending;
        }
        if self.script.pending_between && !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(Response::new(RecordingBody {
            rec: self.rec.clone(),
            script: self.script,
            next: 0,
            yielded: false,
        })))
    }
}

impl Drop for RecordingFuture {
    fn drop(&mut self) {
        self.rec.record(What::DropFuture);
    }
}

/// The body of a [`RecordingService`]: frame `n` is [`frame_data`]`(n)`.
#[derive(Debug)]
pub struct RecordingBody {
    rec: Recorder,
    script: Script,
    next: usize,
    yielded: bool,
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        this.rec.record(What::PollFrame(this.next));
        if this.script.stall_after == Some(this.next) {
            return Poll::Pending;
        }
        if this.script.pending_between && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        if this.script.frames == Some(this.next) {
            return Poll::Ready(None);
        }
        let data = frame_data(this.next);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        self.rec.record(What::DropBody);
    }
}

// ---------------------------------------------------------------------------
// Scripted bodies.

/// One step of a [`ScriptedBody`].
#[derive(Debug)]
pub enum Step {
    Frame(Frame<Bytes>),
    /// Fails the body with an `io::Error` carrying this message.
    Error(&'static str),
    /// Returns `Pending` once, waking itself at once.
    Yield,
}

/// A body that plays its steps in order, then ends. `is_end_stream` is true
/// exactly when no step is left.
#[derive(Debug)]
pub struct ScriptedBody {
    steps: VecDeque<Step>,
}

impl ScriptedBody {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
        }
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.steps.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Frame(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Step::Error(message)) => {
                self.steps.clear();
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Some(Step::Yield) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty()
    }
}

/// A door handlers wait at, off the CPU, until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    /// Blocks the calling thread until the gate is open.
    pub fn wait(&self) {
        let (open, signal) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = signal.wait(open).unwrap();
        }
    }

    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        let (open, signal) = &*self.0;
        *open.lock().unwrap() = true;
        signal.notify_all();
    }
}

/// Panics caught and thread replacements over every worker slot: both 0
/// when no worker died and the layer's own code never panicked.
pub fn deaths(stats: &Stats) -> (u64, u64) {
    stats
        .workers()
        .iter()
        .fold((0, 0), |(panics, replaced), w| {
            (panics + w.panicked(), replaced + w.replaced())
        })
}
