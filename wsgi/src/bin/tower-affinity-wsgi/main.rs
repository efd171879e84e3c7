//! `tower-affinity-wsgi MODULE:CALLABLE --bind HOST:PORT --workers N
//! --max-workers M`: a WSGI application served by axum on the layer's
//! worker threads.
//!
//! It prints `listening on http://ADDR` once it accepts connections, and
//! stops gracefully on SIGTERM or Ctrl-C: no new connections, requests in
//! flight finish, streams still running after `--graceful-timeout` are
//! cut, and it exits 0.

mod args;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use http::{Request, Response};
use tower::ServiceExt;
use tower_affinity::{blocking, ThreadAffinityLayer};
use tower_affinity_wsgi::Wsgi;

/// How long, past the grace period, a stop waits for connections that are
/// still open (a finished response a client has not read sits in socket
/// buffers, out of the layer's reach).
const LINGER: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("tower-affinity-wsgi: {message}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tower-affinity-wsgi: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tower-affinity-wsgi: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: args::Args) -> Result<(), String> {
    let mut builder = ThreadAffinityLayer::builder().thread_name("wsgi");
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    if let Some(n) = args.max_workers {
        builder = builder.max_workers(n);
    }
    if let Some(n) = args.max_streams_per_worker {
        builder = builder.max_streams_per_worker(n);
    }
    let layer = builder
        .try_build()
        .map_err(|e| format!("cannot start the workers: {e}"))?;

    let mut wsgi = Wsgi::builder();
    // The current directory first on sys.path, as gunicorn puts it.
    if let Ok(cwd) = std::env::current_dir() {
        wsgi = wsgi.python_path(cwd);
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        wsgi = wsgi.virtual_env(venv);
    }
    if let Some(scheme) = &args.url_scheme {
        wsgi = wsgi.url_scheme(scheme);
    }
    if let Some(bytes) = args.max_request_body {
        wsgi = wsgi.max_request_body(bytes);
    }
    let wsgi = wsgi.import(&args.app);
    load(&layer, &wsgi).await?;

    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();

    let router = Router::new().fallback_service(layer.service(wsgi));
    serve(listener, router, &layer, args.graceful_timeout).await
}

/// Imports the application on a worker (Python runs only there) before
/// the first connection, so that a broken import stops the command.
async fn load(layer: &ThreadAffinityLayer, wsgi: &Wsgi) -> Result<(), String> {
    let wsgi = wsgi.clone();
    let load = blocking::service_fn(move |_: Request<()>| {
        Response::new(wsgi.load().err().map(|e| e.to_string()).unwrap_or_default())
    });
    let response = layer
        .service(load)
        .oneshot(Request::new(()))
        .await
        .map_err(|e| format!("loading the application: {e:?}"))?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| format!("loading the application: {e}"))?
        .to_bytes();
    match body.is_empty() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&body).into_owned()),
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops gracefully (see the module
/// docs). The layer's shutdown starts in its own task beside axum's: axum
/// waits for every connection, and only the layer can end the streams
/// that hold them.
async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    layer: &ThreadAffinityLayer,
    grace: Duration,
) -> Result<(), String> {
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let layer = layer.clone();
    let signal = async move {
        stop_signal().await;
        eprintln!("tower-affinity-wsgi: stopping (grace {grace:?})");
        tokio::spawn(async move { layer.shutdown_timeout(grace).await });
        let _ = stopping.send(());
    };
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let serving = axum::serve(listener, service).with_graceful_shutdown(signal);
    let overdue = async move {
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace.saturating_add(LINGER)).await;
    };
    tokio::select! {
        served = serving => served.map_err(|e| e.to_string()),
        () = overdue => Ok(()),
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        },
        Err(_) => ctrl_c.await,
    }
}
