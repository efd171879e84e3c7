//! End to end over real HTTP/1.1: a hyper server on loopback serving a
//! blocking service behind `ThreadAffinityLayer`, and hyper-util's pooled
//! keep-alive client.
//!
//! Every response body is derived from its request (a seed and a length in
//! the path, or the uploaded bytes), so a response delivered to the wrong
//! request, truncated, or reordered fails a byte-exact comparison. Each test
//! runs under a time limit, so a hang fails instead of stalling the suite.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower_affinity::blocking::{self, BodyReader, IterBody, LengthLimitError, ReaderBody};
use tower_affinity::{BoxError, ThreadAffinityBody, ThreadAffinityLayer};
use tower_layer::Layer;
use tower_service::Service;

/// Hang guard for each test. Generous: the machine is shared and small.
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// The most `/upload` reads before answering 413.
const UPLOAD_LIMIT: usize = 8 * 1024 * 1024;

/// The most `/echo` reads before answering 413.
const ECHO_LIMIT: usize = 1024 * 1024;

/// The worker threads' name prefix; every response says which thread made it.
const THREAD_PREFIX: &str = "http-test";

// ---------------------------------------------------------------------------
// Content derived from the request
// ---------------------------------------------------------------------------

/// Byte `k` of the pattern for `seed`: different seeds differ almost
/// everywhere, and the period (251, prime) does not line up with any chunk
/// size, so a dropped or repeated chunk shows.
fn pattern_byte(seed: u64, k: u64) -> u8 {
    ((seed.wrapping_mul(131) + k * 7 + k / 251) % 251) as u8
}

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len).map(|k| pattern_byte(seed, k)).collect()
}

/// The pattern as a blocking reader, for `ReaderBody`.
struct PatternReader {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            *byte = pattern_byte(self.seed, self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Chunk `j` of `/chunks/{seed}/{count}`: sizes vary from 1 to 4000 bytes.
fn stream_chunk(seed: u64, j: u64) -> Bytes {
    Bytes::from(pattern(seed * 1000 + j, 1 + (j * 1237 + seed) % 4000))
}

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

// ---------------------------------------------------------------------------
// The blocking application behind the layer
// ---------------------------------------------------------------------------

/// Every route's body, boxed to one type. It need not be `Send` to cross the
/// layer; `UnsyncBoxBody` just happens to be the handiest box.
type AppBody = UnsyncBoxBody<Bytes, BoxError>;

fn boxed<B>(body: B) -> AppBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

fn text(status: StatusCode, body: String) -> Response<AppBody> {
    let mut response = Response::new(boxed(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}

/// Releases the last chunk of `/gated`: the test sends on it once the client
/// holds the first chunk. Shared by every worker's clone of the handler.
type Gate = Arc<Mutex<mpsc::Receiver<()>>>;

/// The whole application: plain blocking code, routed by hand.
fn handle(request: Request<Incoming>, gate: &Gate) -> Response<AppBody> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let num = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok());
    let mut response = match (request.method().as_str(), segments.first().copied()) {
        // One frame, length known: `Full`.
        ("GET", Some("fixed")) => {
            let (seed, len) = (num(1).unwrap(), num(2).unwrap());
            Response::new(boxed(Full::new(Bytes::from(pattern(seed, len)))))
        }
        // Many frames, length declared: `ReaderBody::len`.
        ("GET", Some("file")) => {
            let (seed, len) = (num(1).unwrap(), num(2).unwrap());
            let reader = PatternReader { seed, pos: 0, len };
            Response::new(boxed(
                ReaderBody::new(reader)
                    .chunk_size(64 * 1024)
                    .with_length(len),
            ))
        }
        // Many frames, length unknown: `IterBody`.
        ("GET", Some("chunks")) => {
            let (seed, count) = (num(1).unwrap(), num(2).unwrap());
            let chunks = (0..count).map(move |j| Ok::<_, Infallible>(stream_chunk(seed, j)));
            Response::new(boxed(IterBody::new(chunks)))
        }
        // Three chunks; the last is produced only once the gate opens.
        ("GET", Some("gated")) => {
            let gate = gate.clone();
            let mut step = 0;
            let chunks = std::iter::from_fn(move || {
                step += 1;
                match step {
                    1 => Some(Ok(Bytes::from_static(b"first;"))),
                    2 => Some(Ok(Bytes::from_static(b"middle;"))),
                    3 => Some(match gate.lock().unwrap().recv() {
                        Ok(()) => Ok(Bytes::from_static(b"last")),
                        // The test gave up (and dropped the sender).
                        Err(e) => Err(io::Error::other(e)),
                    }),
                    _ => None,
                }
            });
            Response::new(boxed(IterBody::new(chunks)))
        }
        // The upload read with `BodyReader`, sent back in 16 KiB frames.
        ("POST", Some("echo")) => {
            let mut upload = Vec::new();
            let read = BodyReader::new(request.into_body())
                .limit(ECHO_LIMIT)
                .read_to_end(&mut upload);
            if let Err(e) = read {
                return read_failure(e, ECHO_LIMIT);
            }
            let upload = Bytes::from(upload);
            let frames = (0..upload.len()).step_by(16 * 1024).map(move |at| {
                Ok::<_, Infallible>(upload.slice(at..upload.len().min(at + 16 * 1024)))
            });
            Response::new(boxed(IterBody::new(frames)))
        }
        // The upload read with `BodyReader` in small reads; size and hash back.
        ("POST", Some("upload")) => {
            let mut reader = BodyReader::new(request.into_body()).limit(UPLOAD_LIMIT);
            let mut buf = vec![0; 8 * 1024];
            let (mut size, mut hash) = (0u64, FNV_OFFSET);
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        size += n as u64;
                        hash = fnv1a(hash, &buf[..n]);
                    }
                    Err(e) => return read_failure(e, UPLOAD_LIMIT),
                }
            }
            text(StatusCode::OK, format!("bytes={size} fnv={hash:016x}"))
        }
        _ => text(StatusCode::NOT_FOUND, format!("no route for {path}")),
    };
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    response
        .headers_mut()
        .insert("x-thread", thread.parse().unwrap());
    response
}

