//! The hyper example (`examples/hyper_server.rs`): its `serve` loop
//! (hyper-util's `auto::Builder` and `TowerToHyperService`) and its blocking
//! handler behind the layer, on 127.0.0.1, driven by hyper-util's legacy
//! client over HTTP/1.1 with keep-alive and over HTTP/2 with prior
//! knowledge (h2c).
//!
//! Large bodies are checked byte for byte by length and FNV-1a hash; the
//! client counts the TCP connections it opens, so reuse is asserted rather
//! than assumed.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_affinity::{BoxError, ThreadAffinityLayer};
use tower_service::Service;

#[allow(dead_code)]
#[path = "../examples/hyper_server.rs"]
mod hyper_server;

use hyper_server::{app, fnv1a, serve, Pattern, FNV_OFFSET, THREAD_PREFIX};

/// Hang guard for each test: generous, the machine is small and shared and
/// this is a debug build moving tens of MiB.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// The large download.
const DOWNLOAD: u64 = 32 * 1024 * 1024;

/// The large upload.
const UPLOAD: u64 = 16 * 1024 * 1024;

async fn bounded<F: Future<Output = ()>>(test: F) {
    common::bounded(TIME_LIMIT, test).await
}

/// Length and FNV-1a hash of a byte sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    len: u64,
    fnv: u64,
}

impl Digest {
    fn new() -> Self {
        Self {
            len: 0,
            fnv: FNV_OFFSET,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.fnv = fnv1a(self.fnv, bytes);
    }

    /// What `POST /hash` answers for these bytes.
    fn hash_reply(self) -> String {
        format!("bytes={} fnv={:016x}\n", self.len, self.fnv)
    }
}

/// The pattern for `seed`, `len` bytes long.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut Pattern::new(seed, len), &mut bytes).unwrap();
    bytes
}

/// The digest of the pattern, computed once per `(seed, len)` a test uses.
fn pattern_digest(seed: u64, len: u64) -> Digest {
    let mut digest = Digest::new();
    digest.update(&pattern(seed, len));
    digest
}

fn download_digest() -> Digest {
    static DIGEST: OnceLock<Digest> = OnceLock::new();
    *DIGEST.get_or_init(|| pattern_digest(1, DOWNLOAD))
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// The example's `serve` loop on an ephemeral loopback port.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    // Kept so that the pool outlives the server.
    _layer: ThreadAffinityLayer,
}

impl Server {
    async fn start() -> Self {
        let layer = ThreadAffinityLayer::builder()
            .workers(2)
            .thread_name(THREAD_PREFIX)
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(listener, app(&layer), shutdown));
        Self {
            addr,
            stop,
            task,
            _layer: layer,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server; returns once every connection has closed.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// hyper-util's `HttpConnector`, counting the connections it opens.
#[derive(Clone)]
struct CountingConnector {
    inner: HttpConnector,
    opened: Arc<AtomicUsize>,
}

impl Service<Uri> for CountingConnector {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = <HttpConnector as Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.inner.call(uri)
    }
}

type ReqBody = BoxBody<Bytes, BoxError>;
type HttpClient = Client<CountingConnector, ReqBody>;

/// A client, and the count of connections it opened.
fn client(http2: bool) -> (HttpClient, Arc<AtomicUsize>) {
    let opened = Arc::new(AtomicUsize::new(0));
    let connector = CountingConnector {
        inner: HttpConnector::new(),
        opened: opened.clone(),
    };
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector);
    (client, opened)
}

async fn get(client: &HttpClient, url: String) -> Response<Incoming> {
    let request = Request::get(url)
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .unwrap();
    client.request(request).await.unwrap()
}

async fn post(client: &HttpClient, url: String, body: ReqBody) -> Response<Incoming> {
    let request = Request::post(url).body(body).unwrap();
    client.request(request).await.unwrap()
}

/// A body with a known length.
fn full_body(bytes: Vec<u8>) -> ReqBody {
    Full::new(Bytes::from(bytes))
        .map_err(|e| match e {})
        .boxed()
}

