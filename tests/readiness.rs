//! Inner services whose `poll_ready` can be pending: tower's
//! `ConcurrencyLimit`, `RateLimit` and `Buffer` keep only the waker of the
//! last task that polled them, so every request waiting on one worker must
//! be woken in turn by the layer, and served in the order it arrived.
//!
//! Each test holds the first request inside the inner service on a gate
//! until every other request has reached the worker (read from the stats),
//! so that they all wait on readiness at once. No sleeps: `RateLimit`'s own
//! period is the only timer.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Notify;
use tower::buffer::Buffer;
use tower::limit::{ConcurrencyLimit, RateLimit};
use tower::{Layer, Service, ServiceExt};
use tower_affinity::{ThreadAffinityBody, ThreadAffinityLayer};

use common::{collect, thread_name, within};

/// A request body that reports the thread it is dropped on.
struct DropProbe(std_mpsc::Sender<String>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        let _ = self.0.send(thread_name());
    }
}

/// The handler: answers with the order in which it was called; the first
/// call waits for `gate`. (Which of the waiters a service without the
/// readiness queue would lose depends on the order of their polls: each
/// test below hangs without it, with the variant it uses.)
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    /// Whether the calls after the first are pending once.
    pending_once: bool,
}

impl Handler {
    fn new(pending_once: bool) -> Self {
        Self {
            calls: Arc::default(),
            gate: Arc::default(),
            pending_once,
        }
    }

    fn service(&self) -> Self {
        self.clone()
    }
}

impl<B: Send + 'static> Service<Request<B>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let order = this.calls.fetch_add(1, Ordering::SeqCst);
            if order == 0 {
                this.gate.notified().await;
            } else if this.pending_once {
                // Pending once, as a handler that does I/O would be.
                tokio::task::yield_now().await;
            }
            drop(request);
            Ok(Response::new(Full::new(Bytes::from(order.to_string()))))
        })
    }
}

