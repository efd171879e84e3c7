//! An unkeyed job whose wake went to a worker that then takes a keyed job
//! instead (and blocks in it) is handed on to the other, parked worker: it
//! never waits for the keyed handler to return.

mod common;

use std::convert::Infallible;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, collect, get, send, thread_name, within};
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tower_affinity::{ThreadAffinityLayer, WorkerId};

/// A gate one handler blocks its worker's thread on, in a future first
/// pending on `go`: `pending` tells when it waits, `blocking` when it blocks.
struct Gate {
    go: Mutex<Option<oneshot::Receiver<()>>>,
    release: Mutex<std_mpsc::Receiver<()>>,
}

/// The key in `/path?key`.
fn key(head: &http::request::Parts) -> Option<String> {
    head.uri.query().map(str::to_owned)
}

fn keyed(path: &str, key: &str) -> Request<()> {
    Request::get(format!("{path}?{key}")).body(()).unwrap()
}

/// A keyed job for worker 0, queued after an unkeyed job whose wake went to
/// worker 0, is served by worker 0 (own queue first) while the unkeyed job
/// is served by worker 1, which had parked before either was queued.
///
/// The wake goes to worker 0 deterministically: when the unkeyed job is
/// queued, both workers are registered as waiting and both are inside a
/// poll (each blocks in an async handler's poll), so the lowest is picked.
/// Worker 1's handler then returns; its event loop is usually not polled
/// again, so only the hand-off wake makes it look at the queue (when it is,
/// it finds the job by itself). Either way the unkeyed job is served while
/// the keyed handler still blocks worker 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_job_woken_for_a_worker_that_takes_a_keyed_one_moves_on() {
    bounded(Duration::from_secs(30), test()).await;
}

async fn test() {
    let layer = ThreadAffinityLayer::builder()
        .workers(2)
        .max_workers(2)
        .affinity_key(key)
        .thread_name("handoff")
        .build();
    let (events_tx, mut events) = mpsc::unbounded_channel::<(&'static str, String)>();
    let (go_a, go_a_rx) = oneshot::channel();
    let (go_b, go_b_rx) = oneshot::channel();
    let (release_a, release_a_rx) = std_mpsc::channel();
    let (release_b, release_b_rx) = std_mpsc::channel();
    let (release_k, release_k_rx) = std_mpsc::channel::<()>();
    let gates = Arc::new([
        Gate {
            go: Mutex::new(Some(go_a_rx)),
            release: Mutex::new(release_a_rx),
        },
        Gate {
            go: Mutex::new(Some(go_b_rx)),
            release: Mutex::new(release_b_rx),
        },
    ]);
    let release_k_rx = Arc::new(Mutex::new(release_k_rx));
    let svc = layer.service_with(move |_: WorkerId| {
        let (gates, events, release_k) = (gates.clone(), events_tx.clone(), release_k_rx.clone());
        tower::service_fn(move |request: Request<()>| {
            let (gates, events, release_k) = (gates.clone(), events.clone(), release_k.clone());
            async move {
                let index = request.extensions().get::<WorkerId>().unwrap().index();
                match request.uri().path() {
                    "/hold" => {
                        let gate = &gates[index];
                        let go = gate.go.lock().unwrap().take().expect("one hold per worker");
                        events.send(("pending", thread_name())).unwrap();
                        go.await.unwrap();
                        events.send(("blocking", thread_name())).unwrap();
                        gate.release.lock().unwrap().recv().unwrap();
                    }
                    "/keyed" => {
                        events.send(("keyed", thread_name())).unwrap();
                        release_k.lock().unwrap().recv().unwrap();
                    }
                    "/unkeyed" => events.send(("unkeyed", thread_name())).unwrap(),
                    _ => {}
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(index.to_string()))))
            }
        })
    });

    // A key for each worker (keys are hashed with a random seed).
    let mut keys = [None, None];
    for k in 0.. {
        let key = format!("k{k}");
        let answer = send(&mut svc.clone(), keyed("/probe", &key)).await;
        let index: usize = std::str::from_utf8(&collect(answer.into_body()).await)
            .unwrap()
            .parse()
            .unwrap();
        keys[index].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(key0), Some(key1)] = keys else {
        unreachable!()
    };

    // Each worker holds one async request, pending, then blocking its thread.
    let hold_a = tokio::spawn(svc.clone().oneshot(keyed("/hold", &key0)));
    assert_eq!(
        events.recv().await.unwrap(),
        ("pending", "handoff-0".into())
    );
    let hold_b = tokio::spawn(svc.clone().oneshot(keyed("/hold", &key1)));
    assert_eq!(
        events.recv().await.unwrap(),
        ("pending", "handoff-1".into())
    );
    go_a.send(()).unwrap();
    assert_eq!(
        events.recv().await.unwrap(),
        ("blocking", "handoff-0".into())
    );
    go_b.send(()).unwrap();
    assert_eq!(
        events.recv().await.unwrap(),
        ("blocking", "handoff-1".into())
    );

    // The unkeyed job's wake claims worker 0 (both wait, both are busy);
    // then a keyed job for worker 0 lands in its own queue.
    let unkeyed = tokio::spawn(svc.clone().oneshot(get("/unkeyed")));
    within("the unkeyed job queued", async {
        while layer.stats().queued() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let keyed_job = tokio::spawn(svc.clone().oneshot(keyed("/keyed", &key0)));
    within("the keyed job queued", async {
        while layer.stats().workers()[0].queued() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // Worker 1 ends its hold and parks, its event loop not polled.
    release_b.send(()).unwrap();
    within("hold b", hold_b).await.unwrap().unwrap();
    // Worker 0 ends its hold, takes the keyed job first and blocks in it.
    release_a.send(()).unwrap();
    within("hold a", hold_a).await.unwrap().unwrap();
    // The unkeyed job must not wait for the keyed handler, which blocks
    // until the end of the test. Worker 1 may also find it by itself, if its
    // event loop runs once more after its hold, before worker 0 takes the
    // keyed job: the two events come in either order.
    let mut served = Vec::new();
    for _ in 0..2 {
        let event = within("the unkeyed job, while worker 0 blocks", events.recv())
            .await
            .unwrap();
        served.push(event);
    }
    served.sort();
    assert_eq!(
        served,
        [
            ("keyed", "handoff-0".into()),
            ("unkeyed", "handoff-1".into())
        ]
    );
    let answer = within("the unkeyed answer", unkeyed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(collect(answer.into_body()).await, "1");
    release_k.send(()).unwrap();
    let answer = within("the keyed answer", keyed_job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(collect(answer.into_body()).await, "0");
}
