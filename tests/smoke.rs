//! The smallest end-to-end check: a blocking `IterBody` of 0, 1, 5 and 1,000
//! chunks comes back whole, made on a worker thread.

use std::convert::Infallible;
use std::thread;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;

/// Bodies of 0, 1, 5 and 1,000 chunks arrive byte-exact, and their head says
/// a worker made them.
#[tokio::test]
async fn smoke() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .thread_name("smoke")
        .build();
    let mut svc = layer.layer(blocking::service_fn(|req: Request<()>| {
        let n: usize = req.uri().path()[1..].parse().unwrap();
        let name = thread::current().name().unwrap().to_owned();
        let chunks = (0..n).map(move |i| Ok::<_, Infallible>(Bytes::from(format!("{i},"))));
        let mut r = Response::new(blocking::IterBody::new(chunks));
        r.headers_mut().insert("x-thread", name.parse().unwrap());
        r
    }));
    for n in [0usize, 1, 5, 1000] {
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(Request::get(format!("/{n}")).body(()).unwrap())
            .await
            .unwrap();
        assert!(resp.headers()["x-thread"]
            .to_str()
            .unwrap()
            .starts_with("smoke-"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let want: String = (0..n).map(|i| format!("{i},")).collect();
        assert_eq!(body, want);
    }
}
