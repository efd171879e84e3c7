//! The `tower-affinity-wsgi` command, run as a separate process against a
//! small application: started in the application's directory (on
//! `sys.path`, as gunicorn does), with `VIRTUAL_ENV` honoured, stopping
//! gracefully on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use common::{get, within};
use http_body_util::BodyExt;
use pyo3::prelude::*;

/// The command on `app`, started in `dir`, and the address it printed.
fn start(app: &str, dir: &Path, env: &[(&str, &Path)]) -> (Child, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tower-affinity-wsgi"));
    command
        .args([
            app,
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--max-workers",
            "4",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the command starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Sends SIGTERM, and waits until the command says it is stopping.
async fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stderr = child.stderr.take().unwrap();
    tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stderr).lines() {
            if line.unwrap().contains("stopping") {
                return;
            }
        }
        panic!("the command never said it was stopping");
    })
    .await
    .unwrap();
}

/// Serves an application found through the current directory, and on
/// SIGTERM finishes the stream in flight, then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_stops_gracefully() {
    within(async {
        let (mut child, addr) = start("hello_app:app", &common::apps(), &[]);
        assert_eq!(get(addr, "/", "").await.text(), "hello from the command");

        // A stream in flight: its head and first chunk are here, and its
        // second waits for the rest of the request body.
        let (tx, response) = common::upload(addr, "/slow", "");
        let response = response.await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first,");

        terminate(&mut child).await;
        // The stream still finishes: the rest of it comes after the signal.
        tx.send(Bytes::from_static(b"sent after SIGTERM"))
            .await
            .unwrap();
        drop(tx);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second:sent after SIGTERM");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
    })
    .await;
}

/// `VIRTUAL_ENV`'s site-packages is on `sys.path`: an application that
/// lives only there is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_env_is_honoured() {
    within(async {
        let venv = std::env::temp_dir().join(format!("wsgi-venv-{}", std::process::id()));
        let version: (u8, u8) = Python::attach(|py| {
            let info = py.import("sys").unwrap().getattr("version_info").unwrap();
            (
                info.getattr("major").unwrap().extract().unwrap(),
                info.getattr("minor").unwrap().extract().unwrap(),
            )
        });
        let packages = venv.join(format!("lib/python{}.{}/site-packages", version.0, version.1));
        std::fs::create_dir_all(&packages).unwrap();
        std::fs::write(
            packages.join("venv_only_app.py"),
            "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'from the virtualenv']\n",
        )
        .unwrap();
        let (mut child, addr) = start("venv_only_app:app", &std::env::temp_dir(), &[("VIRTUAL_ENV", &venv)]);
        let answer = get(addr, "/", "").await;
        terminate(&mut child).await;
        std::fs::remove_dir_all(&venv).unwrap();
        assert_eq!(answer.text(), "from the virtualenv");
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        assert!(status.success(), "{status:?}");
    })
    .await;
}

/// An application that cannot be imported stops the command at once,
/// with an error, before it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_import_fails_at_start() {
    within(async {
        let output = tokio::task::spawn_blocking(|| {
            Command::new(env!("CARGO_BIN_EXE_tower-affinity-wsgi"))
                .args(["no_such_module:app", "--bind", "127.0.0.1:0"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("No module named 'no_such_module'"),
            "{stderr}"
        );
    })
    .await;
}
