//! Past one process: three processes of the `legacy_server` example
//! behind nginx, and behind HAProxy, each run from the shipped
//! configuration in `deploy/`. The load balancer picks the process by the
//! `x-session` header and the layer picks the worker thread, so a session
//! stays on one (process, worker) pair; stopping one process moves only its
//! own sessions (three processes, so that "only" means something: with two,
//! any hash sends everything to the survivor).
//!
//! Each test needs its load balancer installed (`apt-get install nginx
//! haproxy`); without it, it says so and passes, except under `CI=true`.

mod deploy;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Mutex, Notify};

use deploy::balancer::{Balancer, Kind};
use deploy::traffic::{request, Rng};
use deploy::{within, Backend};

const SESSIONS: usize = 200;
/// Visits per session before the stop.
const VISITS: u64 = 10;
/// Requests in flight at once.
const LANES: usize = 16;
/// Lines of the example's `/export.csv`: its orders and a header line.
const EXPORT_LINES: usize = 200_001;
/// Hang guard for a whole test (three processes, a load balancer, about
/// 3 600 requests and a 9 MB download).
const LIMIT: Duration = Duration::from_secs(50);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Which process, and which worker thread in it, served a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Pair {
    instance: String,
    worker: String,
}

/// One answer of `/session`: who served it and the visit count it gave.
#[derive(Debug, Clone)]
struct Visit {
    pair: Pair,
    count: u64,
}

/// One log per session, its answers in the order they were given; the
/// lock also makes a session's requests go one after another.
type Logs = Vec<Mutex<Vec<Visit>>>;

/// nginx (`hash $http_x_session consistent`) keeps each session on one
/// process and one worker (visit counts 1..10 in order on one pair) and
/// spreads requests without the header over the processes. When one
/// process gets SIGTERM under load, every request still answers 200, a
/// download it was streaming completes, the other processes' sessions keep
/// their pair and count on, and the stopped process's sessions move once,
/// to a worker of another process, where they start cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_sessions_on_their_process_and_worker() {
    within(LIMIT, "the nginx test", sticky_through(Kind::Nginx)).await;
}

/// The same with HAProxy (`balance hdr(x-session)`, `hash-type
/// consistent`), except that a session of the stopped process may move
/// twice (see `after_stop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_sessions_on_their_process_and_worker() {
    within(LIMIT, "the HAProxy test", sticky_through(Kind::Haproxy)).await;
}

