//! A legacy-style app on axum: plain blocking handlers and SQLite, each
//! worker thread with its own connection, behind `ThreadAffinityLayer`.
//!
//! ```text
//! PORT=3000 cargo run --release --example legacy_server
//! curl -s localhost:3000/orders/42
//! curl -s localhost:3000/export.csv | wc -l
//! curl -s -H 'x-session: alice' localhost:3000/session
//! curl -s -X POST --data 'hello' 'localhost:3000/notes?author=alice'
//! # the pool's figures in Prometheus text, with `--features metrics`:
//! curl -s localhost:3000/metrics
//! ```
//!
//! Settings come from the environment, so that several processes can run
//! side by side behind a load balancer (see `deploy/`):
//!
//! | variable          | default                                  | what |
//! |-------------------|------------------------------------------|------|
//! | `PORT`            | `3000`                                   | port on 127.0.0.1; `0` picks a free one (printed) |
//! | `DATABASE_PATH`   | `$TMPDIR/tower-affinity-example.sqlite3` | the SQLite file, seeded on first start |
//! | `INSTANCE`        | `pid-{process id}`                       | this process's name in answers (`x-instance`) |
//! | `SHUTDOWN_GRACE`  | `10`                                     | seconds a stop waits for responses still streaming |
//!
//! SIGTERM or Ctrl-C stops the server gracefully: it stops accepting,
//! finishes the requests it has, and cuts downloads still running after
//! `SHUTDOWN_GRACE` (see [`serve`] and [`draining`]).
//!
//! The handlers are ordinary synchronous functions, `fn(&Worker, Request) ->
//! Result<Response, BoxError>`: no `async`, no `spawn_blocking`, and `?` on
//! rusqlite's errors (`blocking::try_service_fn` answers an `Err` with a
//! `500` whose body does not include the error). Each runs on one of the
//! layer's worker threads, where blocking is fine, with that thread's
//! `Worker`: its own SQLite connection and session table, built on the
//! thread by `ThreadAffinityLayer::service_with` and never shared. Requests
//! carrying an `x-session` header always go to the same worker, so a
//! session's state stays where it was made. Every write (`POST /notes`)
//! goes to one worker by a constant key, so SQLite has one writer and never
//! answers "database is locked", while reads spread over all the workers
//! (see [`notes`]). `/export.csv` streams the whole table without loading
//! it: the worker reads the next page of rows only when the client has taken
//! the previous ones, and serves other requests in between.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use tower_affinity::blocking::{try_service_fn, IterBody};
use tower_affinity::error::ResponseBody;
use tower_affinity::{BoxError, ThreadAffinity, ThreadAffinityLayer, WorkerId};

#[path = "legacy_server/notes.rs"]
pub mod notes;

/// How many orders the demo database holds.
const ROWS: i64 = 200_000;

/// Rows per chunk of `/export.csv`: one page is one query and one frame
/// (about 45 KB), small enough that a stalled client holds little memory.
const PAGE: i64 = 1000;

/// The body every handler returns. It need not be `Send` (the layer polls it
/// on the worker that made it), so `/export.csv` streams from an
/// `Rc<Connection>`.
type AppBody = Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>;

/// What a handler returns: `?` works on any error, and an `Err` becomes a
/// `500` (see [`blocking_app`]).
type Handled = Result<Response<AppBody>, BoxError>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let db = db_path();
    seed(&db)?;

    let layer = layer();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3000,
    };
    let grace = match std::env::var("SHUTDOWN_GRACE") {
        Ok(seconds) => Duration::try_from_secs_f64(seconds.parse()?)?,
        Err(_) => Duration::from_secs(10),
    };
    // Before the layer serves its first request (see `metrics_route`).
    let metrics = metrics_route(&layer)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!(
        "legacy_server {} listening on http://{addr} (database {})",
        instance(),
        db.display()
    );
    println!("try:");
    println!("  curl -s http://{addr}/");
    println!("  curl -s http://{addr}/orders/42");
    println!("  curl -si http://{addr}/orders/999999999");
    println!("  curl -s http://{addr}/stats");
    println!("  curl -s http://{addr}/export.csv | head");
    println!("  curl -s http://{addr}/export.csv | wc -l");
    println!("  curl -s -H 'x-session: alice' http://{addr}/session");
    println!("  curl -s -X POST --data 'hello' 'http://{addr}/notes?author=alice'");
    println!("  curl -s 'http://{addr}/notes?author=alice'");
    println!("  curl -s http://{addr}/metrics");

    let router = app(&layer).merge(metrics);
    serve(listener, router, &layer, grace, stop_signal()).await?;
    // The layer's drain began with the stop; wait (a little) for its
    // threads to end, so that each drops its SQLite connection.
    let _ = tokio::time::timeout(LINGER, layer.shutdown()).await;
    println!("legacy_server {} stopped", instance());
    Ok(())
}

