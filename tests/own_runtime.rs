//! Code that brings its own runtime runs on the workers as it does under
//! `spawn_blocking`: a private current-thread and multi-thread runtime
//! built, used and dropped (in a `blocking::service_fn` closure, a
//! `service_with` factory, an async axum handler, a body's `poll_frame`
//! and a body's `Drop`), `Handle::block_on`, `futures::executor::block_on`,
//! `reqwest::blocking`, tonic's blocking-client pattern, and the sync
//! `postgres` client against a real PostgreSQL server.
//!
//! Each case goes through a real axum server on 127.0.0.1 and a real
//! client twice: behind the layer, where it must answer from a worker
//! thread, and as the control, the same service run under
//! `tokio::task::spawn_blocking` (see [`OnSpawnBlocking`]). A case that
//! answers under the control and not behind the layer is the layer's bug.
//!
//! The PostgreSQL tests need Debian's `postgresql` package (`apt-get
//! install postgresql`); without it they say so and pass, except under
//! `CI=true`.

mod cluster;
mod common;

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::future::join_all;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_affinity::blocking::{self, IterBody};
use tower_affinity::{BoxError, ThreadAffinityLayer};

use cluster::Cluster;
use common::{assert_worker_name, thread_name};

/// The example's client of `demo.Primes`, and its server; `main` unused.
#[allow(dead_code)]
#[path = "../examples/grpc_server.rs"]
mod grpc_server;

/// The sync `postgres` example, run against the test's own cluster.
#[allow(dead_code)]
#[path = "../examples/postgres_server.rs"]
mod postgres_server;

/// The prefix of the layer's thread names.
const PREFIX: &str = "own-rt";

/// How long the timers in the cases wait: long enough that a timer nobody
/// drives never fires, and the case hangs instead of answering.
const TICK: Duration = Duration::from_millis(2);

/// The bound on a test with a PostgreSQL cluster of its own (`initdb`
/// takes seconds on a busy machine): a guard against a hang.
const PG_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The code under test: what legacy code does

/// `answer`, and the thread that computed it.
fn on_this_thread(answer: impl Display) -> String {
    format!("{answer} on {}", thread_name())
}

/// What a sync facade over async code does: builds a current-thread and a
/// multi-thread runtime, blocks on a tokio timer on each (on the second,
/// inside a task spawned there), and drops both. Answers "42 on THREAD".
fn private_runtimes() -> String {
    let current = Builder::new_current_thread().enable_time().build().unwrap();
    let twenty = current.block_on(async {
        tokio::time::sleep(TICK).await;
        20
    });
    drop(current);
    let multi = Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let twenty_two = multi.block_on(async {
        let task = tokio::spawn(async {
            tokio::time::sleep(TICK).await;
            22
        });
        task.await.unwrap()
    });
    drop(multi);
    on_this_thread(twenty + twenty_two)
}

/// Blocks on a tokio timer through the current runtime's handle, as code
/// under `spawn_blocking` may (no runtime of its own).
fn handle_block_on() -> String {
    let answer = Handle::current().block_on(async {
        tokio::time::sleep(TICK).await;
        42
    });
    on_this_thread(answer)
}

/// Blocks on a tokio timer with `futures`' executor.
fn futures_block_on() -> String {
    let answer = futures::executor::block_on(async {
        tokio::time::sleep(TICK).await;
        42
    });
    on_this_thread(answer)
}

/// `reqwest::blocking` against `peer`: in a debug build (as `cargo test`
/// builds it), reqwest first builds and drops a runtime to check that it
/// is not inside one.
fn reqwest_blocking(peer: SocketAddr) -> String {
    let text = reqwest::blocking::get(format!("http://{peer}/hello"))
        .and_then(|response| response.error_for_status()?.text())
        .unwrap();
    on_this_thread(text)
}

/// tonic's documented blocking client: a runtime of its own, and
/// `block_on` for each call.
struct BlockingPrimesClient {
    runtime: Runtime,
    client: grpc_server::PrimesClient,
}