/// Waits until worker 0 has taken `n` requests. Behind `RateLimit`, a
/// request sent after the period has passed (a slow machine) is served at
/// once instead of waiting: it counts as taken too.
async fn until_active(layer: &ThreadAffinityLayer, n: usize) {
    within("the requests to reach the worker", async {
        loop {
            let stats = layer.stats();
            let worker = &stats.workers()[0];
            if worker.active() as u64 + worker.completed() >= n as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Sends `n` requests in order (each queued before the next), then opens
/// the gate once all are on the worker; returns each request's call order.
async fn serve_all<S>(
    layer: &ThreadAffinityLayer,
    mut svc: S,
    gate: &Notify,
    n: usize,
) -> Vec<usize>
where
    S: Service<Request<()>, Response = Response<ThreadAffinityBody>>,
    S::Error: std::fmt::Debug + Send + 'static,
    S::Future: Send + 'static,
{
    let mut futures = Vec::new();
    for _ in 0..n {
        let ready = within("poll_ready", svc.ready()).await.unwrap();
        futures.push(tokio::spawn(ready.call(Request::new(()))));
    }
    until_active(layer, n).await;
    gate.notify_one();
    let mut orders = Vec::new();
    for future in futures {
        let response = within("every response", future).await.unwrap().unwrap();
        let body = collect(response.into_body()).await;
        orders.push(std::str::from_utf8(&body).unwrap().parse().unwrap());
    }
    orders
}

/// Behind `ConcurrencyLimit(1)` on one worker, five concurrent requests are
/// all answered, and called in the order they arrived (without a readiness
/// queue, only the last poller is woken and the others hang).
#[tokio::test]
async fn concurrency_limit_serves_every_waiter_in_order() {
    let layer = ThreadAffinityLayer::new(1);
    let handler = Handler::new(true);
    let svc = layer.layer(ConcurrencyLimit::new(handler.service(), 1));
    let orders = serve_all(&layer, svc, &handler.gate, 5).await;
    assert_eq!(orders, vec![0, 1, 2, 3, 4]);
}

/// Behind `RateLimit` (one call per 10 ms), every waiting request is woken
/// in turn and served in order.
#[tokio::test]
async fn rate_limit_serves_every_waiter_in_order() {
    let layer = ThreadAffinityLayer::new(1);
    let handler = Handler::new(false);
    let inner = handler.service();
    let svc = layer.service_with(move |_| {
        RateLimit::new(
            inner.clone(),
            tower::limit::rate::Rate::new(1, Duration::from_millis(10)),
        )
    });
    let orders = serve_all(&layer, svc, &handler.gate, 4).await;
    assert_eq!(orders, vec![0, 1, 2, 3]);
}

/// A `Buffer` of one place in front of a `ConcurrencyLimit(1)`, as the inner
/// service: its semaphore keeps one waker too, and every request is served,
/// in order.
#[tokio::test]
async fn buffer_inside_serves_every_waiter_in_order() {
    let layer = ThreadAffinityLayer::new(1);
    let handler = Handler::new(false);
    let buffer = Buffer::new(ConcurrencyLimit::new(handler.service(), 1), 1);
    let svc = layer.layer(buffer);
    let orders = serve_all(&layer, svc, &handler.gate, 5).await;
    assert_eq!(orders, vec![0, 1, 2, 3, 4]);
}

/// A waiter whose caller went away (the head of the readiness queue, and
/// one behind it) leaves the queue without being called, its request is
/// dropped on the worker thread, and the waiters after it are still served.
#[tokio::test]
async fn cancelled_waiter_does_not_block_the_others() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .thread_name("ready")
        .build();
    let handler = Handler::new(true);
    let mut svc = layer.layer(ConcurrencyLimit::new(handler.service(), 1));
    let (dropped_tx, dropped) = std_mpsc::channel();
    let mut futures = Vec::new();
    for _ in 0..4 {
        let ready = within(
            "poll_ready",
            ServiceExt::<Request<DropProbe>>::ready(&mut svc),
        )
        .await
        .unwrap();
        let request = Request::new(DropProbe(dropped_tx.clone()));
        futures.push(Some(tokio::spawn(ready.call(request))));
    }
    until_active(&layer, 4).await;
    // A request for another service, pending once: the worker's local
    // tasks run in FIFO order, so once it is answered, requests 1 to 3 have
    // been polled with their own wakers (not only inline).
    let mut flush = layer.layer(tower::service_fn(|_: Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    common::send(&mut flush, Request::new(())).await;
    // Request 1 is at the head of the readiness queue, 2 behind it.
    for cancelled in [1, 2] {
        futures[cancelled].take().unwrap().abort();
    }
    within("the cancelled requests to be dropped", async {
        let dropped =
            tokio::task::spawn_blocking(move || [dropped.recv().unwrap(), dropped.recv().unwrap()]);
        for name in dropped.await.unwrap() {
            assert_eq!(name, "ready-0", "a request dropped off its worker");
        }
    })
    .await;
    handler.gate.notify_one();
    let mut orders = Vec::new();
    for future in futures.into_iter().flatten() {
        let response = within("the remaining responses", future).await;
        let body = collect(response.unwrap().unwrap().into_body()).await;
        orders.push(std::str::from_utf8(&body).unwrap().to_owned());
    }
    assert_eq!(
        orders,
        ["0", "1"],
        "requests 0 and 3, called first and second"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
}

/// An inner service that is not ready until its gate opens, then panics in
/// the first `poll_ready` after that, and is ready from then on.
#[derive(Clone)]
struct PanicsOnce {
    open: Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>,
    polls_after_open: Arc<AtomicUsize>,
    inner: Handler,
}

impl Service<Request<()>> for PanicsOnce {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = <Handler as Service<Request<()>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let mut open = self.open.lock().unwrap();
        if !open.0 {
            open.1 = Some(cx.waker().clone());
            return Poll::Pending;
        }
        drop(open);
        if self.polls_after_open.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("poll_ready panicked");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        Service::<Request<()>>::call(&mut self.inner, request)
    }
}

/// When the request that owns readiness panics in `poll_ready`, it gets a
/// 500, and the turn passes on: the requests waiting behind it are served.
#[tokio::test]
async fn a_panic_in_poll_ready_passes_the_turn_on() {
    let layer = ThreadAffinityLayer::new(1);
    let service = PanicsOnce {
        open: Arc::default(),
        polls_after_open: Arc::default(),
        inner: Handler::new(false),
    };
    // The handler's first call waits for its gate: open it at once.
    service.inner.gate.notify_one();
    let open = service.open.clone();
    let mut svc = layer.layer(service);
    let mut futures = Vec::new();
    for _ in 0..3 {
        let ready = within("poll_ready", svc.ready()).await.unwrap();
        futures.push(tokio::spawn(ready.call(Request::new(()))));
    }
    until_active(&layer, 3).await;
    let waker = {
        let mut open = open.lock().unwrap();
        open.0 = true;
        open.1.take()
    };
    waker.expect("the head waits on readiness").wake();
    let mut statuses = Vec::new();
    for future in futures {
        let response = within("every response", future).await.unwrap().unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [500, 200, 200]);
}
