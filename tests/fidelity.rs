//! Guarantee 8: the response passes through unchanged: status, headers,
//! extensions, trailers after the data, exact size hints, end of stream,
//! inner body errors, and the data's own buffers.

mod common;

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Empty, Full};
use tower_affinity::blocking::{service_fn, ReaderBody};
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{collect, get, next_data, next_frame, read_frames, send, ScriptedBody, Step};

#[derive(Debug, Clone, PartialEq)]
struct Tag(&'static str);

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: http::Method,
    uri: http::Uri,
    header: Option<HeaderValue>,
    tag: Option<Tag>,
}

/// The status, every header value (repeated names included) and the
/// extensions of the inner response reach the caller; the request's method,
/// URI, headers and extensions reach the inner service.
#[tokio::test]
async fn status_headers_and_extensions_pass_through() {
    let seen = Arc::new(Mutex::new(None));
    let layer = ThreadAffinityLayer::new(1);
    let log = seen.clone();
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        *log.lock().unwrap() = Some(Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            header: req.headers().get("x-in").cloned(),
            tag: req.extensions().get::<Tag>().cloned(),
        });
        let mut response = Response::new(Full::new(Bytes::from("short and stout")));
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        let headers = response.headers_mut();
        headers.insert("x-single", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        response.extensions_mut().insert(Tag("out"));
        response
    }));

    let mut request = Request::put("/pot?brew=1")
        .header("x-in", "in")
        .body(())
        .unwrap();
    request.extensions_mut().insert(Tag("in"));
    let response = send(&mut svc, request).await;

    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(response.headers()["x-single"], "one");
    let multi: Vec<_> = response.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(response.extensions().get::<Tag>(), Some(&Tag("out")));
    assert_eq!(collect(response.into_body()).await, "short and stout");
    assert_eq!(
        seen.lock().unwrap().clone().unwrap(),
        Seen {
            method: http::Method::PUT,
            uri: "/pot?brew=1".parse().unwrap(),
            header: Some(HeaderValue::from_static("in")),
            tag: Some(Tag("in")),
        }
    );
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    trailers
}

/// A layer whose service answers `/{script}` with that scripted body.
fn scripted() -> impl tower::Service<
    Request<()>,
    Response = Response<tower_affinity::ThreadAffinityBody>,
    Error = std::convert::Infallible,
> {
    ThreadAffinityLayer::new(1).layer(service_fn(|req: Request<()>| {
        let data = |s: &'static str| Step::Frame(Frame::data(Bytes::from_static(s.as_bytes())));
        let trailers = || Step::Frame(Frame::trailers(trailers()));
        let steps = match req.uri().path() {
            "/at-once" => vec![data("a"), data("b"), trailers()],
            "/streamed" => vec![data("a"), Step::Yield, data("b"), Step::Yield, trailers()],
            "/trailers-only" => vec![trailers()],
            "/error-after-data" => vec![data("a"), Step::Error("disk on fire")],
            "/error-first" => vec![Step::Error("no disk at all")],
            _ => vec![],
        };
        Response::new(ScriptedBody::new(steps))
    }))
}

/// Trailers arrive after the data frames, and last, whether the body makes
/// its frames at once, streamed with waits between them, or has trailers
/// only.
#[tokio::test]
async fn trailers_arrive_after_the_data() {
    let mut svc = scripted();
    for (path, data) in [
        ("/at-once", &["a", "b"][..]),
        ("/streamed", &["a", "b"]),
        ("/trailers-only", &[]),
    ] {
        let mut body = send(&mut svc, get(path)).await.into_body();
        let (mut frames, error) = read_frames(&mut body).await;
        assert!(error.is_none(), "{path}: {error:?}");
        let last = frames.pop().expect("a trailers frame");
        assert_eq!(
            last.into_trailers().ok(),
            Some(trailers()),
            "{path}: trailers last"
        );
        // Data frames may be merged while the reader is behind: compare
        // the bytes, not the frame boundaries.
        let got: Vec<u8> = frames
            .into_iter()
            .flat_map(|frame| frame.into_data().expect("data before the trailers"))
            .collect();
        assert_eq!(got, data.concat().as_bytes(), "{path}");
    }
}