/// 413 for an upload over the limit, 400 for anything else.
fn read_failure(error: io::Error, limit: usize) -> Response<AppBody> {
    let over = error.get_ref().is_some_and(|e| e.is::<LengthLimitError>());
    let (status, message) = if over {
        let message = format!("{error}: the limit is {limit} bytes");
        (StatusCode::PAYLOAD_TOO_LARGE, message)
    } else {
        (StatusCode::BAD_REQUEST, format!("{error}"))
    };
    let mut response = text(status, message);
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    response
        .headers_mut()
        .insert("x-thread", thread.parse().unwrap());
    response
}

// ---------------------------------------------------------------------------
// Server and client
// ---------------------------------------------------------------------------

/// A hyper server on 127.0.0.1 serving `handle` behind the layer.
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<usize>,
}

impl Server {
    async fn start(layer: &ThreadAffinityLayer, gate: Gate) -> Self {
        let service = layer.layer(blocking::service_fn(move |request| handle(request, &gate)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut accepted = 0;
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.changed() => break,
                    accept = listener.accept() => accept.unwrap(),
                };
                accepted += 1;
                connections.spawn(serve_connection(stream, service.clone(), stopped.clone()));
            }
            drop(listener);
            while connections.join_next().await.is_some() {}
            accepted
        });
        Self { addr, stop, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, closes every connection gracefully, and waits for
    /// them; returns how many connections were accepted.
    async fn shutdown(self) -> usize {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

/// Serves one connection until the client closes it or the server stops.
///
/// A separate function with its bounds spelled out: inlined into the
/// spawned block, rustc cannot prove the future `Send` ("implementation of
/// `From` is not general enough", a known higher-ranked lifetime issue).
async fn serve_connection<S>(stream: TcpStream, service: S, mut stopped: watch::Receiver<bool>)
where
    S: Service<Request<Incoming>, Response = Response<ThreadAffinityBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let service = TowerToHyperService::new(service);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    // Connection errors are expected: the 413 tests drop requests half-sent.
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

type ReqBody = BoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpConnector, ReqBody>;

fn client() -> HttpClient {
    // HTTP/1.1 with keep-alive: the legacy client's default.
    Client::builder(TokioExecutor::new()).build_http()
}

fn no_body() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body with `Content-Length`.
fn full_body(bytes: Vec<u8>) -> ReqBody {
    Full::new(Bytes::from(bytes))
        .map_err(|e| match e {})
        .boxed()
}

/// A body sent with chunked transfer-encoding, in `chunk`-byte frames.
fn chunked_body(bytes: Vec<u8>, chunk: usize) -> ReqBody {
    let bytes = Bytes::from(bytes);
    let frames: Vec<_> = (0..bytes.len())
        .step_by(chunk)
        .map(|at| Ok(Frame::data(bytes.slice(at..bytes.len().min(at + chunk)))))
        .collect();
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

/// A body fed by the test through a channel: it stays open, sending
/// nothing more, until the sender is dropped.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ReqBody) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let frames = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    });
    (tx, StreamBody::new(frames).boxed())
}

async fn get(client: &HttpClient, url: String) -> Response<Incoming> {
    let request = Request::get(url).body(no_body()).unwrap();
    client.request(request).await.unwrap()
}

async fn post(client: &HttpClient, url: String, body: ReqBody) -> Response<Incoming> {
    let request = Request::post(url).body(body).unwrap();
    client.request(request).await.unwrap()
}

async fn read_all(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|v| v.to_str().unwrap().eq_ignore_ascii_case("chunked"))
}

fn assert_on_worker(headers: &HeaderMap) {
    let thread = headers["x-thread"].to_str().unwrap();
    assert!(thread.starts_with(THREAD_PREFIX), "served on {thread}");
}

fn layer() -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name(THREAD_PREFIX)
        .build()
}