/// The layer: SQLite reads can wait on the disk, so a few more threads
/// than cores. The layer's threads are the only ones that touch the
/// database after seeding; each opens its own read-only connection, and
/// the one that every write goes to opens the writable one. A session's
/// requests all go to one worker, where its state lives.
pub fn layer() -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(4)
        .thread_name("sqlite-worker")
        .affinity_key(notes::key)
        .build()
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// `GET /metrics`: the pool's figures (threads, spares, blocked workers,
/// queue waits, ...; see `tower_affinity::metrics`) in Prometheus text.
///
/// Installs the global recorder, so call it once, before the layer serves
/// (a worker takes its queue-wait histogram when it first serves). Each
/// scrape publishes the pool's figures first: a few atomic reads per
/// worker, on the runtime, and nothing between scrapes.
#[cfg(feature = "metrics")]
pub fn metrics_route(layer: &ThreadAffinityLayer) -> Result<Router, Box<dyn Error>> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let layer = layer.clone();
    let scrape = move || async move {
        layer.publish_metrics();
        prometheus.run_upkeep();
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus.render(),
        )
    };
    Ok(Router::new().route("/metrics", axum::routing::get(scrape)))
}

/// Without the `metrics` feature (the quick start's command), `/metrics`
/// says how to turn it on.
#[cfg(not(feature = "metrics"))]
pub fn metrics_route(_: &ThreadAffinityLayer) -> Result<Router, Box<dyn Error>> {
    let hint = || async {
        (
            StatusCode::NOT_FOUND,
            "built without metrics: cargo run --release --example legacy_server --features metrics\n",
        )
    };
    Ok(Router::new().route("/metrics", axum::routing::get(hint)))
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// How long, past the grace period, a stop waits for connections that are
/// still open.
const LINGER: Duration = Duration::from_secs(1);

/// Serves `router` until `stop` resolves, then stops gracefully: no new
/// connections, requests in flight finish, responses still streaming after
/// `grace` are cut (see [`draining`]). Returns when every connection has
/// closed, or `grace` + 1 s after `stop` at the latest.
///
/// The second bound is for a response the layer has finished but the
/// client has not read: its rest sits in socket buffers (megabytes on a
/// fast network), out of the layer's reach, and axum would wait for that
/// client for ever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    layer: &ThreadAffinityLayer,
    grace: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let signal = draining(layer, grace, async move {
        stop.await;
        let _ = stopping.send(());
    });
    let serving = axum::serve(listener, router).with_graceful_shutdown(signal);
    let overdue = async move {
        if stopped.await.is_err() {
            // `serve` ended without a stop: the other branch has won.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace + LINGER).await;
    };
    tokio::select! {
        served = serving => served,
        () = overdue => {
            println!("legacy_server {}: closing the connections still open", instance());
            Ok(())
        }
    }
}

/// The future to give `axum::serve(..).with_graceful_shutdown(..)`: resolves
/// when `stop` does, having started the layer's own shutdown.
///
/// axum's graceful shutdown stops accepting, then waits for every open
/// connection, and a connection is open as long as its response streams:
/// a client that downloads slowly (or stopped reading) would hold the
/// process forever. Only the layer can end those streams, so its shutdown
/// must start here, beside axum's, not after `serve` returns (it never
/// would). `shutdown_timeout` serves what was admitted, answers `503` to
/// any request that reaches it later, and after `grace` ends the streams
/// still running with a body error, which closes their connections and
/// lets `serve` return.
///
/// It runs in its own task: the signal future must resolve at once, or
/// axum would keep accepting connections during the drain.
pub fn draining(
    layer: &ThreadAffinityLayer,
    grace: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let layer = layer.clone();
    async move {
        stop.await;
        println!("legacy_server {} draining (grace {grace:?})", instance());
        tokio::spawn(async move { layer.shutdown_timeout(grace).await });
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `kill`,
/// systemd and Kubernetes send to stop a process).
pub async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// The router: one blocking handler per route, each run by the layer.
///
/// `route_service` rather than `route`: these are not axum handlers but
/// services, and the layer is what makes them callable from async code.
/// Each route is a clone of one `ThreadAffinity`, and clones share the
/// workers' instances: every route on a worker uses that worker's one
/// `Worker`, built there on first use.
pub fn app(layer: &ThreadAffinityLayer) -> Router {
    let svc = blocking_app(layer);
    Router::new()
        .route_service("/", svc.clone())
        .route_service("/orders/{id}", svc.clone())
        .route_service("/stats", svc.clone())
        .route_service("/export.csv", svc.clone())
        .route_service("/notes", svc.clone())
        .route_service("/session", svc)
}

/// What each worker thread owns. Built on that thread, never moved off it:
/// `Rc` and `RefCell` are fine here.
struct Worker {
    id: WorkerId,
    db: Rc<Connection>,
    /// Visits per session: only ever correct because sessions are sticky.
    sessions: RefCell<HashMap<String, u64>>,
    /// The writable connection, on the one worker that writes.
    writer: notes::Writer,
}

/// The blocking application: a factory that builds a `Worker` on each
/// worker thread, and a synchronous router over the handlers.
///
/// `try_service_fn` answers a handler's `Err` with a `500` and a fixed
/// body: the error's text (SQL, file paths) never reaches the client. It is
/// printed here (with the `tracing` feature the layer logs it too).
fn blocking_app(
    layer: &ThreadAffinityLayer,
) -> ThreadAffinity<
    impl tower::Service<
        Req,
        Response = Response<ResponseBody<AppBody>>,
        Error = std::convert::Infallible,
    >,
> {
    layer.service_with(|id: WorkerId| {
        let db = Connection::open_with_flags(
            db_path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("open the seeded database");
        let worker = Worker {
            id,
            db: Rc::new(db),
            sessions: RefCell::default(),
            writer: notes::Writer::default(),
        };
        try_service_fn(move |req: Req| {
            if let Some(refused) = only_get(&req) {
                return Ok(refused);
            }
            let path = req.uri().path();
            let handler = match path {
                "/" => index,
                "/stats" => stats,
                "/export.csv" => export_csv,
                "/session" => session,
                "/notes" if req.method() == Method::POST => notes::post,
                "/notes" => notes::count,
                _ if path.starts_with("/orders/") => order,
                _ => not_found,
            };
            let response = handler(&worker, req).inspect_err(|e| eprintln!("error: {e}"))?;
            Ok::<_, BoxError>(worker_header(&worker, response))
        })
    })
}

// ---------------------------------------------------------------------------
// Handlers: plain blocking code, on a worker thread
// ---------------------------------------------------------------------------

type Req = Request<axum::body::Body>;

/// `GET /`: what this server offers.
fn index(_: &Worker, _: Req) -> Handled {
    let text = "\
GET /orders/{id}   one order as JSON (404 if there is none)
GET /stats         number of orders and their total, as JSON
GET /export.csv    every order as CSV, streamed page by page
GET /session       visits of the session named by the x-session header
POST /notes?author=NAME   appends the body as NAME's next note (one writer)
GET /notes?author=NAME    how many notes NAME has (any worker)
GET /metrics       the pool's figures, Prometheus text (--features metrics)
";
    Ok(reply(StatusCode::OK, TEXT, text))
}

#[derive(Serialize)]
struct Order {
    id: i64,
    customer: String,
    amount_cents: i64,
    created_at: String,
}

fn not_found(_: &Worker, req: Req) -> Handled {
    let text = format!("no route {}\n", req.uri().path());
    Ok(reply(StatusCode::NOT_FOUND, TEXT, text))
}

/// `GET /orders/{id}`: one row as JSON.
fn order(worker: &Worker, req: Req) -> Handled {
    // `route_service` hands over the whole request, so the parameter comes
    // from the path itself.
    let id = req.uri().path().trim_start_matches("/orders/");
    let Ok(id) = id.parse::<i64>() else {
        let text = format!("not an order id: {id:?}\n");
        return Ok(reply(StatusCode::BAD_REQUEST, TEXT, text));
    };
    let found = worker
        .db
        .prepare_cached("SELECT id, customer, amount_cents, created_at FROM orders WHERE id = ?1")?
        .query_row([id], |row| {
            Ok(Order {
                id: row.get(0)?,
                customer: row.get(1)?,
                amount_cents: row.get(2)?,
                created_at: row.get(3)?,
            })
        })
        .optional()?;
    match found {
        Some(order) => json(&order),
        None => Ok(reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no order {id}\n"),
        )),
    }
}

#[derive(Serialize)]
struct Stats {
    count: i64,
    sum_amount_cents: i64,
}

/// `GET /stats`: a table scan, blocking its worker for a few milliseconds
/// (the other workers keep serving).
fn stats(worker: &Worker, _: Req) -> Handled {
    let stats = worker.db.query_row(
        "SELECT count(*), coalesce(sum(amount_cents), 0) FROM orders",
        [],
        |row| {
            Ok(Stats {
                count: row.get(0)?,
                sum_amount_cents: row.get(1)?,
            })
        },
    )?;
    json(&stats)
}

/// `GET /export.csv`: the whole table, streamed.
///
/// A rusqlite `Rows` borrows its `Statement`, which borrows the connection,
/// so it cannot live in a response body that outlives this call. Instead the
/// body is an iterator that owns a handle on this worker's connection (an
/// `Rc`: the body never leaves this thread) and a cursor, the last id sent,
/// and runs
/// one short query per page (`WHERE id > ? ORDER BY id LIMIT 1000`, an index
/// range scan on the primary key). `IterBody` calls it on this worker, only
/// when the response has room, so a slow client pauses the export instead
/// of buffering the table, and the worker serves other requests meanwhile.
///
/// Each page is its own read, so rows written during an export may or may
/// not appear in it; this demo never writes after seeding.
fn export_csv(worker: &Worker, _: Req) -> Handled {
    let db = worker.db.clone();
    let mut after = 0i64;
    let mut first = true;
    let mut done = false;
    let pages = std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut csv = String::new();
        if std::mem::take(&mut first) {
            csv.push_str("id,customer,amount_cents,created_at\n");
        }
        let last = csv_page(&db, after, &mut csv);
        match last {
            Ok(Some(last)) => after = last,
            // Nothing after `after`: the export is complete.
            Ok(None) => done = true,
            // The body fails: hyper aborts the response, so the client sees a
            // truncated transfer rather than a CSV that looks complete.
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
        (!csv.is_empty()).then(|| Ok(Bytes::from(csv)))
    });
    let mut response = Response::new(boxed(IterBody::new(pages)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    Ok(response)
}

/// `GET /session`: counts the visits of the session named by `x-session`,
/// in this worker's memory. The layer routes every request with the same
/// header to the same worker, so the count is the session's own; without
/// sticky routing it would be split over the workers.
fn session(worker: &Worker, req: Req) -> Handled {
    let Some(name) = req.headers().get("x-session").and_then(|v| v.to_str().ok()) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "send an x-session header\n",
        ));
    };
    let mut sessions = worker.sessions.borrow_mut();
    let visits = sessions.entry(name.to_owned()).or_default();
    *visits += 1;
    let text = format!(
        "session {name}: visit {visits} on {} of {}\n",
        worker.id,
        instance()
    );
    Ok(reply(StatusCode::OK, TEXT, text))
}

/// Appends the rows after `after` (up to a page) to `csv`; returns the last
/// id written, or `None` when there are no more rows.
fn csv_page(db: &Connection, after: i64, csv: &mut String) -> rusqlite::Result<Option<i64>> {
    let mut statement = db.prepare_cached(
        "SELECT id, customer, amount_cents, created_at FROM orders \
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut rows = statement.query(params![after, PAGE])?;
    let mut last = None;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let customer: String = row.get(1)?;
        let amount_cents: i64 = row.get(2)?;
        let created_at: String = row.get(3)?;
        let _ = writeln!(
            csv,
            "{id},{},{amount_cents},{}",
            csv_field(&customer),
            csv_field(&created_at)
        );
        last = Some(id);
    }
    Ok(last)
}

/// Quotes a CSV field when it needs it (RFC 4180): legacy data has commas.
fn csv_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value.into()
    }
}

