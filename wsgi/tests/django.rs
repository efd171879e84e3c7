//! A real Django project (PyPI's Django; startproject's settings, SQLite)
//! under an axum route, through a real server and client. Needs
//! `pip install django`; without it the tests say so and pass, except
//! under `CI=true`.

mod common;

use axum::Router;
use bytes::Bytes;
use common::{get, python, send, within};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_affinity::ThreadAffinityLayer;
use tower_affinity_wsgi::Wsgi;

/// Two core workers, up to eight threads: a worker waiting for the GIL
/// counts as blocked, so under load the pool starts spares.
/// Its threads are named `{name}-N`, to tell its events from another
/// test's (the tests of this file share one interpreter).
async fn server(name: &str) -> Option<std::net::SocketAddr> {
    if !common::require("django", "pip install django").await {
        return None;
    }
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(8)
        .thread_name(name)
        .build();
    let django = Wsgi::builder()
        .python_path(common::apps())
        .import("djproject.wsgi:application");
    let app = Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .nest_service("/django", layer.service(django));
    Some(common::serve(app).await)
}

/// (what, connection id, thread ident, thread name) for each database
/// connection opened and closed.
type DbEvents = Vec<(String, u64, u64, String)>;

/// Django's views answer under the mount point, and `reverse` includes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_under_a_mount_point() {
    within(async {
        let Some(addr) = server("django-views").await else {
            return;
        };
        let answer = get(addr, "/django/", "").await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.text(), "hello from django");
        assert_eq!(get(addr, "/django/url", "").await.text(), "/django/");
        assert_eq!(
            get(addr, "/django/missing", "").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(addr, "/health", "").await.text(), "ok");
        let request = Request::post("/django/echo")
            .body(Full::new(Bytes::from_static(b"posted bytes")))
            .unwrap();
        assert_eq!(send(addr, request).await.text(), "posted bytes");
        assert_eq!(
            get(addr, "/django/stream", "").await.text(),
            "row 1\nrow 2\nrow 3\n"
        );
    })
    .await;
}

/// Each database connection Django opens on a worker (one per thread,
/// per request with startproject's CONN_MAX_AGE of 0) is closed by its
/// `request_finished` signal, which the response's close() sends, on the
/// thread that opened it: from 40 requests at once, spare workers
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_on_their_thread() {
    within(async {
        let Some(addr) = server("django-db").await else {
            return;
        };
        let requests = (0..40).map(|i| {
            let path = if i % 4 == 0 {
                "/django/stream"
            } else {
                "/django/hits"
            };
            tokio::spawn(async move { get(addr, path, "").await })
        });
        for answer in futures_util::future::join_all(requests).await {
            let answer = answer.unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        }
        let events: DbEvents = python("djproject.probe", "settled", ()).await;
        let opened: Vec<_> = events
            .iter()
            .filter(|e| e.0 == "open" && e.3.starts_with("django-db"))
            .collect();
        assert!(opened.len() >= 40, "{events:?}");
        for open in &opened {
            let closes: Vec<_> = events
                .iter()
                .filter(|e| e.0 == "close" && e.1 == open.1)
                .collect();
            assert_eq!(
                closes.len(),
                1,
                "connection {} closed {} times",
                open.1,
                closes.len()
            );
            assert_eq!(closes[0].2, open.2, "closed on another thread: {events:?}");
        }
        let threads: std::collections::HashSet<_> = opened.iter().map(|e| e.2).collect();
        assert!(threads.len() <= 8, "{threads:?}");
    })
    .await;
}
