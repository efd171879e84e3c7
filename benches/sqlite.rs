//! The comparison a user of axum with blocking SQLite code makes: this
//! layer against what they use today, with `wrk` as the load generator in
//! its own process.
//!
//! The server (this process) is axum over a SQLite file of 100,000 rows
//! in WAL mode, on a multi-thread runtime of the machine's cores, with at
//! most 16 connections in every variant (`benches/sqlite/variants.rs`):
//!
//! - `layer`: `ThreadAffinityLayer` with `max_workers(16)` around a
//!   blocking service, a connection per worker (`service_with`);
//! - `r2d2`: `spawn_blocking` per request and an r2d2 pool of 16;
//! - `deadpool`: deadpool-sqlite's `interact`, a pool of 16;
//! - `runtime`: the query on the runtime thread itself (the ceiling for a
//!   quick query; for the 2 ms route, what blocking the runtime costs);
//! - `layer_local`: ordinary axum handlers under `router.layer(layer)`,
//!   a connection per worker in a `WorkerLocal`.
//!
//! Routes: `/point/{id}` (a row by primary key), `/aggregate/{start}`
//! (count and sum over 2,000 rows), `/slow/{id}` (a point query, then 2 ms
//! asleep), ids drawn at random by wrk's Lua script. Per round, per route,
//! per variant: a fresh server, `SQLITE_WARMUP` seconds (1) of load, then
//! `wrk -t2 -c{SQLITE_CONNS} -d{SQLITE_SECS}s --latency` (64 connections,
//! 5 s); `SQLITE_ROUNDS` rounds (3). Each ratio (layer / variant) is taken
//! within a round, and its median over rounds reported with the worst and
//! best round. `SQLITE_ONLY=point,slow` runs some routes; the process's
//! thread count is sampled while wrk runs.
//!
//! Run by hand (not in CI): `cargo bench --bench sqlite`. It needs `wrk`:
//! `apt-get install wrk` on Debian and Ubuntu, `brew install wrk` on macOS;
//! without it, it says so and exits.

#[path = "support/mod.rs"]
mod support;
#[path = "sqlite/variants.rs"]
mod variants;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::{env_or, loadavg, median, Spread, Watchdog};
use variants::{CONNECTIONS, VARIANTS};

const ROWS: i64 = 100_000;
const ROUTES: [(&str, &str, i64); 3] = [
    ("point", "/point/", ROWS),
    ("aggregate", "/aggregate/", ROWS - 2000),
    ("slow", "/slow/", ROWS),
];

/// What one wrk run measured.
#[derive(Clone, Copy)]
struct Run {
    rps: f64,
    p99_ms: f64,
    threads: usize,
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("wrk is not installed: `apt-get install wrk` (Debian, Ubuntu) or `brew install wrk`; skipping");
        return;
    }
    let rounds: usize = env_or("SQLITE_ROUNDS", 3);
    let secs: u64 = env_or("SQLITE_SECS", 5);
    let warmup: u64 = env_or("SQLITE_WARMUP", 1);
    let conns: usize = env_or("SQLITE_CONNS", 64);
    let only = std::env::var("SQLITE_ONLY").unwrap_or_default();
    let routes: Vec<_> = ROUTES
        .iter()
        .filter(|(name, ..)| only.is_empty() || only.split(',').any(|o| o == *name))
        .collect();
    let db = database();
    println!("sqlite: {ROWS} rows, WAL, {CONNECTIONS} connections per variant, wrk -c{conns} {secs}s, {rounds} rounds; load before: {}", loadavg());

    let mut runs: HashMap<(&str, &str), Vec<Run>> = HashMap::new();
    for round in 0..rounds {
        for (route, prefix, ids) in &routes {
            let script = lua(prefix, *ids);
            for variant in VARIANTS {
                let _watchdog = Watchdog::arm(
                    format!("{variant} {route}"),
                    Duration::from_secs(secs * 4 + 60),
                );
                let run = serve_and_load(variant, &db, &script, conns, warmup, secs);
                println!(
                    "round {round} {route:>9} {variant:>11}: {:>8.0} req/s  p99 {:>7.2} ms  {:>3} threads  (load {})",
                    run.rps, run.p99_ms, run.threads, loadavg()
                );
                runs.entry((route, variant)).or_default().push(run);
            }
        }
    }

    println!("\nmedians over {rounds} rounds; ratios taken per round (worst, best):");
    for (route, ..) in &routes {
        let of = |variant: &'static str| &runs[&(*route, variant)];
        for variant in VARIANTS {
            let v = of(variant);
            let threads = v.iter().map(|r| r.threads).max().unwrap_or(0);
            println!(
                "{route:>9} {variant:>11}: {:>8.0} req/s  p99 {:>7.2} ms  threads up to {threads}",
                median(v.iter().map(|r| r.rps).collect()),
                median(v.iter().map(|r| r.p99_ms).collect()),
            );
        }
        for layer in ["layer", "layer_local"] {
            for base in ["r2d2", "deadpool", "runtime"] {
                let ratio = |f: fn(&Run) -> f64| -> Vec<f64> {
                    of(layer)
                        .iter()
                        .zip(of(base))
                        .map(|(l, b)| f(l) / f(b))
                        .collect()
                };
                println!(
                    "{route:>9} {layer} / {base}: req/s {}, p99 {}",
                    Spread::of(&ratio(|r| r.rps)),
                    Spread::of(&ratio(|r| r.p99_ms)),
                );
            }
        }
    }
    println!("load after: {}", loadavg());
}

