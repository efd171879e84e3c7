//! The one-SQLite-writer recipe of the legacy example (`POST /notes` by a
//! constant affinity key), under many concurrent writers over HTTP, beside
//! a naive pool of many connections doing the same writes.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusqlite::{Connection, ErrorCode};
use tokio::sync::oneshot;

#[allow(dead_code)]
#[path = "../examples/legacy_server.rs"]
mod legacy_server;

use legacy_server::notes;

/// Hang guard: seeding 200 000 rows in a debug build takes a while.
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// Writers at once, and notes each writes one after another.
const WRITERS: usize = 32;
const NOTES: usize = 16;

/// Connections in the naive pool: every one of them writes.
const NAIVE_CONNECTIONS: usize = 16;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `axum::serve` on an ephemeral loopback port until `stop` is sent.
async fn serve(router: axum::Router) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
            .unwrap();
    });
    (addr, stop)
}

/// `WRITERS` writers at once, each posting `NOTES` notes to `addr` in
/// turn as author `{prefix}-{writer}`; returns each answer's status and
/// `x-worker` header (if any), in no particular order.
async fn write_all(addr: SocketAddr, prefix: &str) -> Vec<(StatusCode, Option<String>)> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let writers = (0..WRITERS).map(|writer| {
        let client = client.clone();
        let url = format!("http://{addr}/notes?author={prefix}-{writer}");
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for note in 1..=NOTES {
                let request = Request::post(&url)
                    .body(Full::new(Bytes::from(format!("note {note}"))))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                let worker = response.headers().get("x-worker");
                let worker = worker.map(|name| name.to_str().unwrap().to_owned());
                let status = response.status();
                response.into_body().collect().await.unwrap();
                answers.push((status, worker));
            }
            answers
        })
    });
    let mut answers = Vec::new();
    for writer in writers.collect::<Vec<_>>() {
        answers.extend(writer.await.unwrap());
    }
    answers
}

/// How many of `prefix`'s writers have exactly the notes `note 1` to
/// `note NOTES` as `seq` 1 to `NOTES`, read straight from the file.
fn complete_authors(db: &Connection, prefix: &str) -> usize {
    let mut query = db
        .prepare("SELECT seq, text FROM notes WHERE author = ?1 ORDER BY seq")
        .unwrap();
    (0..WRITERS)
        .filter(|writer| {
            let rows: Vec<(i64, String)> = query
                .query_map([format!("{prefix}-{writer}")], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let expected: Vec<(i64, String)> = (1..=NOTES)
                .map(|note| (note as i64, format!("note {note}")))
                .collect();
            rows == expected
        })
        .count()
}

/// A naive pool: `NAIVE_CONNECTIONS` writable connections, each request
/// takes one under `spawn_blocking`; busy errors answer 503 and are
/// counted.
#[derive(Clone)]
struct NaivePool {
    connections: Arc<Mutex<Vec<Connection>>>,
    // One permit per connection: a request holds one while it holds a
    // connection, as r2d2's `get` waits for one.
    permits: Arc<tokio::sync::Semaphore>,
    busy: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize)]
struct Author {
    author: String,
}

async fn naive_post(
    State(pool): State<NaivePool>,
    Query(q): Query<Author>,
    text: String,
) -> StatusCode {
    let permit = pool.permits.clone().acquire_owned().await.unwrap();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut db = pool
            .connections
            .lock()
            .unwrap()
            .pop()
            .expect("a permit per connection");
        let appended = notes::append(&mut db, &q.author, &text);
        pool.connections.lock().unwrap().push(db);
        match appended {
            Ok(_) => StatusCode::CREATED,
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::DatabaseBusy => {
                pool.busy.fetch_add(1, Ordering::Relaxed);
                StatusCode::SERVICE_UNAVAILABLE
            }
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    })
    .await
    .unwrap()
}

/// Many concurrent writers over HTTP through the example's one writer:
/// every write answers 201 (none failed with `SQLITE_BUSY`), all of them
/// ran on one worker thread, and every note is in the file, in each
/// writer's order. Beside it, the same writes through a naive pool of 16
/// connections, whose busy errors are counted and shown, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_never_gets_busy() {
    common::bounded(TIME_LIMIT, async {
        let path = legacy_server::db_path();
        let seeding = path.clone();
        tokio::task::spawn_blocking(move || legacy_server::seed(&seeding).unwrap())
            .await
            .unwrap();
        // Authors of this run only: the file is shared with other runs.
        let run = format!("run{}", std::process::id());

        let layer = legacy_server::layer();
        let (addr, stop) = serve(legacy_server::app(&layer)).await;
        let answers = write_all(addr, &format!("{run}-layer")).await;
        let _ = stop.send(());
        let failed: Vec<_> = answers
            .iter()
            .filter(|(s, _)| *s != StatusCode::CREATED)
            .collect();
        assert!(failed.is_empty(), "writes failed: {failed:?}");
        let workers: HashSet<_> = answers.iter().map(|(_, w)| w.clone().unwrap()).collect();
        assert_eq!(workers.len(), 1, "writes ran on {workers:?}");

        let pool = NaivePool {
            connections: Arc::new(Mutex::new(
                (0..NAIVE_CONNECTIONS)
                    .map(|_| notes::open_writer().unwrap())
                    .collect(),
            )),
            permits: Arc::new(tokio::sync::Semaphore::new(NAIVE_CONNECTIONS)),
            busy: Arc::default(),
        };
        let naive = axum::Router::new()
            .route("/notes", post(naive_post))
            .with_state(pool.clone());
        let (addr, stop) = serve(naive).await;
        let naive_answers = write_all(addr, &format!("{run}-naive")).await;
        let _ = stop.send(());

        let db = Connection::open(&path).unwrap();
        let layer_complete = complete_authors(&db, &format!("{run}-layer"));
        let naive_complete = complete_authors(&db, &format!("{run}-naive"));
        let naive_ok = naive_answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CREATED)
            .count();
        println!(
            "one writer: {} writes, 0 busy, {layer_complete}/{WRITERS} writers complete; \
             naive pool of {NAIVE_CONNECTIONS}: {naive_ok} written, {} busy, \
             {naive_complete}/{WRITERS} writers complete",
            answers.len(),
            pool.busy.load(Ordering::Relaxed),
        );
        assert_eq!(layer_complete, WRITERS, "notes missing or out of order");
        db.execute(
            "DELETE FROM notes WHERE author LIKE ?1",
            [format!("{run}-%")],
        )
        .unwrap();
    })
    .await;
}
