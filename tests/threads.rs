//! Guarantees 1 and 2: one thread per request, one service instance per
//! worker, made and dropped there; `!Send` futures and bodies work.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::Full;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{
    assert_worker_name, collect, frame_data, get, next_data, next_frame, send, thread_name, within,
    Recorder, RecordingService, Script, What,
};

/// The inner `poll_ready`, `call`, every poll of its future, every
/// `poll_frame` of its streamed multi-frame body, and the drops of the future
/// and the body all run on one worker thread, never the caller's.
#[tokio::test]
async fn every_step_of_a_request_runs_on_one_worker_thread() {
    let (rec, mut events) = Recorder::new();
    let script = Script {
        pending_between: true,
        ..Script::frames(5)
    };
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        // Two threads exactly: no spare while a worker waits at a barrier.
        .max_workers(2)
        // One frame per item, even while the reader is behind.
        .merge_frames(0)
        .thread_name("affine")
        .build();
    let mut svc = layer.layer(RecordingService::new(rec, script));

    let mut body = send(&mut svc, get("/")).await.into_body();
    for i in 0..5 {
        // One frame at a time: the body is streamed, not delivered whole.
        assert_eq!(next_data(&mut body).await, frame_data(i));
    }
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
    events.until(What::DropBody).await;
    events.drain();

    let first = events.seen[0].clone();
    assert_worker_name(&first.name, "affine");
    assert_ne!(
        first.thread,
        thread::current().id(),
        "ran on the test's thread"
    );
    for event in &events.seen {
        assert_eq!(
            event.thread, first.thread,
            "{event:?} left {first:?}'s thread"
        );
    }
    for what in [
        What::PollReady,
        What::Call,
        What::DropFuture,
        What::DropBody,
    ] {
        assert_eq!(events.count(|w| w == what), 1, "{what:?} once");
    }
    // Each step pends once before it is ready: the future is polled twice,
    // the body twice per frame and twice for its end.
    assert!(events.count(|w| w == What::PollFuture) >= 2);
    assert!(events.count(|w| matches!(w, What::PollFrame(_))) >= 12);
}

/// An inner service that logs where each of its clones is made and dropped,
/// and answers with its label and the thread that served it. `/both` waits
/// at a two-party barrier first, which holds two workers busy at once.
struct Counted {
    label: &'static str,
    barrier: Arc<Barrier>,
    /// One entry per clone: the thread it was made on.
    clones: Arc<Mutex<Vec<(ThreadId, String)>>>,
    /// Where this instance was made; `None` for the one given to the layer.
    made_on: Option<ThreadId>,
    drops: mpsc::UnboundedSender<Dropped>,
}

/// An instance of [`Counted`] was dropped.
#[derive(Debug)]
struct Dropped {
    made_on: ThreadId,
    dropped_on: ThreadId,
    name: String,
}

impl Counted {
    fn new(label: &'static str) -> (Self, mpsc::UnboundedReceiver<Dropped>) {
        let (drops, dropped) = mpsc::unbounded_channel();
        let svc = Self {
            label,
            barrier: Arc::new(Barrier::new(2)),
            clones: Arc::default(),
            made_on: None,
            drops,
        };
        (svc, dropped)
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        let here = thread::current().id();
        self.clones.lock().unwrap().push((here, thread_name()));
        Self {
            label: self.label,
            barrier: self.barrier.clone(),
            clones: self.clones.clone(),
            made_on: Some(here),
            drops: self.drops.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(made_on) = self.made_on {
            let _ = self.drops.send(Dropped {
                made_on,
                dropped_on: thread::current().id(),
                name: thread_name(),
            });
        }
    }
}

impl Service<Request<()>> for Counted {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        if request.uri().path() == "/both" {
            self.barrier.wait();
        }
        std::future::ready(Ok(Response::new(format!(
            "{} {}",
            self.label,
            thread_name()
        ))))
    }
}

/// Sends two `/both` requests at once and returns the two bodies: they come
/// from two different workers, since each holds its worker at the barrier.
async fn both_workers<S>(svc: &S) -> [String; 2]
where
    S: Service<
            Request<()>,
            Response = Response<tower_affinity::ThreadAffinityBody>,
            Error = Infallible,
        > + Clone,
{
    let (a, b) = within("two requests at the barrier", async {
        futures::join!(
            svc.clone().oneshot(get("/both")),
            svc.clone().oneshot(get("/both"))
        )
    })
    .await;
    let a = collect(a.unwrap().into_body()).await;
    let b = collect(b.unwrap().into_body()).await;
    let [a, b] = [a, b].map(|body| String::from_utf8(body.to_vec()).unwrap());
    assert_ne!(a, b, "both requests ran on one worker");
    [a, b]
}

/// Asserts that `clones` holds exactly one clone made on each of `workers`.
fn one_clone_per_worker(clones: &[(ThreadId, String)], workers: &HashSet<String>, prefix: &str) {
    let made_on: HashSet<&String> = clones.iter().map(|(_, name)| name).collect();
    assert_eq!(
        clones.len(),
        made_on.len(),
        "two clones on one worker: {clones:?}"
    );
    assert_eq!(
        made_on,
        workers.iter().collect(),
        "clones not made on the workers that served"
    );
    for name in made_on {
        assert_worker_name(name, prefix);
    }
}

