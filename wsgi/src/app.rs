//! The application: imported from `module:callable` on a worker, once.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use crate::log;

/// Where the application comes from, and the paths its import needs.
pub(crate) struct App {
    source: Source,
    python_path: Vec<PathBuf>,
    virtual_env: Option<PathBuf>,
    /// The callable, or why it could not be had (the traceback was logged
    /// when it happened). A `PyOnceLock`: the import may release the GIL,
    /// and a second worker must not wait for it while holding the GIL.
    loaded: PyOnceLock<Result<Py<PyAny>, String>>,
}

pub(crate) enum Source {
    Import(String),
    Object(Py<PyAny>),
}

impl App {
    pub(crate) fn new(
        source: Source,
        python_path: Vec<PathBuf>,
        virtual_env: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            python_path,
            virtual_env,
            loaded: PyOnceLock::new(),
        })
    }

    /// The callable, imported on the first call (on a worker thread).
    pub(crate) fn get<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>, String> {
        let loaded = self.loaded.get_or_init(py, || {
            self.load(py).map_err(|error| {
                let what = format!("loading the WSGI application {self:?}");
                log::traceback(py, &what, &error);
                format!("{what}: {error}")
            })
        });
        match loaded {
            Ok(app) => Ok(app.bind(py).clone()),
            Err(message) => Err(message.clone()),
        }
    }

    fn load(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let spec = match &self.source {
            Source::Object(app) => return Ok(app.clone_ref(py)),
            Source::Import(spec) => spec,
        };
        self.extend_path(py)?;
        let (module, attribute) = spec.split_once(':').unwrap_or((spec, "application"));
        let mut app = py.import(module)?.into_any();
        // `package.module:object.attribute`, as gunicorn reads it.
        for name in attribute.split('.') {
            app = app.getattr(name)?;
        }
        if !app.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "{spec} is not callable"
            )));
        }
        Ok(app.unbind())
    }

    /// Puts the configured directories first on `sys.path` (gunicorn puts
    /// the current directory there), and a virtualenv's site-packages
    /// before the interpreter's own, with its `.pth` files processed.
    fn extend_path(&self, py: Python<'_>) -> PyResult<()> {
        let globals = PyDict::new(py);
        let dirs: Vec<String> = self
            .python_path
            .iter()
            .map(|dir| dir.to_string_lossy().into_owned())
            .collect();
        globals.set_item("dirs", PyList::new(py, dirs)?)?;
        globals.set_item(
            "venv",
            self.virtual_env
                .as_ref()
                .map(|dir| dir.to_string_lossy().into_owned()),
        )?;
        py.run(
            cr#"
import os, site, sys
before = [p for p in sys.path if p not in dirs]
if venv:
    packages = os.path.join(
        venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    known = set(sys.path)
    site.addsitedir(packages)
    added = [p for p in sys.path if p not in known]
    before = added + [p for p in before if p not in added]
sys.path[:] = dirs + before
"#,
            Some(&globals),
            None,
        )
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Import(spec) => write!(f, "{spec}"),
            Source::Object(_) => write!(f, "<object>"),
        }
    }
}
