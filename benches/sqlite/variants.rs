//! The five servers of `benches/sqlite.rs`: one axum app, three routes,
//! each variant with at most 16 SQLite connections.

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use rusqlite::Connection;
use tower_affinity::{blocking, ThreadAffinityLayer, WorkerId};

/// Connections per variant, and the layer's `max_workers`.
pub const CONNECTIONS: usize = 16;

/// One request's work.
#[derive(Clone, Copy, Debug)]
pub enum Query {
    /// A row by primary key.
    Point(i64),
    /// count and sum over 2,000 consecutive rows.
    Aggregate(i64),
    /// A row by primary key, then 2 ms off the CPU (a remote call, say).
    Slow(i64),
}

pub fn open(path: &Path) -> Connection {
    let db = Connection::open(path).expect("open the bench database");
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// The answer to `query`, on `db`: the same code in every variant.
pub fn answer(db: &Connection, query: Query) -> String {
    let row = |id: i64| -> String {
        let mut statement = db
            .prepare_cached("SELECT name, value FROM items WHERE id = ?1")
            .unwrap();
        statement
            .query_row([id], |row| {
                Ok(format!(
                    "{} {}",
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?
                ))
            })
            .unwrap_or_else(|_| String::from("none"))
    };
    match query {
        Query::Point(id) => row(id),
        Query::Aggregate(start) => {
            let mut statement = db
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(value), 0) FROM items WHERE id BETWEEN ?1 AND ?1 + 1999",
                )
                .unwrap();
            statement
                .query_row([start], |row| {
                    Ok(format!(
                        "{} {}",
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?
                    ))
                })
                .unwrap()
        }
        Query::Slow(id) => {
            let text = row(id);
            std::thread::sleep(Duration::from_millis(2));
            text
        }
    }
}

/// `/point/{id}`, `/aggregate/{start}`, `/slow/{id}`, each answered by `run`.
fn routes<F, Fut>(run: F) -> Router
where
    F: Fn(Query) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let (point, aggregate, slow) = (run.clone(), run.clone(), run);
    Router::new()
        .route(
            "/point/{id}",
            get(move |UrlPath(id): UrlPath<i64>| point(Query::Point(id))),
        )
        .route(
            "/aggregate/{start}",
            get(move |UrlPath(start): UrlPath<i64>| aggregate(Query::Aggregate(start))),
        )
        .route(
            "/slow/{id}",
            get(move |UrlPath(id): UrlPath<i64>| slow(Query::Slow(id))),
        )
}

/// The same paths, parsed by hand, for the blocking service variant.
fn parse(path: &str) -> Option<Query> {
    let (route, arg) = path.trim_start_matches('/').split_once('/')?;
    let arg = arg.parse().ok()?;
    match route {
        "point" => Some(Query::Point(arg)),
        "aggregate" => Some(Query::Aggregate(arg)),
        "slow" => Some(Query::Slow(arg)),
        _ => None,
    }
}

/// The variants, by name.
pub const VARIANTS: [&str; 5] = ["layer", "r2d2", "deadpool", "runtime", "layer_local"];

/// The app of variant `name` over the database at `path`.
pub fn app(name: &str, path: &Path) -> Router {
    let path = path.to_owned();
    match name {
        "layer" => layer(path),
        "r2d2" => r2d2(&path),
        "deadpool" => deadpool(path),
        "runtime" => runtime(path),
        "layer_local" => layer_local(path),
        other => panic!("no variant {other}"),
    }
}

fn pool_layer() -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .max_workers(CONNECTIONS)
        .thread_name("affinity")
        .build()
}

/// The layer around a blocking service, one connection per worker built
/// by `service_with`.
fn layer(path: PathBuf) -> Router {
    let svc = pool_layer().service_with(move |_: WorkerId| {
        let db = open(&path);
        blocking::service_fn(move |req: Request<Body>| match parse(req.uri().path()) {
            Some(query) => Response::new(answer(&db, query)),
            None => {
                let mut response = Response::new(String::from("no route\n"));
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        })
    });
    Router::new().fallback_service(svc)
}

/// Ordinary axum handlers under `router.layer(layer)`, one connection per
/// worker in a `WorkerLocal`.
fn layer_local(path: PathBuf) -> Router {
    let layer = pool_layer();
    let db = layer.worker_local(move |_: &WorkerId| open(&path));
    routes(move |query| {
        let db = db.clone();
        async move { db.with(|db| answer(db, query)).expect("on a worker") }
    })
    .layer(layer)
}

/// `spawn_blocking` per request, with an r2d2 pool of 16.
fn r2d2(path: &Path) -> Router {
    let manager = r2d2_sqlite::SqliteConnectionManager::file(path)
        .with_init(|db| db.busy_timeout(Duration::from_secs(5)));
    let pool = r2d2::Pool::builder()
        .max_size(CONNECTIONS as u32)
        .build(manager)
        .unwrap();
    routes(move |query| {
        let pool = pool.clone();
        async move {
            // Cancelled only when the bench stops the server.
            tokio::task::spawn_blocking(move || answer(&pool.get().unwrap(), query))
                .await
                .unwrap_or_default()
        }
    })
}

/// deadpool-sqlite's `interact`, a pool of 16.
fn deadpool(path: PathBuf) -> Router {
    let pool = deadpool_sqlite::Config::new(path)
        .builder(deadpool_sqlite::Runtime::Tokio1)
        .unwrap()
        .max_size(CONNECTIONS)
        .build()
        .unwrap();
    routes(move |query| {
        let pool = pool.clone();
        async move {
            let db = pool.get().await.unwrap();
            // Fails only when the bench stops the server.
            db.interact(move |db| answer(db, query))
                .await
                .unwrap_or_default()
        }
    })
}

/// The query on the runtime thread itself, one connection per runtime
/// thread: the ceiling for quick queries, and what blocking costs.
fn runtime(path: PathBuf) -> Router {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    thread_local! {
        static DB: RefCell<Option<Connection>> = const { RefCell::new(None) };
    }
    let _ = PATH.set(path);
    routes(|query| async move {
        DB.with(|db| {
            let mut db = db.borrow_mut();
            let db = db.get_or_insert_with(|| open(PATH.get().unwrap()));
            answer(db, query)
        })
    })
}