async fn sticky_through(kind: Kind) {
    let Some(program) = kind.program() else {
        return;
    };
    let grace = Duration::from_secs(10);
    let mut a = Backend::start("a", grace).await;
    let b = Backend::start("b", grace).await;
    let c = Backend::start("c", grace).await;
    let balancer = Balancer::start(kind, &program, [a.addr, b.addr, c.addr]).await;
    let base = format!("http://{}", balancer.addr);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut rng = Rng::from_env();
    let logs: Logs = (0..SESSIONS).map(|_| Mutex::default()).collect();

    // 1. Every session, VISITS times, in random order.
    let schedule = rng.schedule(SESSIONS, VISITS as usize);
    drive(
        &client,
        &base,
        &logs,
        schedule,
        &AtomicUsize::new(0),
        &Notify::new(),
    )
    .await;
    let mut homes = Vec::new();
    for (session, log) in logs.iter().enumerate() {
        let log = log.lock().await;
        let counts: Vec<u64> = log.iter().map(|visit| visit.count).collect();
        assert_eq!(
            counts,
            (1..=VISITS).collect::<Vec<_>>(),
            "session {session}"
        );
        let home = &log[0].pair;
        assert!(
            log.iter().all(|v| &v.pair == home),
            "session {session}: {log:?}"
        );
        homes.push(home.clone());
    }
    for instance in ["a", "b", "c"] {
        let on = homes
            .iter()
            .filter(|home| home.instance == instance)
            .count();
        assert!(on > 0, "no session on {instance}");
    }

    // 2. Without the header: every process serves.
    let instances: HashSet<String> = join_all((0..LANES).map(|lane| {
        let (client, base) = (&client, &base);
        async move {
            let mut seen = HashSet::new();
            for i in 0..8 {
                let url = format!("{base}/orders/{}", lane * 8 + i + 1);
                let response = client.request(request(&url, None)).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                seen.insert(
                    response.headers()["x-instance"]
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            seen
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(instances, HashSet::from(["a", "b", "c"].map(String::from)));

    // 3. Once a quarter of this round has answered, with LANES requests in
    //    flight and a download from process a under way, SIGTERM to a;
    //    then, once it has exited, two more visits per session.
    let schedule = rng.schedule(SESSIONS, 5);
    let quarter = schedule.len() / 4;
    let (answered, progress) = (AtomicUsize::new(0), Notify::new());
    let a_session = homes.iter().position(|home| home.instance == "a").unwrap();
    let stop = async {
        while answered.load(Ordering::SeqCst) < quarter {
            progress.notified().await;
        }
        let url = format!("{base}/export.csv");
        let name = format!("session-{a_session:03}");
        let response = client.request(request(&url, Some(&name))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-instance"], "a");
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        a.signal("TERM");
        let rest = body
            .collect()
            .await
            .expect("the download was cut")
            .to_bytes();
        let lines = [first, rest]
            .iter()
            .flatten()
            .filter(|&&b| b == b'\n')
            .count();
        assert_eq!(lines, EXPORT_LINES, "the download from a is complete");
    };
    let traffic = drive(&client, &base, &logs, schedule, &answered, &progress);
    tokio::join!(stop, traffic);
    let (status, output) = a.exited().await;
    assert!(status.success(), "a exited with {status}: {output:?}");
    assert!(
        output.iter().any(|line| line.contains("a stopped")),
        "{output:?}"
    );
    let schedule = rng.schedule(SESSIONS, 2);
    drive(
        &client,
        &base,
        &logs,
        schedule,
        &AtomicUsize::new(0),
        &Notify::new(),
    )
    .await;

    for (session, (log, home)) in logs.iter().zip(&homes).enumerate() {
        let log = log.lock().await;
        after_stop(kind, session, home, &log[VISITS as usize..]);
    }
    drop((b, c));
}

/// After process `a` stopped, a session of another process keeps its pair
/// and counts on; a session of `a` counts on there until it moves to a
/// worker of another process, where it starts again at 1 (per-thread state
/// is not shared).
///
/// HAProxy may move such a session twice: a retry goes to the next server
/// on the ring after `a` (`redispatch`), while once `a` is marked down, the
/// lookup takes the server whose point is closest, on either side. nginx
/// walks the ring forward both times.
fn after_stop(kind: Kind, session: usize, home: &Pair, visits: &[Visit]) {
    let max_moves = match kind {
        Kind::Nginx => 1,
        Kind::Haproxy => 2,
    };
    let (mut pair, mut expected, mut moves) = (home, VISITS + 1, 0);
    for visit in visits {
        if &visit.pair != pair {
            moves += 1;
            assert!(
                moves <= max_moves && home.instance == "a" && visit.pair.instance != "a",
                "session {session} moved from {pair:?} to {:?}: {visits:?}",
                visit.pair
            );
            (pair, expected) = (&visit.pair, 1);
        }
        assert_eq!(visit.count, expected, "session {session}: {visits:?}");
        expected += 1;
    }
    let moved = moves > 0;
    assert_eq!(moved, home.instance == "a", "session {session}: {visits:?}");
}

/// Sends `/session` for each entry of `schedule` (a session index), LANES
/// at a time, appending each answer to its session's log; every answer
/// must be a 200. `answered` counts answers, waking `progress`.
async fn drive(
    client: &HttpClient,
    base: &str,
    logs: &Logs,
    schedule: Vec<usize>,
    answered: &AtomicUsize,
    progress: &Notify,
) {
    let next = AtomicUsize::new(0);
    join_all((0..LANES).map(|_| async {
        while let Some(&session) = schedule.get(next.fetch_add(1, Ordering::Relaxed)) {
            let mut log = logs[session].lock().await;
            log.push(visit(client, base, session).await);
            answered.fetch_add(1, Ordering::SeqCst);
            progress.notify_waiters();
        }
    }))
    .await;
}

/// One `/session` request; checks the answer's body against its headers.
async fn visit(client: &HttpClient, base: &str, session: usize) -> Visit {
    let name = format!("session-{session:03}");
    let url = format!("{base}/session");
    let response = match client.request(request(&url, Some(&name))).await {
        Ok(response) => response,
        Err(error) => panic!("{name}: no answer: {error:?}"),
    };
    let status = response.status();
    let header = |name: &str| {
        let value = response.headers().get(name);
        value.map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    let pair = Pair {
        instance: header("x-instance"),
        worker: header("x-worker"),
    };
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{name}: {body}");
    // "session {name}: visit {count} on {worker} of {instance}\n"
    let rest = body
        .strip_prefix(&format!("session {name}: visit "))
        .unwrap();
    let (count, rest) = rest.split_once(" on ").unwrap();
    let served_by = format!("{} of {}\n", pair.worker, pair.instance);
    assert_eq!(rest, served_by, "{name}: the body and the headers disagree");
    Visit {
        pair,
        count: count.parse().unwrap(),
    }
}
