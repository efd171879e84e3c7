//! `wsgi.input`: the request body as a Python binary stream, read on the
//! worker from the connection as the application asks for it.
//!
//! Nothing is buffered ahead but the last chunk read: `read(n)`, `read()`,
//! `readline`, `readlines` and iteration take what they need from it and
//! fetch the next chunk from the client only when it is used up. The wait
//! for the client runs detached from the interpreter, so other workers run
//! Python meanwhile; this worker waits (see the crate docs' limits).

use std::io::{self, Read};
use std::sync::{Mutex, TryLockError};

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

/// The chunk each fetch from the client asks for, at most.
const FETCH: usize = 64 * 1024;

#[pyclass(module = "tower_affinity_wsgi")]
pub(crate) struct Input {
    state: Mutex<State>,
}

struct State {
    body: Box<dyn Read + Send>,
    /// Bytes fetched and not yet handed out: `buffer[start..]`.
    buffer: Vec<u8>,
    start: usize,
    eof: bool,
}

impl Input {
    pub(crate) fn new(body: Box<dyn Read + Send>) -> Self {
        Self {
            state: Mutex::new(State {
                body,
                buffer: Vec::new(),
                start: 0,
                eof: false,
            }),
        }
    }

    /// Runs `f` on the stream's state. A second Python thread reading the
    /// same stream at once gets an error rather than waiting on the lock
    /// with the GIL held (which the first needs back to finish).
    fn with<T>(&self, f: impl FnOnce(&mut State) -> PyResult<T>) -> PyResult<T> {
        match self.state.try_lock() {
            Ok(mut state) => f(&mut state),
            Err(TryLockError::Poisoned(poisoned)) => f(&mut poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "wsgi.input is being read by another thread",
            )),
        }
    }
}

impl State {
    fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    /// Fetches the next chunk from the client, detached; `false` at the end.
    fn fetch(&mut self, py: Python<'_>) -> PyResult<bool> {
        if self.eof {
            return Ok(false);
        }
        self.buffer.drain(..self.start);
        self.start = 0;
        let old = self.buffer.len();
        self.buffer.resize(old + FETCH, 0);
        let (body, room) = (&mut self.body, &mut self.buffer[old..]);
        let read = py.detach(|| loop {
            match body.read(room) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        });
        match read {
            Ok(0) => {
                self.buffer.truncate(old);
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buffer.truncate(old + n);
                Ok(true)
            }
            Err(e) => {
                self.buffer.truncate(old);
                self.eof = true;
                Err(PyOSError::new_err(format!("reading the request body: {e}")))
            }
        }
    }

    /// Takes `n` bytes (fewer at the end) as a `bytes`.
    fn take<'py>(&mut self, py: Python<'py>, n: usize) -> Bound<'py, PyBytes> {
        let n = n.min(self.buffered().len());
        let bytes = PyBytes::new(py, &self.buffer[self.start..self.start + n]);
        self.start += n;
        bytes
    }

    fn read<'py>(&mut self, py: Python<'py>, size: Option<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let want = size.unwrap_or(usize::MAX);
        while self.buffered().len() < want && self.fetch(py)? {}
        Ok(self.take(py, want))
    }

    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size.unwrap_or(usize::MAX);
        let mut searched = 0;
        loop {
            let buffered = self.buffered();
            let window = &buffered[..buffered.len().min(limit)];
            if let Some(at) = window[searched..].iter().position(|&b| b == b'\n') {
                return Ok(self.take(py, searched + at + 1));
            }
            searched = window.len();
            if searched >= limit || !self.fetch(py)? {
                return Ok(self.take(py, searched));
            }
        }
    }
}

/// A negative or absent size means "all" (Python's file convention).
fn size(size: Option<isize>) -> Option<usize> {
    size.and_then(|n| usize::try_from(n).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.with(|state| state.read(py, self::size(size)))
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.with(|state| state.readline(py, self::size(size)))
    }

    /// Lines until their total reaches `hint` (all of them without one).
    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = self::size(hint).filter(|&n| n > 0).unwrap_or(usize::MAX);
        self.with(|state| {
            let lines = PyList::empty(py);
            let mut total = 0;
            while total < hint {
                let line = state.readline(py, None)?;
                if line.as_bytes().is_empty() {
                    break;
                }
                total += line.as_bytes().len();
                lines.append(line)?;
            }
            Ok(lines)
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.with(|state| state.readline(py, None))?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}
