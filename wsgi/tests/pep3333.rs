//! PEP 3333 through a real axum server and a real hyper client, every
//! response checked by Python's own `wsgiref.validate`.

mod common;

use axum::Router;
use bytes::Bytes;
use common::{get, python, send, within, Answer};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_affinity::ThreadAffinityLayer;
use tower_affinity_wsgi::Wsgi;

/// The test application, nested at `/app` beside an axum route, and as
/// the fallback.
async fn server() -> std::net::SocketAddr {
    let layer = ThreadAffinityLayer::builder().workers(2).build();
    let wsgi = || {
        layer.service(
            Wsgi::builder()
                .python_path(common::apps())
                .import("pep3333_app:application"),
        )
    };
    let app = Router::new()
        .route("/rust", axum::routing::get(|| async { "rust" }))
        .nest_service("/app", wsgi())
        .fallback_service(wsgi());
    common::serve(app).await
}

/// `(what, thread ident, thread name)` of a tagged request.
type Events = Vec<(String, u64, String)>;

async fn events(tag: &'static str) -> Events {
    python("pep3333_app", "events", (tag,)).await
}

async fn wait_for(tag: &'static str, what: &'static str) -> Events {
    python("pep3333_app", "wait_for", (tag, what)).await
}

/// No complaint from the validator, even from a destructor.
async fn assert_valid() {
    assert_eq!(common::problems().await, Vec::<String>::new());
}

fn assert_one_thread(events: &Events) {
    let (_, ident, name) = &events[0];
    assert!(name.starts_with("tower-affinity"), "ran on {name}");
    for (what, other, _) in events {
        assert_eq!(other, ident, "{what} ran on another thread: {events:?}");
    }
}

fn count(events: &Events, what: &str) -> usize {
    events.iter().filter(|(w, _, _)| w == what).count()
}

/// A response whose first chunk is all its Content-Length promised is
/// answered whole, through the validator's wrapper too; an axum route
/// beside it still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/hello", "hello").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "hello");
        assert_eq!(answer.headers["content-length"], "5");
        assert_eq!(get(addr, "/rust", "").await.text(), "rust");
        assert_valid().await;
    })
    .await;
}

/// A list of bytes without Content-Length is one frame with its head: the
/// body's exact size reaches hyper, which sends a Content-Length (a
/// streamed body would be chunked). The validator's wrapper is not a
/// list, so this is the unwrapped application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_one_frame() {
    within(async {
        let layer = ThreadAffinityLayer::builder().workers(1).build();
        let raw = Wsgi::builder()
            .python_path(common::apps())
            .import("pep3333_app:raw");
        let addr = common::serve(Router::new().fallback_service(layer.service(raw))).await;
        let answer = get(addr, "/list", "list").await;
        assert_eq!(answer.text(), "one list");
        assert_eq!(answer.headers["content-length"], "8");
        assert!(answer.headers.get("transfer-encoding").is_none());
        // Through the validator, the same list streams (it is chunked).
        let answer = get(server().await, "/list", "list").await;
        assert_eq!(answer.text(), "one list");
        assert_eq!(answer.headers["transfer-encoding"], "chunked");
    })
    .await;
}

fn environ(answer: &Answer) -> serde_json::Value {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    serde_json::from_slice(answer.body.as_ref().unwrap()).unwrap()
}

/// The CGI variables, with SCRIPT_NAME the mount point under
/// `nest_service` and PATH_INFO decoded to latin-1 native strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environ_variables() {
    within(async {
        let addr = server().await;
        let env = environ(&get(addr, "/app/environ?a=1&b=%20", "env").await);
        assert_eq!(env["SCRIPT_NAME"], "/app");
        assert_eq!(env["PATH_INFO"], "/environ");
        assert_eq!(env["QUERY_STRING"], "a=1&b=%20");
        assert_eq!(env["REQUEST_METHOD"], "GET");
        assert_eq!(env["SERVER_NAME"], "127.0.0.1");
        assert_eq!(env["SERVER_PORT"], addr.port().to_string());
        assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
        assert_eq!(env["HTTP_X_TAG"], "env");
        assert_eq!(env["wsgi.url_scheme"], "http");
        assert_eq!(env["wsgi.multithread"], true);
        assert_eq!(env["wsgi.multiprocess"], false);
        assert_eq!(env["wsgi.run_once"], false);
        assert_eq!(env["wsgi.version"], serde_json::json!([1, 0]));
        assert_eq!(env["wsgi.input"], "Input");
        assert!(env["tower_affinity.worker"].is_u64());

        // UTF-8 bytes on the wire, one code point per byte in PATH_INFO.
        let env = environ(&get(addr, "/app/caf%C3%A9", "env").await);
        assert_eq!(env["PATH_INFO"], "/caf\u{c3}\u{a9}");
        // The application's root, without its slash.
        let env = environ(&get(addr, "/app", "env").await);
        assert_eq!(
            (&env["SCRIPT_NAME"], &env["PATH_INFO"]),
            (&"/app".into(), &"".into())
        );
        // The fallback is mounted at the root.
        let env = environ(&get(addr, "/environ", "env").await);
        assert_eq!(
            (&env["SCRIPT_NAME"], &env["PATH_INFO"]),
            (&"".into(), &"/environ".into())
        );
        assert_valid().await;
    })
    .await;
}

