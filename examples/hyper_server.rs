//! `ThreadAffinityLayer` under plain hyper 1 and hyper-util, no framework:
//! `TowerToHyperService` and `hyper_util::server::conn::auto::Builder`, which
//! serves HTTP/1.1 (with keep-alive) and HTTP/2 (prior knowledge, h2c) on
//! the same port.
//!
//! ```text
//! PORT=3002 cargo run --release --example hyper_server
//! curl -s localhost:3002/bytes/7/33554432 | wc -c
//! curl -s --http2-prior-knowledge localhost:3002/stream/7/1048576 | wc -c
//! head -c 16777216 /dev/urandom | curl -s --data-binary @- localhost:3002/hash
//! ```
//!
//! The handler is one blocking function on the layer's worker threads:
//!
//! - `GET /bytes/{seed}/{len}`: `len` bytes of a pattern, from a blocking
//!   [`Read`] through `ReaderBody`, with `Content-Length`;
//! - `GET /stream/{seed}/{len}`: the same bytes from an iterator through
//!   `IterBody`, of unknown length (chunked on HTTP/1.1);
//! - `POST /hash`: the upload read with blocking `read` calls through
//!   `BodyReader` (at most [`UPLOAD_LIMIT`] bytes, else `413`), answered with
//!   its size and FNV-1a hash.
//!
//! Each response is made in 64 KiB frames, on the worker, only as fast as
//! the client takes them; a slow client costs `body_buffer` frames of memory
//! and never a thread. Every response says which worker made it, in
//! `x-worker`.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::io::{self, Read};
use std::pin::pin;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;
use tower_affinity::blocking::{self, BodyReader, IterBody, LengthLimitError, ReaderBody};
use tower_affinity::{BoxError, ThreadAffinity, ThreadAffinityBody, ThreadAffinityLayer, WorkerId};
use tower_layer::Layer;

/// The worker threads are named `{THREAD_PREFIX}-{index}`.
pub const THREAD_PREFIX: &str = "hyper-worker";

/// The most bytes `POST /hash` reads.
pub const UPLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// The size of each response frame.
const CHUNK: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name(THREAD_PREFIX)
        .build();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3002,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("hyper_server listening on http://{addr} (HTTP/1.1 and h2c)");
    println!("try:");
    println!("  curl -s http://{addr}/bytes/7/33554432 | wc -c");
    println!("  curl -s --http2-prior-knowledge http://{addr}/stream/7/1048576 | wc -c");
    println!("  head -c 16777216 /dev/urandom | curl -s --data-binary @- http://{addr}/hash");

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, app(&layer), shutdown).await;
    layer.shutdown().await;
    Ok(())
}

/// The blocking handler, behind the layer.
pub fn app(
    layer: &ThreadAffinityLayer,
) -> ThreadAffinity<
    impl Service<Request<Incoming>, Response = Response<AppBody>, Error = Infallible> + Clone + Send,
> {
    layer.layer(blocking::service_fn(handle))
}

