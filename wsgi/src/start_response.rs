//! `start_response` and the `write()` callable it returns (PEP 3333).
//!
//! Both share one [`Head`] with the response body: the status and headers
//! the application chose, whether they count as sent, and the bytes given
//! to `write()` that the body has not yet taken.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// What the application said about its response.
#[derive(Default)]
pub(crate) struct Head {
    /// `"200 OK"` and the header pairs, as given (checked when the head is
    /// built).
    pub(crate) status: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    /// The headers count as sent (PEP 3333): after the first non-empty
    /// `write()`, or once the gateway handed the head on. From then on,
    /// `start_response` with `exc_info` re-raises.
    pub(crate) sent: bool,
    /// `write()` data not yet taken by the body, in order.
    pub(crate) written: VecDeque<Bytes>,
    written_len: usize,
    /// The most `written` may hold.
    limit: usize,
}

/// The head, shared by `start_response`, `write` and the body.
#[derive(Clone)]
pub(crate) struct SharedHead(Arc<Mutex<Head>>);

impl SharedHead {
    pub(crate) fn new(write_buffer: usize) -> Self {
        Self(Arc::new(Mutex::new(Head {
            limit: write_buffer,
            ..Head::default()
        })))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Head> {
        // Nothing panics while it is held; a poisoned lock is still sound.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Head {
    /// The next `write()` chunk, if any.
    pub(crate) fn take_written(&mut self) -> Option<Bytes> {
        let chunk = self.written.pop_front()?;
        self.written_len -= chunk.len();
        Some(chunk)
    }

    /// All of the `write()` data not yet taken, in order.
    pub(crate) fn take_all_written(&mut self) -> VecDeque<Bytes> {
        self.written_len = 0;
        std::mem::take(&mut self.written)
    }
}

/// The `start_response` callable handed to the application.
#[pyclass(module = "tower_affinity_wsgi")]
pub(crate) struct StartResponse {
    head: SharedHead,
}

impl StartResponse {
    pub(crate) fn new(head: SharedHead) -> Self {
        Self { head }
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Write> {
        let exc_info = exc_info.filter(|info| !info.is_none());
        let sent = self.head.lock().sent;
        if let Some(info) = exc_info {
            if sent {
                // Too late to change the head: the application's error goes
                // on, as PEP 3333 asks (`raise exc_info[1].with_traceback(..)`).
                let info = info.cast::<PyTuple>()?;
                let value = info
                    .get_item(1)?
                    .call_method1("with_traceback", (info.get_item(2)?,))?;
                return Err(PyErr::from_value(value));
            }
        } else if self.head.lock().status.is_some() {
            return Err(PyAssertionError::new_err(
                "start_response() called again without exc_info",
            ));
        }
        let status = native(status, "status")?;
        let mut pairs = Vec::new();
        for pair in headers.try_iter()? {
            let pair = pair?;
            let pair = pair
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("each header must be a (name, value) tuple"))?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each header must be a (name, value) tuple",
                ));
            }
            pairs.push((
                native(&pair.get_item(0)?, "header name")?,
                native(&pair.get_item(1)?, "header value")?,
            ));
        }
        let mut head = self.head.lock();
        head.status = Some(status);
        head.headers = pairs;
        drop(head);
        let _ = py;
        Ok(Write {
            head: self.head.clone(),
        })
    }
}

/// A native string (PEP 3333: `str` of code points below 256).
fn native(value: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let text = value
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("the {what} must be a str")))?
        .to_cow()?
        .into_owned();
    if text.chars().any(|c| c as u32 > 0xff) {
        return Err(PyTypeError::new_err(format!(
            "the {what} must be latin-1 (PEP 3333 native string)"
        )));
    }
    Ok(text)
}

/// The `write()` callable `start_response` returns.
///
/// The application calls it from inside its own call, before the gateway
/// can send anything, so its bytes wait in the head, in order, until the
/// body takes them; at most `write_buffer` bytes, past which `write()`
/// raises `OSError` rather than grow without bound.
#[pyclass(module = "tower_affinity_wsgi")]
pub(crate) struct Write {
    head: SharedHead,
}

#[pymethods]
impl Write {
    fn __call__(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?
            .as_bytes();
        let mut head = self.head.lock();
        if head.status.is_none() {
            return Err(PyAssertionError::new_err("write() before start_response()"));
        }
        if data.is_empty() {
            return Ok(());
        }
        if head.written_len + data.len() > head.limit {
            return Err(PyOSError::new_err(format!(
                "write() would buffer more than {} bytes before the response starts",
                head.limit
            )));
        }
        head.sent = true;
        head.written_len += data.len();
        head.written.push_back(Bytes::copy_from_slice(data));
        Ok(())
    }
}
