//! The legacy example (`examples/legacy_server.rs`): its router, served by
//! `axum::serve` on 127.0.0.1 and driven by hyper-util's client, against
//! the example's own SQLite database (seeded once, in the temp directory).

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tower_affinity::ThreadAffinityLayer;

#[allow(dead_code)]
#[path = "../examples/legacy_server.rs"]
mod legacy_server;

/// Hang guard: seeding 200 000 rows in a debug build takes a while.
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// The example's worker threads are named `{PREFIX}-{index}`.
const PREFIX: &str = "sqlite-worker";

async fn bounded<F: Future<Output = ()>>(test: F) {
    common::bounded(TIME_LIMIT, test).await
}

/// Seeds the example's database once per test binary; returns its number
/// of orders, read back from the database itself.
async fn seeded() -> i64 {
    static ORDERS: OnceLock<i64> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        *ORDERS.get_or_init(|| {
            let path = legacy_server::db_path();
            legacy_server::seed(&path).expect("seed the example database");
            let db = rusqlite::Connection::open(&path).unwrap();
            db.query_row("SELECT count(*) FROM orders", [], |row| row.get(0))
                .unwrap()
        })
    })
    .await
    .unwrap()
}

/// The example's layer, configured as its `main` does.
fn layer() -> ThreadAffinityLayer {
    legacy_server::layer()
}

fn is_worker(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|index| index.parse::<usize>().is_ok())
}

/// `axum::serve` on an ephemeral loopback port, shut down gracefully.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(layer: &ThreadAffinityLayer) -> Self {
        Self::start_router(legacy_server::app(layer)).await
    }

    async fn start_router(router: axum::Router) -> Self {
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
        self.task.await.unwrap();
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, url: String, session: Option<&str>) -> Response<Incoming> {
    let mut request = Request::get(url);
    if let Some(session) = session {
        request = request.header("x-session", session);
    }
    client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn worker_of(response: &Response<Incoming>) -> String {
    let worker = response.headers()["x-worker"].to_str().unwrap().to_owned();
    assert!(is_worker(&worker), "served by {worker:?}");
    worker
}

/// `/export.csv` streams every order of the database (one CSV line each,
/// after the header line), of unknown length, from one worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_csv_streams_every_order() {
    bounded(async {
        let orders = seeded().await;
        assert!(orders > 0);
        let layer = layer();
        let server = Server::start(&layer).await;
        let client = client();

        let response = get(&client, server.url("/export.csv"), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        worker_of(&response);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/csv; charset=utf-8"
        );
        assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");

        // Counted frame by frame: the export is never held whole.
        let mut body = response.into_body();
        let (mut lines, mut first_line, mut last) = (0i64, Vec::new(), 0u8);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            if lines == 0 {
                let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
                first_line.extend_from_slice(&data[..end]);
            }
            lines += data.iter().filter(|&&b| b == b'\n').count() as i64;
            last = data.last().copied().unwrap_or(last);
        }
        assert_eq!(first_line, b"id,customer,amount_cents,created_at");
        assert_eq!(last, b'\n');
        assert_eq!(lines, orders + 1, "one line per order, plus the header");

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// `/session` with an `x-session` header counts each session's visits 1, 2,
/// 3, … in its worker's memory: every request of a session is served by the
/// same worker, while sessions are interleaved on one keep-alive client.
/// The answer and the `x-instance` header name the process too. Without the
/// header it answers `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_visits_count_up_on_one_worker() {
    bounded(async {
        seeded().await;
        let layer = layer();
        let server = Server::start(&layer).await;
        let client = client();

        let sessions = ["alice", "bob", "carol", "dave", "erin"];
        let mut home: Vec<Option<String>> = vec![None; sessions.len()];
        for visit in 1..=6 {
            for (session, home) in sessions.iter().zip(&mut home) {
                let response = get(&client, server.url("/session"), Some(session)).await;
                assert_eq!(response.status(), StatusCode::OK);
                let worker = worker_of(&response);
                let home = home.get_or_insert_with(|| worker.clone());
                assert_eq!(&worker, home, "session {session} moved");
                let instance = legacy_server::instance();
                assert_eq!(response.headers()["x-instance"], instance);
                assert_eq!(
                    text(response).await,
                    format!("session {session}: visit {visit} on {worker} of {instance}\n")
                );
            }
        }

        let response = get(&client, server.url("/session"), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// `/orders/{id}` answers one order as JSON from a worker's own SQLite
/// connection, and `404` for an id that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_by_id() {
    bounded(async {
        seeded().await;
        let layer = layer();
        let server = Server::start(&layer).await;
        let client = client();

        let response = get(&client, server.url("/orders/42"), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        worker_of(&response);
        let order: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
        assert_eq!(order["id"], 42);
        assert!(order["customer"].is_string(), "{order}");

        let response = get(&client, server.url("/orders/999999999"), None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// With the `metrics` feature, `/metrics` serves the pool's figures in
/// Prometheus text, and they move: an order served counts as admitted and
/// completed, and the four core threads show.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_route_serves_the_pools_figures() {
    bounded(async {
        seeded().await;
        let layer = layer();
        // Installs this binary's global recorder, before the layer serves.
        let metrics = legacy_server::metrics_route(&layer).unwrap();
        let server = Server::start_router(legacy_server::app(&layer).merge(metrics)).await;
        let client = client();
        let figure = |page: &str, name: &str| -> f64 {
            let key = format!(r#"{name}{{pool="{PREFIX}"}} "#);
            let line = page.lines().find(|line| line.starts_with(&key));
            let value = line.unwrap_or_else(|| panic!("no {key} in {page}"));
            value[key.len()..].parse().unwrap()
        };

        let response = get(&client, server.url("/orders/42"), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
        // The worker counts the request completed just after it sends the
        // answer: scrape until it is in (the hang guard bounds the wait).
        let page = loop {
            let response = get(&client, server.url("/metrics"), None).await;
            assert_eq!(response.status(), StatusCode::OK);
            let page = text(response).await;
            let mut completed = page
                .lines()
                .filter(|line| line.starts_with("tower_affinity_completed_total{"));
            if completed.any(|line| !line.ends_with(" 0")) {
                break page;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(figure(&page, "tower_affinity_threads"), 4.0, "{page}");
        assert_eq!(
            figure(&page, "tower_affinity_admitted_total"),
            1.0,
            "{page}"
        );
        assert_eq!(figure(&page, "tower_affinity_spares"), 0.0, "{page}");

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// Without the `metrics` feature (the quick start's command), `/metrics`
/// answers `404` with the command that turns it on.
#[cfg(not(feature = "metrics"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_route_says_how_to_turn_it_on() {
    bounded(async {
        seeded().await;
        let layer = layer();
        let metrics = legacy_server::metrics_route(&layer).unwrap();
        let server = Server::start_router(legacy_server::app(&layer).merge(metrics)).await;
        let client = client();

        let response = get(&client, server.url("/metrics"), None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(text(response).await.contains("--features metrics"));

        drop(client);
        server.shutdown().await;
    })
    .await;
}