impl BlockingPrimesClient {
    fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let client = runtime.block_on(grpc_server::PrimesClient::connect(addr))?;
        Ok(Self { runtime, client })
    }

    fn factor(&mut self, n: u64) -> Result<grpc_server::Factors, tonic::Status> {
        let response = self.runtime.block_on(self.client.factor(n))?;
        Ok(response.into_inner())
    }
}

/// Connects a blocking tonic client to `grpc`, calls `Factor(360)`, and
/// drops the client and its runtime. Answers the factors and the thread of
/// the gRPC server that found them.
fn tonic_blocking(grpc: SocketAddr) -> String {
    let mut client = BlockingPrimesClient::connect(grpc).unwrap();
    let factors = client.factor(360).unwrap();
    drop(client);
    on_this_thread(format!("{:?} from {}", factors.factors, factors.worker))
}

/// A one-frame body whose `Drop` runs [`private_runtimes`] and reports the
/// answer.
struct ReportsOnDrop {
    frame: Option<Bytes>,
    report: mpsc::UnboundedSender<String>,
}

impl http_body::Body for ReportsOnDrop {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .frame
                .take()
                .map(|data| Ok(Frame::data(data))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.frame.is_none()
    }
}

impl Drop for ReportsOnDrop {
    fn drop(&mut self) {
        let _ = self.report.send(private_runtimes());
    }
}

// ---------------------------------------------------------------------------
// Hosts: the layer, and the spawn_blocking control

/// Where a case's code runs.
#[derive(Clone)]
enum Host {
    /// Behind the layer, on its workers.
    Layer(ThreadAffinityLayer),
    /// The control: under `spawn_blocking` (see [`OnSpawnBlocking`]).
    SpawnBlocking,
}

impl Host {
    /// Mounts at `path` the service `make` builds: the layer clones it
    /// once per worker.
    fn service<S, B>(
        &self,
        app: Router,
        path: &str,
        make: impl Fn() -> S + Send + Sync + 'static,
    ) -> Router
    where
        S: Service<Request<Body>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: 'static,
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError> + Display,
    {
        match self {
            Host::Layer(layer) => app.route_service(path, layer.service(make())),
            Host::SpawnBlocking => app.route_service(path, OnSpawnBlocking::new(make)),
        }
    }

    /// Mounts at `path` the service `make` builds: on each worker, by a
    /// `service_with` factory.
    fn factory<S, B>(
        &self,
        app: Router,
        path: &str,
        make: impl Fn() -> S + Send + Sync + 'static,
    ) -> Router
    where
        S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + 'static,
        S::Future: 'static,
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError> + Display,
    {
        match self {
            Host::Layer(layer) => app.route_service(path, layer.service_with(move |_| make())),
            Host::SpawnBlocking => app.route_service(path, OnSpawnBlocking::new(make)),
        }
    }

    /// Mounts ordinary async axum handlers: `router.layer(layer)`.
    fn handlers(&self, app: Router, handlers: Router) -> Router {
        match self {
            Host::Layer(layer) => app.merge(handlers.layer(layer.clone())),
            Host::SpawnBlocking => {
                app.fallback_service(OnSpawnBlocking::new(move || handlers.clone()))
            }
        }
    }
}

/// The control: for each request, one `spawn_blocking` call builds the
/// service with `make`, calls it, polls its future and every frame of its
/// body, and drops them all, as a user who moves the blocking code onto
/// `spawn_blocking` does. [`park_on`] polls them: it is no runtime and no
/// executor, so the code nests in nothing but what `spawn_blocking` gives.
struct OnSpawnBlocking<F>(Arc<F>);

impl<F> OnSpawnBlocking<F> {
    fn new(make: F) -> Self {
        Self(Arc::new(make))
    }
}

impl<F> Clone for OnSpawnBlocking<F> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<F, S, B> Service<Request<Body>> for OnSpawnBlocking<F>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let make = self.0.clone();
        Box::pin(async move {
            let served = tokio::task::spawn_blocking(move || {
                let Ok(response) = park_on(make().oneshot(request));
                let (parts, body) = response.into_parts();
                let bytes = park_on(body.collect()).map_err(|e| e.to_string())?;
                Ok::<_, String>(Response::from_parts(parts, Body::from(bytes.to_bytes())))
            })
            .await;
            Ok(match served {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("body error: {error}"),
                ),
                Err(join) => {
                    let panic = join.into_panic();
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("?");
                    plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("panicked: {message}"),
                    )
                }
            })
        })
    }
}

