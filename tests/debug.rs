//! The `Debug` output of the response body says what it is: a body whose
//! frame is already here (`ready`) or one still streaming, with its hint.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use tower_affinity::blocking::{service_fn, IterBody};
use tower_affinity::ThreadAffinityLayer;
use tower_layer::Layer;

use common::{get, send};

/// A one-frame response is `ready` and a many-frame one `streaming`; both
/// name the type and show the size hint.
#[tokio::test]
async fn the_body_debug_names_its_kind_and_hint() {
    let layer = ThreadAffinityLayer::builder().workers(1).build();
    let mut svc = layer.layer(service_fn(|req: Request<()>| {
        let n = if req.uri().path() == "/one" { 1 } else { 50 };
        Response::new(IterBody::new(
            (0..n).map(|_| Ok::<_, Infallible>(Bytes::from("x"))),
        ))
    }));

    let one = send(&mut svc, get("/one")).await.into_body();
    let text = format!("{one:?}");
    assert!(text.starts_with("ThreadAffinityBody"), "{text}");
    assert!(text.contains("kind: \"ready\""), "{text}");
    assert!(text.contains("size_hint"), "{text}");

    let many = send(&mut svc, get("/many")).await.into_body();
    let text = format!("{many:?}");
    assert!(text.contains("kind: \"streaming\""), "{text}");
}

/// A response future shows whether it waits for its worker (`waiting`) or
/// was answered at once by the layer (`failed`: here, a full queue).
#[tokio::test]
async fn the_response_future_debug_names_its_state() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .queue_capacity(1)
        .overload(tower_affinity::Overload::Reject)
        .build();
    let mut svc = layer.layer(service_fn(move |req: Request<()>| {
        if req.uri().path() == "/block" {
            let _ = started_tx.send(());
            // Blocks its worker until the test lets it go (or is gone).
            let _ = release_rx.lock().unwrap().recv();
        }
        Response::new(String::from("done"))
    }));

    let blocked = tokio::spawn(tower::ServiceExt::oneshot(svc.clone(), get("/block")));
    common::within("/block to start", started.recv())
        .await
        .unwrap();
    let queued = tower::Service::call(&mut svc, get("/queued"));
    let rejected = tower::Service::call(&mut svc, get("/rejected"));
    let (queued_text, rejected_text) = (format!("{queued:?}"), format!("{rejected:?}"));
    assert!(queued_text.starts_with("ResponseFuture"), "{queued_text}");
    assert!(queued_text.contains("waiting"), "{queued_text}");
    assert!(
        rejected_text.starts_with("ResponseFuture"),
        "{rejected_text}"
    );
    assert!(rejected_text.contains("failed"), "{rejected_text}");

    release.send(()).unwrap();
    for response in [queued, rejected] {
        common::within("an answer", response).await.unwrap();
    }
    common::within("/block", blocked).await.unwrap().unwrap();
}

/// A wrapped service's `Debug` names the inner service's type and shows
/// its pool's configuration.
#[test]
fn the_service_debug_names_the_inner_service_and_its_pool() {
    let layer = ThreadAffinityLayer::builder().workers(3).build();
    let svc = layer.layer(service_fn(|_: Request<()>| Response::new(String::new())));
    let text = format!("{svc:?}");
    assert!(text.starts_with("ThreadAffinity {"), "{text}");
    assert!(text.contains("ServiceFn"), "{text}");
    assert!(text.contains("workers: 3"), "{text}");
}
