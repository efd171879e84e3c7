//! A PostgreSQL cluster of a test's own: `initdb` in a temporary directory,
//! `pg_ctl start` on a free loopback port, and `pg_ctl stop` plus removal of
//! the directory when the guard drops, a failed test's unwinding included.
//!
//! The server programs come from Debian's `postgresql` package
//! (`/usr/lib/postgresql/<version>/bin`). PostgreSQL refuses to run as
//! root, so under root the programs run as the `postgres` user (or
//! `nobody`) through `runuser`, with the directory handed to that user.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The database user the cluster is made with (trusted on loopback).
pub const USER: &str = "tower_affinity";

/// A running cluster; dropping it stops the server and removes its files.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    /// `runuser -u NAME --`, when the tests run as root.
    run_as: Option<String>,
    pub port: u16,
}

impl Cluster {
    /// Starts a cluster, or says how to install PostgreSQL and returns
    /// `None`; under `CI=true` a missing PostgreSQL fails the test instead,
    /// so that CI never skips it silently.
    pub fn start() -> Option<Self> {
        let bin = match server_bin() {
            Some(bin) => bin,
            None => {
                missing();
                return None;
            }
        };
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-affinity-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run_as = server_user();
        // From here on the guard owns the directory: a failed step below
        // still stops what started and removes the files.
        let mut cluster = Self {
            bin,
            dir,
            run_as,
            port: 0,
        };
        if let Some(user) = &cluster.run_as {
            cluster.check(Command::new("chown").arg("-R").arg(user).arg(&cluster.dir));
        }
        let data = cluster.data();
        cluster.check(
            cluster
                .program("initdb")
                .args(["--auth=trust", "--encoding=UTF8", "--no-sync", "-U", USER])
                .arg("-D")
                .arg(&data),
        );
        cluster.port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            cluster.port,
            cluster.dir.display()
        );
        cluster.check(
            cluster
                .program("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
        );
        Some(cluster)
    }

    /// A connection string for the `postgres` database of this cluster.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// One of the server's programs, run as the cluster's user, in the
    /// cluster's directory (that user may not enter the test's).
    fn program(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        };
        command.current_dir(&self.dir);
        command
    }

    /// Runs `command`; on failure, panics with its output and the server's
    /// log (the guard then cleans up).
    fn check(&self, command: &mut Command) {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!("{command:?} failed: {}\nserver log:\n{log}", text(&output));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.port != 0 {
            // `immediate`: the test is over, nothing needs a clean shutdown.
            let _ = self
                .program("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn server_bin() -> Option<PathBuf> {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    bins.sort();
    bins.pop().map(|(_, bin)| bin)
}

/// Who runs the server: `None` when the tests do not run as root.
fn server_user() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if text(&uid).trim() != "0" {
        return None;
    }
    let has = |user: &str| {
        Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    Some(
        if has("postgres") {
            "postgres"
        } else {
            "nobody"
        }
        .to_owned(),
    )
}

fn missing() {
    let message = "PostgreSQL's server is not installed, so this test did not run; install \
                   it to run it (Debian or Ubuntu: `apt-get install postgresql`)";
    let ci = std::env::var("CI").unwrap_or_default();
    if !ci.is_empty() && ci != "false" && ci != "0" {
        panic!("{message}. CI={ci}: a missing PostgreSQL is a failure here");
    }
    // Straight to stderr, past the test harness's capture, so that the
    // notice shows in a plain `cargo test`.
    let _ = writeln!(std::io::stderr(), "\nnote: {message}");
}

/// A free loopback port. (Another process could take it before the server
/// binds it; `pg_ctl start` then fails loudly.)
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
