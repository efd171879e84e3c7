//! Configuring a [`Wsgi`] service.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::{Py, PyAny};

use crate::app::{App, Source};
use crate::Wsgi;

/// The settings every request of one application reads.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) url_scheme: Option<String>,
    pub(crate) script_name: Option<String>,
    pub(crate) max_request_body: usize,
    pub(crate) write_buffer: usize,
    pub(crate) single_frame: usize,
}

/// Configures a [`Wsgi`] service; made by [`Wsgi::builder`].
///
/// ```
/// let app = tower_affinity_wsgi::Wsgi::builder()
///     .python_path("examples")
///     .url_scheme("https")
///     .max_request_body(64 * 1024 * 1024)
///     .import("hello:app");
/// # let _ = app;
/// ```
pub struct Builder {
    config: Config,
    python_path: Vec<PathBuf>,
    virtual_env: Option<PathBuf>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config {
                url_scheme: None,
                script_name: None,
                max_request_body: 16 * 1024 * 1024,
                write_buffer: 16 * 1024 * 1024,
                single_frame: 64 * 1024,
            },
            python_path: Vec::new(),
            virtual_env: None,
        }
    }

    /// Puts `dir` on `sys.path`, before the interpreter's own entries,
    /// before the application is imported (the command adds the current
    /// directory, as gunicorn does). Repeat for more; the first call's
    /// directory comes first.
    pub fn python_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.python_path.push(dir.into());
        self
    }

    /// Imports from the virtualenv at `dir` (what `VIRTUAL_ENV` names): its
    /// `lib/pythonX.Y/site-packages`, `.pth` files included, goes on
    /// `sys.path` before the interpreter's own. The interpreter itself is
    /// the one this crate was built against; a virtualenv of another Python
    /// version has no packages it can load.
    pub fn virtual_env(mut self, dir: impl Into<PathBuf>) -> Self {
        self.virtual_env = Some(dir.into());
        self
    }

    /// `wsgi.url_scheme` for requests whose URI has no scheme (HTTP/1.1
    /// requests have none): `"https"` behind a TLS terminator. Default
    /// `"http"`.
    pub fn url_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.config.url_scheme = Some(scheme.into());
        self
    }

    /// A fixed `SCRIPT_NAME`, stripped from the start of each path to make
    /// `PATH_INFO`. Without it, a service under axum's `nest_service` finds
    /// its mount point by itself (from axum's `OriginalUri`), and one at the
    /// root has an empty `SCRIPT_NAME`.
    pub fn script_name(mut self, prefix: impl Into<String>) -> Self {
        self.config.script_name = Some(prefix.into());
        self
    }

    /// The largest request body `wsgi.input` reads, in bytes (default
    /// 16 MiB). A request whose `Content-Length` says more is answered
    /// `413` without calling the application; a body that turns out longer
    /// fails the read with `OSError`. `usize::MAX` turns the limit off; `0`
    /// refuses every body.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request_body = bytes;
        self
    }

    /// The most bytes `write()` holds before the response starts (default
    /// 16 MiB). An application calls `write()` inside its own call, before
    /// the gateway can send anything; past this, `write()` raises `OSError`
    /// instead of growing without bound. Return an iterable to stream more.
    pub fn write_buffer(mut self, bytes: usize) -> Self {
        self.config.write_buffer = bytes;
        self
    }

    /// A response iterable that is a `list` or `tuple` of `bytes` of at
    /// most this many bytes in all (default 64 KiB) is sent as one frame,
    /// with its head, in one hand-off; a longer one streams item by item.
    /// `0` streams every list.
    pub fn single_frame(mut self, bytes: usize) -> Self {
        self.config.single_frame = bytes;
        self
    }

    /// A service for the WSGI callable `spec` names: `module:callable`
    /// (`module` alone means `module:application`, and `callable` may be a
    /// dotted path, as gunicorn reads it). The import runs on the first
    /// worker that serves a request, never on the caller's thread; if it
    /// fails, its traceback is logged and every request is answered `500`.
    pub fn import(self, spec: impl Into<String>) -> Wsgi {
        self.finish(Source::Import(spec.into()))
    }

    /// A service for a WSGI callable already in hand.
    pub fn app(self, app: Py<PyAny>) -> Wsgi {
        self.finish(Source::Object(app))
    }

    fn finish(self, source: Source) -> Wsgi {
        Wsgi::from_parts(
            App::new(source, self.python_path, self.virtual_env),
            Arc::new(self.config),
        )
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("python_path", &self.python_path)
            .field("virtual_env", &self.virtual_env)
            .finish()
    }
}
