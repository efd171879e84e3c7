//! Whether a worker thread is blocked: inside a long poll of user code and
//! off the CPU.
//!
//! A long poll alone does not tell a handler waiting on a socket or a lock
//! from one computing: starting more threads helps the first and only
//! slows the second. On Linux each worker records its thread id when it
//! starts (from `/proc/thread-self`, which reads as `PID/task/TID`) and the
//! probe reads the scheduler state letter in `/proc/self/task/TID/stat`:
//! `S` (sleeping) or `D` (waiting on I/O) is blocked; `R` (running, or
//! runnable and waiting for a CPU) is not.
//!
//! Elsewhere, or where `/proc` cannot be read, there is no such signal: a
//! poll longer than [`BLIND_AFTER`] counts as blocked, so a handler that
//! computes for longer than that can start spares there.

use std::time::Duration;

/// How long a poll of user code must last before the probe looks at its
/// thread: shorter polls are a handler's ordinary work.
pub(crate) const BLOCKED_AFTER: Duration = Duration::from_millis(1);

/// Without a scheduler state to read, how long a poll must last to count
/// as blocked.
pub(crate) const BLIND_AFTER: Duration = Duration::from_millis(20);

/// The calling thread's id as the kernel knows it; 0 where unknown.
pub(crate) fn current_tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|path| path.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// The scheduler state letter of thread `tid` of this process.
fn state(tid: u64) -> Option<char> {
    if tid == 0 {
        return None;
    }
    // Bytes, not text: Linux keeps 15 bytes of a thread's name, and cuts
    // `datenbank-größe-0` inside `ß`. Read as UTF-8, such a file failed,
    // and the probe fell back to the blind rule for every thread so named.
    let stat = std::fs::read(format!("/proc/self/task/{tid}/stat")).ok()?;
    state_letter(&stat)
}

/// The state letter in the text of a `stat` file. The command name (in
/// parentheses) may hold spaces, parentheses and any bytes: the state
/// follows the last `)`.
fn state_letter(stat: &[u8]) -> Option<char> {
    let name_end = stat.iter().rposition(|&byte| byte == b')')?;
    let rest = &stat[name_end + 1..];
    let letter = rest.iter().find(|byte| !byte.is_ascii_whitespace())?;
    Some(char::from(*letter))
}

/// Whether thread `tid` is off the CPU (sleeping, or waiting on I/O);
/// `None` where its state cannot be read.
pub(crate) fn off_cpu(tid: u64) -> Option<bool> {
    state(tid).map(|letter| matches!(letter, 'S' | 'D'))
}

/// Whether thread `tid`, inside a poll of user code for `polling`, is
/// blocked there.
pub(crate) fn blocked(tid: u64, polling: Option<Duration>) -> bool {
    let Some(polling) = polling.filter(|&p| p >= BLOCKED_AFTER) else {
        return false;
    };
    match state(tid) {
        Some(letter) => matches!(letter, 'S' | 'D'),
        None => polling >= BLIND_AFTER,
    }
}

#[cfg(all(test, target_os = "linux", not(tower_affinity_loom)))]
mod tests {
    use super::*;

    /// The state is found after the last `)`, in a name that holds
    /// parentheses, spaces and a character cut in half.
    #[test]
    fn reads_the_state_after_a_name_cut_inside_a_character() {
        let mut stat = b"4242 (datenbank-gr\xc3\xb6\xc3) x) S 1 2 3".to_vec();
        assert!(std::str::from_utf8(&stat).is_err());
        assert_eq!(state_letter(&stat), Some('S'));
        stat.truncate(stat.len() - 7);
        assert_eq!(state_letter(&stat), None, "nothing after the name");
    }

    /// A sleeping thread reads as blocked, a spinning one does not.
    #[test]
    fn tells_sleeping_from_spinning() {
        let long = Some(Duration::from_secs(1));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, 0);
        // The sleeper may not have reached `recv` yet: look until it has.
        while !blocked(tid, long) {
            std::thread::yield_now();
        }
        assert!(!blocked(current_tid(), long), "this thread is running");
        assert!(!blocked(tid, None), "not polling: not blocked");
        drop(stop_tx);
        sleeper.join().unwrap();
    }
}
