//! A chaos soak over real HTTP/1.1 on loopback: 20,000 requests from 64
//! concurrent clients, mixing quick answers, streamed bodies, inner panics
//! (before and after the head), clients that drop mid-stream, slow readers
//! and request bodies of random sizes, and an inner service that applies
//! backpressure (`ConcurrencyLimit` inside the layer, its permits shared by
//! the workers). Beside it, on a pool of one stuck worker, handlers that
//! block past `queue_timeout` while requests queue behind them: those are
//! withdrawn by their callers and must never run; and on an elastic pool,
//! handlers that hang past their spares' keep-alive and streams whose
//! readers stop, beside quick requests (`chaos/elastic.rs`). Bounded in
//! count and time; it stops by itself.

use std::cell::Cell;
use std::convert::Infallible;
use std::error::Error as _;
use std::io::Read;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tower::limit::ConcurrencyLimit;
use tower::ServiceExt;
use tower_affinity::blocking::{self, BodyReader};
use tower_affinity::{Layer, ThreadAffinityLayer, WorkerId};

mod common;
#[path = "chaos/elastic.rs"]
mod elastic;

/// The server loop (HTTP/1.1 and HTTP/2, graceful shutdown) of the
/// `hyper_server` example.
#[allow(dead_code)]
#[path = "../examples/hyper_server.rs"]
mod hyper_server;

const REQUESTS: u64 = 20_000;
const CLIENTS: u64 = 64;
const TIME_LIMIT: Duration = Duration::from_secs(240);
/// Requests of the limited kind in flight on the inner service at once,
/// across both workers (and spares): fewer than the workers hold, so that
/// requests wait in each worker's readiness queue.
const LIMIT: usize = 2;
/// Rounds of a handler stuck past `queue_timeout` with a request queued
/// behind it.
const STUCK_ROUNDS: u64 = 20;
/// The stuck pool's `queue_timeout`.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(30);
/// The body of the layer's queue-timeout 503.
const QUEUE_TIMEOUT_TEXT: &str = "service overloaded: request waited too long for a worker\n";
/// The leak check compares the growth of resident memory over the second
/// half of the soak with its growth over the first half. Queues and buffers
/// are bounded, so memory plateaus: the first half takes the warm-up growth
/// W (connections, allocator arenas of both runtimes and both workers: about
/// 13 MiB here), the second grows by allocator noise only (under 1 MiB in
/// runs on 2 cores). A leak of L per half grows the first by W + L and the
/// second by L, so the second half may grow by at most a quarter of the
/// first plus 4 MiB: without a leak that allows about 7 MiB, seven times
/// the noise seen; a leak of 2 KiB per request (L = 20 MiB) fails it.
const RSS_TOLERANCE: u64 = 4 * 1024 * 1024;

/// Objects the inner service created and dropped, and whether each drop
/// happened on the thread that created it.
#[derive(Default)]
struct Ledger {
    services_made: AtomicU64,
    services_dropped: AtomicU64,
    bodies_made: AtomicU64,
    bodies_dropped: AtomicU64,
    wrong_thread_drops: AtomicU64,
    panics: AtomicU64,
    /// Times the limited kind's inner service was not ready: a request
    /// waited in a worker's readiness queue.
    limited_waits: AtomicU64,
}

/// What a request asks for, derived from its index so that client and
/// server agree without talking.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Quick,
    Stream,
    PanicBeforeHead,
    PanicMidStream,
    /// A stream the client drops after its first frame.
    Dropped,
    /// A stream read slowly.
    Slow,
    /// A stream from the inner service behind a `ConcurrencyLimit`, whose
    /// future waits a little while it holds its permit.
    Limited,
}

fn kind(i: u64) -> Kind {
    match mix(i) % 100 {
        0 if i % 2 == 0 => Kind::PanicBeforeHead,
        0 => Kind::PanicMidStream,
        1..=5 => Kind::Dropped,
        6..=10 => Kind::Slow,
        11..=30 => Kind::Stream,
        31..=40 => Kind::Limited,
        _ => Kind::Quick,
    }
}

fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The request body for request `i`: 0 to 32 KiB.
fn upload(i: u64) -> Vec<u8> {
    let len = (mix(i ^ 0xabc) % (32 * 1024)) as usize;
    (0..len).map(|k| (i as usize + k * 13) as u8).collect()
}

