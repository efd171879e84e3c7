//! With the `metrics` feature, the axum example's `/metrics` route serves
//! the pool's figures in Prometheus text, scraped over HTTP on 127.0.0.1,
//! and they move with the traffic; the spare workers' figures move when
//! handlers block.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::ServiceExt;
use tower_affinity::stats::Stats;
use tower_affinity::{blocking, ThreadAffinityLayer};

#[allow(dead_code)]
#[path = "../examples/axum_stack.rs"]
mod axum_stack;

/// Hang guard for the whole test: generous, the machine is small and shared.
const TIME_LIMIT: Duration = Duration::from_secs(60);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The body of `GET path`, which must answer `200`.
async fn get(client: &HttpClient, addr: std::net::SocketAddr, path: &str) -> String {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Each sample of a Prometheus text page: `name{labels}` to its value.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` (over its labels) with label `pool`.
fn total(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    total_of(samples, name, "metrics-test")
}

/// The sum of every sample of `name` (over its labels) of pool `pool`.
fn total_of(samples: &BTreeMap<String, f64>, name: &str, pool: &str) -> f64 {
    let label = format!(r#"pool="{pool}""#);
    samples
        .iter()
        .filter(|(key, _)| key.split('{').next() == Some(name) && key.contains(&label))
        .map(|(_, value)| value)
        .sum()
}

/// Ten requests to a wrapped route move the admitted and completed
/// counters by ten and the queue-wait histogram's count by ten; the
/// threads gauge shows the pool's two workers, and per-worker figures carry
/// a `worker` label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_route_serves_moving_figures() {
    tokio::time::timeout(TIME_LIMIT, async {
        // Global: the queue wait is recorded on the worker threads.
        let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
        let layer = ThreadAffinityLayer::builder()
            .workers(2)
            .thread_name("metrics-test")
            .build();
        let (state, _audit) = axum_stack::AppState::new();
        let app = axum_stack::app(&layer, state, Duration::from_secs(30))
            .merge(axum_stack::metrics_route(&layer, prometheus));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

        let before = samples(&get(&client, addr, "/metrics").await);
        assert_eq!(total(&before, "tower_affinity_threads"), 2.0);
        for _ in 0..10 {
            let csv = get(&client, addr, "/report?rows=3").await;
            assert!(csv.starts_with("row,square\n"), "{csv}");
        }
        // A worker counts a request completed just after it sends the
        // body's end, which the client may read first: scrape until the
        // count is in (the hang guard bounds the wait).
        let (page, after) = loop {
            let page = get(&client, addr, "/metrics").await;
            let after = samples(&page);
            let completed = total(&after, "tower_affinity_completed_total");
            if completed - total(&before, "tower_affinity_completed_total") >= 10.0 {
                break (page, after);
            }
            tokio::task::yield_now().await;
        };

        let moved = |name: &str| total(&after, name) - total(&before, name);
        assert_eq!(moved("tower_affinity_admitted_total"), 10.0, "{page}");
        assert_eq!(moved("tower_affinity_completed_total"), 10.0, "{page}");
        assert_eq!(
            moved("tower_affinity_queue_wait_seconds_count"),
            10.0,
            "{page}"
        );
        assert_eq!(
            total(&after, "tower_affinity_rejected_total"),
            0.0,
            "{page}"
        );
        assert!(
            page.contains(r#"tower_affinity_active{pool="metrics-test",worker="1"}"#),
            "{page}"
        );
        assert!(
            page.contains("# TYPE tower_affinity_admitted_total counter"),
            "{page}"
        );
        server.abort();
    })
    .await
    .expect("test timed out: something hangs");
}

/// Waits until `what` holds of the pool's stats, looking every
/// millisecond (the hang guard bounds the wait).
async fn until(layer: &ThreadAffinityLayer, what: impl Fn(&Stats) -> bool) {
    while !what(&layer.stats()) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// With one core worker and two handlers that meet at a barrier, a spare
/// starts: the page shows two threads, one spare, one spare started and
/// two workers blocked. Once the handlers return and the spare's
/// keep-alive passes, it shows one thread, no spare and one retired. The
/// page is rendered from a recorder local to this thread, so it holds this
/// pool's figures only, as `publish_metrics` left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_worker_figures_move_when_handlers_block() {
    tokio::time::timeout(TIME_LIMIT, async {
        const POOL: &str = "metrics-spares";
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let scrape = |layer: &ThreadAffinityLayer| {
            metrics::with_local_recorder(&recorder, || layer.publish_metrics());
            let page = prometheus.render();
            (samples(&page), page)
        };
        let layer = ThreadAffinityLayer::builder()
            .workers(1)
            .max_workers(2)
            .keep_alive(Duration::from_millis(20))
            .thread_name(POOL)
            .build();
        // Both handlers and the test meet at `inside`; the handlers then
        // wait (off the CPU) at `release` until the test joins them.
        let inside = Arc::new(Barrier::new(3));
        let release = Arc::new(Barrier::new(3));
        let svc = {
            let (inside, release) = (inside.clone(), release.clone());
            layer.service(blocking::service_fn(move |_: Request<()>| {
                inside.wait();
                release.wait();
                Response::new(String::from("done"))
            }))
        };

        let (before, page) = scrape(&layer);
        let figure = |samples: &BTreeMap<String, f64>, name: &str| total_of(samples, name, POOL);
        assert_eq!(figure(&before, "tower_affinity_threads"), 1.0, "{page}");
        assert_eq!(figure(&before, "tower_affinity_spares"), 0.0, "{page}");
        assert_eq!(figure(&before, "tower_affinity_max_workers"), 2.0, "{page}");
        assert_eq!(figure(&before, "tower_affinity_spares_started_total"), 0.0);
        assert_eq!(figure(&before, "tower_affinity_blocked"), 0.0, "{page}");

        let calls: Vec<_> = (0..2)
            .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
            .collect();
        // Two handlers inside at once, with one core worker: a spare runs
        // the second.
        let wait = inside.clone();
        tokio::task::spawn_blocking(move || wait.wait())
            .await
            .unwrap();
        until(&layer, |s| {
            s.workers().iter().filter(|w| w.blocked()).count() == 2
        })
        .await;
        let (busy, page) = scrape(&layer);
        assert_eq!(figure(&busy, "tower_affinity_threads"), 2.0, "{page}");
        assert_eq!(figure(&busy, "tower_affinity_spares"), 1.0, "{page}");
        assert_eq!(
            figure(&busy, "tower_affinity_spares_started_total"),
            1.0,
            "{page}"
        );
        assert_eq!(figure(&busy, "tower_affinity_blocked"), 2.0, "{page}");
        assert!(
            page.contains(&format!(
                r#"tower_affinity_blocked{{pool="{POOL}",worker="1"}} 1"#
            )),
            "{page}"
        );
        assert!(
            figure(&busy, "tower_affinity_stalls_total") >= 1.0,
            "{page}"
        );

        let wait = release.clone();
        tokio::task::spawn_blocking(move || wait.wait())
            .await
            .unwrap();
        for call in calls {
            let response = call.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        until(&layer, |s| s.spares_retired() == 1 && s.threads() == 1).await;
        let (after, page) = scrape(&layer);
        assert_eq!(figure(&after, "tower_affinity_threads"), 1.0, "{page}");
        assert_eq!(figure(&after, "tower_affinity_spares"), 0.0, "{page}");
        assert_eq!(
            figure(&after, "tower_affinity_spares_retired_total"),
            1.0,
            "{page}"
        );
        assert_eq!(figure(&after, "tower_affinity_blocked"), 0.0, "{page}");
        assert_eq!(
            figure(&after, "tower_affinity_spawn_failures_total"),
            0.0,
            "{page}"
        );
        assert!(
            page.contains("# TYPE tower_affinity_spawn_failures_total counter"),
            "{page}"
        );
    })
    .await
    .expect("test timed out: something hangs");
}
