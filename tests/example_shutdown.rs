//! The shutdown recipe of `examples/legacy_server.rs` (`serve` and
//! `draining`): the layer's shutdown starts in axum's signal future, so a
//! download that never finishes cannot hold the server past the grace
//! period, while a request already in flight completes.

mod deploy;

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc as async_mpsc, oneshot};
use tower_affinity::{blocking, ThreadAffinityLayer};

use deploy::{within, Backend, HANG};

#[allow(dead_code)]
#[path = "../examples/legacy_server.rs"]
mod legacy_server;

/// The grace period the tests give the server.
const GRACE: Duration = Duration::from_secs(1);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A client with a small receive buffer, as over a slow network: a
/// response it stops reading stays mostly in the server's layer, which
/// can cut it, rather than in socket buffers, out of the layer's reach.
fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_recv_buffer_size(Some(64 * 1024));
    Client::builder(TokioExecutor::new()).build(connector)
}

fn get(url: String) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

/// Starts `/export.csv` and reads its head and first frame, then leaves
/// it: a client that stopped reading, whose response can never end.
async fn stalled_download(client: &HttpClient, base: &str) -> Response<Incoming> {
    let response = client
        .request(get(format!("{base}/export.csv")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (head, mut body) = response.into_parts();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    Response::from_parts(head, body)
}

/// What is left of a cut download: it ends with an error, not cleanly.
async fn assert_cut(download: Response<Incoming>) {
    let rest = within(
        HANG,
        "the rest of the download",
        download.into_body().collect(),
    )
    .await;
    assert!(rest.is_err(), "the download ended cleanly: it was not cut");
}

/// With a download stalled and another request running on a worker, the
/// example's `serve` returns after the grace period (axum alone would wait
/// for the download for ever), the running request completes with 200, and
/// the layer cuts the download with an error (with `draining` left out,
/// the download would stay open in the connection's task and end cleanly
/// once read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_bounds_a_stalled_download_and_completes_a_running_request() {
    let orders = legacy_server::db_path();
    tokio::task::spawn_blocking(move || legacy_server::seed(&orders).unwrap())
        .await
        .unwrap();
    let layer = ThreadAffinityLayer::builder()
        .workers(4)
        .affinity_header(http::HeaderName::from_static("x-session"))
        .build();

    // A route whose handler tells the test it runs, then waits for its go:
    // a request held in flight, on a worker.
    let (entered_tx, mut entered) = async_mpsc::unbounded_channel();
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let held = layer.service_with(move |_| {
        let (entered_tx, released) = (entered_tx.clone(), released.clone());
        blocking::service_fn(move |_req: Request<axum::body::Body>| {
            let _ = entered_tx.send(());
            let _ = released.lock().unwrap().recv();
            Response::new("held request done".to_owned())
        })
    });
    let router = legacy_server::app(&layer).route_service("/held", held);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let layer = layer.clone();
        async move {
            let stop = async {
                let _ = stopped.await;
            };
            legacy_server::serve(listener, router, &layer, GRACE, stop)
                .await
                .unwrap();
        }
    });

    let client = client();
    let download = stalled_download(&client, &base).await;
    let in_flight = tokio::spawn(client.request(get(format!("{base}/held"))));
    within(HANG, "the held request to run", entered.recv()).await;

    stop.send(()).unwrap();
    release.send(()).unwrap();
    let response = within(HANG, "the held request", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "held request done");

    within(GRACE + HANG, "serve to return", server)
        .await
        .unwrap();
    assert_cut(download).await;
}

/// The example's program stops on Ctrl-C (SIGINT) with a download stalled:
/// it exits successfully after cutting it. (SIGTERM: `tests/scaling.rs`.)
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_exits_on_ctrl_c_with_a_download_stalled() {
    let mut server = Backend::start("solo", GRACE).await;
    let client = client();
    let download = stalled_download(&client, &format!("http://{}", server.addr)).await;
    server.signal("INT");
    let (status, output) = server.exited().await;
    assert!(status.success(), "exited with {status}: {output:?}");
    assert!(
        output.iter().any(|line| line.contains("solo stopped")),
        "{output:?}"
    );
    assert_cut(download).await;
}
