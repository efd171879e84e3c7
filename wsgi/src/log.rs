//! Where Python's complaints go: `wsgi.errors`, and the tracebacks of
//! exceptions the gateway catches.
//!
//! Both go to `tracing` when a subscriber is installed (the gateway's own
//! messages at `ERROR` with target `wsgi`, the application's `wsgi.errors`
//! lines at `WARN` with target `wsgi.errors`), and to the process's stderr
//! otherwise, so that nothing is lost in a program that never set one up.

use std::sync::Mutex;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Logs `error` with its traceback: `what` says what the gateway was doing.
pub(crate) fn traceback(py: Python<'_>, what: &str, error: &PyErr) {
    let text = format_exception(py, error).unwrap_or_else(|_| error.to_string());
    line(&format!("{what}: {}", text.trim_end()));
}

fn format_exception(py: Python<'_>, error: &PyErr) -> PyResult<String> {
    // The traceback from the error itself: on Python 3.11 the value's
    // `__traceback__` may not be set yet.
    let lines = py.import("traceback")?.call_method1(
        "format_exception",
        (error.get_type(py), error.value(py), error.traceback(py)),
    )?;
    PyString::new(py, "")
        .call_method1("join", (lines,))?
        .extract()
}

/// One message of the gateway's, to the subscriber if there is one, else
/// to stderr.
pub(crate) fn line(text: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::error!(target: "wsgi", "{text}");
    } else {
        eprintln!("[tower-affinity-wsgi] {text}");
    }
}

/// One line the application wrote to `wsgi.errors`.
fn app_line(text: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!(target: "wsgi.errors", "{text}");
    } else {
        eprintln!("[wsgi.errors] {text}");
    }
}

/// `wsgi.errors`: a text stream whose lines are logged one at a time.
#[pyclass(module = "tower_affinity_wsgi")]
pub(crate) struct ErrorStream {
    /// Text written since the last newline.
    partial: Mutex<String>,
}

impl ErrorStream {
    pub(crate) fn new() -> Self {
        Self {
            partial: Mutex::new(String::new()),
        }
    }

    fn emit(partial: &mut String, flush: bool) {
        while let Some(end) = partial.find('\n') {
            let rest = partial.split_off(end + 1);
            app_line(partial.trim_end_matches(['\r', '\n']));
            *partial = rest;
        }
        if flush && !partial.is_empty() {
            app_line(partial);
            partial.clear();
        }
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&self, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let Ok(text) = text.cast::<PyString>() else {
            return Err(PyTypeError::new_err("wsgi.errors.write() takes a str"));
        };
        let text = text.to_cow()?;
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        partial.push_str(&text);
        Self::emit(&mut partial, false);
        Ok(text.chars().count())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for text in lines.try_iter()? {
            self.write(&text?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        Self::emit(&mut partial, true);
    }
}

impl Drop for ErrorStream {
    fn drop(&mut self) {
        let partial = self.partial.get_mut().unwrap_or_else(|e| e.into_inner());
        Self::emit(partial, true);
    }
}
