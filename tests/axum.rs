//! The axum example's router (`examples/axum_stack.rs`), served by
//! `axum::serve` on 127.0.0.1 and driven by hyper-util's client: the layer
//! on a whole `Router`, on one route (`route_service`, `route_layer`),
//! beside async routes, with extractors and `State`, under tower's
//! `TimeoutLayer`.
//!
//! Threads are told apart by name: the example names its workers
//! `axum-worker-{index}`, and each handler says where it ran.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower_affinity::{BoxError, ThreadAffinityLayer};

#[allow(dead_code)]
#[path = "../examples/axum_stack.rs"]
mod axum_stack;

use axum_stack::{app, AppState, UploadSummary, UserView, Whereabouts, THREAD_PREFIX};

/// Hang guard for each test: generous, the machine is small and shared.
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// The example's timeout to the head, for tests that do not make it fire.
const NO_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a test body under the hang guard.
async fn bounded<F: Future<Output = ()>>(test: F) {
    common::bounded(TIME_LIMIT, test).await
}

/// Awaits `future`, failing if it takes longer than the hang guard.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    common::within_for(TIME_LIMIT, what, future).await
}

fn layer(workers: usize) -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(workers)
        .thread_name(THREAD_PREFIX)
        .build()
}

fn is_worker(thread: &str) -> bool {
    thread
        .strip_prefix(THREAD_PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|index| index.parse::<usize>().is_ok())
}

// ---------------------------------------------------------------------------
// Server and client
// ---------------------------------------------------------------------------

/// `axum::serve` on an ephemeral loopback port, shut down gracefully.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { addr, stop, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        within("the server to stop", self.task).await.unwrap();
    }
}

type ReqBody = BoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpConnector, ReqBody>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, url: String) -> Response<Incoming> {
    let request = Request::get(url)
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .unwrap();
    within("the response head", client.request(request))
        .await
        .unwrap()
}

async fn post(client: &HttpClient, url: String, body: Vec<u8>) -> Response<Incoming> {
    let body = Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed();
    let request = Request::post(url).body(body).unwrap();
    within("the response head", client.request(request))
        .await
        .unwrap()
}

async fn read_all(response: Response<Incoming>) -> Bytes {
    within("the response body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

async fn json<T: serde::de::DeserializeOwned>(response: Response<Incoming>) -> T {
    let body = read_all(response).await;
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&body)))
}