/// Polls `future` on this thread until it is ready, parking in between.
fn park_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A spurious return only polls once more.
        thread::park();
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

// ---------------------------------------------------------------------------
// The servers and the client

/// The servers the cases talk to.
#[derive(Clone, Copy)]
struct Peers {
    /// Plain axum on the test's runtime: `/hello`.
    http: SocketAddr,
    /// The `grpc_server` example: `demo.Primes`.
    grpc: SocketAddr,
}

impl Peers {
    async fn start() -> Self {
        let hello = Router::new().route("/hello", get(|| async { "hello" }));
        let http = serve(hello).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = listener.local_addr().unwrap();
        tokio::spawn(grpc_server::serve(listener));
        Self { http, grpc }
    }
}

/// Every case but PostgreSQL's, on `host`; each body drop reports to
/// `drops`.
fn app(host: &Host, peers: Peers, drops: mpsc::UnboundedSender<String>) -> Router {
    let app = Router::new();
    let app = host.service(app, "/service_fn", || {
        blocking::service_fn(|_: Request<Body>| Response::new(private_runtimes()))
    });
    // The factory's own answer, computed where the factory ran.
    let app = host.factory(app, "/factory", || {
        let built = private_runtimes();
        blocking::service_fn(move |_: Request<Body>| Response::new(built.clone()))
    });
    let app = host.service(app, "/poll_frame", || {
        blocking::service_fn(|_: Request<Body>| {
            Response::new(IterBody::from_chunks(std::iter::once_with(
                private_runtimes,
            )))
        })
    });
    let app = host.service(app, "/body_drop", move || {
        let drops = drops.clone();
        blocking::service_fn(move |_: Request<Body>| {
            Response::new(ReportsOnDrop {
                frame: Some(Bytes::from_static(b"body")),
                report: drops.clone(),
            })
        })
    });
    let Peers { http, grpc } = peers;
    let handlers = Router::new()
        .route("/handler", get(|| async { private_runtimes() }))
        .route("/handle_block_on", get(|| async { handle_block_on() }))
        .route("/futures_block_on", get(|| async { futures_block_on() }))
        .route(
            "/reqwest",
            get(move || async move { reqwest_blocking(http) }),
        )
        .route("/tonic", get(move || async move { tonic_blocking(grpc) }));
    host.handlers(app, handlers)
}

/// `axum::serve` on a free loopback port, until the test's runtime ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The status and text of `GET path` on `addr`.
async fn fetch(client: &HttpClient, addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = common::within(path, client.request(request)).await.unwrap();
    let status = response.status();
    let body = common::within(path, response.into_body().collect()).await;
    (
        status,
        String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap(),
    )
}

/// One case's two servers: behind the layer, and the control.
struct Both {
    layer: SocketAddr,
    control: SocketAddr,
    /// What each host's body drops reported.
    layer_drops: mpsc::UnboundedReceiver<String>,
    control_drops: mpsc::UnboundedReceiver<String>,
    client: HttpClient,
}

