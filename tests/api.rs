//! The API as a tower/axum user meets it: `service` without the `Layer`
//! trait, the re-exported trait, an empty `Default` body for layers that
//! answer by themselves, `IterBody::from_chunks`, one `LengthLimitError`,
//! and `PrebufferLayer` with a layer between it and the pool.

mod common;

use std::convert::Infallible;
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use common::{collect, send, within};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_affinity::blocking::{self, IterBody, LengthLimitError};
use tower_affinity::prebuffer::{PrebufferLayer, PrebufferedBody, ResponseFuture};
use tower_affinity::{Layer, ThreadAffinityBody, ThreadAffinityLayer};

/// The name of the thread this runs on.
fn thread() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// `ThreadAffinityLayer::service` and the re-exported `Layer` trait both
/// wrap a service that then runs on a worker, with no `tower-layer` import.
#[tokio::test]
async fn service_and_reexported_layer_run_on_the_workers() {
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .thread_name("api-svc")
        .build();
    let handler = blocking::service_fn(|_: Request<()>| Response::new(thread()));
    let mut by_method = layer.service(handler);
    let mut by_trait = Layer::layer(&layer, handler);
    for svc in [&mut by_method, &mut by_trait] {
        let response = send(svc, Request::new(())).await;
        assert_eq!(collect(response.into_body()).await, "api-svc-0");
    }
}

/// `ThreadAffinityBody::default()` is empty: no frame, an exact size of
/// zero, and ended before it is polled.
#[tokio::test]
async fn default_body_is_empty_and_ended() {
    let body = ThreadAffinityBody::default();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    assert_eq!(collect(body).await, "");
}

/// tower-http's `TimeoutLayer::with_status_code` (which needs a `Default`
/// body) stacks around the layer: a handler that does not answer in time
/// gets the timeout's status, and the worker serves on once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_http_timeout_wraps_the_layer() {
    let layer = ThreadAffinityLayer::new(1);
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(held));
    let svc = ServiceBuilder::new()
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_millis(50),
        ))
        .service(layer.service(blocking::service_fn(move |req: Request<()>| {
            if req.uri().path() == "/held" {
                // Blocks the worker until the test lets it go.
                let _ = held.lock().unwrap().recv();
            }
            Response::new(String::from("done"))
        })));
    let response = within("the timeout", svc.clone().oneshot(common::get("/held")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(collect(response.into_body()).await, "");

    release.send(()).unwrap();
    let response = within("the next request", svc.oneshot(common::get("/quick")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, "done");
}

/// `IterBody::from_chunks` takes `String`, `Vec<u8>` and `&'static str`
/// chunks, yields them in order, one frame each, and knows it has ended
/// after its last chunk.
#[tokio::test]
async fn from_chunks_takes_plain_chunks() {
    let strings = IterBody::from_chunks(vec![String::from("a"), String::from("bc")]);
    let vecs = IterBody::from_chunks([b"de".to_vec(), b"f".to_vec()]);
    let strs = IterBody::from_chunks(["gh", "i"]);
    assert_eq!(frames(strings).await, ["a", "bc"]);
    assert_eq!(frames(vecs).await, ["de", "f"]);

    let mut strs = strs;
    assert!(!strs.is_end_stream());
    let first = strs.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "gh");
    let last = strs.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(last, "i");
    assert!(
        strs.is_end_stream(),
        "an exact-size iterator ends with its last chunk"
    );
}

async fn frames<B>(mut body: B) -> Vec<Bytes>
where
    B: Body<Data = Bytes, Error = Infallible> + Unpin,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        out.push(frame.unwrap().into_data().unwrap());
    }
    out
}

/// `BodyReader`'s limit error is http-body-util's `LengthLimitError`: the
/// downcast that catches `Limited`'s error catches `BodyReader`'s too.
#[test]
fn one_length_limit_error_for_both_crates() {
    fn is_limit(error: &(dyn std::error::Error + 'static)) -> bool {
        error.is::<http_body_util::LengthLimitError>() && error.is::<LengthLimitError>()
    }
    let mut text = String::new();
    let read = blocking::BodyReader::new(Full::new(Bytes::from("too long")))
        .limit(3)
        .read_to_string(&mut text)
        .unwrap_err();
    assert!(is_limit(read.get_ref().unwrap()));

    let limited =
        futures::executor::block_on(Limited::new(Full::new(Bytes::from("too long")), 3).collect());
    assert!(is_limit(&*limited.unwrap_err()));
}

/// `PrebufferLayer` takes a `usize` limit like `BodyReader`, names its
/// future, and works with a layer between it and the pool that changes the
/// response body type: here one that boxes it.
#[tokio::test]
async fn prebuffer_accepts_a_layer_in_between() {
    const LIMIT: usize = 16;
    let mut svc = ServiceBuilder::new()
        .layer(PrebufferLayer::new(LIMIT))
        .map_response(|response: Response<ThreadAffinityBody>| response.map(BodyExt::boxed_unsync))
        .layer(ThreadAffinityLayer::new(1))
        .service(blocking::service_fn(
            |req: Request<PrebufferedBody<String>>| {
                let mut upload = String::new();
                blocking::BodyReader::new(req.into_body())
                    .limit(LIMIT)
                    .read_to_string(&mut upload)
                    .unwrap();
                Response::new(upload.to_uppercase())
            },
        ));
    let future: ResponseFuture<_, String> = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::from("abc")));
    let response = within("the response", future).await.unwrap();
    let body = within("the body", response.into_body().collect()).await;
    assert_eq!(body.unwrap().to_bytes(), "ABC");

    let over = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new("x".repeat(LIMIT + 1)));
    let response = within("the 413", over).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
}