/// The response for request `i` with upload checksum `sum`: chunk `j` of
/// `chunks(i)`.
fn chunk(i: u64, sum: u64, j: u64) -> Bytes {
    let len = 1 + (mix(i * 31 + j) % 8192) as usize;
    let fill = (i ^ sum ^ j) as u8;
    let mut bytes = vec![fill; len];
    bytes[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
    Bytes::from(bytes)
}

fn chunks(i: u64) -> u64 {
    match kind(i) {
        Kind::Quick => 1,
        _ => 2 + mix(i * 7) % 16,
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// The response body: counted at birth and death, its drop checked to be on
/// its birth thread. Not `Send`, on purpose.
struct TrackedBody {
    i: u64,
    sum: u64,
    next: u64,
    born: ThreadId,
    ledger: Arc<Ledger>,
    _not_send: std::marker::PhantomData<Cell<()>>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let (i, j) = (self.i, self.next);
        if j == chunks(i) {
            return Poll::Ready(None);
        }
        if kind(i) == Kind::PanicMidStream && j == 1 {
            self.ledger.panics.fetch_add(1, SeqCst);
            panic!("chaos: panic mid-stream in request {i}");
        }
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(chunk(i, self.sum, j)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == chunks(self.i)
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.ledger.bodies_dropped.fetch_add(1, SeqCst);
        if thread::current().id() != self.born {
            self.ledger.wrong_thread_drops.fetch_add(1, SeqCst);
        }
    }
}

/// One worker's instance of the application; counted like the bodies.
struct App {
    born: ThreadId,
    ledger: Arc<Ledger>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.ledger.services_dropped.fetch_add(1, SeqCst);
        if thread::current().id() != self.born {
            self.ledger.wrong_thread_drops.fetch_add(1, SeqCst);
        }
    }
}

impl App {
    fn handle(&self, request: Request<Incoming>) -> AppResponse {
        let i: u64 = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut upload = Vec::new();
        let read = BodyReader::new(request.into_body()).read_to_end(&mut upload);
        if read.is_err() {
            // The client went away mid-upload.
            let mut response = Response::new(Either::Right(Empty::new()));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
        if kind(i) == Kind::PanicBeforeHead {
            self.ledger.panics.fetch_add(1, SeqCst);
            panic!("chaos: panic before the head in request {i}");
        }
        self.ledger.bodies_made.fetch_add(1, SeqCst);
        Response::new(Either::Left(TrackedBody {
            i,
            sum: checksum(&upload),
            next: 0,
            born: thread::current().id(),
            ledger: self.ledger.clone(),
            _not_send: std::marker::PhantomData,
        }))
    }
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// What happened to one request, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Exact,
    InternalError,
    BodyError,
    DroppedByClient,
}

/// What `App` answers.
type AppResponse = Response<Either<TrackedBody, Empty<Bytes>>>;

/// The limited kind's inner service on one worker: `App` behind an async
/// pause, behind a `ConcurrencyLimit` whose permits all workers share.
fn limited(
    app: App,
    permits: Arc<Semaphore>,
) -> CountWaits<
    impl tower::Service<
        Request<Incoming>,
        Response = AppResponse,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<AppResponse, Infallible>>,
    >,
> {
    let ledger = app.ledger.clone();
    CountWaits {
        inner: ConcurrencyLimit::with_semaphore(paused(app), permits),
        ledger,
    }
}

/// `App` behind an async pause.
fn paused(
    app: App,
) -> impl tower::Service<
    Request<Incoming>,
    Response = AppResponse,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<AppResponse, Infallible>>,
> + Clone {
    let app = std::rc::Rc::new(app);
    let inner = tower::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        async move {
            let i: u64 = request
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            // Hold the permit across a real wait, so that others queue.
            tokio::time::sleep(Duration::from_micros(mix(i ^ 0x5eed) % 2000)).await;
            Ok::<_, Infallible>(app.handle(request))
        }
    });
    inner
}

/// Counts the times its inner service is not ready.
struct CountWaits<S> {
    inner: S,
    ledger: Arc<Ledger>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for CountWaits<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let ready = self.inner.poll_ready(cx);
        if ready.is_pending() {
            self.ledger.limited_waits.fetch_add(1, SeqCst);
        }
        ready
    }

    fn call(&mut self, request: R) -> S::Future {
        self.inner.call(request)
    }
}

/// Under chaos, every request gets exactly one outcome, the right one for
/// its kind; every completed response is byte-exact; no worker is lost; and
/// every body and service instance is dropped, on the thread that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    common::bounded(TIME_LIMIT, soak()).await;
}

