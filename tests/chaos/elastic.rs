//! The chaos soak's elastic rounds (#20): on a pool of one core worker and
//! up to three spares that retire after 20 ms, a handler hangs on worker 0
//! past its spares' keep-alive, and a stream's reader stops reading; quick
//! requests are answered all along, by spares, and the spares retire once
//! nothing waits.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::mpsc;
use tower_affinity::{blocking, ThreadAffinityBody, ThreadAffinityLayer};

/// Rounds of a hang that outlives the spares' keep-alive.
pub const ROUNDS: u64 = 5;
/// Quick requests sent at each step of a round.
const QUICK: u64 = 4;

/// A body that never ends: 1 KiB a frame, for a reader that stops.
struct Endless;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'e'; 1024])))))
    }
}

type Answer = Either<Full<Bytes>, Endless>;

/// The test's ends of the elastic pool: it hears when a hang has started
/// (and on which thread), and lets it go.
pub struct Gates {
    started: mpsc::UnboundedReceiver<String>,
    release: std::sync::mpsc::Sender<()>,
}

fn name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

/// The pool and its service: `/elastic/hang/r` blocks until released,
/// `/elastic/stream/r` never ends, anything else answers its thread.
pub fn pool() -> (
    ThreadAffinityLayer,
    impl tower::Service<
            Request<Incoming>,
            Response = Response<ThreadAffinityBody>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    Gates,
) {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(4)
        .keep_alive(Duration::from_millis(20))
        .body_buffer(2)
        .thread_name("elastic")
        .build();
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let service = tower_layer::Layer::layer(
        &layer,
        blocking::service_fn(move |request: Request<Incoming>| -> Response<Answer> {
            let path = request.uri().path();
            if path.starts_with("/elastic/hang/") {
                started_tx.send(name()).unwrap();
                released.lock().unwrap().recv().unwrap();
            } else if path.starts_with("/elastic/stream/") {
                return Response::new(Either::Right(Endless));
            }
            Response::new(Either::Left(Full::new(Bytes::from(name()))))
        }),
    );
    (layer, service, Gates { started, release })
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    path: String,
) -> Response<Incoming> {
    let request = Request::get(format!("http://{addr}/elastic/{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.request(request).await.unwrap()
}

/// Quick requests, each answered by a thread other than the hung worker's.
async fn quick(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    what: &str,
) {
    for q in 0..QUICK {
        let answer = get(client, addr, format!("quick/{q}")).await;
        assert_eq!(answer.status(), StatusCode::OK, "{what}");
        let thread = answer.into_body().collect().await.unwrap().to_bytes();
        assert!(thread.starts_with(b"elastic-"), "{what}: {thread:?}");
        assert_ne!(
            &thread[..],
            b"elastic-0",
            "{what}: served by the hung worker"
        );
    }
}

/// Waits until every spare has retired.
async fn until_spares_retired(layer: &ThreadAffinityLayer) {
    loop {
        let stats = layer.stats();
        if stats.threads() == 1 && stats.spares_retired() == stats.spares_started() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the elastic rounds beside the soak.
pub async fn run(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    layer: &ThreadAffinityLayer,
    mut gates: Gates,
) {
    for r in 0..ROUNDS {
        // The hang must land on worker 0: the last round's spares go first.
        until_spares_retired(layer).await;
        let hang = tokio::spawn({
            let client = client.clone();
            async move { get(&client, addr, format!("hang/{r}")).await }
        });
        assert_eq!(
            gates.started.recv().await.unwrap(),
            "elastic-0",
            "round {r}"
        );
        quick(client, addr, &format!("round {r}, a spare")).await;
        until_spares_retired(layer).await;
        quick(client, addr, &format!("round {r}, past the keep-alive")).await;
        // A reader that takes the head and one frame, then stops.
        let mut stalled = get(client, addr, format!("stream/{r}")).await.into_body();
        let first = stalled.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|data| !data.is_empty()));
        quick(client, addr, &format!("round {r}, beside a stalled stream")).await;
        drop(stalled);
        gates.release.send(()).unwrap();
        let held = hang.await.unwrap();
        assert_eq!(held.status(), StatusCode::OK, "round {r}");
        let thread = held.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&thread[..], b"elastic-0", "round {r}");
    }
}
