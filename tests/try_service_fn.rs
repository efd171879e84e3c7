//! `blocking::try_service_fn`: a handler's `Err` is a `500` whose body does
//! not echo the error, logged at `ERROR` with the `tracing` feature; `Ok`
//! passes through unchanged.

mod common;

use std::fmt;

use common::{collect, send};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_affinity::{blocking, ThreadAffinityLayer};

/// An error whose text must never reach a client.
#[derive(Debug)]
struct Secret;

const SECRET: &str = "password=hunter2 in /etc/app.conf";

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET)
    }
}

fn handler(req: Request<()>) -> Result<Response<String>, Secret> {
    match req.uri().path() {
        "/fail" => Err(Secret),
        _ => {
            let mut response = Response::new(String::from("fine"));
            *response.status_mut() = StatusCode::ACCEPTED;
            response
                .headers_mut()
                .insert("x-kept", "yes".parse().unwrap());
            Ok(response)
        }
    }
}

/// An `Err` answers `500` in plain text that says nothing of the error, on
/// the worker, which then serves the next request; an `Ok` response keeps
/// its status, headers, body and exact size.
#[tokio::test]
async fn err_is_a_500_that_does_not_leak() {
    let layer = ThreadAffinityLayer::new(1);
    let mut svc = layer.service(blocking::try_service_fn(handler));

    let response = send(&mut svc, common::get("/fail")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let body = collect(response.into_body()).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("/etc"),
        "{text}"
    );
    assert!(text.contains("internal error"), "{text}");

    let response = send(&mut svc, common::get("/ok")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-kept"], "yes");
    assert_eq!(response.body().size_hint().exact(), Some(4));
    assert_eq!(collect(response.into_body()).await, "fine");
}

/// With `tracing`, the error is an `ERROR` event of target
/// `tower_affinity` whose `error` field holds the error's text.
#[cfg(feature = "tracing")]
#[tokio::test]
async fn err_is_logged_at_error_level() {
    use std::sync::Mutex;
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    /// Sends each event's level, target and `error` field to the test.
    struct Events(Mutex<std::sync::mpsc::Sender<(Level, String, String)>>);

    struct ErrorField(String);
    impl tracing::field::Visit for ErrorField {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            if field.name() == "error" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Events {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut field = ErrorField(String::new());
            event.record(&mut field);
            let meta = event.metadata();
            let seen = (*meta.level(), meta.target().to_owned(), field.0);
            let _ = self.0.lock().unwrap().send(seen);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    let (tx, rx) = std::sync::mpsc::channel();
    // Global: the event is emitted on the worker thread.
    tracing::subscriber::set_global_default(Events(Mutex::new(tx))).unwrap();

    let layer = ThreadAffinityLayer::new(1);
    let mut svc = layer.service(blocking::try_service_fn(handler));
    let response = send(&mut svc, common::get("/fail")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let logged = rx
        .try_iter()
        .find(|(level, _, error)| *level == Level::ERROR && error == SECRET);
    let (_, target, _) = logged.expect("an ERROR event carrying the error");
    assert_eq!(target, "tower_affinity");
}
