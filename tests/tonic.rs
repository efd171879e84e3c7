//! A tonic gRPC service written as blocking code behind `ThreadAffinityLayer`,
//! called by a real tonic client over 127.0.0.1.
//!
//! No code generation: the messages derive `prost::Message` by hand, the
//! server is a tower service that hands each method to tonic's
//! `server::Grpc`, and the client drives `client::Grpc` over a `Channel`.
//! The whole tonic service is the layer's inner service, so decoding,
//! the handler, encoding and the response stream all run on a worker, and
//! the gRPC frames and trailers cross to hyper through `ThreadAffinityBody`.

mod common;

use std::convert::Infallible;
use std::future::{ready, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::Service;
use tower_affinity::{BoxError, ThreadAffinity, ThreadAffinityLayer};
use tower_layer::Layer;

/// The example, driven here over loopback; its `main` is unused.
#[allow(dead_code)]
#[path = "../examples/grpc_server.rs"]
mod grpc_server;

/// The prefix of the pool's thread names.
const PREFIX: &str = "grpc-worker";

/// A guard against a hang, not a timing claim.
const HANG: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    common::within_for(HANG, what, future).await
}

// ---- messages (what protoc would generate) ----

#[derive(Clone, PartialEq, prost::Message)]
struct GetRequest {
    #[prost(string, tag = "1")]
    key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountRequest {
    /// How many items to stream.
    #[prost(uint64, tag = "1")]
    count: u64,
    /// Fail the stream with `Aborted` instead of sending this item.
    #[prost(uint64, optional, tag = "2")]
    fail_at: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Item {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(uint64, tag = "2")]
    value: u64,
    /// The name of the thread that produced this item.
    #[prost(string, tag = "3")]
    worker: String,
}

// ---- the server: blocking handlers, tonic's machinery around them ----

/// A producer dropped, and where.
#[derive(Debug)]
struct Dropped {
    thread: String,
    produced: u64,
}

/// The gRPC service `demo.Catalog`, shaped like tonic's generated servers
/// (a `Clone + Send` tower service over `http::Request`), with handlers that
/// are plain synchronous functions.
#[derive(Clone)]
struct Catalog {
    /// Where each stream's producer reports its drop.
    dropped: mpsc::UnboundedSender<Dropped>,
}

impl NamedService for Catalog {
    const NAME: &'static str = "demo.Catalog";
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned()
}

impl Catalog {
    /// Unary `Get`: a blocking lookup.
    fn get(&self, request: tonic::Request<GetRequest>) -> Result<tonic::Response<Item>, Status> {
        let request_id = request.metadata().get("x-request-id").cloned();
        let key = request.into_inner().key;
        let value = match key.as_str() {
            "answer" => 42,
            "year" => 2005,
            _ => return Err(Status::not_found("no such thing")),
        };
        let worker = thread_name();
        let mut response = tonic::Response::new(Item {
            key,
            value,
            worker: worker.clone(),
        });
        let metadata = response.metadata_mut();
        metadata.insert("x-served-by", worker.parse().unwrap());
        if let Some(id) = request_id {
            metadata.insert("x-request-id", id);
        }
        Ok(response)
    }

