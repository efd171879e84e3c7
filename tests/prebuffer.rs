//! Request bodies read on the async side before dispatch, so that slow
//! uploaders do not pin workers.

mod common;

use std::convert::Infallible;
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio_stream_shim::ChannelStream;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_affinity::prebuffer::{OverLimit, PrebufferLayer, PrebufferedBody};
use tower_affinity::{blocking, ThreadAffinityLayer};

const HANG_GUARD: Duration = Duration::from_secs(20);

/// A request body fed by the test, chunk by chunk.
type Upload = StreamBody<ChannelStream>;

mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;
    use tokio::sync::mpsc;

    /// A receiver as a `Stream` of frames.
    pub struct ChannelStream(pub mpsc::Receiver<Bytes>);

    impl futures::Stream for ChannelStream {
        type Item = Result<Frame<Bytes>, std::io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }
}

fn upload() -> (mpsc::Sender<Bytes>, Upload) {
    let (tx, rx) = mpsc::channel(4);
    (tx, StreamBody::new(ChannelStream(rx)))
}

/// Echoes the upload's length, or answers "quick" to `/quick`.
fn handler(req: Request<PrebufferedBody<Upload>>) -> Response<String> {
    if req.uri().path() == "/quick" {
        return Response::new("quick".into());
    }
    let mut data = Vec::new();
    blocking::BodyReader::new(req.into_body())
        .limit(usize::MAX)
        .read_to_end(&mut data)
        .unwrap();
    Response::new(data.len().to_string())
}

async fn text(
    response: Response<tower_affinity::error::ResponseBody<tower_affinity::ThreadAffinityBody>>,
) -> (StatusCode, String) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// With one worker, a half-sent upload does not hold the worker: a second
/// request completes while the upload waits for its client, then the
/// upload is served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_does_not_pin_the_worker() {
    let svc = ServiceBuilder::new()
        .layer(PrebufferLayer::new(1 << 20))
        .layer(ThreadAffinityLayer::new(1))
        .service(blocking::service_fn(handler));
    let (tx, body) = upload();
    tx.send(Bytes::from(vec![1; 1000])).await.unwrap();
    let slow = tokio::spawn(
        svc.clone()
            .oneshot(Request::post("/up").body(body).unwrap()),
    );

    let (_, quick_body) = upload();
    let quick = Request::get("/quick").body(quick_body).unwrap();
    let quick = common::within_for(
        HANG_GUARD,
        "/quick (is the worker pinned by the slow upload?)",
        svc.clone().oneshot(quick),
    )
    .await
    .unwrap();
    assert_eq!(text(quick).await.1, "quick");
    assert!(!slow.is_finished());

    tx.send(Bytes::from(vec![2; 500])).await.unwrap();
    drop(tx);
    let slow = common::within_for(HANG_GUARD, "/slow", slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(slow).await, (StatusCode::OK, "1500".into()));
}

/// A body over the limit is answered 413 without reaching the inner
/// service, under the default policy.
#[tokio::test]
async fn over_limit_is_413() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let mut svc = ServiceBuilder::new()
        .layer(PrebufferLayer::new(100))
        .layer(ThreadAffinityLayer::new(1))
        .service(blocking::service_fn(
            move |_req: Request<PrebufferedBody<String>>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Response::new(String::new())
            },
        ));
    let request = Request::new("x".repeat(101));
    let response = svc.ready().await.unwrap().call(request).await.unwrap();
    let (status, body) = text(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("Payload Too Large"), "{body}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    let response = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new("x".repeat(100)))
        .await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
}

/// Under `OverLimit::Stream`, a body over the limit reaches the handler
/// whole: the buffered part, then the rest from the client, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_streams_the_rest_in_order() {
    let svc = ServiceBuilder::new()
        .layer(PrebufferLayer::new(10).over_limit(OverLimit::Stream))
        .layer(ThreadAffinityLayer::new(1))
        .service(blocking::service_fn(
            |req: Request<PrebufferedBody<Upload>>| {
                let mut data = Vec::new();
                blocking::BodyReader::new(req.into_body())
                    .read_to_end(&mut data)
                    .unwrap();
                Response::new(http_body_util::Full::new(Bytes::from(data)))
            },
        ));
    let (tx, body) = upload();
    let sender = tokio::spawn(async move {
        for i in 0..100u8 {
            tx.send(Bytes::from(vec![i; 7])).await.unwrap();
        }
    });
    let response = common::within_for(HANG_GUARD, "the response", svc.oneshot(Request::new(body)))
        .await
        .unwrap();
    sender.await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let expected: Vec<u8> = (0..100u8).flat_map(|i| [i; 7]).collect();
    assert_eq!(body, expected);
}

/// A request body of frames known in advance.
type FrameList =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Trailers of the request survive buffering.
#[tokio::test]
async fn request_trailers_survive() {
    let svc = ServiceBuilder::new()
        .layer(PrebufferLayer::new(1024))
        .layer(ThreadAffinityLayer::new(1))
        .service(blocking::service_fn(
            |req: Request<PrebufferedBody<FrameList>>| {
                let frames = futures::executor::block_on(req.into_body().collect()).unwrap();
                let trailer = frames.trailers().unwrap()["x-sum"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                Response::new(trailer)
            },
        ));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", "42".parse().unwrap());
    let frames = vec![
        Ok(Frame::data(Bytes::from("abc"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures::stream::iter(frames));
    let response = svc.oneshot(Request::new(body)).await.unwrap();
    assert_eq!(text(response).await.1, "42");
}
