//! Guarantee 8 for `is_end_stream` past the first read: a multi-frame
//! body is not at its end after partial reads, and is at its end exactly
//! once its end has been read.

mod common;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tower_affinity::blocking::service_fn;
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{get, next_data, next_frame, send, ScriptedBody, Step};

/// A three-frame body, streamed (the producer yields between frames): after
/// 0, 1, 2 and 3 frames read it is not at its end; after the end is read it
/// is, and stays so.
#[tokio::test]
async fn a_streamed_body_ends_only_after_its_last_frame_is_read() {
    // Read frame by frame: no merging.
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .merge_frames(0)
        .build();
    let mut svc = layer.layer(service_fn(|_: Request<()>| {
        Response::new(ScriptedBody::new((0..3).flat_map(|i| {
            [
                Step::Frame(Frame::data(Bytes::from(format!("{i}")))),
                Step::Yield,
            ]
        })))
    }));

    let mut body = send(&mut svc, get("/")).await.into_body();
    for i in 0..3 {
        assert!(!body.is_end_stream(), "after {i} frames read");
        assert_eq!(next_data(&mut body).await, format!("{i}"));
    }
    assert!(!body.is_end_stream(), "after the last data frame");
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
    assert!(body.is_end_stream(), "after the end");
    assert!(next_frame(&mut body).await.is_none(), "still ended");
}

/// A body whose frames are all ready at once (data, then trailers) reports
/// its end only after the trailers are read.
#[tokio::test]
async fn a_body_with_trailers_ends_after_the_trailers() {
    // Read frame by frame: no merging.
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .merge_frames(0)
        .build();
    let mut svc = layer.layer(service_fn(|_: Request<()>| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        Response::new(ScriptedBody::new([
            Step::Frame(Frame::data(Bytes::from("a"))),
            Step::Frame(Frame::data(Bytes::from("b"))),
            Step::Frame(Frame::trailers(trailers)),
        ]))
    }));

    let mut body = send(&mut svc, get("/")).await.into_body();
    assert!(!body.is_end_stream(), "before any read");
    assert_eq!(next_data(&mut body).await, "a");
    assert!(!body.is_end_stream(), "after one data frame");
    assert_eq!(next_data(&mut body).await, "b");
    assert!(!body.is_end_stream(), "before the trailers");
    let frame = next_frame(&mut body).await.unwrap().unwrap();
    assert_eq!(frame.trailers_ref().unwrap()["grpc-status"], "0");
    // The end marker may follow the trailers; either way nothing more comes.
    assert!(next_frame(&mut body).await.is_none(), "a clean end");
    assert!(body.is_end_stream(), "after the end");
}
