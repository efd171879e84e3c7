//! A pump turn has a time budget beside its count (#20, row 6): a worker
//! streaming rows that take 1 ms each, to a reader that has stopped, lets a
//! quick request on the same worker in after about one row, not after the
//! 1,024 merged polls a turn may otherwise run (a second).
//!
//! The stream stops at row `GATE` until the test has queued the quick
//! request, so the count of rows between the two is exact: the quick
//! request's handler, on the same worker, answers with the rows polled so
//! far. Each row after the gate costs its worker `ROW_TIME` (a blocking
//! cursor's work, on the worker thread): the time the budget counts.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, collect, within};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

/// The row the stream stops at until the quick request is queued.
const GATE: usize = 3;

/// What one row costs its worker after the gate.
const ROW_TIME: Duration = Duration::from_millis(1);

/// An endless body of 100-byte rows that counts its polls, stops at row
/// `GATE` until told to go on, and takes `ROW_TIME` per row after it.
struct Rows {
    polled: Arc<AtomicUsize>,
    entered: Option<tokio::sync::oneshot::Sender<()>>,
    go: mpsc::Receiver<()>,
}

impl Body for Rows {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = self.polled.fetch_add(1, SeqCst) + 1;
        if n == GATE {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
            }
            // Blocks the worker until the quick request is queued.
            let _ = self.go.recv();
        }
        if n >= GATE {
            // The cursor's work for this row: the worker is busy, not
            // waiting for anything the test does.
            thread::sleep(ROW_TIME);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[b'r'; 100])))))
    }
}

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

/// With the only worker streaming slow rows to a reader that read the head
/// and one frame, then stopped, a quick request queued behind the stream is
/// served after a few rows (the turn's time budget), not after 1,024.
#[tokio::test]
async fn slow_rows_delay_a_quick_request_by_about_one_row() {
    bounded(Duration::from_secs(30), async {
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(1)
            .build();
        let polled = Arc::new(AtomicUsize::new(0));
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (go_tx, go) = mpsc::channel();
        let stream = Arc::new(Mutex::new(Some(Rows {
            polled: polled.clone(),
            entered: Some(entered_tx),
            go,
        })));
        let mut svc = layer.layer(blocking::service_fn({
            let polled = polled.clone();
            move |request: Request<()>| -> Response<TestBody> {
                match request.uri().path() {
                    "/rows" => {
                        let body = stream.lock().unwrap().take().expect("one stream");
                        Response::new(body.boxed_unsync())
                    }
                    _ => Response::new(
                        Full::new(Bytes::from(polled.load(SeqCst).to_string())).boxed_unsync(),
                    ),
                }
            }
        }));
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let response = within("the head", svc.ready().await.unwrap().call(get("/rows")))
            .await
            .unwrap();
        // The reader reads one frame, then stops (and holds the body).
        let mut body = response.into_body();
        within("the first frame", body.frame())
            .await
            .unwrap()
            .unwrap();
        within("the stream at its gate", entered).await.unwrap();
        let quick = svc.ready().await.unwrap().call(get("/quick"));
        go_tx.send(()).unwrap();
        let response = within("the quick answer", quick).await.unwrap();
        let at = String::from_utf8(collect(response.into_body()).await.to_vec()).unwrap();
        let rows = at.parse::<usize>().unwrap() - GATE;
        drop(body);
        // The gated row, the row of the turn's budget, and one for the
        // event loop's turn around the yield.
        assert!(rows <= 3, "the quick request waited for {rows} rows");
    })
    .await;
}