// ---------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------

/// `DATABASE_PATH`, or a file in the temp directory.
pub fn db_path() -> PathBuf {
    match std::env::var_os("DATABASE_PATH") {
        Some(path) => path.into(),
        None => std::env::temp_dir().join("tower-affinity-example.sqlite3"),
    }
}

/// Creates the table and fills it, once: a database that already holds
/// `ROWS` orders is left as it is.
///
/// Safe for processes that start together on one file: each takes the
/// write lock before it counts (`BEGIN IMMEDIATE`, waiting up to a minute
/// for it), so the second finds the table the first filled.
pub fn seed(path: &Path) -> rusqlite::Result<()> {
    let mut db = Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(60))?;
    // WAL: readers never block the writer, nor it them. It stays set in
    // the file. Outside any transaction, as SQLite requires.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.execute_batch(notes::SCHEMA)?;
    // One transaction: one journal write and one fsync for all rows, rather
    // than one per row (seconds instead of minutes).
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (
             id           INTEGER PRIMARY KEY,
             customer     TEXT    NOT NULL,
             amount_cents INTEGER NOT NULL,
             created_at   TEXT    NOT NULL
         );",
    )?;
    let count: i64 = tx.query_row("SELECT count(*) FROM orders", [], |row| row.get(0))?;
    if count == ROWS {
        println!("database already seeded with {count} orders");
        return Ok(());
    }
    let started = Instant::now();
    tx.execute("DELETE FROM orders", [])?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO orders (id, customer, amount_cents, created_at)
             VALUES (?1, ?2, ?3, datetime(1704067200 + ?1 * 157, 'unixepoch'))",
        )?;
        for id in 1..=ROWS {
            let customer = format!("customer-{:05}", (id * 7919) % 10_007);
            let amount_cents = 99 + (id * 104_729) % 50_000;
            insert.execute(params![id, customer, amount_cents])?;
        }
    }
    tx.commit()?;
    println!("seeded {ROWS} orders in {:?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// Small response helpers
// ---------------------------------------------------------------------------

const TEXT: &str = "text/plain; charset=utf-8";

fn boxed<B>(body: B) -> AppBody
where
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(body.map_err(Into::into))
}

