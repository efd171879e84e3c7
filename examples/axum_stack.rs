//! `ThreadAffinityLayer` in an axum 0.8 application, every way axum offers
//! to apply a layer, beside ordinary async routes, with a tower layer
//! stacked outside.
//!
//! ```text
//! PORT=3001 cargo run --example axum_stack
//! curl -s localhost:3001/async/whoami
//! curl -s localhost:3001/legacy/whoami
//! curl -s 'localhost:3001/legacy/users/2?greeting=Hi'
//! curl -s 'localhost:3001/report?rows=5'
//! curl -s --data-binary @Cargo.toml localhost:3001/upload
//! # with `cargo run --example axum_stack --features metrics`:
//! curl -s localhost:3001/metrics
//! ```
//!
//! | route                    | how the layer is applied              | handler                         |
//! |--------------------------|---------------------------------------|---------------------------------|
//! | `/async/whoami`          | not at all: stays on the runtime      | async                           |
//! | `/legacy/*`              | `Router::layer` on a whole router     | axum handlers that block        |
//! | `/report`                | `route_service` with `layer.layer(..)`| a blocking `service_fn`         |
//! | `/upload`                | `route_layer` on one route            | an axum handler reading the body with `BodyReader` |
//! | `/metrics`               | not at all (with `--features metrics`)| the pool's figures in Prometheus text |
//!
//! Under `Router::layer`, the router's handlers are ordinary axum handlers
//! (`State`, `Path`, `Query`, `Extension` extractors and all), but each runs
//! on one of the layer's worker threads: an `async fn` that never awaits
//! and blocks on a `std::sync::Mutex` or a file read is fine there, and
//! does not hold up the runtime's threads, so `/async/*` keeps answering
//! while every worker is blocked. axum calls `Layer::layer` once per route;
//! every route still shares the one pool of threads.
//!
//! Outside everything, tower's `TimeoutLayer` (through axum's
//! `HandleErrorLayer`, which turns its error into `408`) bounds the time to
//! the response head. When it fires on a wrapped route, the client gets its
//! `408` at once; the request is cancelled on its worker at the handler's
//! next await point. A handler blocked in plain code cannot be interrupted:
//! it runs to its end, and its response is then dropped on the worker.
//! With tower-http, `tower_http::timeout::TimeoutLayer` (which answers `408`
//! itself) or `TraceLayer` stack in the same place.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::ServiceBuilder;
use tower_affinity::blocking::{self, BodyReader, IterBody, LengthLimitError};
use tower_affinity::{BoxError, ThreadAffinityLayer, WorkerId};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

/// The worker threads are named `{THREAD_PREFIX}-{index}`.
pub const THREAD_PREFIX: &str = "axum-worker";

/// The most bytes `/upload` reads.
pub const UPLOAD_LIMIT: usize = 8 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The recorder goes in before the layer serves its first request.
    #[cfg(feature = "metrics")]
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name(THREAD_PREFIX)
        .build();
    let (state, mut audit) = AppState::new();
    tokio::spawn(async move {
        while let Some(line) = audit.recv().await {
            println!("audit: {line}");
        }
    });

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3001,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("axum_stack listening on http://{addr}");
    println!("try:");
    println!("  curl -s http://{addr}/async/whoami");
    println!("  curl -s http://{addr}/legacy/whoami");
    println!("  curl -s 'http://{addr}/legacy/users/2?greeting=Hi'");
    println!("  curl -si http://{addr}/legacy/users/9");
    println!("  curl -s 'http://{addr}/report?rows=5'");
    println!("  curl -s --data-binary @Cargo.toml http://{addr}/upload");

    let app = app(&layer, state, Duration::from_secs(10));
    #[cfg(feature = "metrics")]
    let app = app.merge(metrics_route(&layer, prometheus));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    layer.shutdown().await;
    Ok(())
}