/// An inner body error after the head is a body error carrying the inner
/// error's message, not a clean end; so is one in the first frame.
#[tokio::test]
async fn inner_body_errors_surface_as_body_errors() {
    let mut svc = scripted();

    let mut body = send(&mut svc, get("/error-after-data")).await.into_body();
    assert_eq!(next_data(&mut body).await, "a");
    let error = next_frame(&mut body).await.unwrap().unwrap_err();
    assert!(error.to_string().contains("disk on fire"), "{error}");
    assert!(next_frame(&mut body).await.is_none());

    let mut body = send(&mut svc, get("/error-first")).await.into_body();
    let error = next_frame(&mut body).await.unwrap().unwrap_err();
    assert!(error.to_string().contains("no disk at all"), "{error}");
}

/// An exact size hint survives, before any frame is read, for a one-frame
/// body and for a streamed many-frame body (whose hint then counts down to
/// what is left).
#[tokio::test]
async fn exact_size_hint_survives() {
    const LEN: usize = 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let layer = ThreadAffinityLayer::new(1);
    let mut one = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from("eleven char")))
    }));
    let mut many = layer.layer(service_fn(|_: Request<()>| {
        let reader = Cursor::new(vec![7u8; LEN]);
        Response::new(
            ReaderBody::new(reader)
                .chunk_size(CHUNK)
                .with_length(LEN as u64),
        )
    }));

    let body = send(&mut one, get("/")).await.into_body();
    assert_eq!(body.size_hint().exact(), Some(11));
    assert_eq!(collect(body).await, "eleven char");

    let mut body = send(&mut many, get("/")).await.into_body();
    assert_eq!(body.size_hint().exact(), Some(LEN as u64));
    let mut left = LEN;
    while left > 0 {
        left -= next_data(&mut body).await.len();
        assert_eq!(body.size_hint().exact(), Some(left as u64));
    }
    assert!(next_frame(&mut body).await.is_none());
}

/// An empty body is at its end before it is polled, and a non-empty one is
/// not (a wrong answer either way loses or invents data).
#[tokio::test]
async fn is_end_stream_passes_through() {
    let layer = ThreadAffinityLayer::new(1);
    let mut empty = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Empty::<Bytes>::new())
    }));
    let mut full = layer.layer(service_fn(|_: Request<()>| {
        Response::new(Full::new(Bytes::from("x")))
    }));

    let mut body = send(&mut empty, get("/")).await.into_body();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(next_frame(&mut body).await.is_none());

    let body = send(&mut full, get("/")).await.into_body();
    assert!(!body.is_end_stream());
    assert_eq!(collect(body).await, "x");
}

/// The `Bytes` the inner body yields reach the reader without a copy: the
/// same buffer (pointer-equal), for a one-frame and a streamed body.
#[tokio::test]
async fn data_is_not_copied() {
    let made: Arc<Mutex<Vec<usize>>> = Arc::default();
    let log = made.clone();
    let layer = ThreadAffinityLayer::new(1);
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        let frames = if req.uri().path() == "/one" { 1 } else { 3 };
        let chunks: Vec<Bytes> = (0..frames)
            .map(|i| Bytes::from(vec![i as u8; 64 * 1024]))
            .collect();
        log.lock()
            .unwrap()
            .extend(chunks.iter().map(|c| c.as_ptr() as usize));
        let steps = chunks.into_iter().map(|c| Step::Frame(Frame::data(c)));
        Response::new(ScriptedBody::new(steps))
    }));

    for path in ["/one", "/three"] {
        made.lock().unwrap().clear();
        let mut body = send(&mut svc, get(path)).await.into_body();
        let (frames, error) = read_frames(&mut body).await;
        assert!(error.is_none());
        let got: Vec<usize> = frames
            .iter()
            .map(|frame| frame.data_ref().unwrap().as_ptr() as usize)
            .collect();
        assert_eq!(got, *made.lock().unwrap(), "{path}: a chunk was copied");
    }
}
