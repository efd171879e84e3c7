//! A tonic gRPC service whose handlers are plain blocking code, run on
//! `ThreadAffinityLayer`'s worker threads. No `protoc`, no code generation.
//!
//! ```text
//! PORT=50051 cargo run --example grpc_server            # serve, print how to call it
//! cargo run --example grpc_server -- client 127.0.0.1:50051
//! cargo run --example grpc_server -- --self-test        # serve on a free port, call it, exit
//! ```
//!
//! The service `demo.Primes` has a unary method, `Factor`, which factors a
//! number by trial division (CPU-bound, blocking), and a server-streaming
//! one, `Primes`, whose messages come from a blocking `Iterator`. Neither
//! is `async` in any way that matters: each handler returns at once with a
//! finished answer or a plain iterator, and tonic's own server machinery
//! (decoding, encoding, the `grpc-status` trailers) runs around them on the
//! same worker thread. Every reply names the thread that produced it.
//!
//! The messages derive `prost::Message` by hand, as `protoc` would have
//! generated them; the service is a tower service that hands each path to
//! `tonic::server::Grpc`, as tonic's generated servers do.

use std::convert::Infallible;
use std::future::{ready, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::codec::Streaming;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_affinity::{BoxError, ThreadAffinityLayer};

// ---------------------------------------------------------------------------
// Messages: what protoc would have generated from a .proto file
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct Number {
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Factors {
    #[prost(uint64, repeated, tag = "1")]
    pub factors: Vec<u64>,
    /// The thread that did the work.
    #[prost(string, tag = "2")]
    pub worker: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Range {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Prime {
    #[prost(uint64, tag = "1")]
    pub p: u64,
    /// The thread that found it.
    #[prost(string, tag = "2")]
    pub worker: String,
}

// ---------------------------------------------------------------------------
// The handlers: plain blocking code
// ---------------------------------------------------------------------------

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// `Factor`: trial division. Blocks its thread for as long as it takes,
/// which is fine on a worker and would stall a runtime thread.
fn factor(request: Request<Number>) -> Result<Response<Factors>, Status> {
    let mut n = request.into_inner().n;
    if n < 2 {
        return Err(Status::invalid_argument("n must be at least 2"));
    }
    let mut factors = Vec::new();
    let mut d = 2;
    while d * d <= n {
        while n % d == 0 {
            factors.push(d);
            n /= d;
        }
        d += 1;
    }
    if n > 1 {
        factors.push(n);
    }
    let worker = thread_name();
    let mut response = Response::new(Factors {
        factors,
        worker: worker.clone(),
    });
    // Response metadata travels in the HTTP/2 head, through the layer.
    response
        .metadata_mut()
        .insert("x-worker", worker.parse().unwrap());
    Ok(response)
}

/// `Primes`: a blocking iterator. tonic pulls the next item only when its
/// encoder, and so the response's buffer in the layer, has room; if the
/// client goes away, the worker drops the iterator on this same thread.
fn primes(
    request: Request<Range>,
) -> Result<Response<impl Stream<Item = Result<Prime, Status>> + Send>, Status> {
    let Range { from, count } = request.into_inner();
    let found = (from.max(2)..)
        .filter(|&p| (2..).take_while(|d| d * d <= p).all(|d| p % d != 0))
        .take(count as usize)
        .map(|p| {
            Ok(Prime {
                p,
                worker: thread_name(),
            })
        });
    Ok(Response::new(futures::stream::iter(found)))
}

// ---------------------------------------------------------------------------
// The tonic glue: what tonic's codegen would have written
// ---------------------------------------------------------------------------

/// The service `demo.Primes`: routes each method to tonic's server
/// machinery with the prost codec. `Clone + Send`, so the layer can give
/// each worker its own clone.
#[derive(Clone)]
pub struct PrimesService;

impl NamedService for PrimesService {
    const NAME: &'static str = "demo.Primes";
}

impl<B> tower::Service<http::Request<B>> for PrimesService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            // `ready`: the handler runs to completion inside the first poll.
            let response = match request.uri().path() {
                "/demo.Primes/Factor" => {
                    let handler = tower::service_fn(|req| ready(factor(req)));
                    grpc().unary(handler, request).await
                }
                "/demo.Primes/Primes" => {
                    let handler = tower::service_fn(|req| ready(primes(req)));
                    grpc().server_streaming(handler, request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

fn grpc<T, U>() -> tonic::server::Grpc<ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(ProstCodec::default())
}

/// Serves `demo.Primes` on `listener` until the process ends.
///
/// `Server::builder().layer` puts every service of this server on the
/// workers, which is what a server of blocking services wants. To keep some
/// services on the runtime instead, layer only the blocking one,
/// `layer.layer(PrimesService)`, and give it a `NamedService` impl through a
/// small wrapper (as `tests/tonic.rs` does).
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name("grpc-worker")
        .build();
    Server::builder()
        .layer(layer)
        .add_service(PrimesService)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

// ---------------------------------------------------------------------------
// A client: tonic's `client::Grpc` over a `Channel`
// ---------------------------------------------------------------------------

/// A client of `demo.Primes`, as tonic's codegen would have written it.
pub struct PrimesClient {
    grpc: tonic::client::Grpc<Channel>,
}

/// The longest wait for a connection, a response head or a message.
const LIMIT: Duration = Duration::from_secs(10);

impl PrimesClient {
    pub async fn connect(addr: SocketAddr) -> Result<Self, BoxError> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(LIMIT)
            .timeout(LIMIT)
            .connect()
            .await?;
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn factor(&mut self, n: u64) -> Result<Response<Factors>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/demo.Primes/Factor");
        let request = Request::new(Number { n });
        self.grpc.unary(request, path, ProstCodec::default()).await
    }

    pub async fn primes(&mut self, range: Range) -> Result<Streaming<Prime>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/demo.Primes/Primes");
        let request = Request::new(range);
        let response = self
            .grpc
            .server_streaming(request, path, ProstCodec::default());
        Ok(response.await?.into_inner())
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

/// What the demo calls returned, for printing or checking.
#[derive(Debug)]
pub struct Demo {
    pub factors: Factors,
    /// The `x-worker` response metadata of `Factor`.
    pub x_worker: String,
    pub bad_argument: Status,
    pub primes: Vec<Prime>,
}

/// Calls each method once: a good and a bad `Factor`, and a `Primes` stream.
pub async fn call(addr: SocketAddr) -> Result<Demo, BoxError> {
    let mut client = PrimesClient::connect(addr).await?;

    let response = client.factor(360).await?;
    let x_worker = response.metadata().get("x-worker").ok_or("no x-worker")?;
    let x_worker = x_worker.to_str()?.to_owned();
    let factors = response.into_inner();

    let bad_argument = match client.factor(1).await {
        Ok(_) => return Err("Factor(1) succeeded".into()),
        Err(status) => status,
    };

    let range = Range {
        from: 1000,
        count: 5,
    };
    let mut stream = client.primes(range).await?;
    let mut primes = Vec::new();
    // `None` only after the `grpc-status: 0` trailers; an error status
    // arrives as `Err`. The endpoint's timeout covers heads, not messages.
    while let Some(prime) = tokio::time::timeout(LIMIT, stream.message()).await?? {
        primes.push(prime);
    }
    Ok(Demo {
        factors,
        x_worker,
        bad_argument,
        primes,
    })
}

/// Serves on a free loopback port, calls it, and checks every answer.
pub async fn self_test() -> Result<Demo, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve(listener));
    let demo = call(addr).await;
    server.abort();
    let demo = demo?;

    let on_worker = |name: &str| name.starts_with("grpc-worker-");
    let primes: Vec<u64> = demo.primes.iter().map(|p| p.p).collect();
    let checks = [
        demo.factors.factors == [2, 2, 2, 3, 3, 5],
        on_worker(&demo.factors.worker),
        demo.x_worker == demo.factors.worker,
        demo.bad_argument.code() == Code::InvalidArgument,
        demo.bad_argument.message() == "n must be at least 2",
        primes == [1009, 1013, 1019, 1021, 1031],
        demo.primes.iter().all(|p| on_worker(&p.worker)),
    ];
    if checks.contains(&false) {
        return Err(format!("unexpected answers {checks:?}: {demo:#?}").into());
    }
    Ok(demo)
}

fn print(demo: &Demo) {
    let f = &demo.factors;
    println!("Factor(360) = {:?}  (on {})", f.factors, f.worker);
    let status = &demo.bad_argument;
    println!("Factor(1)   -> {:?}: {}", status.code(), status.message());
    let primes: Vec<u64> = demo.primes.iter().map(|p| p.p).collect();
    let mut workers: Vec<&str> = demo.primes.iter().map(|p| p.worker.as_str()).collect();
    workers.dedup();
    println!(
        "Primes(from 1000, count 5) = {primes:?}  (on {})",
        workers.join(", ")
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["client", addr] => print(&call(addr.parse()?).await?),
        ["--self-test"] => {
            print(&self_test().await?);
            println!("self-test passed");
        }
        [] => {
            let port: u16 = match std::env::var("PORT") {
                Ok(port) => port.parse()?,
                Err(_) => 50051,
            };
            // Loopback only: this is a demo.
            let listener = TcpListener::bind(("127.0.0.1", port)).await?;
            let addr = listener.local_addr()?;
            println!("demo.Primes listening on http://{addr} (gRPC, HTTP/2 cleartext)");
            println!("call it with:");
            println!("  cargo run --example grpc_server -- client {addr}");
            serve(listener).await?;
        }
        _ => {
            return Err("usage: grpc_server [client ADDR | --self-test]".into());
        }
    }
    Ok(())
}