impl Both {
    async fn start() -> Self {
        let peers = Peers::start().await;
        let layer = ThreadAffinityLayer::builder()
            .workers(2)
            .thread_name(PREFIX)
            .build();
        let (to_layer, layer_drops) = mpsc::unbounded_channel();
        let (to_control, control_drops) = mpsc::unbounded_channel();
        Self {
            layer: serve(app(&Host::Layer(layer), peers, to_layer)).await,
            control: serve(app(&Host::SpawnBlocking, peers, to_control)).await,
            layer_drops,
            control_drops,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET path` behind the layer and under the control: each answers
    /// `200` with "ANSWER on THREAD", the layer's THREAD a worker, the
    /// control's not; `check` gets each ANSWER.
    async fn get(&self, path: &str, check: impl Fn(&str)) {
        let (status, text) = fetch(&self.client, self.layer, path).await;
        assert_eq!(status, StatusCode::OK, "behind the layer: {text}");
        let (answer, thread) = split(&text);
        assert_worker_name(thread, PREFIX);
        check(answer);
        let (status, text) = fetch(&self.client, self.control, path).await;
        assert_eq!(status, StatusCode::OK, "under spawn_blocking: {text}");
        let (answer, thread) = split(&text);
        assert!(!thread.starts_with(PREFIX), "the control ran on {thread}");
        check(answer);
    }
}

/// "ANSWER on THREAD" as (ANSWER, THREAD).
fn split(text: &str) -> (&str, &str) {
    text.rsplit_once(" on ")
        .unwrap_or_else(|| panic!("not an answer: {text:?}"))
}

fn is_42(answer: &str) {
    assert_eq!(answer, "42");
}

async fn bounded(test: impl Future<Output = ()>) {
    common::bounded(Duration::from_secs(30), test).await
}

/// One case on fresh servers: `GET path` on both hosts (see [`Both::get`]).
async fn case(path: &str, check: impl Fn(&str)) {
    bounded(async { Both::start().await.get(path, check).await }).await
}

// ---------------------------------------------------------------------------
// The cases

/// A `blocking::service_fn` closure builds, blocks on (with a timer) and
/// drops a current-thread and a multi-thread runtime of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_runtimes_in_a_service_fn_closure() {
    case("/service_fn", is_42).await;
}

/// A `service_with` factory builds, blocks on and drops runtimes of its
/// own while it builds the worker's service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_runtimes_in_a_service_with_factory() {
    case("/factory", is_42).await;
}

/// Sync code called from an async axum handler's body (`router.layer`)
/// builds, blocks on and drops runtimes of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_runtimes_in_an_async_axum_handler() {
    case("/handler", is_42).await;
}

/// A response body's `poll_frame` (an `IterBody`'s iterator) builds,
/// blocks on and drops runtimes of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_runtimes_in_a_body_poll_frame() {
    case("/poll_frame", is_42).await;
}

/// A response body's `Drop` builds, blocks on and drops runtimes of its
/// own, after the client has the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_runtimes_in_a_body_drop() {
    bounded(async {
        let mut both = Both::start().await;
        for (addr, drops, on_worker) in [
            (both.layer, &mut both.layer_drops, true),
            (both.control, &mut both.control_drops, false),
        ] {
            let (status, text) = fetch(&both.client, addr, "/body_drop").await;
            assert_eq!((status, text.as_str()), (StatusCode::OK, "body"));
            let report = common::within("the body's drop", drops.recv()).await;
            let report = report.expect("the app is gone");
            let (answer, thread) = split(&report);
            assert_eq!(answer, "42");
            assert_eq!(thread.starts_with(PREFIX), on_worker, "dropped on {thread}");
            if on_worker {
                assert_worker_name(thread, PREFIX);
            }
        }
    })
    .await;
}

/// A handler blocks on a tokio timer through `Handle::current().block_on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_block_on_in_a_handler() {
    case("/handle_block_on", is_42).await;
}

/// A handler blocks on a tokio timer with `futures::executor::block_on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_block_on_in_a_handler() {
    case("/futures_block_on", is_42).await;
}

/// A handler calls a local server with `reqwest::blocking`, which in this
/// debug build first builds and drops a runtime to check that it is not
/// inside one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_blocking_in_a_handler() {
    case("/reqwest", |answer| assert_eq!(answer, "hello")).await;
}

/// A handler calls a tonic server through tonic's blocking-client pattern
/// (a runtime of its own, `block_on` per call), then drops the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_blocking_client_in_a_handler() {
    case("/tonic", |answer| {
        let (factors, server) = answer.split_once(" from ").unwrap();
        assert_eq!(factors, "[2, 2, 2, 3, 3, 5]");
        assert_worker_name(server, "grpc-worker");
    })
    .await;
}