/// The application: async routes on the runtime, wrapped routes on the
/// layer's threads, and a timeout of `timeout` to the head around them all.
pub fn app(layer: &ThreadAffinityLayer, state: AppState, timeout: Duration) -> Router {
    // A whole router behind the layer: each of its routes (and its
    // fallback) runs on a worker thread.
    let legacy = Router::new()
        .route("/legacy/whoami", get(legacy_whoami))
        .route("/legacy/users/{id}", get(user))
        .with_state(state)
        .layer(layer.clone());

    // One route behind the layer, its handler an axum handler.
    let upload = Router::new()
        .route("/upload", post(upload))
        .route_layer(layer.clone());

    Router::new()
        .route("/async/whoami", get(async_whoami))
        // One route served by a blocking service, wrapped by hand.
        .route_service("/report", layer.service(blocking::service_fn(report)))
        .merge(legacy)
        .merge(upload)
        // Outside everything: `Router::layer` wraps each route, here the
        // ones already wrapped by the affinity layer too. tower-http's
        // layers see only `ThreadAffinityBody` and run on the runtime:
        // compression reads the worker's frames as they stream.
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(CompressionLayer::new())
                .layer(HandleErrorLayer::new(timed_out))
                .timeout(timeout),
        )
}

/// `GET /metrics`: the pool's figures (see `tower_affinity::metrics`) and
/// everything else the recorder holds, in Prometheus text. Publishing reads
/// a few atomics per worker, so it is done at each scrape, on the runtime.
#[cfg(feature = "metrics")]
pub fn metrics_route(
    layer: &ThreadAffinityLayer,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    let layer = layer.clone();
    Router::new().route(
        "/metrics",
        get(move || async move {
            layer.publish_metrics();
            prometheus.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                prometheus.render(),
            )
        }),
    )
}

/// What the handlers share: a blocking store and an audit log.
#[derive(Clone)]
pub struct AppState {
    /// A legacy store behind a `std::sync::Mutex`, held for each lookup:
    /// blocking, and fine on a worker thread.
    pub users: Arc<Mutex<BTreeMap<u32, String>>>,
    /// One line per lookup, written before the store is touched.
    pub audit: mpsc::UnboundedSender<String>,
}

impl AppState {
    /// A state with three users, and the receiving end of its audit log.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let users = [(1, "alice"), (2, "bob"), (3, "carol")]
            .into_iter()
            .map(|(id, name)| (id, name.to_owned()))
            .collect();
        let (audit, log) = mpsc::unbounded_channel();
        let state = Self {
            users: Arc::new(Mutex::new(users)),
            audit,
        };
        (state, log)
    }
}

/// Where a handler ran.
#[derive(Debug, Serialize, Deserialize)]
pub struct Whereabouts {
    /// The thread's name.
    pub thread: String,
    /// The worker, when the thread is one of the layer's.
    pub worker: Option<String>,
}

impl Whereabouts {
    fn here() -> Self {
        Self {
            thread: thread_name(),
            worker: WorkerId::current().map(|worker| worker.name().to_owned()),
        }
    }
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

// ---------------------------------------------------------------------------
// On the runtime
// ---------------------------------------------------------------------------

/// `GET /async/whoami`: an ordinary async handler, on a runtime thread.
async fn async_whoami() -> Json<Whereabouts> {
    tokio::task::yield_now().await;
    Json(Whereabouts::here())
}

/// Turns the timeout's error into a response.
async fn timed_out(error: BoxError) -> (StatusCode, String) {
    if error.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::REQUEST_TIMEOUT,
            "request timed out\n".to_owned(),
        )
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
    }
}

// ---------------------------------------------------------------------------
// On the worker threads
// ---------------------------------------------------------------------------

/// `GET /legacy/whoami`: an axum handler under `Router::layer`.
async fn legacy_whoami() -> Json<Whereabouts> {
    Json(Whereabouts::here())
}