/// A body of unknown length, in `chunk`-byte frames (chunked on HTTP/1.1).
fn streamed_body(bytes: Vec<u8>, chunk: usize) -> ReqBody {
    let bytes = Bytes::from(bytes);
    let frames: Vec<_> = (0..bytes.len())
        .step_by(chunk)
        .map(|at| Ok(Frame::data(bytes.slice(at..bytes.len().min(at + chunk)))))
        .collect();
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

/// Reads a body frame by frame, hashing as it goes.
async fn digest(response: Response<Incoming>) -> Digest {
    let mut body = response.into_body();
    let mut digest = Digest::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            digest.update(&data);
        }
    }
    digest
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn assert_from_worker(response: &Response<Incoming>) {
    let worker = response.headers()["x-worker"].to_str().unwrap();
    let index = worker
        .strip_prefix(THREAD_PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_else(|| panic!("made on {worker:?}"));
    index.parse::<usize>().unwrap();
}

/// A 32 MiB download from `ReaderBody` (`Content-Length`), one from
/// `IterBody` (no length), and a 16 MiB upload sent with and without a
/// length, checked by hash; `version` is what each response must be.
async fn large_bodies_on(client: &HttpClient, server: &Server, version: Version) {
    let want = download_digest();

    let response = get(client, server.url(&format!("/bytes/1/{DOWNLOAD}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), version);
    assert_from_worker(&response);
    assert_eq!(content_length(response.headers()), Some(DOWNLOAD));
    assert_eq!(digest(response).await, want, "ReaderBody download");

    let response = get(client, server.url(&format!("/stream/1/{DOWNLOAD}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), version);
    assert_from_worker(&response);
    assert_eq!(content_length(response.headers()), None);
    assert_eq!(digest(response).await, want, "IterBody download");

    let upload = pattern(2, UPLOAD);
    let want = pattern_digest(2, UPLOAD).hash_reply();
    for body in [full_body(upload.clone()), streamed_body(upload, 256 * 1024)] {
        let response = post(client, server.url("/hash"), body).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        assert_from_worker(&response);
        assert_eq!(text(response).await, want, "upload");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Over HTTP/1.1, a 32 MiB streamed download (with `Content-Length` from
/// `ReaderBody`, and chunked from `IterBody`) and a 16 MiB upload read on
/// the worker (with a length, and chunked) arrive byte-exact, one after
/// another on kept-alive connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_large_download_and_upload() {
    bounded(async {
        let server = Server::start().await;
        let (client, opened) = client(false);

        large_bodies_on(&client, &server, Version::HTTP_11).await;
        // Four requests in turn. The client hands a finished connection back
        // to its pool from a task of its own, so a request sent at once may
        // race it and open a second; keep-alive shows as fewer connections
        // than requests.
        let opened = opened.load(Ordering::SeqCst);
        assert!(
            (1..4).contains(&opened),
            "{opened} connections for 4 requests"
        );

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// Over HTTP/2 with prior knowledge, the same large downloads and uploads
/// arrive byte-exact on one connection, both in turn and all at once as
/// concurrent streams of that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_large_download_and_upload_multiplexed() {
    bounded(async {
        let server = Server::start().await;
        let (client, opened) = client(true);

        large_bodies_on(&client, &server, Version::HTTP_2).await;

        // Concurrently: two downloads and an upload, each its own stream.
        let want = download_digest();
        let upload = pattern(3, UPLOAD);
        let upload_reply = pattern_digest(3, UPLOAD).hash_reply();
        let bytes = async {
            let response = get(&client, server.url(&format!("/bytes/1/{DOWNLOAD}"))).await;
            assert_eq!(response.version(), Version::HTTP_2);
            digest(response).await
        };
        let stream = async {
            let response = get(&client, server.url(&format!("/stream/1/{DOWNLOAD}"))).await;
            assert_eq!(response.version(), Version::HTTP_2);
            digest(response).await
        };
        let hash = async {
            let response = post(&client, server.url("/hash"), full_body(upload)).await;
            assert_eq!(response.version(), Version::HTTP_2);
            text(response).await
        };
        let (bytes, stream, hash) = tokio::join!(bytes, stream, hash);
        assert_eq!(bytes, want, "ReaderBody download");
        assert_eq!(stream, want, "IterBody download");
        assert_eq!(hash, upload_reply, "upload");

        assert_eq!(opened.load(Ordering::SeqCst), 1, "connections opened");

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// An upload whose declared length is over the limit is answered `413` by
/// the handler, over both protocols, before the client sends a byte of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_declared_over_the_limit_is_413() {
    bounded(async {
        let server = Server::start().await;
        for http2 in [false, true] {
            let (client, _) = client(http2);
            let never =
                StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BoxError>>());
            let request = Request::post(server.url("/hash"))
                .header(header::CONTENT_LENGTH, hyper_server::UPLOAD_LIMIT + 1)
                .body(never.boxed())
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "http2: {http2}"
            );
            assert_from_worker(&response);
        }
        server.shutdown().await;
    })
    .await;
}