/// `tokio::spawn` and `spawn_local` still work in a handler: a task it
/// spawns and awaits answers, and one it leaves running completes after
/// the response, both on the pool's driver thread; a `spawn_local` task
/// runs on the handler's own worker thread, and may build, block on and
/// drop runtimes of its own there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_spawn_and_spawn_local_in_a_handler() {
    bounded(async {
        let layer = ThreadAffinityLayer::builder()
            .workers(2)
            .thread_name(PREFIX)
            .build();
        let (done, mut finished) = mpsc::unbounded_channel();
        let handler = move || {
            let done = done.clone();
            async move {
                let awaited = tokio::spawn(async {
                    tokio::time::sleep(TICK).await;
                    thread_name()
                });
                let awaited = awaited.await.unwrap();
                // A local task may do what the handler may.
                let local = tokio::task::spawn_local(async { private_runtimes() });
                let local = local.await.unwrap();
                tokio::spawn(async move {
                    tokio::time::sleep(TICK).await;
                    let _ = done.send(thread_name());
                });
                format!("{}|{awaited}|{local}", thread_name())
            }
        };
        let app = Router::new().route("/spawn", get(handler)).layer(layer);
        let addr = serve(app).await;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let (status, text) = fetch(&client, addr, "/spawn").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let [handler, awaited, local]: [&str; 3] = text
            .split('|')
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or_else(|_| panic!("{text:?}"));
        assert_worker_name(handler, PREFIX);
        let driver = format!("{PREFIX}-driver");
        assert_eq!(awaited, driver);
        assert_eq!(local, format!("42 on {handler}"));
        let detached = common::within("the detached task", finished.recv()).await;
        assert_eq!(detached.as_deref(), Some(driver.as_str()));
    })
    .await;
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// Two requests that wait for each other inside their handlers, so that
/// two workers serve at once.
#[derive(Default)]
struct Rendezvous {
    arrived: Mutex<usize>,
    all: Condvar,
}

impl Rendezvous {
    fn arrive(&self) -> Result<(), &'static str> {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all.notify_all();
        let (_arrived, waited) = self
            .all
            .wait_timeout_while(arrived, common::HANG, |arrived| *arrived < 2)
            .unwrap();
        match waited.timed_out() {
            true => Err("the other request never came"),
            false => Ok(()),
        }
    }
}

/// Starts a cluster with a table `fruits` (1 apple, 2 pear, 3 plum), or
/// `None` without PostgreSQL (see [`Cluster::start`]).
async fn fruits() -> Option<Cluster> {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap()?;
    let url = cluster.url();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .batch_execute(
                "CREATE TABLE fruits (id integer PRIMARY KEY, name text NOT NULL);
                 INSERT INTO fruits VALUES (1, 'apple'), (2, 'pear'), (3, 'plum');",
            )
            .unwrap();
    })
    .await
    .unwrap();
    Some(cluster)
}

/// The closure of [`fruit_service`], boxed to be named.
type FruitHandler = Box<dyn FnMut(Request<Body>) -> Result<Response<String>, BoxError>>;

/// `/fruit/ID` from one connection that the factory opens, kept for the
/// service's life: "NAME BACKEND_PID on THREAD". With `?meet`, the handler
/// waits for a second such request before it answers.
fn fruit_service(
    url: String,
    meet: Arc<Rendezvous>,
) -> impl Fn() -> blocking::TryServiceFn<FruitHandler> + Send + Sync + 'static {
    move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let backend: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let meet = meet.clone();
        blocking::try_service_fn(Box::new(move |request: Request<Body>| {
            let id: i32 = request.uri().path().trim_start_matches("/fruit/").parse()?;
            let row = client.query_one("SELECT name FROM fruits WHERE id = $1", &[&id])?;
            if request.uri().query() == Some("meet") {
                meet.arrive()?;
            }
            let name: String = row.get(0);
            Ok(Response::new(on_this_thread(format!("{name} {backend}"))))
        }))
    }
}

