//! Keeps one Python thread state per worker thread, for the thread's life.
//!
//! `Python::attach` on a thread that Python did not create makes a fresh
//! thread state and destroys it when it returns. Everything Python keeps
//! per thread lives in that state: `threading.local` values (Django's
//! database connections), context variables, `threading.current_thread()`'s
//! dummy. Destroyed after each request, Django would open a connection per
//! request and never close the old one on its thread.
//!
//! So the first attach on a worker takes one more hold on its thread state
//! (`PyGILState_Ensure`), and the thread's exit gives it back. Between
//! requests the thread is detached (the GIL is free, the state kept), and
//! each later attach finds the same state. PyO3 has no safe call for this,
//! and this crate forbids `unsafe`: the two C calls are made through
//! `ctypes.pythonapi`, from Python, holding the GIL, as the C API asks.

use std::cell::Cell;
use std::ffi::CStr;

use pyo3::types::PyDict;
use pyo3::Python;

use crate::log;

/// Holds this thread's Python thread state once `pinned` is set; gives it
/// back when the thread ends.
struct Pin {
    pinned: Cell<bool>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        if !self.pinned.get() {
            return;
        }
        // `try_attach`: at interpreter shutdown there is nothing to give back.
        // The release takes the count back to PyO3's own hold, whose end
        // clears the state: its `threading.local` values are dropped here,
        // on their own thread.
        let _ = Python::try_attach(|py| run(py, RELEASE));
    }
}

thread_local! {
    static PIN: Pin = const { Pin { pinned: Cell::new(false) } };
}

/// `PyGILState_LOCKED` is 0: the release must not give up the GIL, which
/// PyO3's own hold releases after it.
const ENSURE: &CStr = c"import ctypes; ctypes.pythonapi.PyGILState_Ensure()";
const RELEASE: &CStr = c"import ctypes; ctypes.pythonapi.PyGILState_Release(0)";

/// Keeps this thread's Python state alive from now until the thread ends.
/// Call it attached; a second call on the same thread does nothing.
pub(crate) fn pin(py: Python<'_>) {
    let _ = PIN.try_with(|pin| {
        if !pin.pinned.get() {
            pin.pinned.set(run(py, ENSURE));
        }
    });
}

fn run(py: Python<'_>, code: &CStr) -> bool {
    // Its own globals: nothing lands in `__main__`.
    match py.run(code, Some(&PyDict::new(py)), None) {
        Ok(()) => true,
        Err(error) => {
            log::traceback(py, "keeping the worker's Python thread state", &error);
            false
        }
    }
}
