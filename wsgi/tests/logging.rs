//! Where the gateway's messages go once a `tracing` subscriber is set: an
//! exception's whole traceback (never the client's), and the lines the
//! application writes to `wsgi.errors`.

mod common;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use axum::Router;
use common::{get, within};
use http::StatusCode;
use tower_affinity::ThreadAffinityLayer;
use tower_affinity_wsgi::Wsgi;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Sends each event's (level, target, message) to the test.
struct Recorder(Mutex<Sender<(Level, String, String)>>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let meta = event.metadata();
        let _ = self
            .0
            .lock()
            .unwrap()
            .send((*meta.level(), meta.target().to_owned(), message.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The next event of `target` whose message holds `text`.
fn wait_for(
    events: &Receiver<(Level, String, String)>,
    target: &str,
    text: &str,
) -> (Level, String) {
    loop {
        let (level, seen, message) = events
            .recv_timeout(common::BOUND)
            .unwrap_or_else(|_| panic!("no {target} event with {text:?}"));
        if seen == target && message.contains(text) {
            return (level, message);
        }
    }
}

/// A traceback at ERROR (target `wsgi`) for an exception before the head,
/// while the client's 500 says nothing of it; `wsgi.errors` lines at WARN
/// (target `wsgi.errors`), one event per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracebacks_and_wsgi_errors_reach_tracing() {
    let (tx, events) = channel();
    tracing::subscriber::set_global_default(Recorder(Mutex::new(tx))).unwrap();
    within(async {
        let layer = ThreadAffinityLayer::builder().workers(1).build();
        let wsgi = Wsgi::builder()
            .python_path(common::apps())
            .import("pep3333_app:application");
        let addr = common::serve(Router::new().fallback_service(layer.service(wsgi))).await;

        let answer = get(addr, "/raise", "log-raise").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.text().contains("secret"));
        let (level, message) = wait_for(&events, "wsgi", "a secret the client must not see");
        assert_eq!(level, Level::ERROR);
        assert!(
            message.contains("Traceback (most recent call last)"),
            "{message}"
        );
        assert!(message.contains("pep3333_app.py"), "{message}");

        assert_eq!(get(addr, "/errors", "log-errors").await.text(), "logged");
        let (level, message) = wait_for(&events, "wsgi.errors", "a line to wsgi.errors");
        assert_eq!(
            (level, message.as_str()),
            (Level::WARN, "a line to wsgi.errors")
        );
        let (_, message) = wait_for(&events, "wsgi.errors", "lines");
        assert_eq!(message, "two lines");
    })
    .await;
}