/// A one-frame response: it goes back with its head, with `Content-Length`.
fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AppBody> {
    let mut response = Response::new(boxed(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json<T: Serialize>(value: &T) -> Handled {
    let mut bytes = serde_json::to_vec(value)?;
    bytes.push(b'\n');
    Ok(reply(StatusCode::OK, "application/json", bytes))
}

/// Every route but `POST /notes` is read-only: anything else but `GET`
/// (or `HEAD`, whose body hyper drops) gets `405`.
fn only_get(req: &Req) -> Option<Response<AppBody>> {
    let write = *req.method() == Method::POST && req.uri().path() == "/notes";
    if write || matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET here\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

/// Says which process and worker thread served the request (see them with
/// `curl -i`): behind a load balancer, stickiness shows at both levels.
fn worker_header(worker: &Worker, mut response: Response<AppBody>) -> Response<AppBody> {
    if let Ok(value) = HeaderValue::from_str(worker.id.name()) {
        response.headers_mut().insert("x-worker", value);
    }
    if let Ok(value) = HeaderValue::from_str(instance()) {
        response.headers_mut().insert("x-instance", value);
    }
    response
}

/// This process's name: `INSTANCE`, or its process id.
pub fn instance() -> &'static str {
    static INSTANCE: OnceLock<String> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        std::env::var("INSTANCE").unwrap_or_else(|_| format!("pid-{}", std::process::id()))
    })
}