/// The sync `postgres` client against a real PostgreSQL server: each
/// worker opens one connection in its `service_with` factory and keeps it.
/// Two requests served at once (they wait for each other) answer from two
/// workers through two connections; eight more answer from the table, each
/// worker through the connection it opened. The control, the same service
/// under `spawn_blocking`, answers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_postgres_client_keeps_one_connection_per_worker() {
    common::bounded(PG_LIMIT, async {
        let Some(cluster) = fruits().await else {
            return;
        };
        // One request at a time per worker and no spares: the two that
        // meet are on both workers, and no third worker opens a connection.
        let layer = ThreadAffinityLayer::builder()
            .workers(2)
            .max_workers(2)
            .max_streams_per_worker(1)
            .thread_name(PREFIX)
            .build();
        let meet = Arc::new(Rendezvous::default());
        let make = fruit_service(cluster.url(), meet);
        let app = Host::Layer(layer).factory(Router::new(), "/fruit/{id}", make);
        let addr = serve(app).await;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let names = ["apple", "pear", "plum"];

        let answers = |paths: Vec<String>| {
            let client = &client;
            join_all(paths.into_iter().map(move |path| async move {
                let (status, text) = fetch(client, addr, &path).await;
                assert_eq!(status, StatusCode::OK, "{path}: {text}");
                let (answer, thread) = split(&text);
                assert_worker_name(thread, PREFIX);
                let (name, backend) = answer.split_once(' ').unwrap();
                (path, name.to_owned(), backend.to_owned(), thread.to_owned())
            }))
        };
        let met = answers(vec!["/fruit/1?meet".into(), "/fruit/2?meet".into()]).await;
        assert_eq!((met[0].1.as_str(), met[1].1.as_str()), ("apple", "pear"));
        assert_ne!(met[0].3, met[1].3, "both on one worker: {met:?}");
        assert_ne!(met[0].2, met[1].2, "two workers, one connection: {met:?}");
        let paths = (0..8).map(|i| format!("/fruit/{}", i % 3 + 1)).collect();
        for (path, name, backend, thread) in answers(paths).await {
            let id: usize = path["/fruit/".len()..].parse().unwrap();
            assert_eq!(name, names[id - 1], "{path}");
            let home = met.iter().find(|m| m.3 == thread).unwrap();
            assert_eq!(backend, home.2, "{thread} used another connection");
        }

        let make = fruit_service(cluster.url(), Arc::default());
        let control = Host::SpawnBlocking.factory(Router::new(), "/fruit/{id}", make);
        let control = serve(control).await;
        let (status, text) = fetch(&client, control, "/fruit/3").await;
        assert_eq!(status, StatusCode::OK, "under spawn_blocking: {text}");
        let (answer, thread) = split(&text);
        assert!(answer.starts_with("plum "), "{answer}");
        assert!(!thread.starts_with(PREFIX), "the control ran on {thread}");
        drop(cluster);
    })
    .await;
}

/// The `postgres_server` example against a real server: it seeds its
/// table, answers an item from a worker's connection (and `404` for a
/// missing one), and `/whoami` names the worker and the connection's
/// backend process that its headers also give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_example_serves_from_a_worker_connection() {
    common::bounded(PG_LIMIT, async {
        let Some(cluster) = tokio::task::spawn_blocking(Cluster::start).await.unwrap() else {
            return;
        };
        let url = cluster.url();
        let seeding = url.clone();
        tokio::task::spawn_blocking(move || postgres_server::seed(&seeding))
            .await
            .unwrap()
            .unwrap();
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(1)
            .thread_name("pg-worker")
            .build();
        let addr = serve(postgres_server::app(&layer, &url)).await;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

        let (status, text) = fetch(&client, addr, "/items/2").await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "pear\n"));
        let (status, _) = fetch(&client, addr, "/items/9").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let request = Request::get(format!("http://{addr}/whoami"))
            .body(Empty::new())
            .unwrap();
        let response = common::within("/whoami", client.request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let worker = response.headers()["x-worker"].to_str().unwrap().to_owned();
        assert_worker_name(&worker, "pg-worker");
        let backend = response.headers()["x-backend-pid"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.ends_with(&format!("backend pid {backend}\n")),
            "{text}"
        );
        drop(cluster);
    })
    .await;
}
