//! The synchronous `postgres` client behind `ThreadAffinityLayer`: one
//! long-lived connection per worker thread, opened on that thread by a
//! `service_with` factory and used only there.
//!
//! ```text
//! DATABASE_URL='host=127.0.0.1 user=postgres dbname=postgres' \
//!     cargo run --example postgres_server
//! curl -s localhost:3000/items/1
//! curl -s localhost:3000/whoami
//! ```
//!
//! | variable       | default    | what |
//! |----------------|------------|------|
//! | `DATABASE_URL` | (required) | a connection string, `key=value` pairs or a `postgresql://` URL |
//! | `PORT`         | `3000`     | port on 127.0.0.1; `0` picks a free one (printed) |
//!
//! `postgres::Client` is tokio-postgres on a current-thread runtime of its
//! own: every query blocks on that runtime. Such code must not run on a
//! runtime thread (tokio panics, "Cannot start a runtime from within a
//! runtime"), which is why it usually sits behind `spawn_blocking`. On a
//! worker it runs as it does there, and the connection stays on its thread
//! for its whole life, with its prepared statement: one long-lived
//! connection per thread, which is how TechEmpower's fastest entries hold
//! theirs, and no pool to check one out from. Size `max_workers` to the
//! connections you grant this process: each worker, spares included, opens
//! one.
//!
//! On Ctrl-C the server stops accepting, and the layer drains, so that each
//! worker closes its connection on its own thread.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{Request, Response, StatusCode};
use postgres::{Client, NoTls, Statement};
use tower_affinity::blocking::try_service_fn;
use tower_affinity::{BoxError, ThreadAffinityLayer, WorkerId};

/// Creates the demo table and its rows, if they are not there yet.
pub fn seed(url: &str) -> Result<(), postgres::Error> {
    let mut client = Client::connect(url, NoTls)?;
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS items (id integer PRIMARY KEY, name text NOT NULL);
         INSERT INTO items (id, name) VALUES (1, 'apple'), (2, 'pear'), (3, 'plum')
             ON CONFLICT (id) DO NOTHING;",
    )
}

/// One worker's connection, with its statement prepared once.
struct Db {
    client: Client,
    item: Statement,
    /// The server process behind this connection, to show that it is one
    /// per worker.
    backend: i32,
}

impl Db {
    fn connect(url: &str) -> Result<Self, postgres::Error> {
        let mut client = Client::connect(url, NoTls)?;
        let item = client.prepare("SELECT name FROM items WHERE id = $1")?;
        let backend = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
        Ok(Self {
            client,
            item,
            backend,
        })
    }
}

/// The routes, every one served by one service whose instance on each
/// worker holds that worker's connection.
pub fn app(layer: &ThreadAffinityLayer, url: &str) -> Router {
    let url: Arc<str> = url.into();
    let db = layer.service_with(move |worker: WorkerId| {
        let url = url.clone();
        // Opened here, on the worker, on its first request; reopened on
        // the next request after a failure (the server restarted, say).
        let mut db: Option<Db> = None;
        try_service_fn(move |request: Request<Body>| {
            let conn = match db.take() {
                Some(conn) if !conn.client.is_closed() => db.insert(conn),
                _ => db.insert(Db::connect(&url)?),
            };
            handle(conn, &worker, &request)
        })
    });
    // One wrapped service behind both routes: one instance, and so one
    // connection, per worker.
    Router::new()
        .route_service("/items/{id}", db.clone())
        .route_service("/whoami", db)
}

/// Answers one request with this worker's connection.
fn handle(
    db: &mut Db,
    worker: &WorkerId,
    request: &Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let path = request.uri().path();
    let text = match path.strip_prefix("/items/") {
        Some(id) => {
            let Ok(id) = id.parse::<i32>() else {
                return Ok(plain(StatusCode::BAD_REQUEST, "the id is a number\n"));
            };
            match db.client.query_opt(&db.item, &[&id])? {
                Some(row) => format!("{}\n", row.get::<_, String>(0)),
                None => return Ok(plain(StatusCode::NOT_FOUND, "no such item\n")),
            }
        }
        None => format!("worker {worker}, backend pid {}\n", db.backend),
    };
    let thread = std::thread::current();
    let mut response = plain(StatusCode::OK, text);
    response
        .headers_mut()
        .insert("x-worker", thread.name().unwrap_or_default().parse()?);
    response
        .headers_mut()
        .insert("x-backend-pid", db.backend.into());
    Ok(response)
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Body::from(text.into()));
    *response.status_mut() = status;
    response
}

fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        "set DATABASE_URL to the database to use, \
         e.g. DATABASE_URL='host=127.0.0.1 user=postgres dbname=postgres'"
    })?;
    // Before any runtime exists: the sync client brings its own.
    seed(&url)?;
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3000,
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let layer = ThreadAffinityLayer::builder()
            .workers(4)
            .max_workers(8)
            .thread_name("pg-worker")
            .build();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        println!("postgres_server listening on http://{addr}");
        println!("try:");
        println!("  curl -s http://{addr}/items/1");
        println!("  curl -s http://{addr}/whoami");
        axum::serve(listener, app(&layer, &url))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        // Each worker drops its service, and so its connection, there.
        layer.shutdown_timeout(Duration::from_secs(5)).await;
        Ok::<_, Box<dyn Error>>(())
    })
}
