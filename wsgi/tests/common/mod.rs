//! What the gateway's tests share: a real axum server on 127.0.0.1, a real
//! hyper client, the test applications' directory, a time bound, and
//! calls into the test application's Python module.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pyo3::prelude::*;

/// Every test's one time bound.
pub const BOUND: Duration = Duration::from_secs(60);

/// Fails the test if `future` takes longer than [`BOUND`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .expect("the test ran past its time bound")
}

/// `wsgi/tests/apps`, where the test applications live.
pub fn apps() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// Serves `app` on a fresh port of 127.0.0.1, for the test's lifetime.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// One response, read whole: the body, or the error it ended with.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("the body ended with an error"))
            .into_owned()
    }
}

/// Sends `request` with a fresh client (its own connection).
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    let response = client
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| e.to_string());
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A GET of `path`, tagged `tag` (the test application's `X-Tag`).
pub async fn get(addr: SocketAddr, path: &str, tag: &str) -> Answer {
    let request = Request::get(path)
        .header("x-tag", tag)
        .body(Full::default())
        .unwrap();
    send(addr, request).await
}

/// Calls `function` of the Python module `module` with `args`, off the
/// runtime (it may wait), and extracts its result.
pub async fn python<T, A>(module: &'static str, function: &'static str, args: A) -> T
where
    T: for<'py> FromPyObjectOwned<'py> + Send + 'static,
    A: for<'py> pyo3::call::PyCallArgs<'py> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        Python::attach(|py| {
            let sys = py.import("sys").unwrap();
            sys.getattr("path")
                .unwrap()
                .call_method1("insert", (0, apps().to_str().unwrap()))
                .unwrap();
            py.import(module)
                .unwrap()
                .call_method1(function, args)
                .unwrap_or_else(|e| panic!("{module}.{function}: {e}"))
                .extract::<T>()
                .unwrap_or_else(|_| panic!("{module}.{function}: unexpected result"))
        })
    })
    .await
    .unwrap()
}

/// The test application's validator complaints so far (none, if all is well).
pub async fn problems() -> Vec<String> {
    python("pep3333_app", "problems", ()).await
}

/// Whether the Python package `module` imports. Without it, a test says
/// how to install it and passes, except under `CI=true`, where it fails.
pub async fn require(module: &'static str, install: &'static str) -> bool {
    let spec: Option<Py<PyAny>> = python("importlib.util", "find_spec", (module,)).await;
    let found = spec.is_some();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{module} is not installed (CI=true): {install}"
        );
        eprintln!("skipped: the Python package {module} is missing; install it with `{install}`");
    }
    found
}

/// A POST of `path` whose body the test feeds chunk by chunk through the
/// returned sender (dropping it ends the body); the response arrives on
/// the handle.
pub fn upload(
    addr: SocketAddr,
    path: &str,
    tag: &str,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<http::Response<hyper::body::Incoming>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok::<_, std::io::Error>(http_body::Frame::data(c))))
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{addr}{path}"))
        .header("x-tag", tag)
        .body(body)
        .unwrap();
    let response = tokio::spawn(async move { client.request(request).await.unwrap() });
    (tx, response)
}