fn post(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// `wsgi.input`: read(n), read() to the end, readline, readline(n),
/// readlines(hint) and iteration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_reads() {
    within(async {
        let addr = server().await;
        let answer = send(addr, post("/echo", "hello world, a body")).await;
        assert_eq!(answer.text(), "19:hello| world, a body");
        let answer = send(addr, post("/lines", "first\nabcdef\nthird\nfourth\nfifth")).await;
        let lines: serde_json::Value = serde_json::from_str(&answer.text()).unwrap();
        assert_eq!(
            lines,
            serde_json::json!([
                "first\n",
                "abc",
                ["def\n"],
                ["third\n", "fourth\n", "fifth"]
            ])
        );
        assert_valid().await;
    })
    .await;
}

/// `wsgi.input` streams: the application reads the start of the body
/// while the client has not yet sent the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_streams() {
    within(async {
        let addr = server().await;
        let (tx, response) = common::upload(addr, "/stream-in", "stream-in");
        tx.send(Bytes::from_static(b"start")).await.unwrap();
        // The application has the first bytes; the rest is not sent yet.
        let seen = wait_for("stream-in", "got start").await;
        assert_eq!(count(&seen, "got start"), 1);
        tx.send(Bytes::from_static(b" and the rest")).await.unwrap();
        drop(tx);
        let response = response.await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "start and the rest");
        assert_valid().await;
    })
    .await;
}

/// `write()` data comes first, in order, then the iterable's items; the
/// iterable is closed once, on the thread that called the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_callable() {
    within(async {
        let addr = server().await;
        assert_eq!(get(addr, "/write", "write").await.text(), "one,two,three");
        let seen = wait_for("write", "close").await;
        assert_eq!(count(&seen, "close"), 1);
        assert_one_thread(&seen);
        assert_valid().await;
    })
    .await;
}

/// `start_response` may be called from the first iteration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_response_late() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/late", "late").await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.text(), "started late");
        assert_one_thread(&events("late").await);
        assert_valid().await;
    })
    .await;
}

/// Before the head is sent, `exc_info` replaces the status and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exc_info_before_head() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/exc-before", "exc-before").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.text(), "sorry");
        assert_valid().await;
    })
    .await;
}

/// After the head is sent, `exc_info` is re-raised and the body ends with
/// an error, after the bytes already sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exc_info_after_head() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/exc-after", "exc-after").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.is_err(), "{:?}", answer.body);
        assert_valid().await;
    })
    .await;
}

/// An exception before the head answers 500 with a fixed body that says
/// nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_before_head() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/raise", "raise").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.text(), "Internal Server Error\n");
        assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
        // So are a second start_response without exc_info, and never
        // calling it at all.
        let answer = get(addr, "/twice", "twice").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        let answer = get(addr, "/no-start", "no-start").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.text().contains("head"));
    })
    .await;
}

/// An exception after the head ends the body with an error (the client
/// sees a cut response), and close() still runs once on the request's
/// thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_after_head() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/raise-later", "raise-later").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.is_err(), "{:?}", answer.body);
        let seen = wait_for("raise-later", "close").await;
        assert_eq!(count(&seen, "close"), 1);
        assert_one_thread(&seen);
        assert_valid().await;
    })
    .await;
}

/// The application's Content-Length is the exact size: once that many
/// bytes went out, the iterable is closed without being asked for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_is_exact() {
    within(async {
        let addr = server().await;
        let answer = get(addr, "/length", "length").await;
        assert_eq!(answer.headers["content-length"], "256");
        assert_eq!(answer.body.as_ref().unwrap().len(), 256);
        let seen = wait_for("length", "close").await;
        assert_eq!(count(&seen, "next"), 3, "{seen:?}");
        assert_eq!(count(&seen, "close"), 1);
        // A body shorter than its Content-Length fails, never ends short.
        let answer = get(addr, "/short", "short").await;
        assert!(answer.body.is_err(), "{:?}", answer.body);
        assert_valid().await;
    })
    .await;
}

/// `wsgi.file_wrapper` streams a file, whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_wrapper() {
    within(async {
        let addr = server().await;
        let path = std::env::temp_dir().join(format!("wsgi-file-{}", std::process::id()));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let answer = get(addr, &format!("/file?{}", path.display()), "file").await;
        std::fs::remove_file(&path).unwrap();
        assert_eq!(answer.headers["content-length"], "100000");
        assert_eq!(answer.body.unwrap(), data);
        assert_valid().await;
    })
    .await;
}

/// `wsgi.errors` takes text through write, writelines and flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_stream() {
    within(async {
        let addr = server().await;
        assert_eq!(get(addr, "/errors", "errors").await.text(), "logged");
        assert_valid().await;
    })
    .await;
}

/// A body over `max_request_body` is refused: `413` when its
/// Content-Length says so, before the application runs; a read error
/// (so a `500` here) when a chunked body turns out longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_limit() {
    within(async {
        let layer = ThreadAffinityLayer::builder().workers(1).build();
        let wsgi = Wsgi::builder()
            .python_path(common::apps())
            .max_request_body(10)
            .import("pep3333_app:application");
        let addr = common::serve(Router::new().fallback_service(layer.service(wsgi))).await;
        let request = Request::post("/echo")
            .header("x-tag", "limit")
            .body(Full::new(Bytes::from_static(b"twenty bytes of body")))
            .unwrap();
        assert_eq!(
            send(addr, request).await.status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(events("limit").await.is_empty(), "the application ran");
        let (tx, response) = common::upload(addr, "/echo", "limit");
        tx.send(Bytes::from_static(b"twenty bytes of body"))
            .await
            .unwrap();
        drop(tx);
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let answer = send(addr, post("/echo", "short")).await;
        assert_eq!(answer.text(), "5:short|");
    })
    .await;
}
