//! Small data frames merge while the reader is behind (`merge_frames`):
//! bytes and order are kept, trailers are not crossed, large frames are not
//! copied, a waiting reader is never held back, and `merge_frames(0)` turns
//! it off.
//!
//! "The reader is behind" is made certain, not timed: each test reads only
//! after the inner body has reported its own end.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tower_affinity::blocking::{service_fn, IterBody};
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{next_data, next_frame, read_frames, send, within, ScriptedBody, Step};

/// Wraps a body and reports when it has been polled to its end.
struct Tell<B> {
    inner: B,
    done: mpsc::UnboundedSender<()>,
}

impl<B: Body + Unpin> Body for Tell<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            let _ = self.done.send(());
        }
        polled
    }
}

/// A layer of one worker with the given merge setting.
fn layer(merge: Option<usize>) -> ThreadAffinityLayer {
    let builder = ThreadAffinityLayer::builder().workers(1);
    match merge {
        Some(bytes) => builder.merge_frames(bytes),
        None => builder,
    }
    .build()
}

/// Serves `steps` once the whole body has been produced; returns every
/// frame the reader gets.
async fn frames_when_behind(layer: &ThreadAffinityLayer, steps: Vec<Step>) -> Vec<Frame<Bytes>> {
    let (done, mut ended) = mpsc::unbounded_channel();
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Some(steps)));
    let mut svc = layer.layer(service_fn(move |_: Request<()>| {
        let steps = steps.lock().unwrap().take().expect("one request");
        Response::new(Tell {
            inner: ScriptedBody::new(steps),
            done: done.clone(),
        })
    }));
    let mut body = send(&mut svc, Request::new(())).await.into_body();
    within("the body's end", ended.recv()).await;
    let (frames, error) = read_frames(&mut body).await;
    assert!(error.is_none(), "{error:?}");
    frames
}

fn data(bytes: impl Into<Bytes>) -> Step {
    Step::Frame(Frame::data(bytes.into()))
}

/// 1,000 rows produced while the reader does not read arrive as a few
/// frames holding every byte in order (by default, without configuration).
#[tokio::test]
async fn small_frames_merge_keeping_bytes_and_order() {
    const ROWS: usize = 1_000;
    let row = |i: usize| Bytes::from(format!("row {i:04}\n"));
    let layer = layer(None);
    let (done, mut ended) = mpsc::unbounded_channel();
    let mut svc = layer.layer(service_fn(move |_: Request<()>| {
        Response::new(Tell {
            inner: IterBody::new((0..ROWS).map(move |i| Ok::<_, Infallible>(row(i)))),
            done: done.clone(),
        })
    }));
    let mut body = send(&mut svc, Request::new(())).await.into_body();
    within("the body's end", ended.recv()).await;
    let (frames, error) = read_frames(&mut body).await;
    assert!(error.is_none());
    let got: Vec<u8> = frames
        .iter()
        .flat_map(|frame| frame.data_ref().unwrap().to_vec())
        .collect();
    let want: Vec<u8> = (0..ROWS).flat_map(|i| row(i).to_vec()).collect();
    assert_eq!(got, want);
    assert!(frames.len() <= 3, "{} frames for {ROWS} rows", frames.len());
}

/// Data merges up to trailers and starts again after them: the trailers
/// frame stays where it was, whole.
#[tokio::test]
async fn trailers_are_not_merged_across() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let steps = vec![
        data("a"),
        data("b"),
        data("c"),
        Step::Frame(Frame::trailers(trailers.clone())),
        data("d"),
        data("e"),
    ];
    let frames = frames_when_behind(&layer(None), steps).await;
    let shape: Vec<String> = frames
        .iter()
        .map(|frame| match frame.data_ref() {
            Some(data) => String::from_utf8(data.to_vec()).unwrap(),
            None => format!("trailers {:?}", frame.trailers_ref().unwrap()),
        })
        .collect();
    assert_eq!(shape, ["abc", &format!("trailers {trailers:?}"), "de"]);
}

/// Frames of the cap or more are never copied (pointer-equal) nor merged
/// into; the small frames between them merge.
#[tokio::test]
async fn large_frames_are_not_copied() {
    const CAP: usize = 16 * 1024;
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    let exact = Bytes::from(vec![8u8; CAP]);
    let steps = vec![
        data("x"),
        data(big.clone()),
        data("y"),
        data("z"),
        data(exact.clone()),
        data("w"),
    ];
    let frames = frames_when_behind(&layer(Some(CAP)), steps).await;
    let data: Vec<&Bytes> = frames.iter().map(|f| f.data_ref().unwrap()).collect();
    assert_eq!(data.len(), 5, "x, big, yz, exact, w");
    assert_eq!(data[0], "x");
    assert_eq!(
        data[1].as_ptr(),
        big.as_ptr(),
        "the 64 KiB frame was copied"
    );
    assert_eq!(data[2], "yz");
    assert_eq!(
        data[3].as_ptr(),
        exact.as_ptr(),
        "the 16 KiB frame was copied"
    );
    assert_eq!(data[4], "w");
}

/// A reader waiting for the next frame gets it as soon as it is produced,
/// while the inner body is still pending on the next one: nothing is held
/// back to merge.
#[tokio::test]
async fn a_waiting_reader_gets_the_frame_at_once() {
    struct Fed(mpsc::UnboundedReceiver<Bytes>);
    impl Body for Fed {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|next| next.map(|b| Ok(Frame::data(b))))
        }
    }
    let (feed, fed) = mpsc::unbounded_channel();
    let fed = std::sync::Arc::new(std::sync::Mutex::new(Some(fed)));
    let layer = layer(None);
    let mut svc = layer.layer(service_fn(move |_: Request<()>| {
        Response::new(Fed(fed.lock().unwrap().take().expect("one request")))
    }));
    feed.send(Bytes::from("first")).unwrap();
    let mut body = send(&mut svc, Request::new(())).await.into_body();
    assert_eq!(next_data(&mut body).await, "first");
    for n in 0..3 {
        let chunk = Bytes::from(format!("chunk {n}"));
        feed.send(chunk.clone()).unwrap();
        // The body stays pending after this chunk: a held frame would hang.
        assert_eq!(next_data(&mut body).await, chunk);
    }
    drop(feed);
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
}

/// With `merge_frames(0)`, every small frame arrives as its own frame even
/// though the reader is behind.
#[tokio::test]
async fn merging_off_gives_one_frame_per_item() {
    let steps = (0..5).map(|i| data(format!("item {i}"))).collect();
    let frames = frames_when_behind(&layer(Some(0)), steps).await;
    let got: Vec<&Bytes> = frames.iter().map(|f| f.data_ref().unwrap()).collect();
    let want: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("item {i}"))).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>());
}
