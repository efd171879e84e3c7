//! nginx and HAProxy in front of three `legacy_server` processes, each run
//! from the shipped configuration in `deploy/` with only its ports changed,
//! in the foreground, with its own files in a temporary directory.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{accepting, free_port, require, substitute, Guard, TempDir};

/// Which load balancer.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Nginx,
    Haproxy,
}

impl Kind {
    /// The installed program; `None` (after saying how to install it) when
    /// there is none, unless under CI (see [`require`]).
    pub fn program(self) -> Option<PathBuf> {
        match self {
            Kind::Nginx => require("nginx", "nginx"),
            Kind::Haproxy => require("haproxy", "haproxy"),
        }
    }
}

/// A running load balancer; stopped (killed) on drop.
#[derive(Debug)]
pub struct Balancer {
    pub addr: SocketAddr,
    _process: Guard,
    _dir: TempDir,
}

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/");

impl Balancer {
    /// Starts `program`, a `kind`, in front of `backends` (in the order of
    /// the shipped configuration's `server` lines).
    pub async fn start(kind: Kind, program: &Path, backends: [SocketAddr; 3]) -> Self {
        let dir = TempDir::new(match kind {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("balancer.log");
        let mut command = match kind {
            Kind::Nginx => nginx(program, &dir, addr, backends),
            Kind::Haproxy => haproxy(program, &dir, addr, backends),
        };
        let output = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .expect("start the load balancer");
        let mut process = Guard(child);
        accepting(&mut process, addr, &log).await;
        Self {
            addr,
            _process: process,
            _dir: dir,
        }
    }
}

/// nginx with `deploy/nginx.conf` included in a main configuration of the
/// test's own: foreground, one process (so that killing it leaves no
/// worker behind), pid, logs and temp files in `dir`, never the system's.
fn nginx(program: &Path, dir: &TempDir, addr: SocketAddr, [a, b, c]: [SocketAddr; 3]) -> Command {
    let site = std::fs::read_to_string(format!("{DEPLOY}nginx.conf")).unwrap();
    let site = substitute(&site, "listen 8080;", &format!("listen {addr};"));
    let site = substitute(&site, "server 127.0.0.1:3001 ", &format!("server {a} "));
    let site = substitute(&site, "server 127.0.0.1:3002 ", &format!("server {b} "));
    let site = substitute(&site, "server 127.0.0.1:3003 ", &format!("server {c} "));
    let d = dir.path().display();
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    let main = format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/balancer.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let mut command = Command::new(program);
    // `-e`: the log for messages before the configuration is read (the
    // compiled-in default is the system's).
    command
        .arg("-e")
        .arg(dir.path().join("balancer.log"))
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"));
    command
}

/// HAProxy with `deploy/haproxy.cfg`, in the foreground (`-db`).
fn haproxy(program: &Path, dir: &TempDir, addr: SocketAddr, [a, b, c]: [SocketAddr; 3]) -> Command {
    let config = std::fs::read_to_string(format!("{DEPLOY}haproxy.cfg")).unwrap();
    let config = substitute(&config, "bind :8080", &format!("bind {addr}"));
    let config = substitute(&config, "app1 127.0.0.1:3001 ", &format!("app1 {a} "));
    let config = substitute(&config, "app2 127.0.0.1:3002 ", &format!("app2 {b} "));
    let config = substitute(&config, "app3 127.0.0.1:3003 ", &format!("app3 {c} "));
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(program);
    command.arg("-db").arg("-f").arg(path);
    command
}
