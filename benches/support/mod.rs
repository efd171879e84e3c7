//! What every bench needs: knobs from the environment, a watchdog against
//! hangs, the load average (to judge a run's noise), a median, and the
//! naive pool baseline.
//!
//! Included by each bench with `#[path = "support/mod.rs"] mod support;`;
//! not every bench uses every item.
#![allow(dead_code)]

mod naive;

// Not every bench has a naive pool line.
#[allow(unused_imports)]
pub use naive::NaivePool;

use std::str::FromStr;
use std::thread;
use std::time::Duration;

/// The value of environment variable `name`, or `default` when it is unset
/// or does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ends the process if a variant runs far past its time: a hung transfer
/// should fail the bench, not stall it. Dropping the guard disarms it.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    pub fn arm(what: String, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{what}: no result after {limit:?}, giving up (hung?)");
                std::process::exit(2);
            }
        });
        Self(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel wakes the watchdog thread, which then exits.
        self.0.take();
    }
}

/// The system's load averages, to judge how noisy a run was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A ratio's rounds summed up: the median, with the worst and best beside
/// it. Each value is one round's ratio, taken against the baseline of that
/// same round, so noise that slows a whole round cancels out.
pub struct Spread {
    pub median: f64,
    pub worst: f64,
    pub best: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return Self {
                median: f64::NAN,
                worst: f64::NAN,
                best: f64::NAN,
            };
        }
        Self {
            median: median(finite.clone()),
            worst: finite.iter().copied().fold(f64::INFINITY, f64::min),
            best: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}× (worst {}, best {})",
            ratio(self.median),
            ratio(self.worst),
            ratio(self.best)
        )
    }
}

/// A ratio, written as `1/n` when it is small.
pub fn ratio(x: f64) -> String {
    if x >= 0.01 || x <= 0.0 || !x.is_finite() {
        format!("{x:.2}")
    } else {
        format!("1/{:.0}", 1.0 / x)
    }
}

/// Context switches (voluntary and involuntary) of every live thread of
/// this process so far, from `/proc/self/task/*/status`; 0 where there is
/// no `/proc`. Threads that have exited no longer count: take differences
/// over a span in which the pools' threads stay alive.
pub fn context_switches() -> u64 {
    per_thread("status", |status| {
        status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    })
}

/// Voluntary context switches alone (a thread that parked, waiting for a
/// wake-up), counted as [`context_switches`] counts.
pub fn voluntary_switches() -> u64 {
    per_thread("status", |status| {
        status
            .lines()
            .filter(|line| line.starts_with("voluntary_ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    })
}

/// Nanoseconds on a CPU of every live thread of this process so far, from
/// `/proc/self/task/*/schedstat`: what a transfer burns, which on a loaded
/// machine says more than its wall time.
pub fn cpu_nanos() -> u64 {
    per_thread("schedstat", |stat| {
        stat.split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .unwrap_or(0)
    })
}

/// CPU time (user and system) of this whole process so far, threads that
/// have exited included, from `/proc/self/stat`, in nanoseconds; 0 where
/// there is no `/proc`. In clock ticks (10 ms on Linux): take differences
/// over runs of a second or more.
pub fn process_cpu_nanos() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The command name may hold spaces: fields count from after its `)`.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks * 10_000_000
}

/// Context switches per live thread, by thread id, so that a difference
/// over a span counts the threads that started in it from zero and leaves
/// out those that ended (see [`switches_since`]).
pub fn switches_by_thread() -> std::collections::HashMap<u64, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Default::default();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let switches = status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((tid, switches))
        })
        .collect()
}

/// The context switches of the threads alive now since `before` (taken
/// by [`switches_by_thread`]).
pub fn switches_since(before: &std::collections::HashMap<u64, u64>) -> u64 {
    switches_by_thread()
        .into_iter()
        .map(|(tid, now)| now.saturating_sub(before.get(&tid).copied().unwrap_or(0)))
        .sum()
}

/// The sum of `read` over file `name` of every live thread of this process.
fn per_thread(name: &str, read: impl Fn(&str) -> u64) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join(name)).ok())
        .map(|text| read(&text))
        .sum()
}

/// Reports, on stderr, any spare worker `layer`'s pool started: the benches
/// that call it run trivial handlers, which never block, so a spare there
/// is a bug.
pub fn report_spares(name: &str, layer: &tower_affinity::ThreadAffinityLayer) {
    let pool = layer.stats();
    if pool.spares_started() > 0 {
        eprintln!(
            "{name}: {} spare(s) started, {} supervisor look(s)",
            pool.spares_started(),
            pool.stalls()
        );
    }
}
