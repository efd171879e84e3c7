//! `WorkerLocal`: a value per worker thread, built there by a factory,
//! reached from ordinary axum handlers, dropped on its worker.

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::{self, ThreadId};

use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_affinity::{ThreadAffinityLayer, WorkerId, WorkerLocal};

use common::{bounded, HANG};

/// A per-thread value that says where it was built, counts its uses, and
/// reports the thread it is dropped on.
struct Local {
    built_on: ThreadId,
    uses: Cell<u64>,
    dropped: mpsc::Sender<(ThreadId, ThreadId)>,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.dropped.send((self.built_on, thread::current().id()));
    }
}

fn local(
    layer: &ThreadAffinityLayer,
) -> (WorkerLocal<Local>, mpsc::Receiver<(ThreadId, ThreadId)>) {
    let (dropped, drops) = mpsc::channel();
    let local = layer.worker_local(move |_worker: &WorkerId| Local {
        built_on: thread::current().id(),
        uses: Cell::new(0),
        dropped: dropped.clone(),
    });
    (local, drops)
}

/// Ordinary axum handlers under `router.layer(layer)`, served over HTTP,
/// each get the value built on the thread they run on, one per worker
/// (uses count up per thread); off the workers there is none; and once
/// the last clone is gone, each value is dropped on the thread it was
/// built on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_handlers_use_their_workers_value_which_drops_there() {
    bounded(HANG, async {
        let layer = ThreadAffinityLayer::new(2);
        let (local, drops) = local(&layer);
        let handler_local = local.clone();
        let router = axum::Router::new()
            .route(
                "/use",
                get(move || async move {
                    let here = thread::current().id();
                    let seen = handler_local.with(|value| {
                        value.uses.set(value.uses.get() + 1);
                        (value.built_on == here, value.uses.get())
                    });
                    let (same_thread, uses) = seen.expect("on a worker");
                    format!("{same_thread} {uses} {:?}", here)
                }),
            )
            .layer(layer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

        let mut per_thread: HashMap<String, Vec<u64>> = HashMap::new();
        for _ in 0..40 {
            let request = Request::get(format!("http://{addr}/use"))
                .body(Empty::new())
                .unwrap();
            let response = client.request(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            let mut words = text.splitn(3, ' ');
            assert_eq!(words.next(), Some("true"), "a value of another thread");
            let uses: u64 = words.next().unwrap().parse().unwrap();
            per_thread
                .entry(words.next().unwrap().to_owned())
                .or_default()
                .push(uses);
        }
        assert!(per_thread.len() <= 2, "more values than workers");
        for uses in per_thread.values() {
            let expected: Vec<u64> = (1..=uses.len() as u64).collect();
            assert_eq!(uses, &expected, "one value per thread, counting up");
        }
        assert!(local.with(|_| ()).is_none(), "a value on the runtime");

        server.abort();
        drop(client);
        drop(local);
        let drops: Vec<_> = tokio::task::block_in_place(|| {
            (0..per_thread.len())
                .map(|_| drops.recv_timeout(HANG).expect("a value dropped"))
                .collect()
        });
        for (built_on, dropped_on) in drops {
            assert_eq!(built_on, dropped_on, "dropped off its worker");
            assert_ne!(dropped_on, thread::current().id());
        }
    })
    .await;
}

/// A pool that shuts down drops each worker's value on its worker, even
/// while the `WorkerLocal` itself lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drops_the_values_on_their_workers() {
    bounded(HANG, async {
        let layer = ThreadAffinityLayer::new(1);
        let (local, drops) = local(&layer);
        let touch = local.clone();
        let mut svc = layer.service(tower_affinity::blocking::service_fn(
            move |_req: Request<()>| {
                touch.with(|value| value.uses.set(1)).expect("on a worker");
                http::Response::new(String::new())
            },
        ));
        let response = common::send(&mut svc, Request::new(())).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        drop(svc);
        layer.shutdown().await;
        let (built_on, dropped_on) = drops.recv_timeout(HANG).expect("dropped at the end");
        assert_eq!(built_on, dropped_on);
        assert_ne!(dropped_on, thread::current().id());
        drop(local);
    })
    .await;
}
