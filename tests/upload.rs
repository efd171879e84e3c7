//! The request body as a blocking `std::io::Read` on the worker
//! (`BodyReader`): a large streamed upload arrives intact, and a body over
//! the limit fails the read with `LengthLimitError`.

mod common;

use std::convert::Infallible;
use std::io::{self, Cursor, Read};

use bytes::Bytes;
use futures::stream;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tower_affinity::blocking::{service_fn, BodyReader, LengthLimitError, ReaderBody};
use tower_affinity::{BoxError, ThreadAffinityLayer};
use tower_layer::Layer;

use common::{collect, send};

type Upload = UnsyncBoxBody<Bytes, BoxError>;

/// FNV-1a: a hash the handler and the test compute alike.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `len` bytes of a xorshift sequence: no two chunks alike.
fn noise(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A request body fed, chunk by chunk, through a channel of 2 by a task on
/// the test's runtime; the task starts sending only after `start` fires.
fn fed_body(chunks: Vec<Bytes>, start: Option<mpsc::UnboundedReceiver<()>>) -> Upload {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        if let Some(mut start) = start {
            start.recv().await;
        }
        for chunk in chunks {
            // The reader may stop (over the limit): then the body is gone.
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let frames = stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))))
    });
    StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The upload handler: reads the body up to `limit`, answers with it (as a
/// streamed `ReaderBody` of exact length) and its hash, or `413` saying what
/// the read failed with.
fn echo(
    limit: usize,
    started: mpsc::UnboundedSender<()>,
) -> impl FnMut(Request<Upload>) -> Response<ReaderBody<Cursor<Vec<u8>>>> + Clone {
    move |req: Request<Upload>| {
        let _ = started.send(());
        let mut upload = Vec::new();
        let read = BodyReader::new(req.into_body())
            .limit(limit)
            .read_to_end(&mut upload);
        let mut response = match read {
            Ok(len) => {
                let hash = fnv(&upload).to_string();
                let mut response =
                    Response::new(ReaderBody::new(Cursor::new(upload)).with_length(len as u64));
                response
                    .headers_mut()
                    .insert("x-hash", hash.parse().unwrap());
                response
            }
            Err(error) => {
                let limit = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<LengthLimitError>())
                    .map_or(String::from("none"), |_| limit.to_string());
                let mut response = Response::new(ReaderBody::new(Cursor::new(Vec::new())));
                *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                let headers = response.headers_mut();
                headers.insert("x-kind", format!("{:?}", error.kind()).parse().unwrap());
                headers.insert("x-limit", limit.parse().unwrap());
                response
            }
        };
        response
            .headers_mut()
            .insert("x-thread", common::thread_name().parse().unwrap());
        response
    }
}

/// Asserts that an upload of `data` in `chunk`-sized frames, streamed from
/// another task through a small channel (starting only once the handler is
/// already reading, so the reader blocks waiting for it), is read on the
/// worker with `.limit(16 MiB)` and echoed back byte for byte.
async fn assert_upload_echoed(data: Bytes, chunk: usize) {
    // Uneven chunks, so that reads and chunks never line up.
    let chunks: Vec<Bytes> = (0..data.len())
        .step_by(chunk)
        .map(|at| data.slice(at..(at + chunk).min(data.len())))
        .collect();
    let (started, start) = mpsc::unbounded_channel();
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(service_fn(echo(16 * 1024 * 1024, started)));

    let request = Request::post("/upload")
        .body(fed_body(chunks, Some(start)))
        .unwrap();
    let response = send(&mut svc, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-hash"],
        fnv(&data).to_string().as_str()
    );
    let body = response.into_body();
    assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
    let echoed = collect(body).await;
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echo differs from the upload");
}

/// An 8 MiB upload in 33 frames of about 256 KiB, streamed from another
/// task while the handler blocks reading it, arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_upload_is_read_intact() {
    assert_upload_echoed(noise(8 * 1024 * 1024), 262_139).await;
}

/// An upload in many frames (1,000 of about 1 KiB here) fed by a Tokio
/// channel is read intact: reading it on a worker must not run out of the
/// worker's Tokio task budget (128 operations per poll) and spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_many_frames_is_read_intact() {
    assert_upload_echoed(noise(1_000 * 1_021), 1_021).await;
}

/// A body over `.limit(n)` fails the read with `InvalidData` wrapping a
/// `LengthLimitError` (whether the excess shows in the size hint or only
/// while reading); the handler answers `413` and the worker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_the_limit_is_refused() {
    const LIMIT: usize = 1000;
    let (started, _start) = mpsc::unbounded_channel();
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(service_fn(echo(LIMIT, started)));

    let streamed = fed_body(vec![noise(400), noise(400), noise(400)], None);
    let known = Full::new(noise(2000))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut threads = Vec::new();
    for body in [streamed, known] {
        let response = send(&mut svc, Request::post("/upload").body(body).unwrap()).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let kind = format!("{:?}", io::ErrorKind::InvalidData);
        assert_eq!(response.headers()["x-kind"], kind.as_str());
        assert_eq!(response.headers()["x-limit"], LIMIT.to_string().as_str());
        threads.push(response.headers()["x-thread"].clone());
    }

    let fits = fed_body(vec![noise(500), noise(500)], None);
    let response = send(&mut svc, Request::post("/upload").body(fits).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    threads.push(response.headers()["x-thread"].clone());
    let want: Vec<u8> = [noise(500), noise(500)].concat();
    assert_eq!(collect(response.into_body()).await, want);
    assert!(threads.iter().all(|t| *t == threads[0]), "{threads:?}");
}
