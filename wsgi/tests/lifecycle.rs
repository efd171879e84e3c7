//! The life of a request on its worker: close() once, on the request's
//! thread, however the response ends; per-thread Python state kept from
//! one request to the next; slow readers that hold no thread.

mod common;

use std::time::Duration;

use axum::Router;
use common::{get, python, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_affinity::ThreadAffinityLayer;
use tower_affinity_wsgi::Wsgi;

type Events = Vec<(String, u64, String)>;

async fn server(layer: &ThreadAffinityLayer) -> std::net::SocketAddr {
    let wsgi = Wsgi::builder()
        .python_path(common::apps())
        .import("pep3333_app:application");
    common::serve(Router::new().fallback_service(layer.service(wsgi))).await
}

fn count(events: &Events, what: &str) -> usize {
    events.iter().filter(|(w, _, _)| w == what).count()
}

fn assert_one_thread(events: &Events) {
    let (_, ident, name) = &events[0];
    assert!(name.starts_with("tower-affinity"), "ran on {name}");
    assert!(
        events.iter().all(|(_, other, _)| other == ident),
        "{events:?}"
    );
}

/// Sends a GET on a raw connection and reads until `bytes` of the
/// response arrived; the caller decides when to stop reading.
async fn start_reading(
    addr: std::net::SocketAddr,
    path: &str,
    tag: &str,
    bytes: usize,
) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nX-Tag: {tag}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = 0;
    let mut buffer = vec![0; 64 * 1024];
    while seen < bytes {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the server closed the stream");
        seen += n;
    }
    stream
}

/// A response that ended and one that failed after its head each close
/// their iterable once, on the thread that called the application and
/// ran every next().
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_once_when_ended_or_failed() {
    within(async {
        let layer = ThreadAffinityLayer::builder().workers(2).build();
        let addr = server(&layer).await;
        assert_eq!(
            get(addr, "/recorded?3", "ended").await.text(),
            "chunk0\nchunk1\nchunk2\n"
        );
        assert!(get(addr, "/raise-later", "failed").await.body.is_err());
        // A chunk that is not bytes fails the body as an exception does (the
        // unwrapped application: the validator would stop it first).
        let raw = Wsgi::builder()
            .python_path(common::apps())
            .import("pep3333_app:raw");
        let raw_addr = common::serve(Router::new().fallback_service(layer.service(raw))).await;
        assert!(get(raw_addr, "/not-bytes", "not-bytes").await.body.is_err());
        for tag in ["ended", "failed", "not-bytes"] {
            let seen: Events = python("pep3333_app", "wait_for", (tag, "close")).await;
            assert_eq!(count(&seen, "close"), 1, "{tag}: {seen:?}");
            assert_one_thread(&seen);
        }
        let ended: Events = python("pep3333_app", "events", ("ended",)).await;
        // call, four next() (the last one ends it), close.
        assert_eq!(count(&ended, "next"), 4, "{ended:?}");
        assert_eq!(common::problems().await, Vec::<String>::new());
    })
    .await;
}

/// A client that goes away mid-stream gets its iterable closed once, on
/// its worker, and nothing is iterated after the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_once_when_the_client_goes_away() {
    within(async {
        let layer = ThreadAffinityLayer::builder().workers(2).build();
        let addr = server(&layer).await;
        let stream = start_reading(addr, "/forever?65536", "gone", 200_000).await;
        drop(stream);
        let seen: Events = python("pep3333_app", "wait_for", ("gone", "close")).await;
        assert_eq!(count(&seen, "close"), 1, "{seen:?}");
        assert_eq!(seen.last().unwrap().0, "close");
        assert_one_thread(&seen);
        // The worker serves on.
        assert_eq!(get(addr, "/hello", "after").await.text(), "hello");
        let again: Events = python("pep3333_app", "events", ("gone",)).await;
        assert_eq!(again.len(), seen.len(), "iterated after close: {again:?}");
        assert_eq!(common::problems().await, Vec::<String>::new());
    })
    .await;
}

/// `threading.local` values last from one request to the next on a
/// worker: its Python thread state lives as long as the thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_locals_persist() {
    within(async {
        // Python starts here, off the worker: the thread that starts the
        // interpreter keeps its state anyway, and the worker must not be it.
        assert_eq!(common::problems().await, Vec::<String>::new());
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(1)
            .build();
        let addr = server(&layer).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(get(addr, "/local", "local").await.text());
        }
        let counts: Vec<&str> = answers
            .iter()
            .map(|a| a.split(' ').next().unwrap())
            .collect();
        assert_eq!(counts, ["1", "2", "3"], "{answers:?}");
    })
    .await;
}

/// Slow readers cost no thread: on a pool of one worker, with eight
/// clients that stopped reading an endless response, a fast request is
/// answered, and the pool still has its one thread. Each stalled stream's
/// iterable was asked for only what fits in its buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_hold_no_thread() {
    within(async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(1)
            .build();
        let addr = server(&layer).await;
        let tags: Vec<String> = (0..8).map(|i| format!("slow-{i}")).collect();
        let mut stalled = Vec::new();
        for tag in &tags {
            // One chunk of 1 MiB read, then never another byte.
            stalled.push(start_reading(addr, "/forever?1048576", tag, 1 << 20).await);
        }
        let answer = get(addr, "/hello", "fast").await;
        assert_eq!(answer.text(), "hello");
        assert_eq!(layer.stats().threads(), 1);
        for tag in tags {
            let seen: Events = python("pep3333_app", "events", (tag,)).await;
            // Socket buffers (a few MiB on loopback), hyper's, and the
            // layer's 8 frames: far fewer than an unbounded producer's.
            assert!(count(&seen, "next") < 64, "{}", count(&seen, "next"));
        }
        drop(stalled);
        let _ = Duration::ZERO;
    })
    .await;
}
