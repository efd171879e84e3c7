//! The application's response iterable: iterated, then closed once.
//!
//! PEP 3333: if the iterable has `close()`, the gateway calls it when the
//! request is done, "whether the request was completed normally, or
//! terminated early due to an application error" (or the client went
//! away). Every path here ends in [`Iterable::close`], which runs it at
//! most once; the `Drop` covers a body dropped mid-stream. Both run on the
//! request's worker thread, where the layer drops the body.

use bytes::Bytes;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyTuple};

use crate::log;

pub(crate) struct Iterable {
    /// What the application returned: the object `close()` belongs to.
    /// `None` once closed.
    result: Option<Py<PyAny>>,
    iter: Option<Py<PyIterator>>,
}

impl Iterable {
    pub(crate) fn new(result: Bound<'_, PyAny>) -> Self {
        Self {
            result: Some(result.unbind()),
            iter: None,
        }
    }

    /// A `list` or `tuple` of `bytes` of at most `limit` bytes in all, as
    /// one chunk: the common response, sent in one frame.
    pub(crate) fn whole(&self, py: Python<'_>, limit: usize) -> Option<Bytes> {
        let result = self.result.as_ref()?.bind(py);
        let items = match (result.cast::<PyList>(), result.cast::<PyTuple>()) {
            (Ok(list), _) => list.as_sequence().clone(),
            (_, Ok(tuple)) => tuple.as_sequence().clone(),
            _ => return None,
        };
        let mut parts = Vec::new();
        let mut total = 0;
        for item in items.try_iter().ok()? {
            let item = item.ok()?;
            let bytes = item.cast::<PyBytes>().ok()?.as_bytes();
            total += bytes.len();
            if total > limit {
                return None;
            }
            parts.push(item.cast_into::<PyBytes>().ok()?);
        }
        let mut whole = Vec::with_capacity(total);
        for part in &parts {
            whole.extend_from_slice(part.as_bytes());
        }
        Some(Bytes::from(whole))
    }

    /// The next chunk; `None` at the end. An item that is not `bytes` is
    /// the application's error (PEP 3333 bodies are bytes).
    pub(crate) fn next(&mut self, py: Python<'_>) -> PyResult<Option<Bytes>> {
        let iter = match &self.iter {
            Some(iter) => iter.bind(py).clone(),
            None => {
                let Some(result) = &self.result else {
                    return Ok(None);
                };
                let iter = result.bind(py).try_iter()?;
                self.iter = Some(iter.clone().unbind());
                iter
            }
        };
        match iter.into_iter().next() {
            None => Ok(None),
            Some(Err(error)) => Err(error),
            Some(Ok(item)) => match item.cast::<PyBytes>() {
                Ok(bytes) => Ok(Some(Bytes::copy_from_slice(bytes.as_bytes()))),
                Err(_) => Err(PyTypeError::new_err(format!(
                    "the response iterable yielded {}, not bytes",
                    item.get_type().name()?
                ))),
            },
        }
    }

    /// Calls the iterable's `close()`, if it has one, the first time only.
    pub(crate) fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        self.iter = None;
        let Some(result) = self.result.take() else {
            return Ok(());
        };
        let result = result.bind(py);
        if result.hasattr("close")? {
            result.call_method0("close")?;
        }
        Ok(())
    }

    /// Closes, logging what `close()` raised: the response it belongs to
    /// is already decided.
    pub(crate) fn close_logged(&mut self, py: Python<'_>) {
        if let Err(error) = self.close(py) {
            log::traceback(py, "the response iterable's close()", &error);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.result.is_none()
    }
}

impl Drop for Iterable {
    fn drop(&mut self) {
        if !self.is_closed() {
            // The client went away (or the response was cut): close here,
            // on the worker that ran the request.
            let _ = Python::try_attach(|py| self.close_logged(py));
        }
    }
}
