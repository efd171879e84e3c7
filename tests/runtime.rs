//! Tokio works inside handlers on the workers: each worker enters the
//! handle of the pool's driver runtime, whose thread turns the time and I/O
//! drivers.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

/// An async handler on a worker connects a tokio socket to a loopback
/// listener, talks over it, and sleeps on a tokio timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_sockets_and_timers_work_in_a_handler() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
    });

    let layer = ThreadAffinityLayer::builder().thread_name("rt").build();
    let svc = layer.layer(tower::service_fn(move |_: Request<()>| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await.unwrap();
        let thread = std::thread::current().name().unwrap().to_owned();
        Ok::<_, Infallible>(Response::new(format!(
            "{} {thread}",
            String::from_utf8_lossy(&buf)
        )))
    }));
    let response = common::within_for(
        Duration::from_secs(20),
        "the response",
        svc.oneshot(Request::new(())),
    )
    .await
    .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.starts_with("hello rt-"), "{body}");
    echo.await.unwrap();
}
