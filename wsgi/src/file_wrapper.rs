//! `wsgi.file_wrapper`: a file-like object as a response iterable.
//!
//! Each `next()` reads one block, on the worker, when the response has
//! room for it (the body asks for the next item only then), so a large
//! file streams to a slow reader without holding a thread or the file in
//! memory. `close()` closes the file, as PEP 3333 asks.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The block size when the application gives none: 64 KiB.
pub(crate) const DEFAULT_BLOCK: usize = 64 * 1024;

#[pyclass(module = "tower_affinity_wsgi")]
pub(crate) struct FileWrapper {
    filelike: Py<PyAny>,
    block: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = DEFAULT_BLOCK))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        Self {
            filelike,
            // A block of 0 would read nothing forever.
            block: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self.filelike.bind(py).call_method1("read", (self.block,))?;
        let empty = match block.cast::<PyBytes>() {
            Ok(bytes) => bytes.as_bytes().is_empty(),
            Err(_) => block.len()? == 0,
        };
        Ok((!empty).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr("close")? {
            filelike.call_method0("close")?;
        }
        Ok(())
    }
}