async fn soak() {
    // Silence the expected panics' messages; keep anything else.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let chaos = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("chaos:"));
        if !chaos {
            default_hook(info);
        }
    }));

    let ledger = Arc::new(Ledger::default());
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_streams_per_worker(16)
        .body_buffer(2)
        .queue_capacity(64)
        .thread_name("chaos")
        // Spares start while slow handlers block, and retire during the run.
        .keep_alive(Duration::from_millis(20))
        .build();
    let made = ledger.clone();
    let service = layer.service_with(move |_: WorkerId| {
        made.services_made.fetch_add(1, SeqCst);
        let app = App {
            born: thread::current().id(),
            ledger: made.clone(),
        };
        blocking::service_fn(move |request| app.handle(request))
    });
    let made = ledger.clone();
    let permits = Arc::new(Semaphore::new(LIMIT));
    let backpressured = layer.service_with(move |_: WorkerId| {
        made.services_made.fetch_add(1, SeqCst);
        let app = App {
            born: thread::current().id(),
            ledger: made.clone(),
        };
        limited(app, permits.clone())
    });
    let (stuck_layer, stuck, gates) = stuck_pool();
    let (elastic_layer, elastic, elastic_gates) = elastic::pool();
    let router = tower::service_fn(move |request: Request<Incoming>| {
        let path = request.uri().path();
        let answer: Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            if path.starts_with("/limited/") {
                Box::pin(backpressured.clone().oneshot(request))
            } else if path.starts_with("/stuck/") {
                Box::pin(stuck.clone().oneshot(request))
            } else if path.starts_with("/elastic/") {
                Box::pin(elastic.clone().oneshot(request))
            } else {
                Box::pin(service.clone().oneshot(request))
            };
        answer
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hyper_server::serve(listener, router, async {
        let _ = stopped.await;
    }));

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // Warm up, then take the baseline.
    for i in 0..200 {
        run_one(&client, addr, REQUESTS + i * 100).await;
    }
    let rss_start = rss();

    let outcomes = Arc::new(Mutex::new(vec![None; REQUESTS as usize]));
    let done = Arc::new(AtomicU64::new(0));
    let rss_half = Arc::new(OnceLock::new());
    let mut clients = tokio::task::JoinSet::new();
    let stuck_client = client.clone();
    let stuck_rounds = tokio::spawn(async move { run_stuck(&stuck_client, addr, gates).await });
    let elastic_rounds = tokio::spawn({
        let (client, layer) = (client.clone(), elastic_layer.clone());
        async move { elastic::run(&client, addr, &layer, elastic_gates).await }
    });
    for c in 0..CLIENTS {
        let (client, outcomes) = (client.clone(), outcomes.clone());
        let (done, rss_half) = (done.clone(), rss_half.clone());
        clients.spawn(async move {
            for i in (c..REQUESTS).step_by(CLIENTS as usize) {
                let outcome = run_one(&client, addr, i).await;
                let previous = outcomes.lock().unwrap()[i as usize].replace(outcome);
                assert_eq!(previous, None, "request {i} had two outcomes");
                if done.fetch_add(1, SeqCst) + 1 == REQUESTS / 2 {
                    rss_half.set(rss()).unwrap();
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let rss_end = rss();
    let (queued_ran, holds_timed_out) = stuck_rounds.await.unwrap();
    elastic_rounds.await.unwrap();

    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap();
    // Read once every worker has finished: before shutdown, a worker may
    // still be ending a response whose client is already done.
    layer.shutdown().await;
    let stats = layer.stats();
    drop(layer);
    stuck_layer.shutdown().await;
    let stuck_stats = stuck_layer.stats();
    drop(stuck_layer);
    elastic_layer.shutdown().await;
    let elastic_stats = elastic_layer.stats();
    drop(elastic_layer);

    // Exactly one outcome per request, the right one for its kind.
    let outcomes = outcomes.lock().unwrap();
    for (i, outcome) in outcomes.iter().enumerate() {
        let expected = match kind(i as u64) {
            Kind::Quick | Kind::Stream | Kind::Slow | Kind::Limited => Outcome::Exact,
            Kind::PanicBeforeHead => Outcome::InternalError,
            Kind::PanicMidStream => Outcome::BodyError,
            Kind::Dropped => Outcome::DroppedByClient,
        };
        assert_eq!(
            *outcome,
            Some(expected),
            "request {i} ({:?})",
            kind(i as u64)
        );
    }

    // No worker lost; every panic counted by the worker that caught it
    // (spares' slots included).
    assert_eq!(stats.workers().iter().filter(|w| !w.is_spare()).count(), 2);
    let panicked: u64 = stats.workers().iter().map(|w| w.panicked()).sum();
    assert_eq!(panicked, ledger.panics.load(SeqCst));
    assert!(
        stats.workers().iter().all(|w| w.replaced() == 0),
        "{stats:?}"
    );
    assert!(stats.workers().iter().all(|w| w.active() == 0), "{stats:?}");

    // The limited kind did wait for readiness: with 2,000 such requests
    // among 64 clients and 2 permits, some always find them taken.
    assert!(
        ledger.limited_waits.load(SeqCst) > 0,
        "the limit never applied"
    );

    // Every request queued behind a stuck handler was answered with the
    // queue-timeout 503 (checked in `run_stuck`), counted once, and never
    // ran; every stuck handler finished; the stuck worker was not lost.
    assert_eq!(queued_ran, 0, "a withdrawn request ran");
    assert_eq!(
        stuck_stats.timed_out(),
        STUCK_ROUNDS + holds_timed_out,
        "{stuck_stats:?}"
    );
    let stuck_worker = &stuck_stats.workers()[0];
    assert_eq!(stuck_worker.replaced(), 0, "{stuck_stats:?}");
    assert_eq!(stuck_worker.active(), 0, "{stuck_stats:?}");
    // Withdrawn jobs are dropped unstarted: only the stuck handlers ran.
    assert_eq!(stuck_worker.completed(), STUCK_ROUNDS, "{stuck_stats:?}");

    // The elastic pool grew for each hang, again once its spares had
    // retired while the hang went on, and went back to its core worker.
    assert!(
        elastic_stats.spares_started() >= 2 * elastic::ROUNDS,
        "{elastic_stats:?}"
    );
    assert_eq!(
        elastic_stats.spares_retired(),
        elastic_stats.spares_started(),
        "{elastic_stats:?}"
    );
    assert!(
        elastic_stats
            .workers()
            .iter()
            .all(|w| w.replaced() == 0 && w.panicked() == 0 && w.active() == 0),
        "{elastic_stats:?}"
    );

    // Everything made was dropped, on its own thread: two services per core
    // worker, and one or two per spare that served.
    let made = ledger.services_made.load(SeqCst);
    assert!(made >= 4, "{made}");
    assert_eq!(ledger.services_dropped.load(SeqCst), made);
    assert_eq!(
        ledger.bodies_made.load(SeqCst),
        ledger.bodies_dropped.load(SeqCst)
    );
    assert_eq!(ledger.wrong_thread_drops.load(SeqCst), 0);

    // Memory reaches a plateau: no leak that grows with the request count.
    let rss_half = *rss_half.get().unwrap();
    let first = rss_half.saturating_sub(rss_start);
    let second = rss_end.saturating_sub(rss_half);
    assert!(
        second <= first / 4 + RSS_TOLERANCE,
        "resident memory grew by {first} bytes over the first half of the soak \
         and {second} over the second ({rss_start}, {rss_half}, {rss_end}): a leak"
    );
}

/// Sends request `i` and reads its answer as its kind says.
async fn run_one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    i: u64,
) -> Outcome {
    let body = upload(i);
    let sum = checksum(&body);
    let path = if kind(i) == Kind::Limited {
        "limited/"
    } else {
        ""
    };
    let request = Request::post(format!("http://{addr}/{path}{i}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = match client.request(request).await {
        Ok(response) => response,
        // Over HTTP/1 a body that fails right after its first frame may abort
        // the connection before hyper has flushed the head: the client sees
        // the connection close before a complete message, and nothing else.
        Err(e) if kind(i) == Kind::PanicMidStream && closed_before_the_head(&e) => {
            return Outcome::BodyError
        }
        Err(e) => panic!("request {i} ({:?}): {e:?}", kind(i)),
    };
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        return Outcome::InternalError;
    }
    assert_eq!(response.status(), StatusCode::OK, "request {i}");
    let mut body = pin!(response.into_body());
    let mut j = 0;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            // The expected body error: the server aborts the chunked body.
            Err(e) if aborted_mid_body(&e) => return Outcome::BodyError,
            Err(e) => panic!("request {i} ({:?}): unexpected body error {e:?}", kind(i)),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // Frames may be split or merged in transit: compare byte by byte.
        let mut data = data;
        while !data.is_empty() {
            let expected = chunk(i, sum, j);
            let n = expected.len().min(data.len());
            assert_eq!(
                data.split_to(n),
                expected.slice(..n),
                "request {i} chunk {j}"
            );
            if n < expected.len() {
                // The rest of this chunk comes in the next frame.
                let rest = expected.slice(n..);
                let next = body.frame().await.expect("truncated").expect("body error");
                let next = next.into_data().unwrap();
                assert_eq!(next.slice(..rest.len()), rest, "request {i} chunk {j}");
                data = next.slice(rest.len()..);
            }
            j += 1;
        }
        match kind(i) {
            Kind::Dropped => return Outcome::DroppedByClient,
            Kind::Slow => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => {}
        }
    }
    assert_eq!(j, chunks(i), "request {i} ended early");
    Outcome::Exact
}

/// Whether the client's error is the server closing the connection before
/// it sent a whole response head (hyper's `IncompleteMessage`).
fn closed_before_the_head(error: &hyper_util::client::legacy::Error) -> bool {
    error
        .source()
        .and_then(|source| source.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_incomplete_message)
}

/// Whether a body read failed because the server aborted the chunked body
/// (the connection ended where the next chunk size was due), which is how
/// HTTP/1 carries a body error.
fn aborted_mid_body(error: &hyper::Error) -> bool {
    error
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// The two ends of the stuck pool's gates: the test hears when a stuck
/// handler has started, and lets it go.
struct Gates {
    started: mpsc::UnboundedReceiver<u64>,
    release: std::sync::mpsc::Sender<()>,
    /// Requests that ran although they were queued behind a stuck handler.
    queued_ran: Arc<AtomicU64>,
}

/// One worker, no spares, and a short `queue_timeout`: `/stuck/hold/r`
/// blocks its worker until the test lets it go; `/stuck/queued/r` must
/// never run.
fn stuck_pool() -> (
    ThreadAffinityLayer,
    impl tower::Service<
            Request<Incoming>,
            Response = Response<tower_affinity::ThreadAffinityBody>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    Gates,
) {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .queue_timeout(QUEUE_TIMEOUT)
        .thread_name("stuck")
        .build();
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let queued_ran = Arc::new(AtomicU64::new(0));
    let ran = queued_ran.clone();
    let service = layer.layer(blocking::service_fn(move |request: Request<Incoming>| {
        let path = request.uri().path();
        let r: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
        if path.starts_with("/stuck/hold/") {
            started_tx.send(r).unwrap();
            // Blocks its worker past `queue_timeout`, until the request
            // queued behind it has had its 503.
            released.lock().unwrap().recv().unwrap();
        } else {
            ran.fetch_add(1, SeqCst);
        }
        Response::new(Full::new(Bytes::from(format!("held {r}"))))
    }));
    let gates = Gates {
        started,
        release,
        queued_ran,
    };
    (layer, service, gates)
}

/// Runs the stuck rounds beside the soak: a handler blocks the stuck pool's
/// only worker, a request queued behind it gets the queue-timeout 503, then
/// the handler is let go and answers. Returns how many queued requests ran,
/// and how many holds timed out before they started.
async fn run_stuck(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    mut gates: Gates,
) -> (u64, u64) {
    let post = |path: String| {
        Request::post(format!("http://{addr}/stuck/{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut holds_timed_out = 0;
    for r in 0..STUCK_ROUNDS {
        // Under the soak's load, the idle worker may take longer than
        // `queue_timeout` to start the hold itself: that hold is answered
        // the same 503, never runs, and is sent again.
        let hold = loop {
            let mut hold = tokio::spawn(client.request(post(format!("hold/{r}"))));
            tokio::select! {
                started = gates.started.recv() => {
                    assert_eq!(started, Some(r), "round {r}");
                    break hold;
                }
                answer = &mut hold => {
                    let answer = answer.unwrap().unwrap();
                    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "round {r}");
                    let text = answer.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(text, QUEUE_TIMEOUT_TEXT, "round {r}");
                    holds_timed_out += 1;
                }
            }
        };
        let queued = client.request(post(format!("queued/{r}"))).await.unwrap();
        assert_eq!(
            queued.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {r}"
        );
        let text = queued.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, QUEUE_TIMEOUT_TEXT, "round {r}");
        gates.release.send(()).unwrap();
        let held = hold.await.unwrap().unwrap();
        assert_eq!(held.status(), StatusCode::OK, "round {r}");
        let text = held.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, format!("held {r}"), "round {r}");
    }
    (gates.queued_ran.load(SeqCst), holds_timed_out)
}