/// The query string of `/legacy/users/{id}`.
#[derive(Debug, Deserialize)]
pub struct Greeting {
    /// Defaults to "Hello".
    pub greeting: Option<String>,
}

/// The answer of `/legacy/users/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserView {
    /// The id from the path.
    pub id: u32,
    /// The name from the store.
    pub name: String,
    /// The greeting from the query, and the name.
    pub message: String,
    /// The worker thread that served it, from the request's extensions.
    pub served_by: String,
}

/// `GET /legacy/users/{id}?greeting=..`: extractors and state as in any axum
/// handler, and a body of plain blocking code. `async` only because axum
/// asks for it: it never awaits, and blocks on the store's lock.
async fn user(
    State(state): State<AppState>,
    Path(id): Path<u32>,
    Query(query): Query<Greeting>,
    Extension(worker): Extension<WorkerId>,
) -> Result<Json<UserView>, (StatusCode, String)> {
    let _ = state.audit.send(format!("lookup {id} on {worker}"));
    let name = {
        // Blocks this worker (only) while someone else holds the store.
        let users = state.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.get(&id).cloned()
    };
    let Some(name) = name else {
        return Err((StatusCode::NOT_FOUND, format!("no user {id}\n")));
    };
    let greeting = query.greeting.as_deref().unwrap_or("Hello");
    Ok(Json(UserView {
        id,
        message: format!("{greeting}, {name}!"),
        name,
        served_by: worker.name().to_owned(),
    }))
}

/// What `/upload` read.
#[derive(Debug, Serialize, Deserialize)]
pub struct UploadSummary {
    /// Bytes read.
    pub bytes: u64,
    /// Newlines read.
    pub lines: u64,
    /// FNV-1a (64-bit) of the bytes, in hex.
    pub fnv: String,
    /// The thread that read them.
    pub thread: String,
}

/// `POST /upload`: an axum handler under `route_layer`, reading the request
/// body with blocking `read` calls.
async fn upload(body: Body) -> Result<Json<UploadSummary>, (StatusCode, String)> {
    let mut reader = BodyReader::new(body).limit(UPLOAD_LIMIT);
    let mut buf = vec![0; 64 * 1024];
    let (mut bytes, mut lines, mut hash) = (0u64, 0u64, FNV_OFFSET);
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                hash = fnv1a(hash, &buf[..n]);
            }
            Err(e) if e.get_ref().is_some_and(|e| e.is::<LengthLimitError>()) => {
                let message = format!("{e}: the limit is {UPLOAD_LIMIT} bytes\n");
                return Err((StatusCode::PAYLOAD_TOO_LARGE, message));
            }
            Err(e) => return Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
        }
    }
    Ok(Json(UploadSummary {
        bytes,
        lines,
        fnv: format!("{hash:016x}"),
        thread: thread_name(),
    }))
}

/// `GET /report?rows=N`: a blocking `service_fn` under `route_service`,
/// streaming a CSV report of `N` rows (default 10) in pages of 100 rows.
/// Each page is made on the worker only when the client has room for it.
fn report(
    request: Request<Body>,
) -> Response<IterBody<impl Iterator<Item = Result<Bytes, Infallible>>>> {
    let rows: u64 = request
        .uri()
        .query()
        .and_then(|query| query.strip_prefix("rows="))
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(10);
    let header = std::iter::once(String::from("row,square\n"));
    let pages = (0..rows.div_ceil(100)).map(move |page| {
        let mut csv = String::new();
        for row in page * 100 + 1..=rows.min(page * 100 + 100) {
            let _ = writeln!(csv, "{row},{}", row * row);
        }
        csv
    });
    let mut response = Response::new(IterBody::from_chunks(header.chain(pages)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(thread) = HeaderValue::from_str(&thread_name()) {
        headers.insert("x-thread", thread);
    }
    response
}

/// The FNV-1a offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64-bit) of `bytes`, continuing from `hash`.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
