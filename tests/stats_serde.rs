//! With the `serde` feature, `Stats` serializes with every figure, for
//! users who build their own metrics endpoint.
#![cfg(feature = "serde")]

mod common;

use common::{collect, send};
use http::{Request, Response};
use tower_affinity::{blocking, ThreadAffinityLayer};

/// A served request shows in the JSON of `stats()`: pool totals, and one
/// object per worker with its figures by name.
#[tokio::test]
async fn stats_serialize_with_every_figure() {
    let layer = ThreadAffinityLayer::new(2);
    let mut svc = layer.service(blocking::service_fn(|_: Request<()>| {
        Response::new(String::from("ok"))
    }));
    let response = send(&mut svc, Request::new(())).await;
    assert_eq!(collect(response.into_body()).await, "ok");

    let json = serde_json::to_value(layer.stats()).unwrap();
    assert_eq!(json["admitted"], 1, "{json}");
    assert_eq!(json["queued"], 0, "{json}");
    let workers = json["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{json}");
    assert_eq!(workers[1]["index"], 1, "{json}");
    for figure in [
        "queued",
        "active",
        "completed",
        "panicked",
        "replaced",
        "current_poll",
    ] {
        assert!(workers[0].get(figure).is_some(), "{figure} missing: {json}");
    }
}
