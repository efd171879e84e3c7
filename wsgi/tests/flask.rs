//! A real Flask application (PyPI's Flask) under an axum route, through a
//! real server and client. Needs `pip install flask`; without it the
//! tests say so and pass, except under `CI=true`.

mod common;

use axum::Router;
use bytes::Bytes;
use common::{get, send, within};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_affinity::ThreadAffinityLayer;
use tower_affinity_wsgi::Wsgi;

async fn server() -> Option<std::net::SocketAddr> {
    if !common::require("flask", "pip install flask").await {
        return None;
    }
    let layer = ThreadAffinityLayer::builder().workers(2).build();
    let flask = Wsgi::builder()
        .python_path(common::apps())
        .import("flask_app:app");
    let app = Router::new()
        .route("/", axum::routing::get(|| async { "rust root" }))
        .nest_service("/flask", layer.service(flask));
    Some(common::serve(app).await)
}

/// Flask's routes answer under the mount point, and build URLs with it
/// (SCRIPT_NAME reaches werkzeug); the axum route beside it answers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_under_a_mount_point() {
    within(async {
        let Some(addr) = server().await else { return };
        let answer = get(addr, "/flask/", "").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "hello from flask");
        assert_eq!(answer.headers["content-length"], "16");
        assert_eq!(get(addr, "/flask/url", "").await.text(), "/flask/");
        assert_eq!(get(addr, "/", "").await.text(), "rust root");
        assert_eq!(
            get(addr, "/flask/missing", "").await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

/// Request bodies reach Flask: raw bytes and a form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies() {
    within(async {
        let Some(addr) = server().await else { return };
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let request = Request::post("/flask/echo")
            .body(Full::new(Bytes::from(data.clone())))
            .unwrap();
        assert_eq!(send(addr, request).await.body.unwrap(), data);
        let request = Request::post("/flask/form")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"name=caf%C3%A9")))
            .unwrap();
        assert_eq!(send(addr, request).await.text(), "name=café");
    })
    .await;
}

/// A streamed Flask response (`stream_with_context`) keeps its request
/// context while it is iterated on the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_response() {
    within(async {
        let Some(addr) = server().await else { return };
        let answer = get(addr, "/flask/stream?who=alice", "").await;
        assert_eq!(
            answer.text(),
            "line 0 of alice\nline 1 of alice\nline 2 of alice\n"
        );
        assert_eq!(answer.headers["transfer-encoding"], "chunked");
    })
    .await;
}

/// Flask's own error handling answers its exceptions with its 500 page,
/// and the worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_stay_with_flask() {
    within(async {
        let Some(addr) = server().await else { return };
        let answer = get(addr, "/flask/boom", "").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.text().contains("secret"));
        let thread: serde_json::Value =
            serde_json::from_str(&get(addr, "/flask/thread", "").await.text()).unwrap();
        assert!(thread["worker"].is_u64());
    })
    .await;
}