/// Many concurrent requests on two workers make one instance of the inner
/// service per worker that served (two here), never one per request.
#[tokio::test]
async fn one_instance_per_worker_not_per_request() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        // Two threads exactly: no spare while a worker waits at a barrier.
        .max_workers(2)
        .thread_name("instances")
        .build();
    let (inner, _dropped) = Counted::new("a");
    let clones = inner.clones.clone();
    let svc = layer.layer(inner);

    let mut served = HashSet::new();
    served.extend(both_workers(&svc).await);
    let calls = (0..200).map(|_| svc.clone().oneshot(get("/")));
    let responses = within("200 concurrent requests", futures::future::join_all(calls)).await;
    for response in responses {
        served.insert(
            String::from_utf8(collect(response.unwrap().into_body()).await.to_vec()).unwrap(),
        );
    }

    let workers: HashSet<String> = served
        .iter()
        .map(|body| body.strip_prefix("a ").unwrap().to_owned())
        .collect();
    assert_eq!(workers.len(), 2);
    one_clone_per_worker(&clones.lock().unwrap(), &workers, "instances");
}

/// One layer applied to two services gives each worker one instance of
/// each, and each request is served by an instance of its own service.
#[tokio::test]
async fn each_wrapped_service_has_one_instance_per_worker() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        // Two threads exactly: no spare while a worker waits at a barrier.
        .max_workers(2)
        // Two threads exactly: a spare would be a third instance.
        .max_workers(2)
        .thread_name("two-services")
        .build();
    let (a, _a_dropped) = Counted::new("a");
    let (b, _b_dropped) = Counted::new("b");
    let (a_clones, b_clones) = (a.clones.clone(), b.clones.clone());
    let (svc_a, svc_b) = (layer.layer(a), layer.layer(b));

    let mut served_a = HashSet::new();
    let mut served_b = HashSet::new();
    for _ in 0..5 {
        for body in both_workers(&svc_a).await {
            served_a.insert(
                body.strip_prefix("a ")
                    .expect("served by an `a`")
                    .to_owned(),
            );
        }
        for body in both_workers(&svc_b).await {
            served_b.insert(body.strip_prefix("b ").expect("served by a `b`").to_owned());
        }
    }

    assert_eq!(served_a.len(), 2);
    assert_eq!(served_a, served_b);
    one_clone_per_worker(&a_clones.lock().unwrap(), &served_a, "two-services");
    one_clone_per_worker(&b_clones.lock().unwrap(), &served_b, "two-services");
}

/// When the layer and its services are dropped, each worker drops its
/// instances on its own thread: the one each was made on.
#[tokio::test]
async fn instances_are_dropped_on_their_worker() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        // Two threads exactly: no spare while a worker waits at a barrier.
        .max_workers(2)
        .thread_name("drops")
        .build();
    let (inner, mut dropped) = Counted::new("a");
    let clones = inner.clones.clone();
    let mut svc = layer.layer(inner);
    both_workers(&svc).await;
    for _ in 0..10 {
        collect(send(&mut svc, get("/")).await.into_body()).await;
    }
    let made = clones.lock().unwrap().len();
    assert_eq!(made, 2);

    drop(svc);
    drop(layer);
    let mut drops = Vec::new();
    for _ in 0..made {
        drops.push(within("an instance's drop", dropped.recv()).await.unwrap());
    }
    for drop in &drops {
        assert_worker_name(&drop.name, "drops");
        assert_eq!(
            drop.dropped_on, drop.made_on,
            "{drop:?}: dropped off its worker"
        );
    }
    assert_ne!(drops[0].dropped_on, drops[1].dropped_on);
}

/// Compiles only if `T` is not `Send` (the `static_assertions` trick: with
/// `T: Send` both impls apply and the call is ambiguous).
fn assert_not_send<T: ?Sized + AmbiguousIfSend<A>, A>() {}
trait AmbiguousIfSend<A> {}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

/// A `!Send` body: it holds an `Rc` made on the worker, and each frame says
/// whether it was polled on the thread that made it.
struct RcBody {
    made_on: Rc<ThreadId>,
    left: usize,
}

impl Body for RcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        let same = *self.made_on == thread::current().id();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("{same};"))))))
    }
}

/// A `!Send` response body (holding an `Rc`) streams back intact.
#[tokio::test]
async fn non_send_body_streams() {
    assert_not_send::<RcBody, _>();
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        let body = RcBody {
            made_on: Rc::new(thread::current().id()),
            left: 3,
        };
        Ok::<_, Infallible>(Response::new(body))
    }));
    let body = collect(send(&mut svc, get("/")).await.into_body()).await;
    assert_eq!(body, "true;true;true;");
}

/// A `!Send` future: it holds an `Rc` across a pending poll.
struct RcFuture {
    made_on: Rc<ThreadId>,
    yielded: bool,
}

impl Future for RcFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let same = *self.made_on == thread::current().id();
        Poll::Ready(Ok(Response::new(Full::new(Bytes::from(format!(
            "{same} {}",
            Rc::strong_count(&self.made_on)
        ))))))
    }
}

/// An inner service whose future is `!Send` (holds an `Rc`) works.
#[tokio::test]
async fn non_send_future_resolves() {
    #[derive(Clone)]
    struct MakesRcFuture;
    impl Service<Request<()>> for MakesRcFuture {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = RcFuture;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> RcFuture {
            RcFuture {
                made_on: Rc::new(thread::current().id()),
                yielded: false,
            }
        }
    }

    assert_not_send::<RcFuture, _>();
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(MakesRcFuture);
    let body = collect(send(&mut svc, get("/")).await.into_body()).await;
    assert_eq!(body, "true 1");
}
