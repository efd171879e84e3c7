//! Processes for the tests that run the `legacy_server` example as a real
//! program, alone or behind nginx or HAProxy: each process gets its own
//! temporary directory and loopback port, and is killed (and reaped) when
//! its handle drops, so a failing test leaves nothing running.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// How long a process may take to start or stop before the test calls it
/// a hang. A guard, not a timing claim.
pub const HANG: Duration = Duration::from_secs(20);

/// A fresh directory under the system's temp directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tower-affinity-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `legacy_server` example's executable, (re)built first.
///
/// Cargo gives integration tests the path of the crate's binaries, not of
/// its examples. The examples of this profile sit beside `deps/`, where
/// this test runs from; `cargo build` makes sure the one there is current
/// (`cargo test --test NAME` alone does not build examples).
pub fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap();
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "--example", "legacy_server"]);
        build
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --example legacy_server failed"
        );
        let binary = profile_dir
            .join("examples")
            .join(format!("legacy_server{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "no example binary at {}", binary.display());
        binary
    })
}

/// A `legacy_server` process on a loopback port it picked itself.
#[derive(Debug)]
pub struct Backend {
    pub instance: String,
    pub addr: SocketAddr,
    process: Guard,
    /// Its standard output, line by line; closed when the process ends.
    lines: mpsc::UnboundedReceiver<String>,
    _dir: TempDir,
}

impl Backend {
    /// Starts a process named `instance` (its `x-instance` answer), with its
    /// own database, and waits until it listens.
    pub async fn start(instance: &str, grace: Duration) -> Self {
        let dir = TempDir::new(instance);
        let mut child = Command::new(example_binary())
            .env("PORT", "0")
            .env("DATABASE_PATH", dir.path().join("orders.sqlite3"))
            .env("INSTANCE", instance)
            .env("SHUTDOWN_GRACE", grace.as_secs_f64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the legacy_server example");
        let stdout = child.stdout.take().unwrap();
        let process = Guard(child);
        // A thread reads the pipe to its end, so the process never blocks
        // on a full pipe, and the channel closing tells that it exited.
        let (tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = within(HANG, "the example to listen", async {
            loop {
                let line = lines.recv().await.expect("the example exited");
                if let Some((_, rest)) = line.split_once(" listening on http://") {
                    let addr = rest.split_whitespace().next().unwrap();
                    break addr.parse().unwrap();
                }
            }
        })
        .await;
        Self {
            instance: instance.to_owned(),
            addr,
            process,
            lines,
            _dir: dir,
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`) with the system's `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to end; returns its status and its last
    /// lines of output.
    pub async fn exited(&mut self) -> (ExitStatus, Vec<String>) {
        let mut tail = Vec::new();
        within(HANG, "the example to exit", async {
            while let Some(line) = self.lines.recv().await {
                tail.push(line);
            }
        })
        .await;
        // Its output closed: it has exited, or is about to.
        let status = self.process.0.wait().unwrap();
        (status, tail)
    }
}

/// Awaits `future`, failing the test after `limit`.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("hang: {what} did not happen within {limit:?}"),
    }
}

/// A load balancer's executable, from `PATH` or the usual `sbin`
/// directories. Missing: `None`, after telling how to install it, unless
/// the `CI` variable is set, where a missing tool fails the test, so that
/// CI never skips these tests silently.
pub fn require(program: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let message = format!(
        "{program} is not installed, so this test did not run; install it to run it \
         (Debian or Ubuntu: `apt-get install {package}`)"
    );
    let ci = std::env::var("CI").unwrap_or_default();
    if !ci.is_empty() && ci != "false" && ci != "0" {
        panic!("{message}. CI={ci}: a missing load balancer is a failure here");
    }
    // Straight to stderr, past the test harness's capture, so that the
    // notice shows in a plain `cargo test`.
    let _ = writeln!(std::io::stderr(), "\nnote: {message}");
    None
}

/// A free loopback port, for a program that cannot report the one it got.
/// (Another process could take it before the program binds it; the start
/// then fails loudly rather than testing the wrong thing.)
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `process` accepts connections on `addr`. There is nothing
/// to wait on but the port itself, so it tries every few milliseconds; a
/// process that exits first fails the test with `log`'s contents.
pub async fn accepting(process: &mut Guard, addr: SocketAddr, log: &Path) {
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Some(status) = process.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the load balancer exited ({status}):\n{log}");
        }
        assert!(started.elapsed() < HANG, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `text` with `from` replaced by `to`, which must occur exactly once: the
/// test runs the shipped configuration, so an edit that breaks this
/// substitution must fail the test rather than test something else.
pub fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in the config");
    text.replacen(from, to, 1)
}

pub mod balancer;
pub mod traffic;
