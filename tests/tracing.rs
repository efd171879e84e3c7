//! With the `tracing` feature, the worker's events carry the caller's span, and
//! a shutdown past its deadline warns of the workers stuck in user code.
#![cfg(feature = "tracing")]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::within;

use http::{Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_layer::Layer;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// An event: its message, the span current on its thread, the thread.
type Seen = (String, Option<u64>, String);

/// Records each event's message with the span current on its thread, and
/// sends it to the test.
struct Recorder {
    next: AtomicU64,
    spans: Mutex<Vec<&'static Metadata<'static>>>,
    events: Mutex<std::sync::mpsc::Sender<Seen>>,
}

thread_local! {
    static STACK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        self.spans.lock().unwrap().push(attributes.metadata());
        Id::from_u64(self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        match STACK.with(|stack| stack.borrow().last().copied()) {
            Some(id) => {
                let metadata = self.spans.lock().unwrap()[id as usize - 1];
                tracing_core::span::Current::new(Id::from_u64(id), metadata)
            }
            None => tracing_core::span::Current::none(),
        }
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let span = STACK.with(|stack| stack.borrow().last().copied());
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let _ = self.events.lock().unwrap().send((message.0, span, thread));
    }
    fn enter(&self, span: &Id) {
        STACK.with(|stack| stack.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, _: &Id) {
        STACK.with(|stack| stack.borrow_mut().pop());
    }
}

/// `started`, `head sent` and `ended` are emitted on the worker, inside the
/// span that was current when the caller called the service.
#[tokio::test(flavor = "current_thread")]
async fn worker_events_carry_the_callers_span() {
    let (tx, rx) = std::sync::mpsc::channel();
    let recorder: &'static Recorder = Box::leak(Box::new(Recorder {
        next: AtomicU64::new(0),
        spans: Mutex::default(),
        events: Mutex::new(tx),
    }));
    tracing::subscriber::set_global_default(RecorderRef(recorder)).unwrap();

    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .thread_name("traced")
        .build();
    let svc = layer.layer(blocking::service_fn(|_: Request<()>| {
        let chunks =
            (0..3).map(|i| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![i; 4])));
        Response::new(blocking::IterBody::new(
            chunks.collect::<Vec<_>>().into_iter(),
        ))
    }));
    let span = tracing::info_span!("caller");
    let caller = span.id().unwrap().into_u64();
    let response = {
        let _entered = span.enter();
        svc.oneshot(Request::new(())).await.unwrap()
    };
    response.into_body().collect().await.unwrap();

    // Events up to "ended", which the worker emits after the last frame.
    let mut events = Vec::new();
    while !events.iter().any(|(message, ..): &Seen| message == "ended") {
        let timeout = std::time::Duration::from_secs(10);
        events.push(rx.recv_timeout(timeout).expect("no \"ended\" event"));
    }
    for wanted in ["enqueued", "started", "head sent", "ended"] {
        let found = events.iter().find(|(message, ..)| message == wanted);
        let (_, span, thread) = found.unwrap_or_else(|| panic!("no {wanted:?} in {events:?}"));
        assert_eq!(*span, Some(caller), "{wanted}: {events:?}");
        if wanted != "enqueued" {
            assert_eq!(thread, "traced-0", "{wanted}");
        }
    }
}

/// A `'static` recorder as the global subscriber, readable by the test.
struct RecorderRef(&'static Recorder);

impl Subscriber for RecorderRef {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        self.0.new_span(a)
    }
    fn record(&self, s: &Id, r: &Record<'_>) {
        self.0.record(s, r)
    }
    fn record_follows_from(&self, s: &Id, f: &Id) {
        self.0.record_follows_from(s, f)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
    fn enter(&self, s: &Id) {
        self.0.enter(s)
    }
    fn exit(&self, s: &Id) {
        self.0.exit(s)
    }
}

/// Collects the warnings emitted on the thread it is the default of.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    /// Collects on this thread until the guard drops: `shutdown_timeout`
    /// warns on the thread that awaits it.
    fn collect() -> (Self, tracing::subscriber::DefaultGuard) {
        let warnings = Self::default();
        let guard = tracing::subscriber::set_default(warnings.clone());
        (warnings, guard)
    }

    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() == tracing::Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push(message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

const STUCK_WARNING: &str = "shutdown deadline passed with workers inside user code";

/// `shutdown_timeout` warns when its deadline passes with a worker stuck
/// in a handler.
#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_past_its_deadline_warns_of_stuck_workers() {
    let (warnings, _guard) = Warnings::collect();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .build();
    let (started, mut on_start) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let svc = layer.layer(blocking::service_fn(move |_: Request<()>| {
        started.send(()).unwrap();
        let _ = released.lock().unwrap().recv();
        Response::new(String::new())
    }));
    let blocked = tokio::spawn(svc.oneshot(Request::new(())));
    within("the handler to start", on_start.recv())
        .await
        .unwrap();

    let report = within(
        "shutdown_timeout",
        layer.shutdown_timeout(Duration::from_millis(20)),
    )
    .await;
    assert_eq!(report.stuck(), &[0]);
    assert_eq!(warnings.taken(), [STUCK_WARNING]);

    release.send(()).unwrap();
    within("the blocked request", blocked)
        .await
        .unwrap()
        .unwrap();
}

/// A deadline that passes with no worker in user code (a stream whose
/// reader stalled) cuts the stream without that warning.
#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_past_its_deadline_with_no_stuck_worker_does_not_warn() {
    let (warnings, _guard) = Warnings::collect();
    let layer = ThreadAffinityLayer::builder()
        .workers(1)
        .max_workers(1)
        .body_buffer(1)
        .build();
    let svc = layer.layer(blocking::service_fn(|_: Request<()>| {
        let endless = std::iter::repeat_with(|| Ok::<_, Infallible>(Bytes::from_static(b"x")));
        Response::new(blocking::IterBody::new(endless))
    }));
    let mut stalled = within("the head", svc.oneshot(Request::new(())))
        .await
        .unwrap()
        .into_body();
    within("a frame", stalled.frame()).await.unwrap().unwrap();

    let report = within(
        "shutdown_timeout",
        layer.shutdown_timeout(Duration::from_millis(20)),
    )
    .await;
    assert!(report.is_complete());
    assert!(warnings.taken().is_empty());
    // The deadline did pass: the stream was cut, not ended.
    loop {
        match within("a frame", stalled.frame()).await {
            Some(Ok(_)) => continue,
            Some(Err(_)) => break,
            None => panic!("a cut stream ended cleanly"),
        }
    }
}