/// The database file, made once (100,000 rows, WAL) and kept in the temp
/// directory for later runs.
fn database() -> PathBuf {
    let path = std::env::temp_dir().join("tower-affinity-bench.sqlite3");
    let db = variants::open(&path);
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.execute_batch("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)")
        .unwrap();
    let count: i64 = db
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .unwrap();
    if count != ROWS {
        db.execute_batch("BEGIN; DELETE FROM items;").unwrap();
        let mut insert = db
            .prepare("INSERT INTO items (id, name, value) VALUES (?1, ?2, ?3)")
            .unwrap();
        for id in 1..=ROWS {
            insert
                .execute(rusqlite::params![
                    id,
                    format!("item-{id:06}"),
                    (id * 7919) % 10_007
                ])
                .unwrap();
        }
        drop(insert);
        db.execute_batch("COMMIT;").unwrap();
    }
    path
}

/// A wrk script that asks for `{prefix}{random id in 1..=ids}`.
fn lua(prefix: &str, ids: i64) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tower-affinity-bench{}.lua",
        prefix.replace('/', "-")
    ));
    let script = format!(
        "math.randomseed(os.time())\nrequest = function()\n  return wrk.format(nil, \"{prefix}\" .. math.random(1, {ids}))\nend\n"
    );
    std::fs::write(&path, script).unwrap();
    path
}

/// Starts variant `name` on a fresh runtime and port, loads it with wrk
/// (warm-up, then the measured run), and stops it.
fn serve_and_load(
    name: &str,
    db: &Path,
    script: &Path,
    conns: usize,
    warmup: u64,
    secs: u64,
) -> Run {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("srv")
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = runtime.block_on(async { variants::app(name, db) });
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}");
    if warmup > 0 {
        wrk(&url, script, conns, warmup);
    }
    let sampling = Arc::new(AtomicBool::new(true));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (sampling, most) = (sampling.clone(), most.clone());
        thread::spawn(move || {
            while sampling.load(Relaxed) {
                most.fetch_max(threads(), Relaxed);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (rps, p99_ms) = wrk(&url, script, conns, secs);
    sampling.store(false, Relaxed);
    sampler.join().unwrap();
    // The server's tasks, the router and with it the layer's workers end here.
    runtime.shutdown_timeout(Duration::from_secs(5));
    // Less the sampler itself.
    Run {
        rps,
        p99_ms,
        threads: most.load(Relaxed).saturating_sub(1),
    }
}

/// Runs wrk; its requests/s and p99 in ms. Panics on errors or non-2xx
/// answers: a variant that fails must not look fast.
fn wrk(url: &str, script: &Path, conns: usize, secs: u64) -> (f64, f64) {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(!text.contains("Non-2xx"), "errors under load:\n{text}");
    assert!(
        !text.contains("Socket errors"),
        "socket errors under load:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wrk's requests/s");
    let p99 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .map(|v| millis(v.trim()))
        .expect("wrk's p99");
    (rps, p99)
}

/// wrk's `1.23ms`, `456.00us`, `1.02s` in milliseconds.
fn millis(value: &str) -> f64 {
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (value, f64::NAN)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

/// This process's threads now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count())
}