    /// Server-streaming `Count`: items from a blocking iterator.
    fn count(
        &self,
        request: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<stream::Iter<Producer>>, Status> {
        let CountRequest { count, fail_at } = request.into_inner();
        let producer = Producer {
            next: 0,
            end: count,
            fail_at,
            dropped: self.dropped.clone(),
        };
        // `stream::iter` calls `next()` from `poll_next`: on the worker,
        // only when tonic's encoder (and so the response buffer) has room.
        Ok(tonic::Response::new(stream::iter(producer)))
    }
}

/// A blocking iterator of items, reporting where it is dropped.
struct Producer {
    next: u64,
    end: u64,
    fail_at: Option<u64>,
    dropped: mpsc::UnboundedSender<Dropped>,
}

impl Iterator for Producer {
    type Item = Result<Item, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let n = self.next;
        if self.fail_at == Some(n) {
            // Fused: nothing follows an error.
            self.end = n;
            let mut metadata = MetadataMap::new();
            metadata.insert("x-failed-at", MetadataValue::from(n));
            return Some(Err(Status::with_metadata(
                Code::Aborted,
                format!("gave up at {n}"),
                metadata,
            )));
        }
        self.next += 1;
        Some(Ok(Item {
            key: format!("item-{n}"),
            value: n,
            worker: thread_name(),
        }))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.dropped.send(Dropped {
            thread: thread_name(),
            produced: self.next,
        });
    }
}

/// tonic's server side of one method: decoding, compression, encoding and
/// the `grpc-status` trailers, with prost messages.
fn grpc<T, U>() -> tonic::server::Grpc<ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(ProstCodec::default())
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> Service<http::Request<B>> for Catalog
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let catalog = self.clone();
        Box::pin(async move {
            // Each handler is synchronous: the `ready` future completes on
            // its first poll, after the handler ran on this (worker) thread.
            let response = match request.uri().path() {
                "/demo.Catalog/Get" => {
                    let get = tower::service_fn(|req| ready(catalog.get(req)));
                    grpc().unary(get, request).await
                }
                "/demo.Catalog/Count" => {
                    let count = tower::service_fn(|req| ready(catalog.count(req)));
                    grpc().server_streaming(count, request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

/// `ThreadAffinity<S>` under the gRPC name of `S`, so that tonic's router
/// can mount it with `add_service`; the crate's `tonic` feature does this
/// (see `wrapped_service_keeps_its_grpc_name`), and without it a wrapper
/// like this one does.
struct OnWorkers<S>(ThreadAffinity<S>);

impl<S> Clone for OnWorkers<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: NamedService> NamedService for OnWorkers<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R> Service<R> for OnWorkers<S>
where
    ThreadAffinity<S>: Service<R>,
{
    type Response = <ThreadAffinity<S> as Service<R>>::Response;
    type Error = <ThreadAffinity<S> as Service<R>>::Error;
    type Future = <ThreadAffinity<S> as Service<R>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.0.call(request)
    }
}

fn layer() -> ThreadAffinityLayer {
    ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name(PREFIX)
        .build()
}

/// Serves `Catalog` behind the layer (on this service only) on a loopback
/// port; returns the address and the channel of producer drops.
async fn start() -> (SocketAddr, mpsc::UnboundedReceiver<Dropped>) {
    let (dropped, drops) = mpsc::unbounded_channel();
    let svc = OnWorkers(layer().layer(Catalog { dropped }));
    let router = Server::builder().add_service(svc);
    let addr = spawn(|incoming| router.serve_with_incoming(incoming)).await;
    (addr, drops)
}

/// Binds 127.0.0.1:0 and runs `serve` on it in a task; the task ends with
/// the test's runtime.
async fn spawn<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpIncoming) -> Fut,
    Fut: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(TcpIncoming::from(listener));
    tokio::spawn(async move { server.await.expect("the server failed") });
    addr
}

// ---- the client: tonic's `client::Grpc` over a real `Channel` ----

struct CatalogClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl CatalogClient {
    async fn connect(addr: SocketAddr) -> Self {
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let channel = within("connecting", endpoint.connect())
            .await
            .expect("connect");
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn get(
        &mut self,
        request: tonic::Request<GetRequest>,
    ) -> Result<tonic::Response<Item>, Status> {
        within("the channel to be ready", self.grpc.ready())
            .await
            .expect("channel ready");
        let path = PathAndQuery::from_static("/demo.Catalog/Get");
        within(
            "a unary call",
            self.grpc.unary(request, path, ProstCodec::default()),
        )
        .await
    }

    async fn count(&mut self, request: CountRequest) -> Result<Streaming<Item>, Status> {
        within("the channel to be ready", self.grpc.ready())
            .await
            .expect("channel ready");
        let path = PathAndQuery::from_static("/demo.Catalog/Count");
        let call =
            self.grpc
                .server_streaming(tonic::Request::new(request), path, ProstCodec::default());
        Ok(within("a streaming call's head", call).await?.into_inner())
    }
}

fn get(key: &str) -> tonic::Request<GetRequest> {
    tonic::Request::new(GetRequest {
        key: key.to_owned(),
    })
}

async fn next(stream: &mut Streaming<Item>) -> Result<Option<Item>, Status> {
    within("the next message", stream.message()).await
}

fn assert_on_worker(thread: &str) {
    assert!(
        thread.starts_with(&format!("{PREFIX}-")),
        "ran on {thread:?}, not on a worker"
    );
}

// ---- tests ----

/// A unary call answers with its message, and both the request metadata the
/// handler read and the response metadata it set (custom headers) arrive
/// intact.
#[tokio::test]
async fn unary_ok_keeps_metadata() {
    let (addr, _drops) = start().await;
    let mut client = CatalogClient::connect(addr).await;

    let mut request = get("answer");
    request
        .metadata_mut()
        .insert("x-request-id", "req-7".parse().unwrap());
    let response = client.get(request).await.expect("Get answer");

    let served_by = response.metadata().get("x-served-by").expect("x-served-by");
    let served_by = served_by.to_str().unwrap().to_owned();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-7");
    let item = response.into_inner();
    assert_eq!((item.key.as_str(), item.value), ("answer", 42));
    assert_eq!(served_by, item.worker);
}

/// A handler's error status reaches the client intact, code and message:
/// tonic answers it trailers-only (`grpc-status` and `grpc-message` in the
/// head), and the layer passes that head through.
#[tokio::test]
async fn unary_error_status_arrives_intact() {
    let (addr, _drops) = start().await;
    let mut client = CatalogClient::connect(addr).await;

    let status = client.get(get("unicorn")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing");

    // The connection and the workers are still fine afterwards.
    let item = client
        .get(get("year"))
        .await
        .expect("Get year")
        .into_inner();
    assert_eq!(item.value, 2005);
}

/// A server-streaming call delivers every message in order, all produced on
/// one worker thread, then ends with the `grpc-status: 0` trailers.
#[tokio::test]
async fn streaming_delivers_in_order_then_ok_trailers() {
    let (addr, mut drops) = start().await;
    let mut client = CatalogClient::connect(addr).await;
    const N: u64 = 500;

    let mut stream = client
        .count(CountRequest {
            count: N,
            fail_at: None,
        })
        .await
        .expect("Count");
    let mut values = Vec::new();
    let mut threads = Vec::new();
    while let Some(item) = next(&mut stream).await.expect("a message") {
        values.push(item.value);
        threads.push(item.worker);
    }
    assert_eq!(values, (0..N).collect::<Vec<_>>());
    threads.dedup();
    assert_eq!(threads.len(), 1, "one request, one thread: {threads:?}");
    assert_on_worker(&threads[0]);

    let trailers = within("the trailers", stream.trailers())
        .await
        .expect("trailers")
        .expect("the stream ended without trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // The exhausted producer was dropped where it ran.
    let dropped = within("the producer's drop", drops.recv()).await.unwrap();
    assert_eq!(
        (dropped.thread.as_str(), dropped.produced),
        (threads[0].as_str(), N)
    );
}

/// A stream that fails midway delivers the messages before the failure,
/// then the error status (code, message and custom metadata) from the
/// trailers.
#[tokio::test]
async fn streaming_error_midway_arrives_after_messages() {
    let (addr, _drops) = start().await;
    let mut client = CatalogClient::connect(addr).await;

    let mut stream = client
        .count(CountRequest {
            count: 10,
            fail_at: Some(3),
        })
        .await
        .expect("Count");
    for expected in 0..3 {
        let item = next(&mut stream).await.expect("a message").expect("more");
        assert_eq!(item.value, expected);
    }
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "gave up at 3");
    assert_eq!(status.metadata().get("x-failed-at").unwrap(), "3");
}

/// A client that drops a streaming call midway stops its producer: the
/// (endless) iterator is dropped, on the worker thread that ran it.
#[tokio::test]
async fn cancelled_stream_drops_producer_on_its_worker() {
    let (addr, mut drops) = start().await;
    let mut client = CatalogClient::connect(addr).await;

    let mut stream = client
        .count(CountRequest {
            count: u64::MAX,
            fail_at: None,
        })
        .await
        .expect("Count");
    let first = next(&mut stream).await.expect("a message").expect("more");
    let second = next(&mut stream).await.expect("a message").expect("more");
    assert_eq!((first.value, second.value), (0, 1));
    assert!(drops.try_recv().is_err(), "dropped before the cancel");

    // Dropping the stream resets the HTTP/2 stream; hyper drops the
    // `ThreadAffinityBody`, and the worker drops tonic's encoder with the
    // producer in it.
    drop(stream);
    let dropped = within("the producer's drop", drops.recv()).await.unwrap();
    assert_on_worker(&dropped.thread);
    assert_eq!(dropped.thread, first.worker);
    assert!(dropped.produced < u64::MAX);

    // The worker goes on serving.
    let item = client.get(get("answer")).await.expect("Get").into_inner();
    assert_eq!(item.value, 42);
}

/// The handlers run on the pool's worker threads, never on the runtime's:
/// every reply names a worker, for concurrent unary and streaming calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_on_worker_threads() {
    let (addr, _drops) = start().await;
    let client = CatalogClient::connect(addr).await;

    let calls = (0..8).map(|i| {
        let mut client = CatalogClient {
            grpc: client.grpc.clone(),
        };
        tokio::spawn(async move {
            let mut threads = vec![client.get(get("answer")).await.unwrap().into_inner().worker];
            let mut stream = client
                .count(CountRequest {
                    count: 3 + i,
                    fail_at: None,
                })
                .await
                .unwrap();
            while let Some(item) = next(&mut stream).await.unwrap() {
                threads.push(item.worker);
            }
            threads
        })
    });
    for call in calls {
        let threads = within("a client task", call).await.unwrap();
        assert!(threads.len() > 3);
        for thread in &threads {
            assert_on_worker(thread);
        }
    }
}

/// The layer also stacks on a whole tonic server (`Server::builder().layer`),
/// so every service's handlers run on the workers, with statuses intact.
#[tokio::test]
async fn layer_on_whole_server() {
    let (dropped, _drops) = mpsc::unbounded_channel();
    let router = Server::builder()
        .layer(layer())
        .add_service(Catalog { dropped });
    let addr = spawn(|incoming| router.serve_with_incoming(incoming)).await;
    let mut client = CatalogClient::connect(addr).await;

    let item = client.get(get("answer")).await.expect("Get").into_inner();
    assert_on_worker(&item.worker);
    let status = client.get(get("unicorn")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "no such thing")
    );
    let mut stream = client
        .count(CountRequest {
            count: 2,
            fail_at: None,
        })
        .await
        .expect("Count");
    assert_eq!(next(&mut stream).await.unwrap().unwrap().value, 0);
    assert_eq!(next(&mut stream).await.unwrap().unwrap().value, 1);
    assert!(next(&mut stream).await.unwrap().is_none());
}

/// With the `tonic` feature, a wrapped service mounts by its own gRPC name:
/// `add_service(layer.layer(svc))`, no wrapper.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn wrapped_service_keeps_its_grpc_name() {
    let (dropped, _drops) = mpsc::unbounded_channel();
    let router = Server::builder().add_service(layer().layer(Catalog { dropped }));
    let addr = spawn(|incoming| router.serve_with_incoming(incoming)).await;
    let mut client = CatalogClient::connect(addr).await;
    let item = client.get(get("answer")).await.expect("Get").into_inner();
    assert_on_worker(&item.worker);
}

/// The `grpc_server` example serves, answers its own client over loopback
/// (unary, error status, stream), and every answer checks out.
#[tokio::test]
async fn example_self_test_passes() {
    let demo = within("the example's self-test", grpc_server::self_test())
        .await
        .expect("self-test");
    assert_eq!(demo.primes.len(), 5);
}