/// Holds the example's store lock on a thread of its own until the returned
/// sender is used or dropped; returns once the lock is held.
fn hold_store_lock(state: &AppState) -> std_mpsc::Sender<()> {
    let users = state.users.clone();
    let (release, released) = std_mpsc::channel::<()>();
    let (locked, is_locked) = std_mpsc::channel();
    std::thread::spawn(move || {
        let _guard = users.lock().unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
    });
    is_locked.recv().unwrap();
    release
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Handlers of a router wrapped whole with `Router::layer` run on the
/// layer's worker threads, while async routes merged beside them run on the
/// runtime (not a worker thread, no `WorkerId`), under concurrent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_layer_handlers_on_workers_async_routes_on_runtime() {
    bounded(async {
        let layer = layer(2);
        let (state, _audit) = AppState::new();
        let server = Server::start(app(&layer, state, NO_TIMEOUT)).await;
        let client = client();

        let mut calls = JoinSet::new();
        for i in 0..40 {
            let (client, path) = match i % 2 {
                0 => (client.clone(), "/legacy/whoami"),
                _ => (client.clone(), "/async/whoami"),
            };
            let url = server.url(path);
            calls.spawn(async move {
                let response = get(&client, url).await;
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                (path, json::<Whereabouts>(response).await)
            });
        }
        while let Some(done) = calls.join_next().await {
            let (path, here) = done.unwrap();
            if path.starts_with("/legacy") {
                assert!(is_worker(&here.thread), "{path} ran on {here:?}");
                assert_eq!(here.worker.as_deref(), Some(here.thread.as_str()));
            } else {
                assert!(!is_worker(&here.thread), "{path} ran on {here:?}");
                assert_eq!(here.worker, None, "{path} ran on {here:?}");
            }
        }

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// A blocking handler under `Router::layer` gets `State`, `Path`, `Query` and
/// `Extension<WorkerId>` as any axum handler does: its answer is built from
/// all four, it runs on a worker (the `WorkerId` it was given is its own
/// thread), and axum's rejections and the handler's own errors come back
/// through the layer with their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractors_and_state_in_a_blocking_handler() {
    bounded(async {
        let layer = layer(2);
        let (state, mut audit) = AppState::new();
        let server = Server::start(app(&layer, state, NO_TIMEOUT)).await;
        let client = client();

        let response = get(&client, server.url("/legacy/users/2?greeting=Hi")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let user: UserView = json(response).await;
        assert_eq!(user.id, 2);
        assert_eq!(user.name, "bob");
        assert_eq!(user.message, "Hi, bob!");
        assert!(is_worker(&user.served_by), "{user:?}");
        let line = within("the audit line", audit.recv()).await.unwrap();
        assert_eq!(line, format!("lookup 2 on {}", user.served_by));

        // The query's default.
        let response = get(&client, server.url("/legacy/users/3")).await;
        let user: UserView = json(response).await;
        assert_eq!(user.message, "Hello, carol!");

        // The handler's own error.
        let response = get(&client, server.url("/legacy/users/9")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(read_all(response).await, "no user 9\n");

        // axum's `Path` rejection, produced on the worker.
        let response = get(&client, server.url("/legacy/users/nine")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// A blocking `service_fn` mounted with `route_service` streams its
/// response (chunked: no length is known) from a worker thread, complete
/// and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_service_streams_a_blocking_report() {
    bounded(async {
        let layer = layer(2);
        let (state, _audit) = AppState::new();
        let server = Server::start(app(&layer, state, NO_TIMEOUT)).await;
        let client = client();

        const ROWS: u64 = 5000;
        let response = get(&client, server.url(&format!("/report?rows={ROWS}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert!(is_worker(headers["x-thread"].to_str().unwrap()));
        assert_eq!(headers[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");

        let body = read_all(response).await;
        let want: String = std::iter::once("row,square\n".to_owned())
            .chain((1..=ROWS).map(|row| format!("{row},{}\n", row * row)))
            .collect();
        assert!(
            body == want.as_bytes(),
            "report of {} bytes differs",
            body.len()
        );

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// tower-http's `CompressionLayer` outside the affinity layer gzips a
/// streamed blocking response: the client gets `content-encoding: gzip`
/// and, once inflated, every row in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_outside_gzips_a_streamed_report() {
    bounded(async {
        let layer = layer(2);
        let (state, _audit) = AppState::new();
        let server = Server::start(app(&layer, state, NO_TIMEOUT)).await;
        let client = client();

        const ROWS: u64 = 2000;
        let request = Request::get(server.url(&format!("/report?rows={ROWS}")))
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .unwrap();
        let response = within("the gzipped report", client.request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        let gzipped = read_all(response).await;
        let mut inflated = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&gzipped[..]),
            &mut inflated,
        )
        .unwrap();
        let want: String = std::iter::once("row,square\n".to_owned())
            .chain((1..=ROWS).map(|row| format!("{row},{}\n", row * row)))
            .collect();
        assert!(
            inflated == want,
            "inflated report of {} bytes differs",
            inflated.len()
        );

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// An axum handler on a route wrapped with `route_layer` reads a
/// multi-MiB upload with blocking `BodyReader` calls on a worker thread, and
/// gets every byte; an upload declared longer than its limit is answered
/// `413`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_layer_handler_reads_the_upload_on_a_worker() {
    bounded(async {
        let layer = layer(2);
        let (state, _audit) = AppState::new();
        let server = Server::start(app(&layer, state, NO_TIMEOUT)).await;
        let client = client();

        let upload: Vec<u8> = (0..3 * 1024 * 1024 + 5)
            .map(|k: u64| {
                if k % 1000 == 999 {
                    b'\n'
                } else {
                    (k % 251) as u8
                }
            })
            .collect();
        let lines = upload.iter().filter(|&&b| b == b'\n').count() as u64;
        let fnv = format!(
            "{:016x}",
            axum_stack::fnv1a(axum_stack::FNV_OFFSET, &upload)
        );

        let response = post(&client, server.url("/upload"), upload.clone()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let summary: UploadSummary = json(response).await;
        assert_eq!(summary.bytes, upload.len() as u64);
        assert_eq!(summary.lines, lines);
        assert_eq!(summary.fnv, fnv);
        assert!(is_worker(&summary.thread), "{summary:?}");

        // Declared too long: answered from the length alone. The body never
        // sends a byte, so the answer cannot race the client's writes.
        let never = StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BoxError>>());
        let request = Request::post(server.url("/upload"))
            .header(header::CONTENT_LENGTH, axum_stack::UPLOAD_LIMIT + 1)
            .body(never.boxed())
            .unwrap();
        let response = within("the 413", client.request(request)).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// With tower's `TimeoutLayer` stacked outside: while a blocking handler
/// holds the only worker (waiting on the store's lock), the client gets
/// `408` from the timeout, async routes keep answering on the runtime, and
/// once the lock is released the same worker serves the route again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_outside_answers_while_the_worker_is_blocked() {
    bounded(async {
        let layer = layer(1);
        let (state, mut audit) = AppState::new();
        let router = app(&layer, state.clone(), Duration::from_millis(500));
        let server = Server::start(router).await;
        let client = client();

        // Warm up: the worker is running and has built its instance.
        let response = get(&client, server.url("/legacy/users/1")).await;
        let first: UserView = json(response).await;
        within("the audit line", audit.recv()).await.unwrap();

        let release = hold_store_lock(&state);
        let blocked = tokio::spawn({
            let client = client.clone();
            let url = server.url("/legacy/users/1");
            async move { get(&client, url).await.status() }
        });
        // The handler is running on the worker, about to block on the lock.
        let line = within("the audit line", audit.recv()).await.unwrap();
        assert_eq!(line, format!("lookup 1 on {}", first.served_by));

        // The runtime is free: an async route answers meanwhile.
        let response = get(&client, server.url("/async/whoami")).await;
        let here: Whereabouts = json(response).await;
        assert!(!is_worker(&here.thread), "{here:?}");

        // The timeout answers while the handler is still blocked.
        assert_eq!(
            within("the timeout", blocked).await.unwrap(),
            StatusCode::REQUEST_TIMEOUT
        );

        // The handler finishes once the lock is free; the worker serves on.
        drop(release);
        let response = get(&client, server.url("/legacy/users/1")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let again: UserView = json(response).await;
        assert_eq!(again.served_by, first.served_by);

        drop(client);
        server.shutdown().await;
    })
    .await;
}