/// Accepts connections on `listener` and serves each with `service`, over
/// HTTP/1.1 or HTTP/2 as the client speaks, until `shutdown` resolves; then
/// stops accepting, lets each connection finish its requests, and returns
/// when they have all closed.
pub async fn serve<S>(listener: TcpListener, service: S, shutdown: impl Future<Output = ()>)
where
    S: Service<Request<Incoming>, Response = Response<ThreadAffinityBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, service.clone(), stopped.clone()));
                }
                // Out of file descriptors, a connection reset before it
                // was accepted: not a reason to stop serving the others.
                Err(e) => eprintln!("accept failed: {e}"),
            },
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until the client closes it, or gracefully once
/// `stopped` says so.
///
/// Its own function, bounds spelled out: inlined into the spawned block,
/// rustc cannot prove the connection future `Send` (a known higher-ranked
/// lifetime limitation).
async fn serve_connection<S>(stream: TcpStream, service: S, mut stopped: watch::Receiver<bool>)
where
    S: Service<Request<Incoming>, Response = Response<ThreadAffinityBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // HTTP/1.1 keep-alive and HTTP/2 are on by default; which one a
    // connection speaks is read from its first bytes.
    let builder = auto::Builder::new(TokioExecutor::new());
    let service = TowerToHyperService::new(service);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    // Errors are the client's business (a reset, a request it gave up on).
    tokio::select! {
        _ = connection.as_mut() => {}
        // Only `true` is ever sent.
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

// ---------------------------------------------------------------------------
// The blocking application
// ---------------------------------------------------------------------------

/// Every response's body. It need not be `Send`: the layer polls it on the
/// worker that made it.
pub type AppBody = UnsyncBoxBody<Bytes, BoxError>;

fn boxed<B>(body: B) -> AppBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The whole application: plain blocking code, routed by hand.
fn handle(request: Request<Incoming>) -> Response<AppBody> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let number = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok());
    let mut response = match (request.method().as_str(), &segments[..]) {
        ("GET" | "HEAD", ["bytes", _, _]) => match (number(1), number(2)) {
            (Some(seed), Some(len)) => {
                let body = ReaderBody::new(Pattern::new(seed, len))
                    .chunk_size(CHUNK)
                    .with_length(len);
                Response::new(boxed(body))
            }
            _ => text(StatusCode::BAD_REQUEST, "usage: /bytes/{seed}/{len}\n"),
        },
        ("GET" | "HEAD", ["stream", _, _]) => match (number(1), number(2)) {
            (Some(seed), Some(len)) => {
                let mut pattern = Pattern::new(seed, len);
                let chunks = std::iter::from_fn(move || {
                    let mut chunk = vec![0; CHUNK];
                    match pattern.read(&mut chunk) {
                        Ok(0) => None,
                        Ok(n) => {
                            chunk.truncate(n);
                            Some(Ok::<_, io::Error>(Bytes::from(chunk)))
                        }
                        Err(e) => Some(Err(e)),
                    }
                });
                Response::new(boxed(IterBody::new(chunks)))
            }
            _ => text(StatusCode::BAD_REQUEST, "usage: /stream/{seed}/{len}\n"),
        },
        ("POST", ["hash"]) => hash(request),
        _ => text(
            StatusCode::NOT_FOUND,
            "GET /bytes/{seed}/{len}, GET /stream/{seed}/{len}, POST /hash\n",
        ),
    };
    if let Some(worker) = WorkerId::current() {
        if let Ok(value) = HeaderValue::from_str(worker.name()) {
            response.headers_mut().insert("x-worker", value);
        }
    }
    response
}

/// `POST /hash`: reads the upload on this worker, blocking on each `read`
/// until the client has sent more.
fn hash(request: Request<Incoming>) -> Response<AppBody> {
    let mut reader = BodyReader::new(request.into_body()).limit(UPLOAD_LIMIT);
    let mut buf = vec![0; CHUNK];
    let (mut size, mut hash) = (0u64, FNV_OFFSET);
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                size += n as u64;
                hash = fnv1a(hash, &buf[..n]);
            }
            Err(e) if e.get_ref().is_some_and(|e| e.is::<LengthLimitError>()) => {
                let message = format!("{e}: the limit is {UPLOAD_LIMIT} bytes\n");
                return text(StatusCode::PAYLOAD_TOO_LARGE, message);
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
    text(StatusCode::OK, format!("bytes={size} fnv={hash:016x}\n"))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut response = Response::new(boxed(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

// ---------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------

/// `len` bytes, each a function of `seed` and its position: a dropped,
/// repeated or reordered chunk changes the hash.
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Pattern {
    /// The pattern for `seed`, `len` bytes long.
    pub fn new(seed: u64, len: u64) -> Self {
        Self { seed, pos: 0, len }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (k, byte) in (self.pos..).zip(&mut buf[..n]) {
            // The top byte of a multiplicative hash of the position.
            *byte = ((k ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The FNV-1a offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64-bit) of `bytes`, continuing from `hash`.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