/// A gate nobody opens, for tests that do not use `/gated`.
fn closed_gate() -> Gate {
    Arc::new(Mutex::new(mpsc::channel().1))
}

/// Runs a test body under the hang guard.
async fn bounded<F: Future<Output = ()>>(test: F) {
    common::bounded(TIME_LIMIT, test).await
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A response produced in one frame keeps its exact length: the client sees
/// `Content-Length` with the right value and no chunked encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_response_keeps_content_length() {
    bounded(async {
        let layer = layer();
        let server = Server::start(&layer, closed_gate()).await;
        let client = client();
        for (seed, len) in [(1, 1), (2, 17), (3, 4096), (4, 300_000), (5, 0)] {
            let response = get(&client, server.url(&format!("/fixed/{seed}/{len}"))).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_on_worker(response.headers());
            assert_eq!(content_length(response.headers()), Some(len), "len {len}");
            assert!(response.headers().get(header::TRANSFER_ENCODING).is_none());
            assert_eq!(read_all(response).await, pattern(seed, len));
        }
        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// A several-MiB `ReaderBody` with a declared `.len(n)` streams in many
/// frames and still keeps `Content-Length`, arriving byte-exact (both a
/// length that is a multiple of the chunk size and one that is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_frame_reader_body_keeps_content_length() {
    bounded(async {
        let layer = layer();
        let server = Server::start(&layer, closed_gate()).await;
        let client = client();
        for (seed, len) in [(11, 4 * 1024 * 1024), (12, 5 * 1024 * 1024 + 123)] {
            let response = get(&client, server.url(&format!("/file/{seed}/{len}"))).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_on_worker(response.headers());
            assert_eq!(content_length(response.headers()), Some(len), "len {len}");
            assert!(response.headers().get(header::TRANSFER_ENCODING).is_none());
            let body = read_all(response).await;
            assert_eq!(body.len() as u64, len);
            assert!(body == pattern(seed, len), "body of {len} bytes differs");
        }
        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// A response of unknown length is sent chunked and arrives in pieces: the
/// client holds the first chunk before the server has produced the last
/// (the producer waits for the client's word before making it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_length_streams_chunked_first_chunk_before_last_is_made() {
    bounded(async {
        let (open, gate) = mpsc::channel();
        let layer = layer();
        let server = Server::start(&layer, Arc::new(Mutex::new(gate))).await;
        let client = client();

        let response = get(&client, server.url("/gated")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_on_worker(response.headers());
        assert!(is_chunked(response.headers()), "{:?}", response.headers());
        assert!(content_length(response.headers()).is_none());

        let mut body = response.into_body();
        let mut received = Vec::new();
        // The last chunk does not exist yet, so this can only finish if the
        // first one was sent on its own.
        while received.len() < b"first;".len() {
            let frame = body.frame().await.expect("body ended early").unwrap();
            received.extend_from_slice(&frame.into_data().unwrap());
        }
        assert!(received.starts_with(b"first;"), "{received:?}");
        assert!(!received.ends_with(b"last"), "{received:?}");
        open.send(()).unwrap();
        while let Some(frame) = body.frame().await {
            received.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(received, b"first;middle;last");

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// Under a concurrent mix (200 requests from 32 client tasks over pooled
/// keep-alive connections: one-frame responses, multi-chunk streams, and
/// uploads echoed through `BodyReader`, sent with and without a length),
/// every response is byte-exact for its own request, and is made on a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mix_each_response_matches_its_request() {
    const REQUESTS: u64 = 200;
    const TASKS: u64 = 32;
    bounded(async {
        // Few streams per worker and a small buffer, so that admission and
        // backpressure are exercised, not just the happy path.
        let layer = ThreadAffinityLayer::builder()
            .workers(2)
            .max_streams_per_worker(4)
            .body_buffer(2)
            .queue_capacity(64)
            .thread_name(THREAD_PREFIX)
            .build();
        let server = Server::start(&layer, closed_gate()).await;
        let client = client();

        let mut tasks = JoinSet::new();
        for task in 0..TASKS {
            let client = client.clone();
            let base = server.url("");
            tasks.spawn(async move {
                for i in (task..REQUESTS).step_by(TASKS as usize) {
                    let seed = 1000 + i;
                    let (response, want) = match i % 6 {
                        0 | 3 => {
                            let len = (i * 37) % 3000;
                            let response = get(&client, format!("{base}/fixed/{seed}/{len}")).await;
                            assert_eq!(content_length(response.headers()), Some(len));
                            (response, pattern(seed, len))
                        }
                        1 | 4 => {
                            let count = 1 + i % 20;
                            let response =
                                get(&client, format!("{base}/chunks/{seed}/{count}")).await;
                            let want = (0..count).flat_map(|j| stream_chunk(seed, j)).collect();
                            (response, want)
                        }
                        2 => {
                            let upload = pattern(seed, (i * 7919) % 300_000);
                            let url = format!("{base}/echo/{seed}");
                            (post(&client, url, full_body(upload.clone())).await, upload)
                        }
                        _ => {
                            let upload = pattern(seed, (i * 7919) % 300_000);
                            let url = format!("{base}/echo/{seed}");
                            (
                                post(&client, url, chunked_body(upload.clone(), 8 * 1024)).await,
                                upload,
                            )
                        }
                    };
                    assert_eq!(response.status(), StatusCode::OK, "request {i}");
                    assert_on_worker(response.headers());
                    let body = read_all(response).await;
                    assert!(
                        body == want,
                        "request {i}: {} bytes, want {}",
                        body.len(),
                        want.len()
                    );
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }

        drop(client);
        let connections = server.shutdown().await;
        // Keep-alive: the pool reused connections rather than opening one per
        // request.
        assert!(connections < REQUESTS as usize, "{connections} connections");
    })
    .await;
}

/// An upload of several MiB is read on the worker with `BodyReader`, and
/// its exact size and hash come back, whether it is sent with
/// `Content-Length` or chunked; exactly the limit is still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_is_read_on_the_worker() {
    bounded(async {
        let layer = layer();
        let server = Server::start(&layer, closed_gate()).await;
        let client = client();
        let cases = [
            (21, 6 * 1024 * 1024 + 7, true),
            (22, 6 * 1024 * 1024 + 7, false),
            (23, UPLOAD_LIMIT as u64, true),
            (24, UPLOAD_LIMIT as u64, false),
        ];
        for (seed, len, with_length) in cases {
            let upload = pattern(seed, len);
            let want = format!("bytes={len} fnv={:016x}", fnv1a(FNV_OFFSET, &upload));
            let body = if with_length {
                full_body(upload)
            } else {
                chunked_body(upload, 64 * 1024)
            };
            let response = post(&client, server.url("/upload"), body).await;
            assert_eq!(response.status(), StatusCode::OK, "len {len}");
            assert_on_worker(response.headers());
            assert_eq!(read_all(response).await, want);
        }
        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// An upload over the limit is answered 413 by the handler: at once when
/// its `Content-Length` says so (no byte of it is sent), and when a chunked
/// upload crosses the limit while being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_the_limit_is_413() {
    bounded(async {
        let layer = layer();
        let server = Server::start(&layer, closed_gate()).await;
        let client = client();

        // Declared too long. The body is a channel that never sends, so the
        // 413 can only come from the declared length; the client still
        // holds the body open when the answer arrives.
        let (sender, body) = channel_body();
        let request = Request::post(server.url("/upload"))
            .header(header::CONTENT_LENGTH, UPLOAD_LIMIT + 1)
            .body(body)
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_on_worker(response.headers());
        let message = read_all(response).await;
        assert!(
            String::from_utf8_lossy(&message).contains(&UPLOAD_LIMIT.to_string()),
            "{message:?}"
        );
        drop(sender);

        // Chunked, no length: one byte over, then the client waits with the
        // body still open. The handler has read the limit and one more byte.
        let (sender, body) = channel_body();
        let feed = tokio::spawn(async move {
            let upload = Bytes::from(pattern(31, UPLOAD_LIMIT as u64 + 1));
            for at in (0..upload.len()).step_by(256 * 1024) {
                let chunk = upload.slice(at..upload.len().min(at + 256 * 1024));
                if sender.send(chunk).await.is_err() {
                    return None; // the request was dropped: fine
                }
            }
            Some(sender)
        });
        let response = post(&client, server.url("/upload"), body).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_on_worker(response.headers());
        read_all(response).await;
        drop(feed.await.unwrap());

        drop(client);
        server.shutdown().await;
    })
    .await;
}

/// A `ReaderBody` with `.len(n)` whose reader ends early fails the body
/// (`UnexpectedEof`), directly and through the layer, rather than ending
/// cleanly short of its exact size hint.
#[tokio::test]
async fn reader_body_that_ends_before_its_declared_length_fails() {
    // Directly: 100 bytes declared as 150, in 64-byte chunks.
    let body = ReaderBody::new(io::Cursor::new(vec![7u8; 100]))
        .chunk_size(64)
        .with_length(150);
    match body.collect().await {
        Ok(short) => panic!(
            "ended cleanly after {} of 150 declared bytes",
            short.to_bytes().len()
        ),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
    }

    // Through the layer: the caller sees the same clean, short end.
    let layer = layer();
    let mut svc = layer.layer(blocking::service_fn(|_: Request<()>| {
        Response::new(
            ReaderBody::new(io::Cursor::new(vec![7u8; 100]))
                .chunk_size(64)
                .with_length(150),
        )
    }));
    bounded(async {
        use tower::ServiceExt;
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(
            http_body::Body::size_hint(response.body()).exact(),
            Some(150)
        );
        let collected = response.into_body().collect().await;
        assert!(
            collected.is_err(),
            "ended cleanly after {} of 150 declared bytes",
            collected.unwrap().to_bytes().len()
        );
    })
    .await;
}
