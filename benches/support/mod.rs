//! What every bench needs: knobs from the environment, a watchdog against
//! hangs, the load average (to judge a run's noise), and a median.
//!
//! Included by each bench with `#[path = "support/mod.rs"] mod support;`;
//! not every bench uses every item.
#![allow(dead_code)]

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
